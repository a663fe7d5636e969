"""System tab: the device minilab chose, memory in use, where training jobs run, and every model with its
availability."""
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


def jobs_view() -> tuple[str, list[list]]:
    """Where training runs: the worker processes of this machine, or the Ray cluster's nodes, and whose job is
    where (job kinds and states only: another browser's job is none of this one's business)."""
    from engine.jobs import default_runner

    try:
        info = default_runner().describe()
    except Exception as error:  # noqa: BLE001 - a bad setting or an unreachable cluster is shown, not raised
        return f"### Training jobs\nUnavailable: {error}", []
    jobs = info.get("jobs", [])

    def running_on(key: str) -> str:
        return ", ".join(f"{job['job']} ({job['state']})" for job in jobs if job["node"] and key in job["node"]) or "-"

    if info["backend"] == "ray":
        if info.get("error"):
            return f"### Training jobs run on a Ray cluster ({info.get('address')})\nUnreachable: {info['error']}", []
        nodes = info.get("nodes", [])
        rows = [[f"{node['node']} ({node.get('hostname', '')})", "yes" if node.get("alive") else "no",
                 ", ".join(f"{key} {value:g}" for key, value in sorted(node.get("resources", {}).items())
                           if not key.startswith("node:") and isinstance(value, (int, float))),
                 running_on(f"Ray node {node['id']}")] for node in nodes]  # by id: nodes may share an address
        head = f"### Training jobs run on a Ray cluster ({info.get('address')}): {len(nodes)} node(s)"
        return head, rows
    if info["backend"] == "process":
        rows = [[f"worker pid {worker['pid']} on {info['host']}", "yes", f"{worker['rss_mb']} MB resident",
                 running_on(f"pid {worker['pid']}") if worker["job"] != "(spare, waiting)" else "spare: waits, torch loaded"]
                for worker in info.get("workers", [])]
        head = (f"### Training jobs run in worker processes on {info['host']}\nOne process per job; a cancel that is "
                f"not obeyed within {info['cancel_grace_s']:g} s ends the process; a job over "
                f"{info['memory_limit_mb']} MB of memory is stopped.")
        return head, rows
    return "### Training jobs run in threads of this process", [["this process", "yes", "", running_on("this process")]]


def refresh(request: gr.Request):
    head, rows = jobs_view()
    return device_markdown(), model_table(request), loaded_table(), head, rows


def build() -> dict:
    device = gr.Markdown("### Device\nLooking...")
    # Every row in view (no inner scroll hiding the text models), and widths that leave room for the reasons.
    models = gr.Dataframe(headers=["task", "model", "source", "available", "why", "description"], label="Models",
                          interactive=False, wrap=True, max_height=2000, show_search="search",
                          column_widths=["13%", "17%", "8%", "8%", "27%", "27%"])
    loaded = gr.Dataframe(headers=["loaded model", "MB", "owner"], label="Models in memory", interactive=False)
    where = gr.Markdown("### Training jobs")
    workers = gr.Dataframe(headers=["where", "up", "resources", "jobs running there"], label="Where training runs",
                           interactive=False, wrap=True)
    check = gr.Button("Check again")
    outputs = [device, models, loaded, where, workers]
    check.click(refresh, outputs=outputs, api_name="system_status")
    return {"device": device, "models": models, "loaded": loaded, "refresh": refresh, "outputs": outputs}
