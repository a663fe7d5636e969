"""minilab's DQN against Stable-Baselines3's DQN with the RL Zoo's tuned CartPole-v1 hyperparameters, as JSON.

    pip install -r benchmarks/requirements.txt
    python benchmarks/rl_vs_sb3.py --seeds 0,1,2,3,4 --budget 50000 --threads 1

Both agents are measured with the same protocol: every 1,000 environment steps the training clock pauses and
the greedy policy plays 10 episodes on separate environments (seeds never used in training). "Solve" is the
first evaluation averaging >= 475; "stable solve" is the first evaluation from which every later one, up to the
step budget, averages >= 475. Seconds are training wall-clock with evaluation time excluded. After training,
each agent plays 100 greedy episodes (seeds 0..99): final100_mean. The seeds alternate minilab, SB3, minilab,
... so that both see the same load on the machine. Prints one JSON line; progress goes to stderr.
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from engine.rl.dqn import EVAL_SEED0, Clock, DQNConfig, play_episodes, solve_summary, train_dqn  # noqa: E402

SOLVED = 475.0

# rl-baselines3-zoo, hyperparams/dqn.yml, CartPole-v1 (n_envs 1, MlpPolicy)
SB3_ZOO = dict(learning_rate=2.3e-3, batch_size=64, buffer_size=100_000, learning_starts=1_000, gamma=0.99,
               target_update_interval=10, train_freq=256, gradient_steps=128, exploration_fraction=0.16,
               exploration_final_eps=0.04, policy_kwargs=dict(net_arch=[256, 256]))


def run_minilab(seed: int, steps: int, eval_every: int, eval_episodes: int) -> dict:
    config = DQNConfig(seed=seed, total_steps=steps, eval_every=eval_every, eval_episodes=eval_episodes,
                       final_eval_episodes=100, solve_return=SOLVED)
    _, metrics = train_dqn(config)
    return metrics


def run_sb3(seed: int, steps: int, eval_every: int, eval_episodes: int) -> dict:
    """SB3's DQN with the same protocol, through a callback that pauses the clock to evaluate."""
    import gymnasium as gym
    from stable_baselines3 import DQN
    from stable_baselines3.common.callbacks import BaseCallback

    class Protocol(BaseCallback):
        def __init__(self):
            super().__init__()
            self.evals: list[tuple[int, float, float]] = []
            self.clock = Clock()

        def _on_training_start(self) -> None:
            self.clock = Clock()

        def _on_step(self) -> bool:
            # SB3 finishes its last rollout past the budget: evaluations stop at the budget, as for minilab
            if self.num_timesteps <= steps and self.num_timesteps // eval_every > len(self.evals):
                self.clock.pause()
                seeds = [EVAL_SEED0 + len(self.evals) * eval_episodes + j for j in range(eval_episodes)]
                returns = play_episodes(lambda obs: self.model.predict(obs, deterministic=True)[0], seeds)
                self.evals.append((self.num_timesteps, self.clock.total, sum(returns) / len(returns)))
                self.clock.resume()
            return True

    model = DQN("MlpPolicy", gym.make("CartPole-v1"), seed=seed, device="cpu", verbose=0, **SB3_ZOO)
    protocol = Protocol()
    model.learn(total_timesteps=steps, callback=protocol)
    total_seconds = protocol.clock.seconds()
    final = play_episodes(lambda obs: model.predict(obs, deterministic=True)[0], list(range(100)))
    return {**solve_summary(protocol.evals, SOLVED), "total_steps": model.num_timesteps, "total_seconds": total_seconds,
            "final100_mean": sum(final) / len(final), "evals": [list(e) for e in protocol.evals]}


def median(runs: list[dict], key: str) -> float | None:
    """Median over seeds; a run that never got there counts as infinitely slow (None if the median is)."""
    values = [math.inf if run[key] is None else run[key] for run in runs]
    result = statistics.median(values)
    return None if math.isinf(result) or math.isnan(result) else round(result, 3)


