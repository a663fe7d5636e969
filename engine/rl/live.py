"""What the reinforcement-learning tab asks of the engine: watch an agent (video + Q-value overlay, a random
agent beside it), compare returns over many seeds, and train a new agent as a background job.
"""
from __future__ import annotations

import functools
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from engine.checkpoints import zip_model_folder
from engine.device import set_threads
from engine.jobs import JobContext
from engine.rl.dqn import DQNConfig, evaluate_agent, play_episodes, save_agent, train_dqn
from engine.rl.render import Policy, episodes_video, play_episode, random_policy

MAX_WATCH_SEED = 2**31 - 1
KEEP_VIDEOS = 200  # the newest videos kept in the output folder; older ones are deleted as new ones arrive


def prune_videos(folder: Path, keep: int = KEEP_VIDEOS) -> None:
    """Delete all but the `keep` newest MP4s, so a long-running server does not fill its disk."""
    videos = sorted(folder.glob("*.mp4"), key=lambda path: path.stat().st_mtime, reverse=True)
    for old in videos[keep:]:
        old.unlink(missing_ok=True)


def agent_policy(qnet: nn.Module) -> Policy:
    """obs -> (greedy action, its Q-values) for one environment, for the video overlay (the network on any device)."""
    device = next(qnet.parameters()).device

    def act(observation: np.ndarray) -> tuple[int, np.ndarray]:
        with torch.no_grad():
            q = qnet(torch.as_tensor(observation, dtype=torch.float32, device=device).unsqueeze(0))[0].cpu().numpy()
        return int(q.argmax()), q

    return act


def watch(qnet: nn.Module, seed: int, out_dir: str | Path, label: str = "trained agent") -> dict:
    """One episode of the agent and one of a random agent from the same start, side by side in an MP4."""
    seed = int(seed) % MAX_WATCH_SEED
    trained = play_episode(agent_policy(qnet), seed, label=label)
    random_agent = play_episode(random_policy(seed), seed, label="random agent")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    video = episodes_video([trained, random_agent], out_dir / f"cartpole-{seed}-{uuid.uuid4().hex[:8]}.mp4")
    prune_videos(out_dir)
    return {"video": video, "agent_return": trained.episode_return, "random_return": random_agent.episode_return,
            "steps": len(trained.actions)}


def compare_returns(qnet: nn.Module, first_seed: int = 0, episodes: int = 20) -> dict:
    """Greedy returns of the agent and of a random agent over the same episode seeds."""
    seeds = list(range(int(first_seed), int(first_seed) + int(episodes)))
    agent = evaluate_agent(qnet, episodes=episodes, seed0=int(first_seed))["returns"]
    rng = np.random.default_rng(int(first_seed))
    random_returns = play_episodes(lambda obs: rng.integers(0, 2, size=len(obs)), seeds)
    return {"seeds": seeds, "agent": [float(r) for r in agent], "random": [float(r) for r in random_returns]}


def training_job(config: DQNConfig, command: str = "minilab RL tab", name: str = "agent") -> Callable[[JobContext], dict]:
    """A job for engine.jobs: train, report each episode, stop on cancel, and save the agent in the job's
    folder. A cancelled run still saves what it learned so far. A partial of a module-level function, so that
    it can be pickled for a worker process or a Ray node."""
    return functools.partial(_train_in_job, replace(config).validate(), command, name)


def _train_in_job(config: DQNConfig, command: str, name: str, ctx: JobContext) -> dict:
    # A small MLP on batches of 64 trains faster on one thread than on an OpenMP team: on 2 cores,
    # `python -m engine train cartpole` took 56.7 s with --threads 1 and 75.1 s with --threads 2.
    set_threads(1)
    qnet, metrics = train_dqn(config, on_progress=lambda event: ctx.report(**event), should_stop=ctx.should_stop)
    metrics = {k: v for k, v in metrics.items() if k != "evals"}
    folder = save_agent(qnet, ctx.workdir / "agent", config, metrics, command)
    zip_model_folder(folder, ctx.workdir / f"{name}.zip")  # the download, made here rather than by the web server
    return {"folder": str(folder), "metrics": metrics, "name": name}
