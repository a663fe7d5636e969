"""Many users at once: start `python app.py` on loopback and drive it through gradio_client.

Each simulated user has its own client (its own session) and loops until the time is up: classify an image,
classify a sentence or generate 60 characters, then think for 0.5-1.5 s (--think: a quick clicker; people
who read their results take several seconds). Two more users keep fine-tune jobs
going the whole time (a small image upload, 15 s of training each, submitted again as soon as one ends), so
that inference is measured while training runs. The app's memory (RSS) is sampled every second.

    python benchmarks/load.py --users 20 --seconds 60            # prints one JSON line
    python benchmarks/load.py --users 20 --seconds 600           # the memory-stays-flat run
    python benchmarks/load.py --users 20 --seconds 300 --rate 12 # open loop: 12 requests/s, whatever the answers do

Latency is from sending a request to receiving its result; output images are not downloaded (a browser shows
the label at once and fetches pictures in parallel). Before the clock starts, each endpoint is called once, so the
figures are the steady state of a running Space rather than its first model loads. Temporary files the app made
(job folders, Gradio's cache) are counted at the end, after the jobs finished.

Note: the simulated users run in this process, on the same 2 cores as the app, so they take CPU from it.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
SENTENCES = ["a warm, funny and beautifully acted film", "the battery died after two days", "service was slow but the soup was great",
             "an utterly forgettable sequel", "I would buy this again in a heartbeat", "the plot makes no sense at all"]
PHOTOS = [ROOT / "demos" / "examples" / name for name in ("cat.jpg", "coffee.jpg", "rocket.jpg", "astronaut.jpg")]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_page(url: str, log: str, seconds: float = 120.0) -> None:
    """Return once the app answers at url (it starts in a few seconds); exit naming its log if it never does."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            time.sleep(0.25)
    sys.exit(f"the app did not start: see {log}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc/PID/stat, in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def shapes_zip(path: Path, per_class: int = 20) -> Path:
    rng = random.Random(0)
    with zipfile.ZipFile(path, "w") as archive:
        for kind in ("circle", "square"):
            for i in range(per_class):
                image = Image.new("RGB", (32, 32), (230, 230, 230))
                r, cx, cy = rng.uniform(6, 10), rng.uniform(10, 22), rng.uniform(10, 22)
                (ImageDraw.Draw(image).ellipse if kind == "circle" else ImageDraw.Draw(image).rectangle)(
                    [cx - r, cy - r, cx + r, cy + r], fill=(rng.randint(0, 90), 30, 30))
                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
                archive.writestr(f"shapes/{kind}/{i}.png", buffer.getvalue())
    return path


class Recorder:
    def __init__(self):
        self.lock = threading.Lock()
        self.latencies: dict[str, list[float]] = {}
        self.errors: dict[str, list[str]] = {}
        self.jobs_done = 0

    def timed(self, endpoint: str, call):
        started = time.perf_counter()
        try:
            result = call()
        except Exception as error:  # noqa: BLE001 - every failure is a failed request, recorded by endpoint
            with self.lock:
                self.errors.setdefault(endpoint, []).append(f"{type(error).__name__}: {str(error)[:200]}")
            return None
        with self.lock:
            self.latencies.setdefault(endpoint, []).append(time.perf_counter() - started)
        return result


def one_request(client, recorder: Recorder, rng: random.Random) -> None:
    """Classify an image (40%), classify a sentence (40%) or generate 60 characters (20%)."""
    from gradio_client import handle_file

    action = rng.choices(["image", "sentence", "generate"], weights=[0.4, 0.4, 0.2])[0]
    if action == "image":
        photo = handle_file(str(rng.choice(PHOTOS)))
        recorder.timed("image", lambda: client.predict("cifar10", photo, None, "photo", api_name="/classify"))
    elif action == "sentence":
        sentence = rng.choice(SENTENCES)
        recorder.timed("sentence", lambda: client.predict("sst2", sentence, api_name="/classify_text"))
    else:
        seed = rng.randint(0, 999)
        recorder.timed("generate", lambda: client.predict("shakespeare", "ROMEO:\n", 60, 0.8, 0, 1.0, seed, False,
                                                          api_name="/generate"))


def user(url: str, deadline: float, recorder: Recorder, seed: int, think: tuple[float, float], rate: float) -> None:
    """Closed loop (rate 0): request, wait for the answer, think, again; a faster server gets more requests.
    Open loop (rate > 0): requests arrive at random (Poisson) times at `rate` per second whatever the answers
    do, so that two servers are compared on the same offered load. A user's overlapping requests share its
    client: gradio_client then now and then cancels one (CancelledError, 0-2 in 1,700 requests), counted as
    failed. A client per request was worse: creating clients under load timed out and filled the queue."""
    from gradio_client import Client

    rng = random.Random(seed)
    client = Client(url, verbose=False, download_files=False)
    arrival, in_flight = time.time(), []
    while time.time() < deadline:
        if rate <= 0:
            one_request(client, recorder, rng)
            time.sleep(rng.uniform(*think))
            continue
        arrival += rng.expovariate(rate)
        time.sleep(max(0.0, arrival - time.time()))
        request = threading.Thread(target=one_request, args=(client, recorder, random.Random(rng.random())), daemon=True)
        request.start()
        in_flight.append(request)
    for request in in_flight:
        request.join(300)


def trainer(url: str, deadline: float, recorder: Recorder, owner: str, upload: Path, budget: int) -> None:
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False, download_files=False)
    settings = ["cifar10", "finetune", "auto", "probe", "scratch", budget, 60, 0.2, 64, 0.25, 16, False, 0, 0.3]
    while time.time() < deadline - budget:
        if recorder.timed("finetune_start", lambda: client.predict(owner, "Images", [handle_file(str(upload))], *settings,
                                                                   api_name="/finetune_start")) is None:
            return
        while time.time() < deadline + 120:
            progress = recorder.timed("finetune_poll", lambda: client.predict(owner, api_name="/finetune_poll"))
            if progress and any(word in progress[0] for word in ("done", "failed", "cancelled", "time limit")):
                if "done" in progress[0]:
                    with recorder.lock:
                        recorder.jobs_done += 1
                break
            time.sleep(1.0)


