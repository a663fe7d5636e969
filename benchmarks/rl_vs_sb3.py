"""minilab's DQN beside Stable-Baselines3's DQN (RL Zoo's tuned CartPole-v1 settings), one protocol for both.

    pip install -r benchmarks/requirements.txt          # stable-baselines3, a benchmark-only dependency
    python benchmarks/rl_vs_sb3.py --seeds 0,1,2,3,4 --budget 50000

Protocol: every 1,000 environment steps the clock pauses and the greedy policy plays 10 episodes on a
separate environment. `solve` is the first evaluation averaging >= 475; `stable solve` the first from which
every later evaluation up to the budget averages >= 475. Seconds are training wall-clock (evaluation excluded).
Prints one JSON line: per-run results, medians for both, and minilab/SB3 ratios.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from engine.rl.dqn import EVAL_SEED0, Clock, DQNConfig, evaluate_agent, play_episodes, solve_summary, train_dqn  # noqa: E402

THRESHOLD = 475.0
# rl-baselines3-zoo, hyperparams/dqn.yml, CartPole-v1
ZOO_CARTPOLE = dict(learning_rate=2.3e-3, batch_size=64, buffer_size=100_000, learning_starts=1_000, gamma=0.99,
                    target_update_interval=10, train_freq=256, gradient_steps=128, exploration_fraction=0.16,
                    exploration_final_eps=0.04, policy_kwargs=dict(net_arch=[256, 256]))


def run_minilab(seed: int, budget: int, eval_every: int, eval_episodes: int) -> dict:
    config = DQNConfig(total_steps=budget, seed=seed, eval_every=eval_every, eval_episodes=eval_episodes)
    _, metrics = train_dqn(config)
    return {key: metrics[key] for key in ("solved", "solve_steps", "solve_seconds", "stable_solve_steps",
                                          "stable_solve_seconds", "total_steps", "total_seconds", "final100_mean")}


def run_sb3(seed: int, budget: int, eval_every: int, eval_episodes: int) -> dict:
    import gymnasium as gym
    from stable_baselines3 import DQN
    from stable_baselines3.common.callbacks import BaseCallback

    clock = Clock()
    evals: list[tuple[int, float, float]] = []

    def greedy(obs):
        return model.predict(obs, deterministic=True)[0]

    class PausedEvaluation(BaseCallback):
        """Every eval_every steps: stop the clock, play greedy episodes on separate environments, restart it."""

        def _on_step(self) -> bool:
            if self.num_timesteps // eval_every > len(evals):
                clock.pause()
                seeds = [EVAL_SEED0 + len(evals) * eval_episodes + j for j in range(eval_episodes)]
                returns = play_episodes(greedy, seeds)
                evals.append((self.num_timesteps, clock.total, float(sum(returns) / len(returns))))
                clock.resume()
            return True

    model = DQN("MlpPolicy", gym.make("CartPole-v1"), seed=seed, verbose=0, device="cpu", **ZOO_CARTPOLE)
    clock.resume()
    model.learn(total_timesteps=budget, callback=PausedEvaluation())
    total_seconds = clock.seconds()

    class Greedy(torch.nn.Module):  # evaluate_agent's interface: obs tensor -> Q-values
        def forward(self, obs):
            return model.q_net(obs)

    final = evaluate_agent(Greedy(), 100, seed0=0)["mean_return"]
    return {**solve_summary(evals, THRESHOLD), "total_steps": budget, "total_seconds": total_seconds, "final100_mean": final}


def medians(runs: list[dict]) -> dict:
    """Medians over seeds; a run that never (stably) solved counts as the whole budget, so it cannot flatter."""
    out = {}
    for key in ("solve_steps", "solve_seconds", "stable_solve_steps", "stable_solve_seconds"):
        fallback = "total_steps" if key.endswith("steps") else "total_seconds"
        out[key] = statistics.median(r[key] if r[key] is not None else r[fallback] for r in runs)
    out["stable_solves"] = sum(r["stable_solve_steps"] is not None for r in runs)
    out["final100_mean"] = statistics.median(r["final100_mean"] for r in runs)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--budget", type=int, default=50_000)
    parser.add_argument("--eval-every", type=int, default=1_000)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both (small nets: 1 is fastest)")
    parser.add_argument("--skip-sb3", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    result: dict = {"benchmark": "rl_vs_sb3", "budget": args.budget, "seeds": seeds, "threads": args.threads}
    mine = [run_minilab(seed, args.budget, args.eval_every, args.eval_episodes) for seed in seeds]
    result["minilab"] = {"runs": mine, "median": medians(mine)}
    if not args.skip_sb3:
        theirs = [run_sb3(seed, args.budget, args.eval_every, args.eval_episodes) for seed in seeds]
        result["sb3"] = {"runs": theirs, "median": medians(theirs)}
        a, b = result["minilab"]["median"], result["sb3"]["median"]
        result["ratios"] = {key: round(a[key] / b[key], 3) for key in ("stable_solve_seconds", "stable_solve_steps",
                                                                        "solve_seconds", "solve_steps")}
        result["targets"] = {
            "stable_solve_seconds_at_most_half_of_sb3": result["ratios"]["stable_solve_seconds"] <= 0.5,
            "stable_solves_at_least_4_of_5": a["stable_solves"] >= 0.8 * len(seeds),
            "first_solve_no_later_than_sb3": a["solve_steps"] <= b["solve_steps"] and a["solve_seconds"] <= b["solve_seconds"],
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
