"""Reinforcement learning tab: CartPole with a DQN. Watch an agent (beside a random one), train a new one
live through the job runner, replay it, save it, load it again.

A training job belongs to this browser, not to one page load: the browser keeps a random owner key in its
localStorage (gr.BrowserState), so a reloaded page finds its running job again. A gr.Timer polls the job.
"""
from __future__ import annotations

import tempfile
import uuid
from pathlib import Path

import gradio as gr
import pandas as pd

from demos import zerogpu
from demos.common import LIVE_STATES, control_job, ended_empty, ensure_owner, friendly_errors, latest_job, made_model, model_list, model_zip
from engine.errors import UserError
from engine.registry import default_registry, model_entry_for_folder

TASK = "rl"
WATCH_DIR = Path(tempfile.gettempdir()) / "minilab-rl-videos"

POLL_S = 1.0  # how often the page asks a training job for progress


def agent_choices(owner: str | None) -> list[tuple[str, str]]:
    return [(f"{e.name}  ·  {e.source}", e.name) for e in default_registry().list(TASK, owner)]


def _agent(name: str, owner: str | None):
    if not name:
        raise UserError("Pick an agent first.")
    return default_registry().get(name, owner)


@friendly_errors
def play(name: str, seed: float, owner: str | None):
    from engine.rl.live import watch

    if seed is None or seed < 0:
        raise UserError("The seed must be a whole number of at least 0.")
    result = watch(_agent(name, owner), int(seed), WATCH_DIR, label=name)
    verdict = "kept the pole up for all 500 steps" if result["agent_return"] >= 500 else f"lasted {result['steps']} steps"
    summary = (f"**{name}** {verdict} (return **{result['agent_return']:.0f}**); the random agent beside it scored "
               f"**{result['random_return']:.0f}** from the same start (seed {int(seed)}).")
    return str(result["video"]), summary


@friendly_errors
def compare(name: str, first_seed: float, episodes: float, owner: str | None):
    from engine.rl.live import compare_returns

    episodes = int(episodes or 0)
    if not 1 <= episodes <= 200:
        raise UserError("Play between 1 and 200 episodes.")
    result = compare_returns(_agent(name, owner), int(first_seed or 0), episodes)
    rows = [{"seed": s, "return": r, "agent": name} for s, r in zip(result["seeds"], result["agent"])]
    rows += [{"seed": s, "return": r, "agent": "random"} for s, r in zip(result["seeds"], result["random"])]
    mean = sum(result["agent"]) / len(result["agent"])
    random_mean = sum(result["random"]) / len(result["random"])
    text = (f"Over {episodes} episodes (seeds {result['seeds'][0]}–{result['seeds'][-1]}): **{name}** averages "
            f"**{mean:.1f}**, the random agent **{random_mean:.1f}**. 500 is the most an episode can give.")
    return pd.DataFrame(rows), text


def _config_from(total_steps, lr, hidden, num_envs, batch_size, gamma, buffer_size, eps_duration, seed):
    from engine.rl.dqn import DQNConfig

    try:
        widths = [int(w) for w in str(hidden).replace(" ", "").split(",") if w]
    except ValueError:
        raise UserError("Hidden layers are comma-separated widths, such as 128,128.") from None
    if not widths or any(w < 1 or w > 1024 for w in widths) or len(widths) > 4:
        raise UserError("Hidden layers: 1 to 4 widths, each between 1 and 1024 (e.g. 128,128).")
    values = {"total_steps": total_steps, "num_envs": num_envs, "batch_size": batch_size, "buffer_size": buffer_size,
              "eps_duration": eps_duration, "seed": seed}
    for key, value in values.items():
        if value is None or float(value) != int(value):
            raise UserError(f"{key.replace('_', ' ')} must be a whole number.")
    return DQNConfig(total_steps=int(total_steps), lr=float(lr), lr_end=float(lr) / 10, hidden=widths, num_envs=int(num_envs),
                     batch_size=int(batch_size), gamma=float(gamma), buffer_size=int(buffer_size),
                     eps_duration=int(eps_duration), seed=int(seed), eval_every=0, final_eval_episodes=20).validate()


@friendly_errors
def start(owner: str | None, *settings):
    from engine.jobs import default_runner
    from engine.rl.live import training_job

    owner = ensure_owner(owner)
    runner = default_runner()
    if any(job.state in LIVE_STATES and job.name == "cartpole" for job in runner.jobs(owner)):
        raise UserError("Your agent is still training: cancel it before starting another.")
    config = _config_from(*settings)
    name = f"my-cartpole-{uuid.uuid4().hex[:6]}"
    runner.submit(owner, training_job(config, name=name), name="cartpole",
                  config={"total_steps": config.total_steps, "model_name": name})
    return owner, gr.Timer(active=True)


