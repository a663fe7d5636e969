"""Speed of the shipped text models on the CPU, as JSON.

    python benchmarks/text_speed.py --threads 2

- sentiment (`sst2`): one sentence end to end (tokenise + forward + softmax), p50 and p95 over many runs, and
  batched throughput in sentences per second. Sentences are SST-2 dev sentences when ../shared/data is
  present (they are typical review sentences: 19 words on average), else sentences generated here;
- generation (`shakespeare`): characters per second streamed by `stream()` (key-value cache, top-k off).
Targets: one sentence <= 15 ms p50; >= 500 sentences/s batched; >= 1,000 characters/s streamed.

    python benchmarks/text_speed.py --threads 1 --compare-eager

measures the served models against the same models run without their TorchScript graphs (eager PyTorch), taking
turns (graph, eager, graph, eager, ...: `--rounds` of each, medians reported, as the machine is shared): one
sentence's p50, one sentence's explanation p50 (the sentence and one variant per word, one forward pass) and
characters per second streamed.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def sentences(count: int) -> tuple[list[str], str]:
    dev = ROOT.parent / "shared" / "data" / "sst2" / "dev.tsv"
    if dev.is_file():
        from engine.text.data import read_labelled_text

        texts = read_labelled_text(dev).texts
        return (texts * (count // len(texts) + 1))[:count], f"SST-2 dev sentences ({len(texts)} distinct)"
    words = "the film is a quite very not good bad funny dull moving plot acting story and but with too long".split()
    rng = random.Random(0)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(8, 30))) for _ in range(count)], "generated 8-30 word sentences"


def p50_ms(call, items) -> float:
    times = []
    for item in items:
        started = time.perf_counter()
        call(item)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def chars_per_s(lm, count: int) -> float:
    from engine.text.generate import SamplingSettings

    started = time.perf_counter()
    done = sum(1 for _ in lm.stream("ROMEO:\n", SamplingSettings(max_new_tokens=count, seed=1)))
    return done / (time.perf_counter() - started)


def compare_eager(args, predictor, lm, texts: list[str], source: str) -> dict:
    """The served TorchScript graphs against the same models eagerly, in turns (graph, eager, graph, ...)."""
    graphs = {"torchscript": (predictor.graph, lm.step_graph), "eager": (None, None)}
    rounds = {name: {"sentence_p50_ms": [], "explain_p50_ms": [], "chars_per_s": []} for name in graphs}

    def use(name: str) -> None:
        predictor.graph, lm.step_graph = graphs[name]

    for name in graphs:  # warm-up of both
        use(name)
        for text in texts[:20]:
            predictor.explain(text)
        chars_per_s(lm, 200)
    for _ in range(args.rounds):
        for name in graphs:
            use(name)
            rounds[name]["sentence_p50_ms"].append(p50_ms(predictor.predict, texts[: args.runs]))
            rounds[name]["explain_p50_ms"].append(p50_ms(predictor.explain, texts[: args.explanations]))
            rounds[name]["chars_per_s"].append(chars_per_s(lm, args.chars))
    report = {"benchmark": "text_speed", "compare": "torchscript vs eager", "threads": args.threads,
              "rounds": args.rounds, "sentences": source, "torch": torch.__version__}
    for name, figures in rounds.items():
        report[name] = {key: round(statistics.median(values), 2 if key.endswith("ms") else 1) for key, values in figures.items()}
        report[name]["each_round"] = {key: [round(v, 2 if key.endswith("ms") else 1) for v in values] for key, values in figures.items()}
    graph, eager = report["torchscript"], report["eager"]
    report["eager_vs_graph"] = {  # above 1: eager is slower by that factor
        "sentence_time": round(eager["sentence_p50_ms"] / graph["sentence_p50_ms"], 3),
        "explain_time": round(eager["explain_p50_ms"] / graph["explain_p50_ms"], 3),
        "generation_time": round(graph["chars_per_s"] / eager["chars_per_s"], 3)}
    return report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--batch-sentences", type=int, default=2000)
    parser.add_argument("--chars", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=None, help="sentences per forward pass in batched mode "
                        "(default: the engine's, engine.text.classify.BATCH_SIZE)")
    parser.add_argument("--compare-eager", action="store_true", help="the TorchScript graphs against eager PyTorch, "
                        "taking turns; prints both")
    parser.add_argument("--rounds", type=int, default=3, help="turns of each variant with --compare-eager")
    parser.add_argument("--explanations", type=int, default=60, help="sentences explained per turn with --compare-eager")
    args = parser.parse_args()
    os.environ.setdefault("MINILAB_DEVICE", "cpu")
    torch.set_num_threads(args.threads)
    from engine.text.classify import load_text_classifier
    from engine.text.generate import SamplingSettings, load_char_lm

    report: dict = {"benchmark": "text_speed", "threads": args.threads}
    predictor = load_text_classifier(ROOT / "checkpoints" / "sst2")
    texts, source = sentences(args.batch_sentences)
    if args.compare_eager:
        print(json.dumps(compare_eager(args, predictor, load_char_lm(ROOT / "checkpoints" / "shakespeare"), texts, source)))
        return
    for text in texts[:20]:
        predictor.predict(text)
    single = []
    for text in texts[: args.runs]:
        started = time.perf_counter()
        predictor.predict(text)
        single.append((time.perf_counter() - started) * 1000)
    from engine.text.classify import BATCH_SIZE

    batch_size = args.batch_size or BATCH_SIZE
    predictor.predict_proba(texts[:200], batch_size=batch_size)
    started = time.perf_counter()
    predictor.predict_proba(texts, batch_size=batch_size)
    throughput = len(texts) / (time.perf_counter() - started)
    report["sentiment"] = {"sentences": source, "mean_words": round(float(np.mean([len(t.split()) for t in texts])), 1),
                           "single_p50_ms": round(statistics.median(single), 2), "single_p95_ms": round(float(np.percentile(single, 95)), 2),
                           "batched_sentences_per_s": round(throughput, 1), "batch_size": batch_size, "target_single_p50_ms": 15, "target_sentences_per_s": 500,
                           "meets_target": statistics.median(single) <= 15 and throughput >= 500}

    lm = load_char_lm(ROOT / "checkpoints" / "shakespeare")
    list(lm.stream("ROMEO:\n", SamplingSettings(max_new_tokens=100)))
    started = time.perf_counter()
    count = sum(1 for _ in lm.stream("ROMEO:\n", SamplingSettings(max_new_tokens=args.chars, seed=1)))
    rate = count / (time.perf_counter() - started)
    report["generation"] = {"model": "shakespeare", "chars": count, "chars_per_s": round(rate, 1), "target_chars_per_s": 1000,
                            "meets_target": rate >= 1000}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
