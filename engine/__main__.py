"""minilab's command line, a second front door onto the same engine functions the UI uses.

    python -m engine train cifar10 --epochs 100 --json
    python -m engine train mnist --json
    python -m engine train glyphs --json          # the drawings backbone, from procedural glyphs (no data needed)
    python -m engine eval image-classification --model cifar10 --data my_images.zip --json
    python -m engine train cartpole --seed 0 --budget-steps 50000 --json
    python -m engine eval cartpole --model cartpole --episodes 100 --json
    python -m engine train sst2 --json
    python -m engine train shakespeare --json
    python -m engine train shakespeare-lstm --json
    python -m engine eval sentiment --model sst2 --data reviews.tsv --json
    python -m engine eval lm --model shakespeare --data input.txt --json
    python -m engine finetune image --data my_classes.zip --time-budget 45 --out my-model --json
    python -m engine finetune text --data reviews.csv --out my-text-model --json
    python -m engine finetune chargpt --data book.txt --time-budget 100 --out my-writer --json
    python -m engine finetune text --data eight_a_label.tsv --out my-few-shot --json   # 32 rows a label or fewer: few-shot
    python -m engine zero-shot --labels "World,Sports,Business,Sci/Tech" --data news.tsv --json
    python -m engine inspect attention --model shakespeare --text "ROMEO: But soft" --json
    python -m engine inspect cells --model shakespeare-lstm --file speech.txt --json
    python -m engine generate --model shakespeare --prompt "ROMEO:" --length 200 --seed 0 --json
    python -m engine finetune chargpt --architecture lstm --data book.txt --time-budget 100 --out my-lstm --json

With --json the last line printed is one JSON object. User mistakes exit with status 2 and a message.
`train` and `finetune` run in this process, or, with MINILAB_RAY_ADDRESS set (ray://HOST:PORT, auto or local),
as a job on that Ray cluster; the model folder comes back here either way, and the JSON says where it ran
("backend", "node").
"""
from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import shlex
import shutil
import socket
import sys
import time
from pathlib import Path

from engine.errors import UserError


def _command_line() -> str:
    return "python -m engine " + " ".join(shlex.quote(arg) for arg in sys.argv[1:])


def _print_progress(event: dict) -> None:
    if event.get("kind") == "epoch":
        val = f"val_acc {event['val_acc']:.4f} " if event.get("val_acc") is not None else ""
        print(f"epoch {event['epoch']}/{event['epochs']} train_loss {event['train_loss']:.4f} "
              f"train_acc {event['train_acc']:.4f} {val}elapsed {event['elapsed']:.0f}s eta {event['eta']:.0f}s",
              file=sys.stderr, flush=True)


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        if not 1 <= threads <= 256:
            raise UserError(f"--threads must be between 1 and 256 (got {threads}).")
        torch.set_num_threads(threads)


def _print_finetune_progress(event: dict) -> None:
    if event.get("kind") == "stage":
        print(event["stage"], file=sys.stderr, flush=True)
    elif event.get("kind") == "epoch":
        shown = " ".join(f"{k} {event[k]:.4f}" for k in ("train_loss", "val_loss", "val_acc", "cv_acc")
                         if isinstance(event.get(k), float))
        print(f"epoch {event.get('epoch')} {shown} elapsed {event.get('elapsed', 0):.0f}s", file=sys.stderr, flush=True)


FINETUNE_OPTIONS = {  # CLI option -> config field, for whichever kinds have it
    "time_budget": "time_budget", "backbone": "backbone", "strategy": "strategy", "epochs": "max_epochs", "lr": "lr",
    "batch_size": "batch_size", "seed": "seed", "val_fraction": "val_fraction", "image_size": "image_size",
    "init": "init", "flip": "flip", "start_weight": "start_weight", "architecture": "architecture",
}