def _latest_job(owner: str | None):
    return latest_job(owner, "cartpole")


@friendly_errors
def control(action: str, owner: str | None):
    control_job(action, owner, "cartpole")
    return gr.Timer(active=True)


def _progress_markdown(job) -> str:
    progress = job.progress or {}
    total = (job.config or {}).get("total_steps") or 1
    step = int(progress.get("step", 0))
    if job.done and isinstance(job.result, dict):  # episodes report as they end; the run's own count is exact
        step = int(job.result.get("metrics", {}).get("total_steps", step))
    if job.state == "queued":
        return f"⏳ Waiting for the trainer: position **{job.queue_position}** in the queue."
    if stopped := ended_empty(job, "Start"):
        return stopped
    filled = int(20 * min(1.0, step / total))
    bar = "█" * filled + "░" * (20 - filled)
    eta = job.elapsed / step * (total - step) if step else None
    line = f"`{bar}` step **{step:,}** / {total:,} · {job.elapsed:.0f} s" + (f" · about {eta:.0f} s left" if eta and job.state == "running" else "")
    status = {"running": "🏃 training", "paused": "⏸ paused", "succeeded": "✅ done", "cancelled": "⏹ cancelled (kept what it learned)",
              "timed_out": "⏱ time limit reached (kept what it learned)", "failed": f"❌ failed: {job.error}"}[job.state]
    if getattr(job, "reason", None) and job.state != "failed":  # stopped by force: say how
        status += f": {job.reason}"
    return f"**{status}**  \n{line}"


def poll(owner: str | None, agent_name: str):
    """Timer tick: the job's progress, its curves, and, once it ends, the new agent in the list."""
    job = _latest_job(owner)
    if job is None:
        return "No training yet: set the knobs and press **Start**.", None, None, gr.Dropdown(), None, gr.Timer(active=False)
    episodes = [e for e in job.events if e.get("kind") == "episode"]
    returns = pd.DataFrame(
        [{"episode": e["episode"], "value": e["return"], "series": "episode return"} for e in episodes]
        + [{"episode": e["episode"], "value": e["return_avg100"], "series": "average of last 100"} for e in episodes])
    learning = pd.DataFrame(
        [{"step": e["step"], "value": e["epsilon"], "series": "epsilon"} for e in episodes]
        + [{"step": e["step"], "value": e["loss"], "series": "loss"} for e in episodes if e.get("loss") is not None])
    dropdown, download = gr.Dropdown(), None
    if made_model(job):
        name = job.result.get("name") or f"my-cartpole-{job.id[:6]}"
        registry = default_registry()
        if name not in [e.name for e in registry.list(TASK, owner)]:
            registry.add(model_entry_for_folder(Path(job.result["folder"]), name, "session", session=owner))
        dropdown = gr.Dropdown(choices=agent_choices(owner), value=name)
        download = model_zip(Path(job.result["folder"]), name)
    if not job.done:  # plain values while it trains: any component update makes Gradio rebuild its whole config
        return (_progress_markdown(job), returns if len(returns) else None, learning if len(learning) else None,
                agent_name, None, POLL_S)
    return (_progress_markdown(job), returns if len(returns) else None, learning if len(learning) else None, dropdown,
            download, gr.Timer(active=False))


@friendly_errors
def upload_agent(file, owner: str | None):
    from engine.checkpoints import unpack_model_zip
    from engine.rl.dqn import load_agent

    if file is None:
        raise UserError("Choose an agent zip (downloaded from this tab) first.")
    owner = ensure_owner(owner)
    path = Path(file if isinstance(file, str) else file.name)
    folder = unpack_model_zip(path, tempfile.mkdtemp(prefix="minilab-agent-"))
    load_agent(folder)  # refuses anything that is not a CartPole Q-network, with the reason
    name = f"uploaded-{path.stem[:24]}-{uuid.uuid4().hex[:4]}"
    default_registry().add(model_entry_for_folder(folder, name, "session", session=owner))
    gr.Info(f"Loaded {name}: pick it and press Play.")
    return owner, gr.Dropdown(choices=agent_choices(owner), value=name)


def refresh_agents(owner: str | None, current: str):
    choices = agent_choices(owner)
    return model_list(choices, current)


