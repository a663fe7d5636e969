"""A model folder is `weights.safetensors` + `card.json` (+ extra files such as a tokenizer).

The card says everything needed to rebuild and trust the model: architecture and its config, labels,
preprocessing, training data, metrics and the command that reproduces it. Loading validates the card and
the weights against it and refuses anything else. Weights are never pickled.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from engine.errors import UserError
from engine.uploads import copy_zip_member

CARD_FORMAT = "minilab-model/1"
WEIGHTS_FILE = "weights.safetensors"
CARD_FILE = "card.json"
REQUIRED_KEYS = ("format", "name", "task", "architecture", "arch_config", "labels", "preprocessing")
TASKS = ("image-classification", "image-backbone", "sentiment", "lm", "text-classification", "rl")
MAX_MODEL_ZIP_BYTES = 200 * 2**20

# name -> function(arch_config) -> nn.Module; filled by engine.architectures so that this file stays generic.
ARCHITECTURES: dict[str, Callable[[dict], nn.Module]] = {}


def register_architecture(name: str):
    def wrap(builder: Callable[[dict], nn.Module]):
        ARCHITECTURES[name] = builder
        return builder

    return wrap


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def load_own_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load what `model.saved_state()` wrote, no more and no less (the rest of the model is shared or tied)."""
    expected = set(model.saved_state())
    if set(state) != expected:
        missing, extra = sorted(expected - set(state))[:3], sorted(set(state) - expected)[:3]
        raise RuntimeError(f"the saved weights do not match: missing {missing}, unexpected {extra}")
    model.load_state_dict(state, strict=False)


def save_model(folder: str | Path, model: nn.Module, card: dict) -> Path:
    """Write weights and card atomically: into a temporary folder first, then renamed into place,
    so a crash never leaves a half-written model folder behind."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    card = {"format": CARD_FORMAT, **card}
    card.setdefault("parameters", count_parameters(model))
    if hasattr(model, "saved_state"):
        card.setdefault("saved_parameters", sum(t.numel() for t in model.saved_state().values()))
    card.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    missing = [key for key in REQUIRED_KEYS if key not in card]
    if missing:
        raise ValueError(f"card is missing {missing}")
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        # a model built on shared frozen weights (LoRA adapters on a packaged encoder) saves only its own part
        weights = model.saved_state() if hasattr(model, "saved_state") else model.state_dict()
        state = {name: tensor.detach().to("cpu").contiguous() for name, tensor in weights.items()}
        save_file(state, staging / WEIGHTS_FILE, metadata={"format": CARD_FORMAT})
        (staging / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old.{os.getpid()}")
            folder.rename(old)
            staging.rename(folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def read_card(folder: str | Path) -> dict:
    """Read and check card.json; raise UserError naming what is wrong."""
    import engine.architectures  # noqa: F401  (fills ARCHITECTURES; imported here to avoid a cycle)

    folder = Path(folder)
    card_path = folder / CARD_FILE
    if not card_path.is_file():
        raise UserError(f"{folder.name}: not a minilab model folder (no {CARD_FILE}).")
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{folder.name}: {CARD_FILE} is not valid JSON ({error}).") from error
    if not isinstance(card, dict):
        raise UserError(f"{folder.name}: {CARD_FILE} must hold a JSON object.")
    missing = [key for key in REQUIRED_KEYS if key not in card]
    if missing:
        raise UserError(f"{folder.name}: the model card lacks {', '.join(missing)}.")
    if card["format"] != CARD_FORMAT:
        raise UserError(f"{folder.name}: unknown model format {card['format']!r} (expected {CARD_FORMAT}).")
    if card["task"] not in TASKS:
        raise UserError(f"{folder.name}: unknown task {card['task']!r}.")
    if card["architecture"] not in ARCHITECTURES:
        known = ", ".join(sorted(ARCHITECTURES))
        raise UserError(f"{folder.name}: unknown architecture {card['architecture']!r} (known: {known}).")
    if not isinstance(card["arch_config"], dict) or not isinstance(card["preprocessing"], dict):
        raise UserError(f"{folder.name}: arch_config and preprocessing must be JSON objects.")
    labels = card["labels"]
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise UserError(f"{folder.name}: labels must be a list of strings.")
    return card


def load_model(folder: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the card's architecture and load its safetensors weights, strictly."""
    import engine.architectures  # noqa: F401  (fills ARCHITECTURES)

    folder = Path(folder)
    card = read_card(folder)
    weights_path = folder / WEIGHTS_FILE
    if not weights_path.is_file():
        raise UserError(f"{folder.name}: no {WEIGHTS_FILE} beside the card.")
    try:
        state = load_file(weights_path, device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise UserError(f"{folder.name}: {WEIGHTS_FILE} is not a readable safetensors file ({error}).") from error
    try:
        model = ARCHITECTURES[card["architecture"]](card["arch_config"])
    except (TypeError, ValueError, KeyError) as error:
        raise UserError(f"{folder.name}: the card's arch_config does not build a model ({error}).") from error
    try:
        if hasattr(model, "load_saved_state"):
            model.load_saved_state(state)
        else:
            model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first_line = str(error).splitlines()[0]
        raise UserError(f"{folder.name}: the weights do not match the card's architecture ({first_line}).") from error
    return model.to(device).eval(), card


def unpack_model_zip(zip_path: str | Path, into: str | Path) -> Path:
    """Extract a downloaded model zip (card + weights, optionally inside one folder) safely and
    return the folder that holds card.json. Nothing is written outside `into`."""
    into = Path(into)
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as error:
        raise UserError(f"{Path(zip_path).name}: not a readable zip file.") from error
    with archive:
        infos = [info for info in archive.infolist() if not info.is_dir()]
        if sum(info.file_size for info in infos) > MAX_MODEL_ZIP_BYTES:
            raise UserError(f"{Path(zip_path).name}: the model zip unpacks to more than {MAX_MODEL_ZIP_BYTES >> 20} MB.")
        cards = [info for info in infos if Path(info.filename).name == CARD_FILE and "__MACOSX" not in info.filename]
        if len(cards) != 1:
            raise UserError(f"{Path(zip_path).name}: expected exactly one {CARD_FILE} in the zip, found {len(cards)}.")
        prefix = cards[0].filename[: -len(CARD_FILE)]
        root = into / "model"
        root.mkdir(parents=True, exist_ok=True)
        for info in infos:
            if not info.filename.startswith(prefix):
                continue
            relative = Path(info.filename[len(prefix):])
            if relative.is_absolute() or ".." in relative.parts or not relative.parts:
                raise UserError(f"{Path(zip_path).name}: unsafe path {info.filename!r} in the zip.")
            copy_zip_member(archive, info, root / relative, Path(zip_path).name, MAX_MODEL_ZIP_BYTES)
    return root


def zip_model_folder(folder: str | Path, zip_path: str | Path) -> Path:
    """Pack a model folder for download; the zip loads again through unpack_model_zip."""
    folder, zip_path = Path(folder), Path(zip_path)
    partial = zip_path.with_name(zip_path.name + ".partial")  # renamed when complete: never a half-written zip
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, Path(folder.name) / path.relative_to(folder))
    partial.replace(zip_path)
    return zip_path