def cmd_finetune(args: argparse.Namespace) -> dict:
    """Train on the user's own data, as the Fine-tune tab does; the JSON names the model folder it wrote."""
    import tempfile
    from pathlib import Path

    from engine.finetune import default_config, run_finetune

    _set_threads(args.threads)
    if args.kind == "text":  # a small file (32 rows a label or fewer) is few-shot: prototypes or SetFit-style tuning
        from engine.text.fewshot import finetune_fewshot_file, wants_fewshot

        if wants_fewshot(args.data, args.strategy):
            return finetune_fewshot_file(args.data[0], args.strategy, args.time_budget, args.seed,
                                         args.out or "minilab-text-model", _print_finetune_progress, _command_line())
    config = default_config(args.kind)
    for option, field_name in FINETUNE_OPTIONS.items():
        value = getattr(args, option, None)
        if value is None:
            continue
        if not hasattr(config, field_name):
            raise UserError(f"--{option.replace('_', '-')} does not apply to finetune {args.kind}.")
        setattr(config, field_name, value)
    config.validate()
    for path in args.data:
        if not Path(path).exists():
            raise UserError(f"{path}: no such file or folder.")
    out = Path(args.out or f"minilab-{args.kind}-model")
    with tempfile.TemporaryDirectory(prefix="minilab-finetune-") as workdir:
        result = run_finetune(args.kind, args.data, config, workdir, out, _print_finetune_progress, command=_command_line())
    summary = {"model": result["folder"], **result["metrics"]}
    if "sample" in result:
        print(result["sample"], file=sys.stderr)
    return summary


def cmd_train(args: argparse.Namespace) -> dict:
    _set_threads(args.threads)
    if args.model in ("cifar10", "mnist", "glyphs"):
        from engine.vision.train import default_config, train_shipped_model

        config = default_config(args.model)
        for name in ("architecture", "epochs", "batch_size", "lr", "weight_decay", "label_smoothing", "seed", "data_dir", "out",
                     "time_budget", "device"):
            value = getattr(args, name)
            if value is not None:
                setattr(config, name, value)
        if config.epochs != int(config.epochs):
            raise UserError(f"--epochs must be a whole number for {args.model} (got {config.epochs}).")
        config.epochs = int(config.epochs)
        if args.widths:
            config.widths = [int(w) for w in args.widths.split(",")]
        if args.blocks:
            config.blocks = [int(b) for b in args.blocks.split(",")]
        if args.cutout is not None:
            config.augment.cutout = args.cutout
        stages = len(config.blocks) + (1 if config.architecture == "resnet9" else 0)
        if len(config.widths) != stages or min(config.widths) < 1 or min(config.blocks) < 0:
            raise UserError(f"{config.architecture} with blocks {config.blocks} needs {stages} positive widths "
                            f"({'the stem, then one per stage' if config.architecture == 'resnet9' else 'one per stage'}); "
                            f"got {config.widths}.")
        if config.epochs < 1 or config.batch_size < 1 or config.lr <= 0:
            raise UserError("epochs and batch size must be at least 1 and the learning rate positive.")
        folder, metrics = train_shipped_model(config, on_progress=_print_progress, command=_command_line())
        metrics.pop("history", None)
        return {"model": str(folder), **metrics}
    if args.model == "cartpole":
        return train_cartpole(args)
    if args.model == "sst2":
        return train_sst2(args)
    if args.model == "shakespeare":
        return train_shakespeare(args)
    if args.model == "shakespeare-lstm":
        return train_shakespeare_lstm(args)
    raise UserError(f"Unknown model to train: {args.model!r}.")


def _print_rl_progress(event: dict) -> None:
    if event.get("kind") == "eval":
        print(f"step {event['step']} greedy eval mean return {event['mean_return']:.1f}", file=sys.stderr, flush=True)


def train_cartpole(args: argparse.Namespace) -> dict:
    from engine.rl.dqn import DQNConfig, save_agent, train_dqn

    config = DQNConfig()
    if args.budget_steps is not None:
        config.total_steps = args.budget_steps
    if args.seed is not None:
        config.seed = args.seed
    if args.lr is not None:
        config.lr = args.lr
    if args.batch_size is not None:
        config.batch_size = args.batch_size
    config.validate()
    if args.threads is None:  # its 2-layer MLP trains faster on one thread (56.7 s against 75.1 s on two)
        _set_threads(1)
    qnet, metrics = train_dqn(config, on_progress=_print_rl_progress)
    metrics.pop("evals", None)
    folder = save_agent(qnet, args.out or "checkpoints/cartpole", config, metrics, _command_line())
    return {"model": str(folder), **metrics}


