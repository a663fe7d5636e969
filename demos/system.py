"""System tab: the device minilab chose, memory in use, and every model with its availability."""
from __future__ import annotations

import gradio as gr

from demos.common import friendly_errors, session_key
from engine.registry import default_registry

TASKS = ["image-classification", "image-backbone", "sentiment", "text-classification", "lm", "text-embedding", "rl"]


def device_markdown() -> str:
    from engine.device import device_report  # torch loads here, not while the page is being served

    report = device_report()
    try:  # a bad MINILAB_* job setting is reported where a job starts; here it only hides this line
        from engine.jobs import default_runner

        runner = default_runner()
        report["cpu_threads_per_training_job"] = f"{runner.threads_per_job()} (at most {runner.max_concurrent} at once)"
    except Exception:  # noqa: BLE001
        pass
    lines = [f"### Device: `{report['device']}`", f"Chosen by: {report['chosen_by']} (set MINILAB_DEVICE to override)"]
    from demos.zerogpu import STATUS

    if STATUS:
        lines.append(f"**{STATUS}**")
    for key, value in report.items():
        if key not in ("device", "chosen_by") and value is not None:
            lines.append(f"- **{key.replace('_', ' ')}:** {round(value, 1) if isinstance(value, float) else value}")
    return "\n".join(lines)


@friendly_errors
def model_table(request: gr.Request) -> list[list]:
    """Availability of every model; the hub check answers within a few seconds offline."""
    registry, session = default_registry(), session_key(request)
    rows = []
    for task in TASKS:
        for entry in registry.list(task, session):
            ok, why = registry.availability(entry.name, session)
            rows.append([task, entry.name, entry.source, "yes" if ok else "no", why, entry.description])
    return rows


def loaded_table() -> list[list]:
    return [[row["model"], row["mb"], "this session" if row["session"] else "shared"] for row in default_registry().loaded()]


def refresh(request: gr.Request):
    return device_markdown(), model_table(request), loaded_table()


def build() -> dict:
    device = gr.Markdown("### Device\nLooking...")
    # Every row in view (no inner scroll hiding the text models), and widths that leave room for the reasons.
    models = gr.Dataframe(headers=["task", "model", "source", "available", "why", "description"], label="Models",
                          interactive=False, wrap=True, max_height=2000, show_search="search",
                          column_widths=["13%", "17%", "8%", "8%", "27%", "27%"])
    loaded = gr.Dataframe(headers=["loaded model", "MB", "owner"], label="Models in memory", interactive=False)
    check = gr.Button("Check availability again")
    check.click(refresh, outputs=[device, models, loaded], api_name="system_status")
    return {"device": device, "models": models, "loaded": loaded, "refresh": refresh}
