"""How long a training job waits before its training function runs, per backend (issue: at most 3 s).

    python benchmarks/job_startup.py --repeats 5        # prints one JSON line

"cold": a worker process is spawned for the job (python, torch and the engine imported on the spot);
"warm": the spare worker the app keeps ready takes the job (the default once the app has started);
"thread": the old way, a thread of the server process, for reference. The job is a real one's first step: a
fine-tune job function imported by name, which reports as soon as it is called.
"""
from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.jobs import JobRunner  # noqa: E402
from engine.workers import ProcessBackend  # noqa: E402


def first_call(ctx) -> dict:
    """Return at once: the time to here is the start-up cost."""
    return {"called": time.time()}


def startup_seconds(runner: JobRunner) -> float:
    # By its module's name: a worker process cannot import this script's __main__.
    job = importlib.import_module("job_startup").first_call
    submitted = time.time()
    status = runner.wait(runner.submit("bench", job), "bench", timeout=120)
    assert status.state == "succeeded", status.error
    return status.result["called"] - submitted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    results = {}
    cold = JobRunner(backend=ProcessBackend(spare=False))
    results["cold"] = [startup_seconds(cold) for _ in range(args.repeats)]
    cold.shutdown()
    warm = JobRunner(backend=ProcessBackend(spare=True))
    results["warm"] = []
    for _ in range(args.repeats):
        warm.backend.prewarm(warm.nice)
        time.sleep(8)  # the spare imports torch meanwhile (a job arriving later than this finds it ready)
        results["warm"].append(startup_seconds(warm))
    warm.shutdown()
    thread = JobRunner(backend="thread")
    results["thread"] = [startup_seconds(thread) for _ in range(args.repeats)]
    thread.shutdown()
    print(json.dumps({"benchmark": "job_startup", "repeats": args.repeats,
                      "seconds": {k: {"median": round(statistics.median(v), 3), "max": round(max(v), 3)}
                                  for k, v in results.items()},
                      "target_3_s_met": statistics.median(results["warm"]) <= 3.0}))


if __name__ == "__main__":
    main()