def _print_text_progress(event: dict) -> None:
    if event.get("kind") == "eval":
        value = " ".join(f"{k} {event[k]:.4f}" for k in ("train_loss", "val_loss", "val_acc") if event.get(k) is not None)
        eta = f" eta {event['eta']:.0f}s" if event.get("eta") is not None else ""
        print(f"{event['fraction']:6.1%} {value} elapsed {event['elapsed']:.0f}s{eta}", file=sys.stderr, flush=True)


def _device(args: argparse.Namespace):
    from engine.device import pick_device, resolve_device

    return resolve_device(args.device) if args.device else pick_device()


def train_sst2(args: argparse.Namespace) -> dict:
    from engine.text.classify import TextTrainConfig
    from engine.text.shipped import train_sst2 as run

    config = TextTrainConfig()
    for name in ("epochs", "batch_size", "lr", "weight_decay", "seed", "time_budget", "lora_r", "train_norms"):
        if getattr(args, name, None) is not None:
            setattr(config, name, getattr(args, name))
    if config.epochs <= 0 or config.batch_size < 1 or config.lr <= 0 or config.lora_r < 1:
        raise UserError("epochs, batch size, learning rate and LoRA rank must be positive.")
    config.lora_alpha = 2 * config.lora_r  # the usual scale: alpha / r = 2
    folder, metrics = run(config, args.data_dir, args.out or "checkpoints/sst2", _print_text_progress, _command_line(), _device(args))
    return {"model": str(folder), **metrics}


