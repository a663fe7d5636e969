"""A fair race: a character LSTM and a character GPT trained from scratch on the same text, for the same wall-clock
budget on the same threads, one after the other (so neither takes cores from the other). Prints one JSON line with
each model's validation loss against time and its parameter count.

    python benchmarks/lstm_vs_gpt.py --seconds 600 --threads 2 --json
    python benchmarks/lstm_vs_gpt.py --seconds 120 --sizes small,shipped --json     # loss against parameters
    python benchmarks/lstm_vs_gpt.py --seconds 600 --write-cards                     # keep the curves in the cards
    python benchmarks/lstm_vs_gpt.py --seconds 600 --plot docs/race.png               # and draw them

The text is the first 90% of Tiny Shakespeare for training and the last 10% for validation (../shared/data), or
any --data file. The final figure of each run reads the whole validation text (chargpt.evaluate_text and
charlstm.evaluate_text: every character scored once, with context), the curve points are estimates on a few
random validation windows, as the training loops report them.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from engine.text import chargpt, charlstm  # noqa: E402

# The shipped models' shapes and training settings, and a smaller pair, for loss against parameter count.
SIZES = {
    "shipped": {"gpt": dict(n_layer=4, n_head=4, n_embd=256, block_size=128), "lstm": dict(n_layer=2, hidden=512)},
    "small": {"gpt": dict(n_layer=3, n_head=4, n_embd=128, block_size=96), "lstm": dict(n_layer=2, hidden=256)},
}


def race_one(kind: str, shape: dict, text: str, seconds: float, seed: int) -> dict:
    """Train one model for `seconds`; its curve (seconds, estimated validation loss) and final validation loss."""
    if kind == "gpt":
        config = chargpt.CharTrainConfig(model=chargpt.CharGPTConfig(**shape), max_iters=10**9, time_budget=seconds,
                                         eval_every=100, seed=seed)
        model, _, metrics = chargpt.train_chargpt(text, config)
    else:
        config = charlstm.CharLSTMTrainConfig(model=charlstm.CharLSTMConfig(**shape), max_iters=10**9, time_budget=seconds,
                                              batch_size=32, seq_len=128, lr=2e-3, eval_every=100, seed=seed)
        model, _, metrics = charlstm.train_charlstm(text, config)
    return {"parameters": sum(p.numel() for p in model.parameters()), "shape": shape, "iters": metrics["iters"],
            "final_val_loss": metrics["val_loss"],
            "curve": [[round(h["elapsed"], 1), round(h["val_loss"], 4)] for h in metrics["history"]]}


def write_cards(results: dict, settings: dict) -> None:
    """Keep the shipped-size race in the shipped models' cards, where the Text tab draws it."""
    for kind, folder in (("gpt", "shakespeare"), ("lstm", "shakespeare-lstm")):
        card_path = ROOT / "checkpoints" / folder / "card.json"
        if not card_path.is_file():
            print(f"{card_path} is missing: not written", file=sys.stderr)
            continue
        card = json.loads(card_path.read_text())
        card["race"] = {**settings, **results["shipped"][kind]}
        card_path.write_text(json.dumps(card, indent=2) + "\n")


def plot(results: dict, settings: dict, path: str) -> None:
    """Validation loss against time for every model raced, and final loss against parameter count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (by_time, by_size) = plt.subplots(1, 2, figsize=(10, 3.8))
    for size, pair in results.items():
        for kind, run in pair.items():
            seconds, losses = zip(*run["curve"])
            label = f"{kind.upper()} {size} ({run['parameters'] / 1e6:.1f}M)"
            line = by_time.plot(seconds, losses, label=label, linestyle="-" if size == "shipped" else "--")[0]
            by_size.scatter([run["parameters"] / 1e6], [run["final_val_loss"]], color=line.get_color(), label=label)
    by_time.set_xlabel(f"seconds of training ({settings['threads']} CPU threads)")
    by_time.set_ylabel("validation loss (nats/char)")
    by_time.set_ylim(top=min(3.0, by_time.get_ylim()[1]))
    by_time.legend(fontsize=8)
    by_size.set_xlabel("parameters (millions)")
    by_size.margins(x=0.3, y=0.3)
    by_size.set_ylabel("final validation loss (nats/char)")
    by_size.set_title(f"after {settings['seconds']:.0f} s each", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"))
    parser.add_argument("--seconds", type=float, default=600.0, help="training time of each model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sizes", default="shipped", help=f"comma-separated, of {', '.join(SIZES)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write-cards", action="store_true", help="store the shipped-size curves in the shipped cards")
    parser.add_argument("--plot", help="also draw the curves into this PNG file")
    parser.add_argument("--json", action="store_true", help="(the output is always one JSON line)")
    args = parser.parse_args()
    if not Path(args.data).is_file():
        sys.exit(f"error: {args.data} not found (Tiny Shakespeare is in ../shared/data; or pass --data FILE)")
    torch.set_num_threads(args.threads)
    text = Path(args.data).read_text(encoding="utf-8")
    results, started = {}, time.perf_counter()
    for size in args.sizes.split(","):
        results[size] = {}
        for kind in ("lstm", "gpt"):
            results[size][kind] = race_one(kind, SIZES[size][kind], text, args.seconds, args.seed)
            print(f"{size} {kind}: {results[size][kind]['final_val_loss']:.4f} nats/char, "
                  f"{results[size][kind]['parameters']:,} parameters", file=sys.stderr, flush=True)
    settings = {"seconds": args.seconds, "threads": args.threads, "cpu": torch.backends.cpu.get_cpu_capability(),
                "command": "python benchmarks/lstm_vs_gpt.py " + " ".join(sys.argv[1:])}
    if args.write_cards and "shipped" in results:
        write_cards(results, settings)
    if args.plot:
        plot(results, settings, args.plot)
    print(json.dumps({**settings, "results": results, "total_seconds": round(time.perf_counter() - started, 1)}))


if __name__ == "__main__":
    main()
