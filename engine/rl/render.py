"""CartPole episodes as pictures and videos, headless: frames are drawn with PIL from the state vector
(no display, no OpenGL), and written to MP4 (H.264) by the ffmpeg binary that the imageio-ffmpeg wheel
carries. Each frame has an overlay: step, action, the two Q-values as bars, and the running return.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import gymnasium as gym
import numpy as np
from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT = 480, 320  # multiples of 16, as H.264 encoders like
STEP_SECONDS = 0.02  # CartPole advances 0.02 s a step
FRAME_EVERY = 2  # draw every other step at 25 frames a second: still real time, half the encoding work
FPS = round(1 / (STEP_SECONDS * FRAME_EVERY))
X_LIMIT = 2.4  # the episode ends when the cart leaves [-2.4, 2.4]
ACTIONS = ["push left", "push right"]

# policy(observation) -> (action, Q-values or None)
Policy = Callable[[np.ndarray], tuple[int, np.ndarray | None]]


@dataclass
class Episode:
    seed: int
    label: str
    observations: list[np.ndarray] = field(default_factory=list)  # the state before each action, then the last one
    actions: list[int] = field(default_factory=list)
    q_values: list[np.ndarray | None] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    terminated: bool = False  # the pole fell or the cart left the track (vs. surviving all 500 steps)

    @property
    def episode_return(self) -> float:
        return float(sum(self.rewards))


def play_episode(policy: Policy, seed: int, label: str = "agent", max_steps: int = 500) -> Episode:
    """One episode of CartPole-v1 from env.reset(seed=seed), recording what the video needs."""
    env = gym.make("CartPole-v1", max_episode_steps=max_steps)
    observation, _ = env.reset(seed=seed)
    episode = Episode(seed=seed, label=label, observations=[observation])
    while True:
        action, q = policy(observation)
        observation, reward, terminated, truncated, _ = env.step(int(action))
        episode.actions.append(int(action))
        episode.q_values.append(None if q is None else np.asarray(q, dtype=np.float32))
        episode.rewards.append(float(reward))
        episode.observations.append(observation)
        if terminated or truncated:
            episode.terminated = bool(terminated)
            break
    env.close()
    return episode


def random_policy(seed: int) -> Policy:
    rng = np.random.default_rng(seed)
    return lambda observation: (int(rng.integers(2)), None)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def draw_frame(episode: Episode, t: int, width: int = WIDTH, height: int = HEIGHT) -> Image.Image:
    """The state after t steps (t = 0 is the start), with the overlay of the action taken there."""
    x, _, theta, _ = episode.observations[t]
    image = Image.new("RGB", (width, height), (250, 250, 247))
    draw = ImageDraw.Draw(image)
    scale = width / (2 * X_LIMIT * 1.1)
    track_y = int(height * 0.72)
    draw.line([(0, track_y), (width, track_y)], fill=(60, 60, 60), width=2)
    for limit in (-X_LIMIT, X_LIMIT):  # the edges of the track
        edge = width / 2 + limit * scale
        draw.line([(edge, track_y - 8), (edge, track_y + 8)], fill=(200, 60, 60), width=3)
    cart_x = width / 2 + float(x) * scale
    cart_w, cart_h = 50, 28
    draw.rectangle([cart_x - cart_w / 2, track_y - cart_h / 2, cart_x + cart_w / 2, track_y + cart_h / 2], fill=(40, 40, 40))
    pole_len, half_w = scale * 1.0, 4.5  # the pole is 1.0 long (twice the half-length 0.5)
    pivot = np.array([cart_x, track_y - cart_h / 4])
    along = np.array([np.sin(theta), -np.cos(theta)]) * pole_len
    across = np.array([np.cos(theta), np.sin(theta)]) * half_w
    corners = [pivot - across, pivot + across, pivot + along + across, pivot + along - across]
    fell = episode.terminated and t == len(episode.actions)
    draw.polygon([tuple(map(float, c)) for c in corners], fill=(220, 80, 40) if fell else (200, 150, 80))
    draw.ellipse([cart_x - 5, track_y - cart_h / 4 - 5, cart_x + 5, track_y - cart_h / 4 + 5], fill=(90, 90, 200))

    # Overlay: what the agent saw and did at this step.
    small, big = _font(14), _font(17)
    draw.text((10, 8), f"{episode.label}  ·  seed {episode.seed}", fill=(20, 20, 20), font=big)
    running = sum(episode.rewards[:t])
    draw.text((10, 30), f"step {t}   return {running:.0f}", fill=(20, 20, 20), font=small)
    if t < len(episode.actions):
        action = episode.actions[t]
        arrow_x = cart_x + (1 if action == 1 else -1) * (cart_w / 2 + 18)
        draw.polygon([(arrow_x + (8 if action == 1 else -8), track_y), (arrow_x, track_y - 7), (arrow_x, track_y + 7)], fill=(30, 130, 60))
        draw.text((10, 48), f"action: {ACTIONS[action]}", fill=(30, 130, 60), font=small)
        q = episode.q_values[t]
        if q is not None:
            low, high = float(min(q.min(), 0.0)), float(max(q.max(), 1e-6))
            for index, value in enumerate(q):
                top = 70 + index * 20
                length = 120 * (float(value) - low) / (high - low)
                colour = (30, 130, 60) if index == action else (150, 150, 150)
                draw.rectangle([110, top, 110 + length, top + 14], fill=colour)
                draw.text((10, top), f"Q({ACTIONS[index].split()[1]}) {value:6.1f}", fill=(20, 20, 20), font=small)
    elif episode.terminated:
        draw.text((10, 48), "the pole fell: episode over", fill=(200, 60, 60), font=small)
    else:
        draw.text((10, 48), f"survived all {t} steps", fill=(30, 130, 60), font=small)
    return image


def write_video(frames: list[Image.Image], path: str | Path, fps: int = FPS) -> Path:
    """H.264 MP4 that browsers play; ffmpeg comes inside the imageio-ffmpeg wheel."""
    import imageio.v2 as imageio

    path = Path(path)
    with imageio.get_writer(path, fps=fps, codec="libx264", pixelformat="yuv420p", macro_block_size=16,
                            ffmpeg_log_level="error", output_params=["-preset", "ultrafast", "-movflags", "+faststart"]) as writer:
        for frame in frames:
            writer.append_data(np.asarray(frame))
    return path


def episodes_video(episodes: list[Episode], path: str | Path, fps: int = FPS) -> Path:
    """Several episodes side by side (e.g. the trained agent beside a random one). An episode that ended
    early stays on its last frame, so the contrast is visible for the whole video."""
    length = max(len(e.actions) for e in episodes) + 1
    frames = []
    for t in list(range(0, length, FRAME_EVERY)) + ([length - 1] if (length - 1) % FRAME_EVERY else []):
        tiles = [draw_frame(e, min(t, len(e.actions))) for e in episodes]
        canvas = Image.new("RGB", (WIDTH * len(tiles), HEIGHT))
        for index, tile in enumerate(tiles):
            canvas.paste(tile, (index * WIDTH, 0))
        frames.append(canvas)
    return write_video(frames, path, fps)
