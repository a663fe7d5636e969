"""Deep Q-learning (DQN) on gymnasium's CartPole-v1, in one file you can read top to bottom.

After CleanRL's dqn.py: a small MLP estimates Q(s, a), the return of taking action a in state s and
acting well afterwards. We act epsilon-greedily, store every transition in a replay buffer, and regress
Q(s, a) towards r + gamma * Q_target(s', argmax_a' Q(s', a')) (Double DQN) with the Huber loss. The target
network is a slowly moving (Polyak) average of the online network, which keeps the regression target
from chasing itself.

What makes it fast and stable on CartPole:
- several environments step together, so one batched forward pass picks all their actions;
- hitting the 500-step time limit is NOT a failure: we bootstrap through truncation, otherwise the
  network learns that perfectly balanced states are worth nothing and forgets how to balance;
- the learning rate calms down as the agent's own training episodes get long, so a good policy is not
  unlearned (evaluation episodes never influence training).

Progress events (dicts) go to `on_progress`; `should_stop()` is checked after every batch of env steps.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.checkpoints import load_model, save_model
from engine.errors import UserError

ENV_ID = "CartPole-v1"
OBS_DIM = 4
ACTIONS = ["push left", "push right"]
EVAL_SEED0 = 1_000_000  # evaluation episodes during training use seeds from here: never seen in training

ProgressFn = Callable[[dict], None]


@dataclass
class DQNConfig:
    total_steps: int = 50_000  # environment steps (summed over all parallel environments)
    num_envs: int = 4  # environments stepped together; one batched forward picks all their actions
    hidden: list[int] = field(default_factory=lambda: [64, 64])  # MLP hidden layer widths
    layer_norm: bool = True  # LayerNorm after each hidden layer keeps TD learning from diverging
    lr: float = 1e-3  # Adam learning rate at the start ...
    lr_end: float = 1e-4  # ... decaying linearly to this by the end of training
    calm_lr: float = 0.1  # lr multiplier while the last 10 training episodes average >= calm_return (1.0 = off):
    calm_return: float = 450.0  # a policy that already balances is fine-tuned gently instead of unlearned
    buffer_size: int = 50_000  # replay buffer capacity (transitions)
    batch_size: int = 128
    gamma: float = 0.99  # discount factor
    n_step: int = 3  # learn from n-step returns: value information travels n steps back per update
    tau: float = 0.01  # Polyak step of the target network after each update (1.0 = hard copy)
    target_every: int = 1  # update the target network every this many gradient steps
    learning_starts: int = 500  # random-policy steps before the first gradient step
    updates_per_step: float = 1.0  # gradient steps per environment step (the update-to-data ratio)
    eps_start: float = 1.0  # epsilon-greedy exploration, linearly from eps_start ...
    eps_end: float = 0.05  # ... to eps_end ...
    eps_duration: int = 4_000  # ... over this many environment steps
    max_grad_norm: float = 10.0  # gradient clipping (0 = off)
    seed: int = 0
    eval_every: int = 1_000  # env steps between greedy evaluations (0 = never); the clock pauses meanwhile
    eval_episodes: int = 10  # greedy episodes per evaluation, on a separate environment
    final_eval_episodes: int = 100  # greedy episodes after training, seeds 0..N-1 (0 = skip)
    solve_return: float = 475.0  # CartPole-v1 counts as solved at an average return of 475

    def validate(self) -> "DQNConfig":
        """Raise UserError, in words a user understands, for any value that cannot work."""

        def need(ok: bool, message: str) -> None:
            if not ok:
                raise UserError(message)

        need(100 <= self.total_steps <= 2_000_000, f"total_steps must be between 100 and 2,000,000 (got {self.total_steps}).")
        need(1 <= self.num_envs <= 64, f"num_envs must be between 1 and 64 (got {self.num_envs}).")
        need(1 <= len(self.hidden) <= 8 and all(1 <= int(h) <= 4096 for h in self.hidden),
             f"hidden must list 1 to 8 layer widths between 1 and 4096 (got {self.hidden}).")
        for name in ("lr", "lr_end"):
            value = getattr(self, name)
            need(0 < value <= 1, f"{name} (learning rate) must be greater than 0 and at most 1 (got {value}).")
        need(0 < self.calm_lr <= 1, f"calm_lr must be greater than 0 and at most 1 (got {self.calm_lr}).")
        need(1 <= self.buffer_size <= 10_000_000, f"buffer_size must be between 1 and 10,000,000 (got {self.buffer_size}).")
        need(1 <= self.batch_size <= 4096, f"batch_size must be between 1 and 4096 (got {self.batch_size}).")
        need(self.batch_size <= self.buffer_size, f"batch_size ({self.batch_size}) cannot exceed buffer_size ({self.buffer_size}).")
        need(0 < self.gamma <= 1, f"gamma (discount) must be in (0, 1] (got {self.gamma}).")
        need(1 <= self.n_step <= 100, f"n_step must be between 1 and 100 (got {self.n_step}).")
        need(0 < self.tau <= 1, f"tau (target network step) must be in (0, 1] (got {self.tau}).")
        need(self.target_every >= 1, f"target_every must be at least 1 (got {self.target_every}).")
        need(0 <= self.learning_starts < self.total_steps,
             f"learning_starts must be at least 0 and below total_steps (got {self.learning_starts}).")
        need(0 < self.updates_per_step <= 16, f"updates_per_step must be greater than 0 and at most 16 (got {self.updates_per_step}).")
        for name in ("eps_start", "eps_end"):
            value = getattr(self, name)
            need(0 <= value <= 1, f"{name} (exploration rate epsilon) must be between 0 and 1 (got {value}).")
        need(self.eps_duration >= 1, f"eps_duration must be at least 1 step (got {self.eps_duration}).")
        need(self.max_grad_norm >= 0, f"max_grad_norm must be 0 (off) or positive (got {self.max_grad_norm}).")
        need(0 <= self.seed <= 100_000, f"seed must be between 0 and 100,000 (got {self.seed}).")
        need(self.eval_every >= 0, f"eval_every must be 0 (never) or a number of steps (got {self.eval_every}).")
        need(1 <= self.eval_episodes <= 1000, f"eval_episodes must be between 1 and 1000 (got {self.eval_episodes}).")
        need(0 <= self.final_eval_episodes <= 1000, f"final_eval_episodes must be between 0 and 1000 (got {self.final_eval_episodes}).")
        return self


# ----------------------------------------------------------------------------------------------------------
# The Q-network: observation in, one value per action out.


class QNetwork(nn.Module):
    def __init__(self, obs_dim: int, n_actions: int, hidden: list[int], layer_norm: bool = True):
        super().__init__()
        layers: list[nn.Module] = []
        width = obs_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.LayerNorm(h), nn.ReLU()] if layer_norm else [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, n_actions))
        self.net = nn.Sequential(*layers)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs)


def build_qnet(arch_config: dict) -> QNetwork:
    """Rebuild a QNetwork from a model card's arch_config: {"obs_dim", "n_actions", "hidden", "layer_norm"}."""
    return QNetwork(int(arch_config["obs_dim"]), int(arch_config["n_actions"]), [int(h) for h in arch_config["hidden"]],
                    bool(arch_config.get("layer_norm", True)))