def summarise(runs: list[dict]) -> dict:
    keys = ("solve_steps", "solve_seconds", "stable_solve_steps", "stable_solve_seconds", "total_seconds", "final100_mean")
    return {"median": {key: median(runs, key) for key in keys},
            "stable_count": sum(run["stable_solve_steps"] is not None for run in runs),
            "solved_count": sum(run["solved"] for run in runs)}


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else round(a / b, 3)


def compact(seed: int, metrics: dict) -> dict:
    keep = ("solved", "solve_steps", "solve_seconds", "stable_solve_steps", "stable_solve_seconds", "total_steps",
            "total_seconds", "final100_mean")
    run = {"seed": seed, **{key: metrics[key] for key in keep}}
    run["eval_means"] = [round(e[2], 1) for e in metrics["evals"]]
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated training seeds")
    parser.add_argument("--budget", "--steps", dest="steps", type=int, default=50_000, help="environment steps per run")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads, the same for both")
    parser.add_argument("--eval-every", type=int, default=1_000)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--only", choices=("both", "minilab", "sb3"), default="both")
    parser.add_argument("--skip-sb3", action="store_true", help="the same as --only minilab")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if args.skip_sb3:
        args.only = "minilab"
    torch.set_num_threads(args.threads)
    importlib.import_module("torch._dynamo")  # imported on first optimizer use (seconds): keep it out of either clock

    load_before = os.getloadavg()
    runs: dict[str, list[dict]] = {"minilab": [], "sb3": []}
    runners = {"minilab": run_minilab, "sb3": run_sb3}
    for seed in seeds:
        for name in ("minilab", "sb3"):
            if args.only not in ("both", name):
                continue
            started = time.perf_counter()
            metrics = runners[name](seed, args.steps, args.eval_every, args.eval_episodes)
            runs[name].append(compact(seed, metrics))
            print(f"{name:8s} seed {seed}: solve {metrics['solve_steps']} steps / {metrics['solve_seconds']} s, "
                  f"stable {metrics['stable_solve_steps']} steps / {metrics['stable_solve_seconds']} s, "
                  f"final100 {metrics['final100_mean']:.1f} ({time.perf_counter() - started:.0f} s with evaluation)",
                  file=sys.stderr, flush=True)

    result = {"benchmark": "rl_vs_sb3", "env": "CartPole-v1", "budget": args.steps, "seeds": seeds,
              "threads": args.threads, "eval_every": args.eval_every, "eval_episodes": args.eval_episodes,
              "solved_at": SOLVED, "cpus": os.cpu_count(), "loadavg_before": [round(x, 2) for x in load_before],
              "loadavg_after": [round(x, 2) for x in os.getloadavg()]}
    minilab_config = asdict(DQNConfig())
    for key in ("seed", "total_steps", "eval_every", "eval_episodes", "final_eval_episodes", "solve_return"):
        minilab_config.pop(key)
    for name, hyper in (("minilab", minilab_config), ("sb3", {**SB3_ZOO, "policy": "MlpPolicy", "n_envs": 1})):
        if runs[name]:
            result[name] = {"hyperparameters": hyper, **summarise(runs[name]), "runs": runs[name]}
    if runs["minilab"] and runs["sb3"]:
        a, b = result["minilab"]["median"], result["sb3"]["median"]
        result["ratios"] = {"stable_solve_seconds": ratio(a["stable_solve_seconds"], b["stable_solve_seconds"]),
                            "stable_solve_steps": ratio(a["stable_solve_steps"], b["stable_solve_steps"]),
                            "solve_steps": ratio(a["solve_steps"], b["solve_steps"]),
                            "solve_seconds": ratio(a["solve_seconds"], b["solve_seconds"])}
        stable_ratio = result["ratios"]["stable_solve_seconds"]
        result["targets"] = {
            "stable_solve_seconds_at_most_half_of_sb3": stable_ratio is not None and stable_ratio <= 0.5,
            "stable_solves_at_least_4_of_5": result["minilab"]["stable_count"] >= 0.8 * len(seeds),
            "first_solve_no_later_than_sb3": a["solve_steps"] is not None and (b["solve_steps"] is None or (
                a["solve_steps"] <= b["solve_steps"] and a["solve_seconds"] <= b["solve_seconds"])),
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