def train_shakespeare(args: argparse.Namespace) -> dict:
    from engine.text.chargpt import CharGPTConfig, CharTrainConfig
    from engine.text.shipped import train_shakespeare as run

    model = CharGPTConfig()
    for name in ("n_layer", "n_head", "n_embd", "block_size", "dropout"):
        if getattr(args, name, None) is not None:
            setattr(model, name, getattr(args, name))
    config = CharTrainConfig(model=model)
    for name in ("max_iters", "batch_size", "lr", "weight_decay", "seed", "time_budget"):
        if getattr(args, name, None) is not None:
            setattr(config, name, getattr(args, name))
    if min(model.n_layer, model.n_head, model.n_embd, model.block_size, config.max_iters, config.batch_size) < 1 or config.lr <= 0:
        raise UserError("layers, heads, width, context, iterations, batch size and learning rate must be positive.")
    if model.n_embd % model.n_head or (model.n_embd // model.n_head) % 2:
        raise UserError(f"n_embd ({model.n_embd}) must be a multiple of n_head ({model.n_head}) with an even quotient.")
    if args.lr is not None:
        config.min_lr = config.lr / 10
    folder, metrics = run(config, args.data_dir, args.out or "checkpoints/shakespeare", _print_text_progress,
                          _command_line(), _device(args))
    return {"model": str(folder), **metrics}


def train_shakespeare_lstm(args: argparse.Namespace) -> dict:
    from engine.text.charlstm import CharLSTMConfig, CharLSTMTrainConfig
    from engine.text.shipped import train_shakespeare_lstm as run

    model = CharLSTMConfig()
    for name in ("n_layer", "dropout", "hidden"):
        if getattr(args, name, None) is not None:
            setattr(model, name, getattr(args, name))
    config = CharLSTMTrainConfig(model=model)
    for name in ("max_iters", "batch_size", "lr", "weight_decay", "seed", "time_budget", "seq_len"):
        if getattr(args, name, None) is not None:
            setattr(config, name, getattr(args, name))
    if min(model.n_layer, model.hidden, config.max_iters, config.batch_size, config.seq_len) < 1 or config.lr <= 0:
        raise UserError("layers, cells, iterations, batch size, sequence length and learning rate must be positive.")
    folder, metrics = run(config, args.data_dir, args.out or "checkpoints/shakespeare-lstm", _print_text_progress,
                          _command_line(), _device(args))
    return {"model": str(folder), **metrics}


def cmd_eval(args: argparse.Namespace) -> dict:
    if args.task in ("image-classification", "image"):
        from engine.vision.evaluate import evaluate_class_folders

        if not args.data:
            raise UserError("--data is required: a class-folder dataset (a folder or a zip of one).")

        return evaluate_class_folders(args.model, args.data, batch_size=args.batch_size)
    if args.task == "cartpole":
        from engine.rl.dqn import evaluate_agent

        if args.episodes < 1 or args.episodes > 10_000:
            raise UserError("--episodes must be between 1 and 10,000.")
        qnet = _load_cartpole_agent(args.model)
        result = evaluate_agent(qnet, episodes=args.episodes, seed0=0)
        return {"mean_return": result["mean_return"], "std_return": result["std_return"], "episodes": result["episodes"]}
    if args.task in ("sentiment", "text"):
        from engine.text.evaluate import evaluate_sentiment_file

        if not args.data:
            raise UserError("--data is required: a TSV or CSV file with a header (label, and sentence/text/content).")
        return evaluate_sentiment_file(args.model, args.data)
    if args.task == "lm":
        from engine.text.evaluate import evaluate_lm_file

        if not args.data:
            raise UserError("--data is required: a plain-text file; its last 10% is evaluated.")
        return evaluate_lm_file(args.model, args.data)
    raise UserError(f"Unknown task to evaluate: {args.task!r}.")


def cmd_zero_shot(args: argparse.Namespace) -> dict:
    """Classify with typed label names only; with --json every prediction is in the JSON, else one line each."""
    from engine.text.zeroshot import ZeroShotConfig, classify_file

    _set_threads(args.threads)
    config = ZeroShotConfig(template=args.template or "", multi_label=args.multi_label, threshold=args.threshold,
                            adapt=args.adapt)
    report = classify_file(args.labels, args.data, config, "\n".join(args.description or []) or None)
    if not args.json:
        for row in report.pop("predictions"):
            label = ", ".join(row["label"]) if isinstance(row["label"], list) else row["label"]
            print(f"{label}\t{max(row['probabilities'].values()):.4f}\t{row['text'][:100]}")
    return report


def _load_cartpole_agent(model: str):
    """A registered agent name, an agent folder, or a zip of one."""
    import tempfile
    from pathlib import Path

    from engine.checkpoints import unpack_model_zip
    from engine.rl.dqn import load_agent
    from engine.registry import default_registry

    path = Path(model)
    if path.suffix.lower() == ".zip" and path.is_file():
        path = unpack_model_zip(path, tempfile.mkdtemp(prefix="minilab-agent-"))
    if path.is_dir():
        return load_agent(path)[0]
    entry = default_registry().entry(model)
    if entry.task != "rl":
        raise UserError(f"{model} is a {entry.task} model, not a reinforcement-learning agent.")
    return default_registry().get(model)


def _rounded(array) -> list:
    import numpy as np

    return np.round(np.asarray(array, dtype=np.float64), 4).tolist()


def cmd_inspect(args: argparse.Namespace) -> dict:
    """The Inspect tab's views as JSON: a GPT's attention, or an LSTM's cells with the cells found to track
    something in the text."""
    from engine.text.data import read_text_file
    from engine.text.evaluate import resolve_lm
    from engine.text.inspect import attention, cells, find_cells, text_properties

    _set_threads(args.threads)
    if (args.text is None) == (args.file is None):
        raise UserError("Give the text to inspect with --text TEXT or --file PATH (one of them).")
    text = args.text if args.text is not None else read_text_file(args.file)
    lm = resolve_lm(args.model)  # the view says so (exit 2) when the model is of the wrong kind
    if args.view == "attention":
        view = attention(lm.model, lm.tokenizer, text)
        return {"tokens": view.tokens, "attention": _rounded(view.attention), "top5": view.top5, "unknown": view.unknown,
                "unknown_count": view.unknown_count, "cut": view.cut, "message": view.message}
    view = cells(lm.model, lm.tokenizer, text, args.layer)
    found = find_cells(view.cells, text_properties("".join(view.tokens)), top=args.top)
    return {"tokens": view.tokens, "layer": view.layer, "cells": _rounded(view.cells),
            "found": [{**item, "correlation": round(item["correlation"], 4)} for item in found],
            "saturation": {"gates": list(view.gates), "thresholds": [0.1, 0.9], "layers": _rounded(view.saturation),
                           "per_cell": _rounded(view.saturation_per_cell)},
            "top5": view.top5, "unknown": view.unknown, "unknown_count": view.unknown_count, "cut": view.cut,
            "message": view.message}


def cmd_generate(args: argparse.Namespace) -> dict:
    """Sample from a language model, as the Generate tab does; chars_per_s counts the sampling loop only (from
    the first sampled character on), not loading the model or reading the prompt."""
    from engine.text.evaluate import resolve_lm
    from engine.text.generate import SamplingSettings

    _set_threads(args.threads)
    lm = resolve_lm(args.model)
    settings = SamplingSettings(max_new_tokens=args.length, temperature=args.temperature, top_k=args.top_k,
                                top_p=args.top_p, seed=args.seed).validate()
    pieces, first_at = [], None
    for piece, _ in lm.stream(args.prompt, settings):
        pieces.append(piece)
        if first_at is None:
            first_at = time.perf_counter()  # the prompt is read and the first character drawn: the loop starts
    seconds = time.perf_counter() - first_at if first_at is not None else 0.0
    after_first = sum(len(piece) for piece in pieces[1:])
    return {"text": "".join(pieces), "chars_per_s": round(after_first / seconds, 1) if seconds > 0 else None,
            "model": getattr(lm, "name", args.model)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description="minilab engine: train and evaluate models.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a shipped model: cifar10 and mnist from ../shared/data, glyphs drawn by the engine, cartpole in gymnasium")
    train.add_argument("model", choices=["cifar10", "mnist", "glyphs", "cartpole", "sst2", "shakespeare", "shakespeare-lstm"])
    train.add_argument("--architecture", choices=["resnet9", "resnet"], help="network family (default per model)")
    train.add_argument("--epochs", type=float)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--lr", type=float)
    train.add_argument("--weight-decay", type=float)
    train.add_argument("--widths", help="comma-separated channel widths per stage, e.g. 32,64,128")
    train.add_argument("--blocks", help="comma-separated residual blocks per stage, e.g. 1,1,1")
    train.add_argument("--label-smoothing", type=float)
    train.add_argument("--cutout", type=float, help="cutout square side as a fraction of the image")
    train.add_argument("--seed", type=int)
    train.add_argument("--data-dir", help="folder holding the shared datasets (default ../shared/data)")
    train.add_argument("--out", help="model folder to write (default checkpoints/NAME)")
    train.add_argument("--time-budget", type=float, help="stop training after this many seconds")
    train.add_argument("--device", help="cpu, cuda or mps (default: automatic)")
    train.add_argument("--budget-steps", type=int, help="cartpole: environment steps to train for (default 50,000)")
    train.add_argument("--lora-r", type=int, help="sst2: LoRA rank")
    train.add_argument("--train-norms", action="store_true", default=None, help="sst2: also train the encoder's LayerNorms")
    train.add_argument("--max-iters", type=int, help="shakespeare: optimizer steps")
    train.add_argument("--n-layer", type=int, help="shakespeare: transformer blocks; shakespeare-lstm: LSTM layers")
    train.add_argument("--n-head", type=int, help="shakespeare: attention heads")
    train.add_argument("--n-embd", type=int, help="shakespeare: width")
    train.add_argument("--block-size", type=int, help="shakespeare: context length in characters")
    train.add_argument("--dropout", type=float, help="shakespeare, shakespeare-lstm: dropout")
    train.add_argument("--hidden", type=int, help="shakespeare-lstm: LSTM cells per layer")
    train.add_argument("--seq-len", type=int, help="shakespeare-lstm: characters per step of truncated backpropagation")
    train.add_argument("--threads", type=int, help="CPU threads for PyTorch (default: all cores; cartpole: 1)")
    train.add_argument("--json", action="store_true", help="print one JSON line last")
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser("eval", help="evaluate a model on a dataset")
    evaluate.add_argument("task", choices=["image-classification", "image", "cartpole", "sentiment", "text", "lm"],
                          help="image = image-classification; text = sentiment (any text classifier, labels matched by name)")
    evaluate.add_argument("--model", required=True, help="a registered model name, a model folder or a model zip")
    evaluate.add_argument("--data", help="image-classification: a class-folder dataset (folder or zip); sentiment: a CSV/TSV; lm: a .txt")
    evaluate.add_argument("--episodes", type=int, default=100, help="cartpole: greedy episodes, seeds 0..N-1")
    evaluate.add_argument("--batch-size", type=int, default=64)
    evaluate.add_argument("--json", action="store_true", help="print one JSON line last")
    evaluate.set_defaults(func=cmd_eval)

    finetune = commands.add_parser("finetune", help="train a model on your own data, as the Fine-tune tab does")
    finetune.add_argument("kind", choices=["image", "text", "chargpt"])
    finetune.add_argument("--data", required=True, nargs="+",
                          help="image: a zip or folder of class folders, or images plus one filename,label CSV; "
                               "text: a CSV/TSV with text and label columns; chargpt: a .txt")
    finetune.add_argument("--out", help="model folder to write (default ./minilab-KIND-model)")
    finetune.add_argument("--time-budget", type=float, help="seconds of training (defaults: image 50, text 25, chargpt 100)")
    finetune.add_argument("--backbone", help="image: auto (default), glyphs, cifar10, mnist or scratch; text: auto, sst2 or minilm")
    finetune.add_argument("--strategy", help="image: finetune (default) or probe; text: lora (default) or probe, "
                                             "or for files of 32 rows a label or fewer setfit (default) or prototypes")
    finetune.add_argument("--init", help="chargpt: scratch or shakespeare")
    finetune.add_argument("--architecture", help="chargpt: gpt (default) or lstm, the character model to train")
    finetune.add_argument("--epochs", type=int, help="image: at most this many epochs")
    finetune.add_argument("--lr", type=float)
    finetune.add_argument("--batch-size", type=int)
    finetune.add_argument("--val-fraction", type=float)
    finetune.add_argument("--image-size", type=int, help="image: side in pixels (default: the backbone's)")
    finetune.add_argument("--flip", action="store_true", default=None, help="image: mirror images (photos, not digits)")
    finetune.add_argument("--start-weight", type=float,
                          help="text, sentiment labels: sst2's share, as it started, in the model kept (WiSE-FT; default 0.3, "
                               "0 keeps the fine-tuned weights alone)")
    finetune.add_argument("--seed", type=int)
    finetune.add_argument("--threads", type=int, help="CPU threads for PyTorch (default: all cores)")
    finetune.add_argument("--json", action="store_true", help="print one JSON line last")
    finetune.set_defaults(func=cmd_finetune)

    zero_shot = commands.add_parser("zero-shot", help="classify texts with label names you type (no training data)")
    zero_shot.add_argument("--labels", required=True, help='comma-separated label names, e.g. "World,Sports,Business,Sci/Tech"')
    zero_shot.add_argument("--data", required=True, help="a CSV/TSV with a header and a text column; a label column is scored")
    zero_shot.add_argument("--template", help='the sentence each label goes into (default "This text is about {}.")')
    zero_shot.add_argument("--description", action="append", help='"LABEL: a few words" (repeat for several labels)')
    zero_shot.add_argument("--multi-label", action="store_true", help="score each label alone (a text may get several)")
    zero_shot.add_argument("--threshold", type=float, default=0.5, help="multi-label: the probability that gives a label")
    zero_shot.add_argument("--adapt", choices=["auto", "on", "off"], default="auto",
                           help="a batch calibrates and self-trains (auto: when it has 20 texts or more)")
    zero_shot.add_argument("--threads", type=int, help="CPU threads for PyTorch (default: all cores)")
    zero_shot.add_argument("--json", action="store_true", help="print one JSON line last")
    zero_shot.set_defaults(func=cmd_zero_shot)

    inspect = commands.add_parser("inspect", help="look inside a character model: a GPT's attention or an LSTM's cells")
    inspect.add_argument("view", choices=["attention", "cells"], help="attention: a character GPT; cells: a character LSTM")
    inspect.add_argument("--model", required=True, help="a registered model name, a model folder or a model zip")
    inspect.add_argument("--text", help="the text to inspect (its last block_size characters are shown)")
    inspect.add_argument("--file", help="a plain-text file to inspect, instead of --text")
    inspect.add_argument("--layer", type=int, default=-1, help="cells: the LSTM layer, from 0 (default -1: the last)")
    inspect.add_argument("--top", type=int, default=5, help="cells: the cells found per text property")
    inspect.add_argument("--threads", type=int, help="CPU threads for PyTorch (default: all cores)")
    inspect.add_argument("--json", action="store_true", help="print one JSON line last")
    inspect.set_defaults(func=cmd_inspect)

    generate = commands.add_parser("generate", help="sample text from a language model")
    generate.add_argument("--model", required=True, help="a registered model name, a model folder or a model zip")
    generate.add_argument("--prompt", default="", help="the text to continue (default: none)")
    generate.add_argument("--length", type=int, default=300, help="characters (or tokens, for a hub model) to sample")
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--temperature", type=float, default=0.8)
    generate.add_argument("--top-k", type=int, default=0, help="sample among the k most likely only (0: off)")
    generate.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (1: off)")
    generate.add_argument("--threads", type=int, help="CPU threads for PyTorch (default: all cores)")
    generate.add_argument("--json", action="store_true", help="print one JSON line last")
    generate.set_defaults(func=cmd_generate)
    return parser


def default_out(args: argparse.Namespace) -> str:
    if args.command == "train":
        return "checkpoints/" + args.model
    return f"minilab-{args.kind}-model"


def _cli_in_job(argv: list[str], out_name: str, ctx) -> dict:
    """The same command, run as a job on a cluster node: the model is written in the job's folder, which the Ray
    backend brings back to the machine that asked."""
    args = build_parser().parse_args(argv + ["--out", str(ctx.workdir / out_name)])
    if args.command == "finetune":
        args.data = [str(ctx.input_path(path)) for path in args.data]
    return args.func(args)


def run_on_cluster(args: argparse.Namespace, argv: list[str]) -> dict:
    """train/finetune as a Ray job (engine.ray_jobs): the same code, on whichever node has room; Ctrl-C cancels it
    and keeps the best model so far. Datasets named by --data-dir must be at the same path on the nodes; --data
    files are sent along."""
    from engine.device import DEFAULT_THREADS
    from engine.jobs import JobRunner

    inputs = []
    if args.command == "finetune":
        for path in args.data:
            if not Path(path).is_file():
                raise UserError(f"{path}: no such file (on a cluster, --data must name files, not folders).")
        inputs = [str(Path(path).resolve()) for path in args.data]
    argv = list(argv)
    for flag in ("--data-dir", "--out"):  # absolute paths mean the same on every node; --out is chosen by the job
        while flag in argv:
            at = argv.index(flag)
            del argv[at:at + 2]
    if getattr(args, "data_dir", None):
        argv += ["--data-dir", str(Path(args.data_dir).resolve())]
    if args.command == "finetune":
        at = argv.index("--data")
        argv[at + 1:at + 1 + len(args.data)] = inputs
    out = Path(args.out or default_out(args))
    # Pickled by reference, the function must belong to an importable module: under `python -m engine` this file is
    # `__main__`, which a Ray worker cannot import, so take the copy imported under its own name.
    in_job = importlib.import_module("engine.__main__")._cli_in_job
    runner = JobRunner(backend="ray", threads=args.threads or DEFAULT_THREADS, time_limit_s=None)
    try:
        job_id = runner.submit("cli", functools.partial(in_job, argv, out.name), name=f"cli-{args.command}",
                               inputs=inputs)
        try:
            status = runner.wait(job_id, "cli")
        except KeyboardInterrupt:
            print("cancelling: the job stops at its next step and keeps its best model so far", file=sys.stderr)
            runner.cancel(job_id, "cli")
            status = runner.wait(job_id, "cli")
        result = status.result
        if status.state == "failed" or not isinstance(result, dict) or not result.get("model"):
            raise UserError(f"The job on the cluster ended {status.state}: {status.reason or 'it made no model'}.")
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(result["model"], out)
        return {**result, "model": str(out), "backend": "ray", "node": status.node, "state": status.state}
    finally:
        runner.shutdown()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    try:
        if args.command in ("train", "finetune") and os.environ.get("MINILAB_RAY_ADDRESS", "").strip():
            result = run_on_cluster(args, argv)
        else:
            result = args.func(args)
            if args.command in ("train", "finetune"):
                result.update(backend="local", node=socket.gethostname())
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        if getattr(args, "json", False):
            print(json.dumps({"error": str(error)}))
        return 2
    result.setdefault("seconds", round(time.perf_counter() - started, 2))
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
