"""minilab's engine: devices, checkpoints, the model registry, training and inference.

Plain PyTorch and Python; nothing here imports Gradio, so every feature can be driven by tests and the CLI.
"""
from engine.errors import UserError

__all__ = ["UserError"]
