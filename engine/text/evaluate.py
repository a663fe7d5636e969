"""`python -m engine eval sentiment|lm`: score a text model on a user's file.

--model is a registered name (sst2, shakespeare, a hub id), a model folder, or a model zip.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

from engine.errors import UserError


def _model_folder(model: str) -> Path | None:
    """A model folder from a path or a zip; None when `model` is a registered name."""
    path = Path(model)
    if path.suffix.lower() == ".zip" and path.is_file():
        from engine.checkpoints import unpack_model_zip

        return unpack_model_zip(path, tempfile.mkdtemp(prefix="minilab-model-"))
    if path.is_dir() and (path / "card.json").is_file():
        return path
    return None


def _resolve(model: str, session: str | None, accepts: Callable[[object], bool], what: str):
    """A registered name, a model folder or a model zip -> the loaded model, if it is `what` we need."""
    from engine.checkpoints import read_card
    from engine.registry import default_registry, load_model_folder

    folder = _model_folder(model)
    loaded = load_model_folder(folder, read_card(folder)["task"], folder.name) if folder else default_registry().get(model, session)
    if not accepts(loaded):
        raise UserError(f"{model} is not {what}.")
    return loaded


def resolve_text_classifier(model: str, session: str | None = None):
    from engine.text.classify import TextPredictor

    return _resolve(model, session, lambda m: isinstance(m, TextPredictor), "a text classifier")


def resolve_lm(model: str, session: str | None = None):
    return _resolve(model, session, lambda m: hasattr(m, "stream") and hasattr(m, "evaluate"), "a language model")


def match_labels(file_labels: list[str], model_labels: list[str]) -> list[str]:
    """Map the file's label names onto the model's (case-insensitive; 0/1 for two-class models)."""
    lowered = {name.lower(): name for name in model_labels}
    matched = []
    for label in file_labels:
        key = label.strip().lower()
        if key in lowered:
            matched.append(lowered[key])
        elif key.isdigit() and int(key) < len(model_labels):
            matched.append(model_labels[int(key)])
        else:
            raise UserError(f"The file's label {label!r} is not one of the model's labels ({', '.join(model_labels)}).")
    return matched


def evaluate_sentiment_file(model: str, data: str) -> dict:
    from engine.text.classify import evaluate_predictor
    from engine.text.data import read_labelled_text

    predictor = resolve_text_classifier(model)
    two_class = set(predictor.labels) == {"negative", "positive"}
    table = read_labelled_text(data, sentiment=two_class)
    labels = match_labels(table.labels, predictor.labels)
    result = evaluate_predictor(predictor, table.texts, labels)
    return {"per_class_accuracy": {k: round(v, 4) for k, v in result["per_class_accuracy"].items()},
            "skipped_rows": len(table.skipped), "accuracy": round(result["accuracy"], 4), "n": result["n"]}


def evaluate_lm_file(model: str, data: str) -> dict:
    from engine.text.data import read_text_file

    lm = resolve_lm(model)
    text = read_text_file(data)
    cut = int(len(text) * 0.9)
    held_out = text[cut:]
    if len(held_out) < 2:
        raise UserError(f"{Path(data).name}: too short; its last 10% must hold at least 2 characters.")
    result = lm.evaluate(held_out)
    return {"unknown_chars": result.get("unknown_chars", 0), "val_loss": round(result["val_loss"], 4), "n_chars": result["n_chars"]}
