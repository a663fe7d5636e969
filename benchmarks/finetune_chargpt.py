"""Fine-tune on upload, text generation: a 100 kB text, a char model from scratch, 2 minutes, on the CPU.

The upload: the first 100,000 characters of Tiny Shakespeare (from ../shared/data), written to a .txt as a
user would upload it. Default settings (`finetune_chargpt`, from scratch), reading included in the time.
Prints the validation loss (last 10% of the upload), a sample, and two checks of "words and line structure":
the share of sampled words (runs of letters) that occur in the upload, and the number of line breaks.

    python benchmarks/finetune_chargpt.py --threads 2          # prints one JSON line
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.text.finetune import CharFinetuneConfig, finetune_chargpt  # noqa: E402
from engine.vision.data import find_data_file  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chars", type=int, default=100_000)
    parser.add_argument("--set", action="append", default=[], help="any CharFinetuneConfig field, as name=value")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    text = find_data_file("tinyshakespeare/input.txt", args.data_dir).read_text()[:args.chars]
    config = CharFinetuneConfig(sample_chars=600)
    for item in args.set:
        name, value = item.split("=", 1)
        setattr(config, name, type(getattr(config, name))(value))
    with tempfile.TemporaryDirectory(prefix="minilab-bench-") as tmp:
        path = Path(tmp) / "upload.txt"
        path.write_text(text)
        started = time.perf_counter()
        result = finetune_chargpt([path], config, Path(tmp) / "model")
        seconds = time.perf_counter() - started
    sample = result["sample"]
    known = set(re.findall(r"[A-Za-z]+", text))
    words = re.findall(r"[A-Za-z]+", sample)
    real = sum(word in known for word in words) / max(1, len(words))
    print(sample, file=sys.stderr)
    print(json.dumps({"benchmark": "finetune_chargpt", "upload_chars": len(text), "threads": args.threads,
                      "config": {k: getattr(config, k) for k in ("n_layer", "n_head", "n_embd", "block_size", "time_budget")},
                      "seconds_from_click": round(seconds, 1), "iters": result["metrics"]["iters"],
                      "val_loss": result["metrics"]["val_loss"], "sample_words": len(words),
                      "sample_words_found_in_upload": round(real, 3), "sample_lines": sample.count("\n"),
                      "sample": sample[:300], "targets": {"within_120_s": seconds <= 120}}))


if __name__ == "__main__":
    main()
