"""The recipes behind the shipped text models, `sst2`, `shakespeare` and `shakespeare-lstm`, run by `python -m engine train`.

Both read ../shared/data (or --data-dir) and write a model folder whose card holds the command and metrics.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from engine.vision.data import find_data_file


def train_sst2(config, data_dir: str | Path | None = None, out: str | Path = "checkpoints/sst2",
               on_progress: Callable[[dict], None] | None = None, command: str | None = None,
               device: torch.device | str = "cpu") -> tuple[Path, dict]:
    """LoRA fine-tune of MiniLM on SST-2's 67,349 training sentences, validated on its 872 dev sentences."""
    from engine.text.classify import save_text_classifier, train_text_classifier
    from engine.text.data import read_labelled_text

    train = read_labelled_text(find_data_file("sst2/train.tsv", data_dir), sentiment=True)
    dev = read_labelled_text(find_data_file("sst2/dev.tsv", data_dir), sentiment=True)
    model, labels, metrics = train_text_classifier(train.texts, train.labels, dev.texts, dev.labels, config,
                                                   on_progress=on_progress, device=device)
    folder = save_text_classifier(model, labels, out, "sst2", "sentiment", metrics, asdict(config),
                                  "GLUE SST-2 train.tsv (67,349 sentences); validation: SST-2 dev.tsv (872)", command)
    metrics.pop("history", None)
    return folder, metrics


def train_shakespeare(config, data_dir: str | Path | None = None, out: str | Path = "checkpoints/shakespeare",
                      on_progress: Callable[[dict], None] | None = None, command: str | None = None,
                      device: torch.device | str = "cpu") -> tuple[Path, dict]:
    """A character-level GPT on the first 90% of Tiny Shakespeare, validated on the last 10%."""
    from engine.text.chargpt import save_chargpt, train_chargpt
    from engine.text.data import read_text_file

    text = read_text_file(find_data_file("tinyshakespeare/input.txt", data_dir))
    model, tokenizer, metrics = train_chargpt(text, config, on_progress=on_progress, device=device)
    training = asdict(config)
    folder = save_chargpt(model, tokenizer, out, "shakespeare", metrics, training,
                          "Tiny Shakespeare input.txt: first 90% for training, last 10% for validation", command)
    metrics.pop("history", None)
    return folder, metrics


def train_shakespeare_lstm(config, data_dir: str | Path | None = None, out: str | Path = "checkpoints/shakespeare-lstm",
                           on_progress: Callable[[dict], None] | None = None, command: str | None = None,
                           device: torch.device | str = "cpu") -> tuple[Path, dict]:
    """A character-level LSTM on the same first 90% of Tiny Shakespeare as the GPT, validated on the same last 10%."""
    from engine.text.charlstm import save_charlstm, train_charlstm
    from engine.text.data import read_text_file

    text = read_text_file(find_data_file("tinyshakespeare/input.txt", data_dir))
    model, tokenizer, metrics = train_charlstm(text, config, on_progress=on_progress, device=device)
    folder = save_charlstm(model, tokenizer, out, "shakespeare-lstm", metrics, asdict(config),
                           "Tiny Shakespeare input.txt: first 90% for training, last 10% for validation", command)
    metrics.pop("history", None)
    return folder, metrics