def soft_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """Move every target weight a fraction tau of the way to the online weight (tau=1: copy)."""
    with torch.no_grad():
        torch._foreach_lerp_(list(target.parameters()), list(online.parameters()), tau)


def linear_schedule(start: float, end: float, duration: int, t: int) -> float:
    """start at t=0, end from t=duration on, a straight line in between."""
    return start + (end - start) * min(t / duration, 1.0)


# ----------------------------------------------------------------------------------------------------------
# Replay buffer: a numpy ring buffer; once full, the newest transition overwrites the oldest.


class ReplayBuffer:
    def __init__(self, capacity: int, obs_dim: int, seed: int = 0):
        self.capacity = capacity
        self.obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.actions = np.zeros(capacity, dtype=np.int64)
        self.rewards = np.zeros(capacity, dtype=np.float32)
        self.discounts = np.zeros(capacity, dtype=np.float32)  # gamma^n, or 0 where the episode really ended
        self.pos = 0  # where the next transition goes
        self.size = 0
        self.rng = np.random.default_rng(seed)

    def add(self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray, next_obs: np.ndarray,
            discounts: np.ndarray) -> None:
        """Store a batch of transitions: the target for Q(obs, action) is reward + discount * V(next_obs)."""
        idx = (self.pos + np.arange(len(actions))) % self.capacity
        self.obs[idx], self.actions[idx], self.rewards[idx] = obs, actions, rewards
        self.next_obs[idx], self.discounts[idx] = next_obs, discounts
        self.pos = int(idx[-1] + 1) % self.capacity
        self.size = min(self.size + len(actions), self.capacity)

    def sample(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        """A uniform random batch: obs (B, obs_dim), actions (B,), rewards (B,), next_obs (B, obs_dim), discounts (B,)."""
        idx = self.rng.integers(0, self.size, batch_size)
        return tuple(torch.from_numpy(a[idx]) for a in (self.obs, self.actions, self.rewards, self.next_obs, self.discounts))


# ----------------------------------------------------------------------------------------------------------
# Playing greedily, for evaluation; the same code measures other agents (see benchmarks/rl_vs_sb3.py).


def greedy_policy(qnet: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    """obs batch (n, 4) -> the action with the highest Q-value for each, on whichever device the network is."""
    device = next(qnet.parameters()).device

    def act(obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return qnet(torch.as_tensor(obs, dtype=torch.float32, device=device)).argmax(1).cpu().numpy()

    return act


def play_episodes(policy: Callable[[np.ndarray], np.ndarray], seeds: list[int]) -> list[float]:
    """One episode per seed (episode i starts from env.reset(seed=seeds[i])), all played side by side so
    that one batched call of `policy` acts for every episode still running. Returns the episode returns."""
    envs = [gym.make(ENV_ID) for _ in seeds]
    obs = np.stack([env.reset(seed=int(seed))[0] for env, seed in zip(envs, seeds)])
    returns = np.zeros(len(seeds))
    running = np.ones(len(seeds), dtype=bool)
    while running.any():
        idx = np.flatnonzero(running)
        actions = policy(obs[idx])
        for i, action in zip(idx, actions):
            obs[i], reward, terminated, truncated, _ = envs[i].step(int(action))
            returns[i] += reward
            running[i] = not (terminated or truncated)
    for env in envs:
        env.close()
    return returns.tolist()


def evaluate_agent(qnet: nn.Module, episodes: int = 100, seed0: int = 0) -> dict:
    """Greedy returns over `episodes` episodes; episode i starts from env.reset(seed=seed0 + i)."""
    returns = play_episodes(greedy_policy(qnet.eval()), list(range(seed0, seed0 + episodes)))
    return {"mean_return": float(np.mean(returns)), "std_return": float(np.std(returns)),
            "episodes": episodes, "returns": returns}


class Clock:
    """Training wall-clock that can be paused, so evaluation time is not counted as training time."""

    def __init__(self):
        self.total = 0.0
        self.started = time.perf_counter()

    def pause(self) -> None:
        self.total += time.perf_counter() - self.started

    def resume(self) -> None:
        self.started = time.perf_counter()

    def seconds(self) -> float:
        return self.total + time.perf_counter() - self.started


def solve_summary(evals: list[tuple[int, float, float]], threshold: float) -> dict:
    """From (step, seconds, mean_return) evaluations: the first that reaches the threshold (solve) and the
    first from which every later one does too (stable solve); None where there is none."""
    first = next((e for e in evals if e[2] >= threshold), None)
    stable = None
    for e in reversed(evals):
        if e[2] < threshold:
            break
        stable = e
    return {"solved": first is not None,
            "solve_steps": first[0] if first else None, "solve_seconds": first[1] if first else None,
            "stable_solve_steps": stable[0] if stable else None, "stable_solve_seconds": stable[1] if stable else None}


# ----------------------------------------------------------------------------------------------------------
# Training.


def train_dqn(config: DQNConfig, on_progress: ProgressFn | None = None,
              should_stop: Callable[[], bool] | None = None, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """Train a Q-network on CartPole-v1; return it (CPU, eval mode) and its metrics. The RL tab trains on the CPU
    (engine/rl/live.py: a small MLP, on one thread); `device` runs the network on a GPU instead, while the
    environments and the replay buffer stay on the CPU and each sampled batch is copied over.

    Events: {"kind": "episode", "step", "episode", "return", "return_avg100", "epsilon", "loss", "elapsed"}
    for each finished training episode and {"kind": "eval", "step", "mean_return", "std_return", "returns",
    "elapsed"} for each greedy evaluation. `elapsed` is training time in seconds (evaluation excluded)."""
    config.validate()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    n = config.num_envs

    # SAME_STEP autoreset: a finished environment restarts at once and hands us its true last observation
    # in infos["final_obs"], which is what the replay buffer needs as next_obs.
    envs = gym.make_vec(ENV_ID, num_envs=n, vectorization_mode="sync",
                        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP})
    device = torch.device(device)
    qnet = QNetwork(OBS_DIM, len(ACTIONS), config.hidden, config.layer_norm).to(device)
    target = QNetwork(OBS_DIM, len(ACTIONS), config.hidden, config.layer_norm).to(device)
    target.load_state_dict(qnet.state_dict())
    optimizer = torch.optim.Adam(qnet.parameters(), lr=config.lr, fused=True)  # fused: one kernel, 3x faster on CPU
    optimizer.zero_grad()  # the first call imports torch._dynamo (seconds): do it before the clock starts
    buffer = ReplayBuffer(config.buffer_size, OBS_DIM, seed=config.seed)

    obs, _ = envs.reset(seed=config.seed)
    episode_returns = np.zeros(n)
    pending = [deque() for _ in range(n)]  # per environment: the last (obs, action, reward) not yet stored
    history: list[float] = []  # returns of finished training episodes
    evals: list[tuple[int, float, float]] = []
    step, updates, update_credit, loss = 0, 0, 0.0, None
    calm = False
    stopped_early = False
    clock = Clock()

    while step < config.total_steps:
        # 1. act: epsilon-greedy, one batched forward pass for all environments
        epsilon = linear_schedule(config.eps_start, config.eps_end, config.eps_duration, step)
        with torch.no_grad():
            greedy = qnet(torch.from_numpy(obs).to(device)).argmax(1).cpu().numpy()
        actions = np.where(rng.random(n) < epsilon, rng.integers(0, len(ACTIONS), n), greedy)
        next_obs, rewards, terminated, truncated, infos = envs.step(actions)

        # 2. remember, as n-step transitions: a time-limit truncation is not terminal, so it is bootstrapped
        real_next_obs = next_obs.copy()
        if "_final_obs" in infos:
            for i in np.flatnonzero(infos["_final_obs"]):
                real_next_obs[i] = infos["final_obs"][i]
        for i in range(n):
            pending[i].append((obs[i], actions[i], rewards[i]))
            done = terminated[i] or truncated[i]
            while len(pending[i]) == config.n_step or (done and pending[i]):
                # the oldest pending step: the rewards of the k steps since, then bootstrap from real_next_obs
                k = len(pending[i])
                n_step_return = sum(config.gamma ** j * r for j, (_, _, r) in enumerate(pending[i]))
                first_obs, first_action, _ = pending[i].popleft()
                discount = 0.0 if terminated[i] else config.gamma ** k
                buffer.add(first_obs[None], np.array([first_action]), np.array([n_step_return]), real_next_obs[i][None], np.array([discount]))
        obs = next_obs
        step += n

        episode_returns += rewards
        for i in np.flatnonzero(terminated | truncated):
            history.append(float(episode_returns[i]))
            episode_returns[i] = 0.0
            calm = len(history) >= 10 and np.mean(history[-10:]) >= config.calm_return
            if on_progress is not None:
                on_progress({"kind": "episode", "step": step, "episode": len(history), "return": history[-1],
                             "return_avg100": float(np.mean(history[-100:])), "epsilon": epsilon,
                             "loss": None if loss is None else float(loss), "elapsed": clock.seconds()})

        # 3. learn: `updates_per_step` gradient steps per environment step, once the buffer has some data
        if step >= config.learning_starts:
            lr = linear_schedule(config.lr, config.lr_end, config.total_steps, step) * (config.calm_lr if calm else 1.0)
            for group in optimizer.param_groups:
                group["lr"] = lr
            update_credit += n * config.updates_per_step
            while update_credit >= 1:
                update_credit -= 1
                batch = tuple(t.to(device) for t in buffer.sample(config.batch_size))
                loss = dqn_update(qnet, target, optimizer, batch, config)
                updates += 1
                if updates % config.target_every == 0:
                    soft_update(target, qnet, config.tau)

        # 4. evaluate greedily every eval_every steps, on separate environments, with the clock paused
        if config.eval_every and step // config.eval_every > len(evals):
            clock.pause()
            seeds = [EVAL_SEED0 + len(evals) * config.eval_episodes + j for j in range(config.eval_episodes)]
            returns = play_episodes(greedy_policy(qnet), seeds)
            evals.append((step, clock.total, float(np.mean(returns))))
            if on_progress is not None:
                on_progress({"kind": "eval", "step": step, "mean_return": evals[-1][2], "std_return": float(np.std(returns)),
                             "returns": returns, "elapsed": clock.total})
            clock.resume()

        # 5. stop if asked; the wait inside should_stop (a paused job) does not count as training time
        if should_stop is not None:
            clock.pause()
            stop = should_stop()
            clock.resume()
            if stop:
                stopped_early = True
                break

    total_seconds = clock.seconds()
    envs.close()
    qnet = qnet.cpu().eval()
    metrics = {**solve_summary(evals, config.solve_return), "total_steps": step, "total_seconds": total_seconds,
               "updates": updates, "episodes": len(history), "stopped_early": stopped_early,
               "train_return_avg100": float(np.mean(history[-100:])) if history else None,
               "evals": [list(e) for e in evals]}
    if config.final_eval_episodes:
        metrics["final100_mean"] = evaluate_agent(qnet, config.final_eval_episodes, seed0=0)["mean_return"]
    return qnet, metrics


def dqn_update(qnet: nn.Module, target: nn.Module, optimizer: torch.optim.Optimizer,
               batch: tuple[torch.Tensor, ...], config: DQNConfig) -> torch.Tensor:
    """One gradient step on the Huber loss between Q(s, a) and the Double DQN target; returns the loss."""
    obs, actions, rewards, next_obs, discounts = batch
    # one forward pass of the online network over both halves: Q(s, .) to learn, Q(s', .) to pick a'
    q_both = qnet(torch.cat((obs, next_obs)))
    q_all, q_next_online = q_both[: len(obs)], q_both[len(obs):].detach()
    with torch.no_grad():
        # Double DQN: the online network picks the next action, the target network values it
        next_actions = q_next_online.argmax(1, keepdim=True)
        next_q = target(next_obs).gather(1, next_actions).squeeze(1)
        td_target = rewards + discounts * next_q
    q = q_all.gather(1, actions.unsqueeze(1)).squeeze(1)
    loss = F.smooth_l1_loss(q, td_target)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.max_grad_norm:
        nn.utils.clip_grad_norm_(qnet.parameters(), config.max_grad_norm)
    optimizer.step()
    return loss.detach()


# ----------------------------------------------------------------------------------------------------------
# Saving and loading, in minilab's model-folder format (weights.safetensors + card.json).


def save_agent(qnet: QNetwork, folder: str | Path, config: DQNConfig, metrics: dict, command: str) -> Path:
    hidden = [layer.out_features for layer in qnet.net if isinstance(layer, nn.Linear)][:-1]
    card = {"name": Path(folder).name, "task": "rl", "architecture": "qnet",
            "arch_config": {"obs_dim": OBS_DIM, "n_actions": len(ACTIONS), "hidden": hidden,
                            "layer_norm": any(isinstance(layer, nn.LayerNorm) for layer in qnet.net)},
            "labels": list(ACTIONS), "preprocessing": {"env": ENV_ID, "obs_dim": OBS_DIM},
            "training_data": f"{metrics.get('total_steps', config.total_steps)} steps of {ENV_ID} experience (gymnasium)",
            "training": asdict(config), "metrics": metrics, "command": command,
            "description": (f"A DQN agent for {ENV_ID}: a Q-network of {len(hidden)} hidden layers ({' and '.join(map(str, hidden))} "
                            "units) that scores pushing the cart left or right.")}
    return save_model(folder, qnet, card)


def load_agent(folder: str | Path) -> tuple[QNetwork, dict]:
    """Load a saved agent; refuse (UserError) any model folder that is not a CartPole Q-network."""
    qnet, card = load_model(folder)
    name = Path(folder).name
    if card["task"] != "rl" or card["architecture"] != "qnet":
        raise UserError(f"{name}: this is a {card['task']!r} model ({card['architecture']}), not a reinforcement-learning agent.")
    if card["preprocessing"].get("env") != ENV_ID or card["arch_config"].get("obs_dim") != OBS_DIM:
        raise UserError(f"{name}: this agent was trained for {card['preprocessing'].get('env')!r}, not {ENV_ID}.")
    return qnet, card
