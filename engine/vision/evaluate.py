"""Accuracy of an image classifier on a class-folder dataset (a folder, or a zip of one).

Folder names are matched to the model's labels loosely (case, spaces, '-' and '_' do not matter), so
`Airplane/` and `airplane/` both count; a folder that matches no label is refused by name.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from engine.errors import UserError
from engine.registry import resolve_image_classifier
from engine.uploads import read_class_folders


def label_key(label: str) -> str:
    return "".join(ch for ch in label.lower() if ch.isalnum())


def match_labels(folder_names: list[str], model_labels: list[str]) -> dict[str, str]:
    by_key = {label_key(label): label for label in model_labels}
    mapping, unknown = {}, []
    for name in folder_names:
        if label_key(name) in by_key:
            mapping[name] = by_key[label_key(name)]
        else:
            unknown.append(name)
    if unknown:
        shown = ", ".join(model_labels[:20]) + (" ..." if len(model_labels) > 20 else "")
        raise UserError(f"Class folder(s) {', '.join(sorted(unknown))} match none of the model's labels ({shown}).")
    return mapping


def evaluate_class_folders(model: str, data: str | Path, batch_size: int = 64) -> dict:
    with tempfile.TemporaryDirectory(prefix="minilab-eval-") as workdir:
        classifier = resolve_image_classifier(model, workdir=Path(workdir) / "model")
        dataset = read_class_folders(data, workdir=workdir)
        mapping = match_labels(dataset.classes, classifier.labels)
        rows = classifier.classify_many([str(f) for f in dataset.files], [str(f) for f in dataset.files],
                                        top_k=1, batch_size=batch_size)
        truth = {str(f): mapping[label] for f, label in zip(dataset.files, dataset.labels)}
        scored = [row for row in rows if not row["error"]]
        unreadable = [(Path(row["file"]).name, row["error"]) for row in rows if row["error"]]
        if not scored:
            raise UserError("None of the images could be read.")
        per_class: dict[str, list[int]] = {}
        for row in scored:
            hit = int(row["label"] == truth[row["file"]])
            per_class.setdefault(truth[row["file"]], []).append(hit)
        correct = sum(sum(hits) for hits in per_class.values())
        return {
            "accuracy": correct / len(scored),
            "n": len(scored),
            "per_class_accuracy": {label: sum(h) / len(h) for label, h in sorted(per_class.items())},
            "skipped": len(dataset.skipped) + len(unreadable),
            "model": classifier.name,
        }
