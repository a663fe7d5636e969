"""Take the README's screenshots in a real headless Chromium: start the app, classify an example photo,
open "Look inside", and save docs/screenshot.png; then explain a sentence's sentiment and save
docs/screenshot_text.png; then look inside the GPT and the LSTM (docs/screenshot_inside_gpt.png and
docs/screenshot_inside_lstm.png).

    python docs/take_screenshot.py            # needs Debian's chromium and the playwright package
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS, app_url  # noqa: E402


def main() -> None:
    from playwright.sync_api import sync_playwright

    server = app_url.__wrapped__()  # the test fixture's generator: starts app.py, yields its URL, stops it
    url = next(server)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(url)
            page.wait_for_selector("#photo-input", state="visible", timeout=60_000)
            page.locator("#photo-input input[type=file]").set_input_files(str(ROOT / "demos" / "examples" / "cat.jpg"))
            page.wait_for_selector("#top5 [data-testid='label-output-value']", timeout=60_000)
            page.get_by_text("Look inside the network").click()
            page.wait_for_timeout(1500)
            page.screenshot(path=str(ROOT / "docs" / "screenshot.png"), full_page=False)
            page.get_by_role("tab", name="Text").click()
            page.locator("#sentiment-input textarea").fill("The pasta was cold, but the waiter was lovely and the dessert made up for it.")
            page.locator("#sentiment-button").click()
            page.wait_for_function("() => (document.querySelector('#sentiment-words') || {}).innerText?.includes('dessert')",
                                   timeout=60_000)
            page.wait_for_timeout(500)
            page.screenshot(path=str(ROOT / "docs" / "screenshot_text.png"), full_page=False)
            page.get_by_role("tab", name="Inside: GPT and LSTM").click()
            page.locator("#inside-button").click()
            page.locator("#inside-focus img").wait_for(timeout=60_000)
            page.wait_for_timeout(800)
            page.screenshot(path=str(ROOT / "docs" / "screenshot_inside_gpt.png"), full_page=False)
            page.locator("#inside-model input").click()
            page.locator("[role=option]", has_text="shakespeare-lstm").first.click()
            page.locator("#inside-button").click()
            page.wait_for_function("() => (document.querySelector('#inside-note') || {}).innerText?.includes('LSTM')",
                                   timeout=60_000)
            page.locator("#inside-found").wait_for(state="visible", timeout=60_000)
            page.wait_for_timeout(800)
            page.locator("#inside-found").scroll_into_view_if_needed()
            page.screenshot(path=str(ROOT / "docs" / "screenshot_inside_lstm.png"), full_page=False)
            browser.close()
    finally:
        server.close()
    print(ROOT / "docs" / "screenshot.png", ROOT / "docs" / "screenshot_text.png")


if __name__ == "__main__":
    main()
