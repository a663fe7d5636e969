"""Speed of the Inspect views on the CPU, as one JSON line.

    nice -n 19 python benchmarks/inspect_speed.py --threads 1

- attention: `engine.text.inspect.attention` on the shipped GPT (checkpoints/shakespeare, int8 as the app loads
  it on a CPU) for a 256-character text, of which it shows the last block_size (128);
- cells: `engine.text.inspect.cells` plus the cell search (`text_properties`, `find_cells`) on the shipped LSTM
  (checkpoints/shakespeare-lstm) for the same text, every character shown (block_size 256); when that model is
  not there yet, a random LSTM of its size (2 layers x 512 cells, 64-d embedding), and the report says so.
Timings are p50/p95 in milliseconds over --runs runs, after warm-up runs. Target: p50 <= 300 ms for each view.
The text is a Tiny Shakespeare passage from the validation part when ../shared/data holds it, else a passage here.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

PASSAGE = ("ROMEO:\nBut, soft! what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n"
           "Arise, fair sun, and kill the envious moon,\nWho is already sick and pale with grief,\n"
           "That thou her maid art far more fair than she:\nBe not her maid, since she is envious;\n")


def sample_text(length: int) -> tuple[str, str]:
    source = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
    if source.is_file():
        text = source.read_text(encoding="utf-8")
        start = int(len(text) * 0.95)
        return text[start:start + length], "Tiny Shakespeare (validation part)"
    return (PASSAGE * (length // len(PASSAGE) + 1))[:length], "Romeo and Juliet II.2, repeated"


def timings(fn, runs: int, warmup: int = 3) -> dict:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {"p50_ms": round(statistics.median(times), 1), "p95_ms": round(times[min(len(times) - 1, int(0.95 * len(times)))], 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--chars", type=int, default=256)
    args = parser.parse_args()
    os.environ.setdefault("MINILAB_DEVICE", "cpu")
    torch.set_num_threads(args.threads)
    from engine.text.charlstm import CharLSTM, CharLSTMConfig, load_charlstm
    from engine.text.generate import load_char_lm
    from engine.text.inspect import attention, cells, find_cells, text_properties

    text, source = sample_text(args.chars)
    report: dict = {"benchmark": "inspect_speed", "threads": args.threads, "chars": len(text), "text": source}

    gpt = load_char_lm(ROOT / "checkpoints" / "shakespeare", "cpu", trace=False)  # int8 on a CPU, as the app has it
    report["attention"] = {"model": "shakespeare", "shown": len(attention(gpt.model, gpt.tokenizer, text).tokens),
                           **timings(lambda: attention(gpt.model, gpt.tokenizer, text), args.runs)}

    folder = ROOT / "checkpoints" / "shakespeare-lstm"
    if (folder / "weights.safetensors").is_file():
        lstm, tokenizer, _ = load_charlstm(folder)
        name = "shakespeare-lstm"
    else:
        torch.manual_seed(0)
        tokenizer = gpt.tokenizer
        lstm = CharLSTM(CharLSTMConfig(vocab_size=len(tokenizer.chars), n_embd=64, hidden=512, n_layer=2)).eval()
        name = "random 2x512 LSTM (checkpoints/shakespeare-lstm is not there yet)"

    def cell_view() -> None:
        view = cells(lstm, tokenizer, text)
        find_cells(view.cells, text_properties("".join(view.tokens)))

    report["cells"] = {"model": name, "layers": lstm.config.n_layer, "hidden": lstm.config.hidden,
                       "shown": len(cells(lstm, tokenizer, text).tokens), **timings(cell_view, args.runs)}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
