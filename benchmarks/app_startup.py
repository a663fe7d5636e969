"""Seconds from `python app.py` to the page being served, as JSON (target: within 10 s on 2 cores).

    python benchmarks/app_startup.py --runs 3
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def time_start(timeout: float) -> float:
    port = free_port()
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "app.py", "--port", str(port)], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "MINILAB_OFFLINE": "1"})
    try:
        while time.perf_counter() - started < timeout:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as response:
                    if response.status == 200 and b"<html" in response.read(2000).lower():
                        return time.perf_counter() - started
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"app did not serve the page within {timeout} s")
    finally:
        process.terminate()
        process.wait(timeout=20)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=60)
    args = parser.parse_args()
    times = [time_start(args.timeout) for _ in range(args.runs)]
    print(json.dumps({"benchmark": "app_startup", "runs": args.runs, "seconds": [round(t, 2) for t in times],
                      "median_seconds": round(statistics.median(times), 2), "target_seconds": 10,
                      "meets_target": max(times) <= 10}))


if __name__ == "__main__":
    main()
