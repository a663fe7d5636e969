"""The CartPole DQN: its parts, a short training run that learns, checkpoints, rendering, and live jobs."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from engine.errors import UserError
from engine.jobs import JobRunner
from engine.rl.dqn import (ACTIONS, DQNConfig, QNetwork, ReplayBuffer, evaluate_agent, linear_schedule, load_agent,
                           save_agent, soft_update, solve_summary, train_dqn)
from engine.rl.live import prune_videos, training_job, watch
from engine.rl.render import FRAME_EVERY, HEIGHT, WIDTH, episodes_video, play_episode, random_policy

torch.set_num_threads(1)


def test_replay_buffer_overwrites_the_oldest_and_samples_batches():
    buffer = ReplayBuffer(capacity=5, obs_dim=4, seed=0)
    for start in (0, 3):  # 3 then 3 more transitions: the 6th overwrites slot 0
        n = 3
        obs = np.arange(start, start + n, dtype=np.float32)[:, None].repeat(4, 1)
        buffer.add(obs, np.ones(n, dtype=np.int64), np.full(n, 1.0), obs + 1, np.full(n, 0.99))
    assert buffer.size == 5 and buffer.pos == 1
    assert buffer.obs[0, 0] == 5.0 and buffer.obs[1, 0] == 1.0  # slot 0 holds the newest, slot 1 the oldest kept
    obs, actions, rewards, next_obs, discounts = buffer.sample(8)
    assert obs.shape == (8, 4) and next_obs.shape == (8, 4) and actions.shape == (8,) and actions.dtype == torch.int64
    assert torch.all(next_obs == obs + 1) and torch.all(discounts == 0.99)
    assert set(obs[:, 0].tolist()) <= {1.0, 2.0, 3.0, 4.0, 5.0}  # never the overwritten transition 0


def test_soft_update_moves_the_target_by_tau():
    torch.manual_seed(0)
    online, target = QNetwork(4, 2, [8]), QNetwork(4, 2, [8])
    before = [p.clone() for p in target.parameters()]
    soft_update(target, online, tau=0.25)
    for old, new, source in zip(before, target.parameters(), online.parameters()):
        assert torch.allclose(new, old + 0.25 * (source - old), atol=1e-6)
    soft_update(target, online, tau=1.0)
    assert all(torch.equal(a, b) for a, b in zip(target.parameters(), online.parameters()))


def test_epsilon_schedule_is_a_line_then_flat():
    assert linear_schedule(1.0, 0.05, 1000, 0) == 1.0
    assert linear_schedule(1.0, 0.05, 1000, 500) == pytest.approx(0.525)
    assert linear_schedule(1.0, 0.05, 1000, 1000) == pytest.approx(0.05)
    assert linear_schedule(1.0, 0.05, 1000, 50_000) == pytest.approx(0.05)


def test_solve_summary_finds_first_and_stable_solve():
    evals = [(1000, 1.0, 100.0), (2000, 2.0, 480.0), (3000, 3.0, 300.0), (4000, 4.0, 490.0), (5000, 5.0, 500.0)]
    summary = solve_summary(evals, 475)
    assert summary["solve_steps"] == 2000 and summary["stable_solve_steps"] == 4000 and summary["stable_solve_seconds"] == 4.0
    assert solve_summary(evals[:3], 475)["stable_solve_steps"] is None


@pytest.mark.parametrize("change, words", [
    ({"lr": -0.1}, "learning rate"), ({"buffer_size": 0}, "buffer_size"), ({"total_steps": 10**9}, "total_steps"),
    ({"gamma": 1.5}, "gamma"), ({"batch_size": 0}, "batch_size"), ({"eps_end": 2.0}, "epsilon"),
])
def test_bad_hyperparameters_are_refused_with_a_reason(change, words):
    with pytest.raises(UserError, match=words):
        DQNConfig(**change).validate()


def test_a_short_training_run_learns_on_a_fixed_seed():
    torch.manual_seed(0)
    untrained = evaluate_agent(QNetwork(4, 2, [64, 64]), episodes=10, seed0=0)["mean_return"]
    config = DQNConfig(total_steps=4000, hidden=[64, 64], eps_duration=2000, eval_every=0, final_eval_episodes=0, seed=0)
    events = []
    qnet, metrics = train_dqn(config, on_progress=events.append)
    trained = evaluate_agent(qnet, episodes=10, seed0=0)["mean_return"]
    assert metrics["total_steps"] >= 4000 and metrics["updates"] > 0
    assert trained > max(3 * untrained, 60), (untrained, trained)
    episodes = [e for e in events if e["kind"] == "episode"]
    assert episodes and {"step", "return", "return_avg100", "epsilon", "loss"} <= set(episodes[-1])


def test_evaluation_uses_seeds_0_to_n_minus_1_and_is_repeatable():
    torch.manual_seed(1)
    qnet = QNetwork(4, 2, [16])
    first, second = evaluate_agent(qnet, 5), evaluate_agent(qnet, 5)
    assert first["returns"] == second["returns"] and first["episodes"] == 5
    assert evaluate_agent(qnet, 3, seed0=0)["returns"] == first["returns"][:3]


def test_agent_round_trip_and_refusals(tmp_path, tiny_image_model):
    torch.manual_seed(2)
    qnet = QNetwork(4, 2, [32, 32], layer_norm=False)
    folder = save_agent(qnet, tmp_path / "agent", DQNConfig(), {"final100_mean": 9.0}, "tests")
    loaded, card = load_agent(folder)
    obs = torch.randn(16, 4)
    assert torch.allclose(qnet(obs), loaded(obs)) and card["labels"] == ACTIONS
    assert card["description"].startswith("A DQN agent for CartPole-v1: a Q-network of 2 hidden layers (32 and 32 units)")
    with pytest.raises(UserError, match="not a reinforcement-learning agent"):
        load_agent(tiny_image_model)
    (folder / "weights.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(UserError, match="not a readable safetensors"):
        load_agent(folder)


def test_video_frames_have_the_expected_size_and_count(tmp_path):
    import imageio.v3 as iio

    trained = play_episode(lambda obs: (int(obs[2] + 0.5 * obs[3] > 0), np.array([0.5, 1.0])), seed=3, label="heuristic", max_steps=60)
    random_agent = play_episode(random_policy(3), seed=3, label="random")
    assert len(trained.actions) == 60 and not trained.terminated  # the heuristic balances for the whole short episode
    path = episodes_video([trained, random_agent], tmp_path / "episode.mp4")
    frames = iio.imread(path, plugin="pyav") if _has_pyav() else np.stack(list(iio.imiter(path)))
    expected = len(range(0, 61, FRAME_EVERY)) + (1 if 60 % FRAME_EVERY else 0)
    assert frames.shape == (expected, HEIGHT, 2 * WIDTH, 3)


def _has_pyav() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def test_watch_writes_a_video_and_reports_both_returns(tmp_path):
    torch.manual_seed(3)
    result = watch(QNetwork(4, 2, [16]), seed=5, out_dir=tmp_path)
    assert result["video"].is_file() and result["video"].stat().st_size > 1000
    assert result["agent_return"] >= 1 and result["random_return"] >= 1


def test_a_cancelled_training_job_still_leaves_a_usable_agent():
    runner = JobRunner(max_concurrent=1)
    started = threading.Event()
    config = DQNConfig(total_steps=200_000, hidden=[32], eval_every=0, final_eval_episodes=0, learning_starts=200)
    job = training_job(config)

    def run(ctx):
        original = ctx.report

        def report(**event):  # let the test cancel once learning has begun
            original(**event)
            if event.get("step", 0) > 1500:
                started.set()

        ctx.report = report
        return job(ctx)

    job_id = runner.submit("me", run, name="cartpole")
    assert started.wait(60), "training did not start"
    runner.cancel(job_id, "me")
    status = runner.wait(job_id, "me", timeout=60)
    runner.shutdown()
    assert status.state == "cancelled"
    qnet, card = load_agent(status.result["folder"])
    assert card["metrics"]["stopped_early"] and card["metrics"]["total_steps"] < 200_000
    assert qnet(torch.zeros(1, 4)).shape == (1, 2)


def test_old_videos_are_pruned(tmp_path):
    import os

    for index in range(5):
        path = tmp_path / f"v{index}.mp4"
        path.write_bytes(b"x")
        os.utime(path, (1000 + index, 1000 + index))
    prune_videos(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.glob("*.mp4")) == ["v3.mp4", "v4.mp4"]