def build(owner: gr.BrowserState | None = None) -> dict:
    """The tab; `owner` is the browser's owner key, shared with the Fine-tune tab (made here when alone)."""
    owner = owner if owner is not None else gr.BrowserState(None, storage_key="minilab-owner")
    choices = agent_choices(None)
    default = "cartpole" if any(v == "cartpole" for _, v in choices) else (choices[0][1] if choices else None)
    gr.Markdown("Balance a pole on a cart by pushing left or right. A **DQN** learns which push is worth more "
                "(its Q-values) from trial and error; 500 steps upright is a perfect episode.")
    if zerogpu.TRAINING_NOTE:
        gr.Markdown(f"ℹ️ {zerogpu.TRAINING_NOTE}")
    with gr.Row():
        with gr.Column(scale=4):
            agent = gr.Dropdown(choices=choices, value=default, label="Agent", elem_id="rl-agent")
            seed = gr.Number(value=0, precision=0, minimum=0, label="Episode seed (the start position)")
            play_button = gr.Button("▶ Play", variant="primary", elem_id="rl-play")
            seed_examples = gr.Examples(examples=[[0], [7], [42]], inputs=[seed], label="Seeds to try", cache_examples=False)
        with gr.Column(scale=6):
            video = gr.Video(label="The agent (left) and a random agent (right)", autoplay=True, interactive=False,
                             elem_id="rl-video", height=300)
            verdict = gr.Markdown(elem_id="rl-verdict")
    with gr.Accordion("Returns over many episodes", open=False):
        with gr.Row():
            first_seed = gr.Number(value=0, precision=0, minimum=0, label="First seed")
            episodes = gr.Slider(1, 100, value=20, step=1, label="Episodes")
            compare_button = gr.Button("Compare with a random agent")
        returns_plot = gr.BarPlot(x="seed", y="return", color="agent", label="Return per episode", height=260)
        compare_text = gr.Markdown()

    gr.Markdown("### Train your own agent")
    # the same defaults as engine.rl.dqn.DQNConfig (not imported here: it would load torch before the page is up)
    with gr.Row():
        total_steps = gr.Number(value=30_000, precision=0, label="Environment steps (100 to 2,000,000)")
        lr = gr.Number(value=1e-3, label="Learning rate (Adam; decays to a tenth)")
        hidden = gr.Textbox(value="64,64", label="Hidden layers")
    with gr.Accordion("Advanced", open=False):
        with gr.Row():
            num_envs = gr.Number(value=4, precision=0, label="Parallel environments (1 to 64)")
            batch_size = gr.Number(value=128, precision=0, label="Batch size")
            gamma = gr.Number(value=0.99, label="Discount γ")
            buffer_size = gr.Number(value=50_000, precision=0, label="Replay buffer")
            eps_duration = gr.Number(value=4_000, precision=0, label="ε decay steps")
            train_seed = gr.Number(value=0, precision=0, label="Seed")
    with gr.Row():
        start_button = gr.Button("Start training", variant="primary", elem_id="rl-start")
        pause_button = gr.Button("Pause")
        resume_button = gr.Button("Resume")
        cancel_button = gr.Button("Cancel", variant="stop")
    progress = gr.Markdown("No training yet: set the knobs and press **Start**.", elem_id="rl-progress")
    with gr.Row():
        reward_plot = gr.LinePlot(x="episode", y="value", color="series", label="Reward per episode", y_title="reward")
        learning_plot = gr.LinePlot(x="step", y="value", color="series", label="Exploration ε and TD loss")
    with gr.Row():
        download = gr.File(label="Your agent (zip): load it again below", interactive=False)
        upload = gr.File(label="Load an agent zip", file_types=[".zip"])
    timer = gr.Timer(POLL_S, active=False)

    play_button.click(play, inputs=[agent, seed, owner], outputs=[video, verdict], api_name="rl_play")
    seed_examples.load_input_event.then(play, inputs=[agent, seed, owner], outputs=[video, verdict], api_name=False)  # a click plays it
    compare_button.click(compare, inputs=[agent, first_seed, episodes, owner], outputs=[returns_plot, compare_text],
                         api_name="rl_compare")
    settings = [total_steps, lr, hidden, num_envs, batch_size, gamma, buffer_size, eps_duration, train_seed]
    start_button.click(start, inputs=[owner, *settings], outputs=[owner, timer], api_name="rl_train")
    pause_button.click(lambda o: control("pause", o), inputs=owner, outputs=timer, api_name="rl_pause")
    resume_button.click(lambda o: control("resume", o), inputs=owner, outputs=timer, api_name="rl_resume")
    cancel_button.click(lambda o: control("cancel", o), inputs=owner, outputs=timer, api_name="rl_cancel")
    poll_outputs = [progress, reward_plot, learning_plot, agent, download, timer]
    timer.tick(poll, inputs=[owner, agent], outputs=poll_outputs, show_progress="hidden", concurrency_limit=None,
               api_name="rl_poll")
    upload.upload(upload_agent, inputs=[upload, owner], outputs=[owner, agent], api_name="rl_upload")
    return {"owner": owner, "agent": agent, "timer": timer, "poll_outputs": poll_outputs, "ensure_owner": ensure_owner,
            "refresh": refresh_agents, "poll": poll}
