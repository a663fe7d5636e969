"""minilab's command line, a second front door onto the same engine functions the UI uses.

    python -m engine train cifar10 --epochs 100 --json
    python -m engine train mnist --json
    python -m engine eval image-classification --model cifar10 --data my_images.zip --json

With --json the last line printed is one JSON object. User mistakes exit with status 2 and a message.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time

from engine.errors import UserError


def _command_line() -> str:
    return "python -m engine " + " ".join(shlex.quote(arg) for arg in sys.argv[1:])


def _print_progress(event: dict) -> None:
    if event.get("kind") == "epoch":
        val = f"val_acc {event['val_acc']:.4f} " if event.get("val_acc") is not None else ""
        print(f"epoch {event['epoch']}/{event['epochs']} train_loss {event['train_loss']:.4f} "
              f"train_acc {event['train_acc']:.4f} {val}elapsed {event['elapsed']:.0f}s eta {event['eta']:.0f}s",
              file=sys.stderr, flush=True)


def cmd_train(args: argparse.Namespace) -> dict:
    if args.model in ("cifar10", "mnist"):
        from engine.vision.train import default_config, train_shipped_model

        config = default_config(args.model)
        for name in ("architecture", "epochs", "batch_size", "lr", "weight_decay", "label_smoothing", "seed", "data_dir", "out",
                     "time_budget", "device"):
            value = getattr(args, name)
            if value is not None:
                setattr(config, name, value)
        if args.widths:
            config.widths = [int(w) for w in args.widths.split(",")]
        if args.blocks:
            config.blocks = [int(b) for b in args.blocks.split(",")]
        if args.cutout is not None:
            config.augment.cutout = args.cutout
        if config.epochs < 1 or config.batch_size < 1 or config.lr <= 0:
            raise UserError("epochs and batch size must be at least 1 and the learning rate positive.")
        folder, metrics = train_shipped_model(config, on_progress=_print_progress, command=_command_line())
        metrics.pop("history", None)
        return {"model": str(folder), **metrics}
    raise UserError(f"Unknown model to train: {args.model!r}.")


def cmd_eval(args: argparse.Namespace) -> dict:
    if args.task == "image-classification":
        from engine.vision.evaluate import evaluate_class_folders

        return evaluate_class_folders(args.model, args.data, batch_size=args.batch_size)
    raise UserError(f"Unknown task to evaluate: {args.task!r}.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description="minilab engine: train and evaluate models.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a shipped model from ../shared/data")
    train.add_argument("model", choices=["cifar10", "mnist"])
    train.add_argument("--architecture", choices=["resnet9", "resnet"], help="network family (default per model)")
    train.add_argument("--epochs", type=int)
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
    train.add_argument("--json", action="store_true", help="print one JSON line last")
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser("eval", help="evaluate a model on a dataset")
    evaluate.add_argument("task", choices=["image-classification"])
    evaluate.add_argument("--model", required=True, help="a registered model name, a model folder or a model zip")
    evaluate.add_argument("--data", required=True, help="a class-folder dataset: a folder or a zip of one")
    evaluate.add_argument("--batch-size", type=int, default=64)
    evaluate.add_argument("--json", action="store_true", help="print one JSON line last")
    evaluate.set_defaults(func=cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    try:
        result = args.func(args)
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
