"""Browser tests: the real app in headless Chromium through Playwright."""