def warm_up(url: str) -> None:
    """One request per endpoint (the app loads its models in the background at start; this waits for them)."""
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False, download_files=False)
    client.predict("cifar10", handle_file(str(PHOTOS[0])), None, "photo", api_name="/classify")
    client.predict("sst2", SENTENCES[0], api_name="/classify_text")
    client.predict("shakespeare", "ROMEO:\n", 20, 0.8, 0, 1.0, 0, False, api_name="/generate")


def temp_entries() -> set[str]:
    """minilab's and Gradio's folders in the temporary directory."""
    root = Path(tempfile.gettempdir())
    names = {p.name for p in root.glob("minilab-*") if not p.name.startswith("minilab-load-")}
    gradio = root / "gradio"
    return names | ({f"gradio/{p.name}" for p in gradio.iterdir()} if gradio.is_dir() else set())


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    array = np.array(values)
    return {"n": len(values), "p50": round(float(np.percentile(array, 50)), 3), "p95": round(float(np.percentile(array, 95)), 3),
            "p99": round(float(np.percentile(array, 99)), 3), "max": round(float(array.max()), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--trainers", type=int, default=2, help="users who keep fine-tune jobs running")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--job-budget", type=int, default=15, help="training seconds of each fine-tune job")
    parser.add_argument("--max-jobs", type=int, default=2, help="MINILAB_MAX_JOBS for the app (jobs run at once)")
    parser.add_argument("--think", default="0.5,1.5", help="seconds a user waits between requests: MIN,MAX (uniform)")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="open loop: requests per second from all users together, at Poisson times (0: closed loop)")
    args = parser.parse_args()
    if not 0 <= args.users <= 200 or not 0 <= args.trainers <= 20 or not 5 <= args.seconds <= 3600 or not 0 <= args.rate <= 200:
        sys.exit("users 0-200, trainers 0-20, seconds 5-3600, rate 0-200")
    try:
        think = tuple(float(v) for v in args.think.split(","))
        assert len(think) == 2 and 0 <= think[0] <= think[1] <= 60
    except (ValueError, AssertionError):
        sys.exit("--think takes MIN,MAX seconds, for example 0.5,1.5")
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = dict(os.environ, MINILAB_OFFLINE="1", MINILAB_MAX_JOBS=str(args.max_jobs))
    log = tempfile.NamedTemporaryFile(prefix="minilab-load-", suffix=".log", delete=False)
    app = subprocess.Popen([sys.executable, "app.py", "--port", str(port)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    recorder, memory = Recorder(), []
    tmp = Path(tempfile.mkdtemp(prefix="minilab-load-"))
    try:
        wait_for_page(url, log.name)
        upload = shapes_zip(tmp / "shapes.zip")
        warm_up(url)
        before = temp_entries()
        cpu_before = (cpu_seconds(app.pid), cpu_seconds(os.getpid()))
        start = time.time()
        deadline = start + args.seconds
        stop = threading.Event()

        def sample_memory() -> None:
            while not stop.is_set():
                memory.append((round(time.time() - start, 1), round(rss_mb(app.pid), 1)))
                stop.wait(1.0)

        threads = [threading.Thread(target=sample_memory, daemon=True)]
        threads += [threading.Thread(target=trainer, args=(url, deadline, recorder, f"{i:032x}", upload, args.job_budget), daemon=True)
                    for i in range(args.trainers)]
        threads += [threading.Thread(target=user, args=(url, deadline, recorder, i, think, args.rate / max(1, args.users)),
                                     daemon=True)
                    for i in range(args.users)]
        for thread in threads:
            thread.start()
        for thread in threads[1:]:
            thread.join(args.seconds + 300)
        stop.set()
        cpu_used = (cpu_seconds(app.pid) - cpu_before[0], cpu_seconds(os.getpid()) - cpu_before[1])
        wall = time.time() - start
        time.sleep(2)  # the last job's clean-up
        after = temp_entries()
    finally:
        app.terminate()
        app.wait(timeout=30)
    rss = [m for _, m in memory]
    third = max(1, len(rss) // 3)
    served = sum(len(v) for v in recorder.latencies.values())
    failed = sum(len(v) for v in recorder.errors.values())
    result = {
        "benchmark": "load", "users": args.users, "trainers": args.trainers, "seconds": args.seconds, "think_s": list(think), "rate": args.rate,
        "max_jobs": args.max_jobs, "requests_served": served, "errors": failed,
        "error_examples": {k: v[:3] for k, v in recorder.errors.items()},
        "latency_s": {k: percentiles(v) for k, v in sorted(recorder.latencies.items())},
        "jobs_completed": recorder.jobs_done,
        "cpu_cores_busy": {"app": round(cpu_used[0] / wall, 2), "simulated_users": round(cpu_used[1] / wall, 2)},
        "temp_entries_added": len(after - before), "job_folders_left": sum(name.startswith("minilab-job-") for name in after - before),
        "memory_mb": {"peak": max(rss, default=0), "first_third_mean": round(float(np.mean(rss[:third])), 1) if rss else None,
                      "last_third_mean": round(float(np.mean(rss[-third:])), 1) if rss else None,
                      "by_minute": [round(float(np.mean([m for t, m in memory if minute * 60 <= t < minute * 60 + 60])), 1)
                                    for minute in range(int(max((t for t, _ in memory), default=0) // 60) + 1)]},
    }
    image, sentence = result["latency_s"].get("image", {}), result["latency_s"].get("sentence", {})
    result["targets"] = {"no_failed_request": failed == 0,  # None: that endpoint was not driven in this run
                         "image_p95_under_1_s": image["p95"] < 1.0 if "p95" in image else None,
                         "sentence_p95_under_0.5_s": sentence["p95"] < 0.5 if "p95" in sentence else None}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
