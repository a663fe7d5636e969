"""Many users at once: start `python app.py` on loopback and drive it through Gradio's HTTP API with asyncio.

Closed loop (--rate 0): --users simulated users each loop until the time is up: classify an image, classify a
sentence or generate 60 characters, then think for 0.5-1.5 s (--think: a quick clicker; people who read their
results take several seconds). Open loop (--rate R): requests arrive at random (Poisson) times at R per second
in total, each its own asyncio task, whatever the answers do, so that two servers are compared on the same
offered load. --trainers more users keep fine-tune jobs going the whole time (a small image upload, --job-budget
seconds of training each, submitted again as soon as one ends, polled every second), so that inference is
measured while training runs. The app's memory (RSS) is sampled every second; if the app exits, the run ends
early and the JSON says so (app_exit_code). --ray-address runs the jobs on Ray (MINILAB_RAY_ADDRESS for the app;
"backend" in the JSON tells which ran).

    pip install -r benchmarks/requirements.txt                     # aiohttp
    python benchmarks/load.py --users 20 --seconds 60              # prints one JSON line
    python benchmarks/load.py --users 20 --seconds 600             # the memory-stays-flat run
    python benchmarks/load.py --seconds 300 --rate 12              # open loop: 12 requests/s
    python benchmarks/load.py --seconds 60 --sweep 2,4,6,8,12      # one app, one open-loop run per rate
    python benchmarks/load.py --ray-address local --trainers 2     # training jobs on Ray (MINILAB_RAY_ADDRESS)

Why plain HTTP and asyncio: a thread and a gradio_client.Client per user cost more CPU (0.36-0.56 cores at
6 requests/s) than the app they measured, on the same 2 cores. Here each request is two HTTP calls on one
aiohttp session (cheaper in CPU than httpx.AsyncClient, measured: 0.01 vs 0.03 cores at 6 requests/s):
`POST gradio_api/call/NAME {"data": [...]}` gives an event id, `GET gradio_api/call/NAME/ID` streams
server-sent events until `event: complete` (or `event: error`).

Sessions: Gradio's /call stream carries every message of its session, so two requests in flight in one session
would read each other's results. A closed-loop user has one session (one request at a time, as a browser tab);
in the open loop each request borrows a free session from a pool that grows to the peak number in flight, so
Gradio keeps about as many sessions as a real crowd of that size would (one per request would pile up
thousands). A trainer has its own session and passes its owner key as the first argument, as the page does.

Latency is from sending a request to receiving its result; output images are not downloaded (a browser shows
the label at once and fetches pictures in parallel). The 4 example photos are uploaded ONCE, at warm-up, and
every image request reuses their server paths: the latency measured is classification, not the upload (the
gradio_client version uploaded the photo inside each timed request, so its image figures were a little higher;
a trainer's finetune_start still includes its zip's upload, as a browser's does). Before the clock starts, each endpoint
is called once, so the figures are the steady state of a running Space rather than its first model loads.
Temporary files the app made (job folders, Gradio's cache) are counted at the end, after the jobs finished.

CPU (cpu_cores_busy, CPU seconds / wall seconds): "app" is the web process alone; "app_children" its descendants
(training job workers, Ray processes it started), from /proc: the app's cutime+cstime (every child it waited for,
with what those children had waited for in turn) plus utime+stime+cutime+cstime of each live descendant, read at
the start and at the end. A child that exits during the run counts in full once the app has reaped it; one
orphaned to init (or a remote Ray cluster's workers) is missed. "simulated_users" is this script's own process.
The simulated users still run on the same 2 cores as the app, so they take a little CPU from it.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
import zipfile
from pathlib import Path

import aiohttp
import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
SENTENCES = ["a warm, funny and beautifully acted film", "the battery died after two days", "service was slow but the soup was great",
             "an utterly forgettable sequel", "I would buy this again in a heartbeat", "the plot makes no sense at all"]
PHOTOS = [ROOT / "demos" / "examples" / name for name in ("cat.jpg", "coffee.jpg", "rocket.jpg", "astronaut.jpg")]
TICK = os.sysconf("SC_CLK_TCK")
PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20


def log(message: str) -> None:
    print(f"[load] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_page(url: str, log_path: str, seconds: float = 120.0) -> None:
    """Return once the app answers at url (it starts in a few seconds); exit naming its log if it never does."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            time.sleep(0.25)
    sys.exit(f"the app did not start: see {log_path}")


# ---- CPU and memory from /proc ----------------------------------------------------------------------------------

def proc_table() -> dict[int, list[str]]:
    """/proc/PID/stat of every process, the fields after the command name: [1] ppid, [11..14] utime, stime,
    cutime, cstime (clock ticks), [21] rss (pages)."""
    table = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                table[int(entry.name)] = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):  # it exited while we looked
                pass
    return table


def descendants(pid: int, table: dict[int, list[str]]) -> list[int]:
    children: dict[int, list[int]] = {}
    for child, fields in table.items():
        children.setdefault(int(fields[1]), []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def app_cpu_seconds(pid: int) -> tuple[float, float]:
    """(the app process, its descendants): CPU seconds so far; see the module docstring for what is counted."""
    table = proc_table()
    app = table.get(pid)
    if app is None:
        return 0.0, 0.0
    own = int(app[11]) + int(app[12])
    children = int(app[13]) + int(app[14]) + sum(sum(int(table[d][i]) for i in (11, 12, 13, 14))
                                                 for d in descendants(pid, table))
    return own / TICK, children / TICK


def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def rss_mb(pid: int) -> tuple[float, float]:
    """RSS of (the app, all its descendants together) in MB."""
    table = proc_table()
    if pid not in table:
        return 0.0, 0.0
    return int(table[pid][21]) * PAGE_MB, sum(int(table[d][21]) for d in descendants(pid, table)) * PAGE_MB


def temp_entries() -> set[str]:
    """minilab's and Gradio's folders in the temporary directory."""
    root = Path(tempfile.gettempdir())
    names = {p.name for p in root.glob("minilab-*") if not p.name.startswith("minilab-load-")}
    gradio = root / "gradio"
    return names | ({f"gradio/{p.name}" for p in gradio.iterdir()} if gradio.is_dir() else set())


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


# ---- Gradio's HTTP API --------------------------------------------------------------------------------------------

async def call(http: aiohttp.ClientSession, url: str, api_name: str, data: list, session: str | None = None) -> list:
    """One request: queue it, then read its server-sent events until the result (a generator's partial results,
    `event: generating`, and heartbeats are skipped). Raises on an HTTP error or `event: error`."""
    async with http.post(f"{url}gradio_api/call/{api_name}", json={"data": data, "session_hash": session}) as response:
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status} queueing /{api_name}: {(await response.text())[:200]}")
        event_id = (await response.json())["event_id"]
    async with http.get(f"{url}gradio_api/call/{api_name}/{event_id}") as response:
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status} reading /{api_name}: {(await response.text())[:200]}")
        event = None
        async for raw in response.content:  # one line at a time
            line = raw.decode().rstrip("\r\n")
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:") and event in ("complete", "error"):
                payload = json.loads(line[5:])
                if event == "error":
                    raise RuntimeError(f"app error from /{api_name}: {str(payload)[:200]}")
                return payload
    raise RuntimeError(f"/{api_name}: the stream ended without a result")


async def upload(http: aiohttp.ClientSession, url: str, paths: list[Path]) -> list[dict]:
    """Files into Gradio's cache; returns the FileData that an API call passes for each."""
    form = aiohttp.FormData()
    for path in paths:
        form.add_field("files", path.read_bytes(), filename=path.name)
    async with http.post(f"{url}gradio_api/upload", data=form) as response:
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status} uploading: {(await response.text())[:200]}")
        return [{"path": server_path, "meta": {"_type": "gradio.FileData"}} for server_path in await response.json()]


def with_defaults(data: list, api_name: str, info: dict) -> list:
    """data, completed with the endpoint's defaults for the parameters after it (the app may have grown one)."""
    parameters = info["named_endpoints"][f"/{api_name}"]["parameters"]
    return data + [p.get("parameter_default") for p in parameters[len(data):]]


class Recorder:
    def __init__(self):
        self.latencies: dict[str, list[float]] = {}
        self.errors: dict[str, list[str]] = {}
        self.jobs_done = 0

    async def timed(self, endpoint: str, request) -> list | None:
        """Await the request; its latency, or its failure, is recorded under endpoint. None when it failed."""
        started = time.perf_counter()
        try:
            result = await request
        except Exception as error:  # noqa: BLE001 - every failure is a failed request, recorded by endpoint
            self.errors.setdefault(endpoint, []).append(f"{type(error).__name__}: {str(error)[:200]}")
            return None
        self.latencies.setdefault(endpoint, []).append(time.perf_counter() - started)
        return result


# ---- simulated users ----------------------------------------------------------------------------------------------

async def one_request(http: aiohttp.ClientSession, url: str, recorder: Recorder, rng: random.Random, photos: list[dict],
                      session: str) -> bool:
    """Classify an image (40%), classify a sentence (40%) or generate 60 characters (20%). True if it succeeded."""
    action = rng.choices(["image", "sentence", "generate"], weights=[0.4, 0.4, 0.2])[0]
    if action == "image":
        request = call(http, url, "classify", ["cifar10", rng.choice(photos), None, "photo"], session)
    elif action == "sentence":
        request = call(http, url, "classify_text", ["sst2", rng.choice(SENTENCES)], session)
    else:
        request = call(http, url, "generate", ["shakespeare", "ROMEO:\n", 60, 0.8, 0, 1.0, rng.randint(0, 999), False], session)
    return await recorder.timed(action, request) is not None


async def user(http: aiohttp.ClientSession, url: str, deadline: float, recorder: Recorder, rng: random.Random,
               photos: list[dict], think: tuple[float, float]) -> None:
    """Closed loop: request, wait for the answer, think, again; a faster server gets more requests."""
    session = uuid.uuid4().hex
    while time.time() < deadline:
        if not await one_request(http, url, recorder, rng, photos, session):
            session = uuid.uuid4().hex  # a failed request may leave messages behind in its session
        await asyncio.sleep(rng.uniform(*think))


async def open_loop(http: aiohttp.ClientSession, url: str, deadline: float, recorder: Recorder, rng: random.Random,
                    photos: list[dict], rate: float) -> None:
    """Open loop: a request at Poisson times, `rate` per second, each its own task with a free session of the pool."""
    free_sessions: list[str] = []

    async def pooled(request_rng: random.Random) -> None:
        session = free_sessions.pop() if free_sessions else uuid.uuid4().hex
        if await one_request(http, url, recorder, request_rng, photos, session):
            free_sessions.append(session)

    tasks, arrival = [], time.time()
    while True:
        arrival += rng.expovariate(rate)
        if arrival >= deadline:
            break
        await asyncio.sleep(max(0.0, arrival - time.time()))
        tasks.append(asyncio.create_task(pooled(random.Random(rng.random()))))
    await asyncio.gather(*tasks)


async def trainer(http: aiohttp.ClientSession, url: str, deadline: float, recorder: Recorder, owner: str,
                  data_zip: Path, budget: int, info: dict) -> None:
    """Keep a fine-tune job going: upload + submit (timed together, as a browser does), poll every second until it
    ends, submit again while a whole job still fits before the deadline."""
    session = uuid.uuid4().hex
    settings = ["cifar10", "finetune", "auto", "probe", "scratch", budget, 60, 0.2, 64, 0.25, 16, False, 0, 0.3]

    async def start() -> list:
        files = await upload(http, url, [data_zip])
        return await call(http, url, "finetune_start", with_defaults([owner, "Images", files, *settings], "finetune_start", info),
                          session)

    while time.time() < deadline - budget:
        if await recorder.timed("finetune_start", start()) is None:
            return
        while time.time() < deadline + 120:
            progress = await recorder.timed("finetune_poll", call(http, url, "finetune_poll", [owner], session))
            if progress and any(word in str(progress[0]) for word in ("done", "failed", "cancelled", "time limit")):
                if "done" in str(progress[0]):
                    recorder.jobs_done += 1
                break
            await asyncio.sleep(1.0)


async def warm_up(http: aiohttp.ClientSession, url: str) -> tuple[list[dict], dict]:
    """Upload the photos (once, for the whole run), fetch the API description, and call each endpoint once (the app
    loads its models in the background at start; this waits for them). Returns (photos' FileData, API info)."""
    photos = await upload(http, url, PHOTOS)
    async with http.get(f"{url}gradio_api/info") as response:
        info = await response.json()
    await call(http, url, "classify", ["cifar10", photos[0], None, "photo"])
    await call(http, url, "classify_text", ["sst2", SENTENCES[0]])
    await call(http, url, "generate", ["shakespeare", "ROMEO:\n", 20, 0.8, 0, 1.0, 0, False])
    return photos, info


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    array = np.array(values)
    return {"n": len(values), "p50": round(float(np.percentile(array, 50)), 3), "p95": round(float(np.percentile(array, 95)), 3),
            "p99": round(float(np.percentile(array, 99)), 3), "max": round(float(array.max()), 3)}


async def run_phase(http: aiohttp.ClientSession, url: str, app: subprocess.Popen, args: argparse.Namespace, rate: float,
                    think: tuple[float, float], photos: list[dict], info: dict, data_zip: Path, seed: int) -> dict:
    """One measured run (closed loop, or open loop at `rate`) against the running app; its results as a dict."""
    recorder, memory, rng = Recorder(), [], random.Random(seed)
    before = temp_entries()
    app_before, own_before = app_cpu_seconds(app.pid), own_cpu_seconds()
    start = time.time()
    deadline = start + args.seconds

    async def watch() -> None:
        """Sample memory every second; end the run early if the app exits (the rest would only be refused calls)."""
        while app.poll() is None:
            app_mb, children_mb = rss_mb(app.pid)
            memory.append((round(time.time() - start, 1), round(app_mb, 1), round(children_mb, 1)))
            await asyncio.sleep(1.0)
        log(f"the app exited with code {app.returncode} during the run: see its log")
        work.cancel()

    workers = [trainer(http, url, deadline, recorder, f"{i:032x}", data_zip, args.job_budget, info) for i in range(args.trainers)]
    if rate > 0:
        workers.append(open_loop(http, url, deadline, recorder, rng, photos, rate))
    else:
        workers += [user(http, url, deadline, recorder, random.Random(rng.random()), photos, think) for _ in range(args.users)]
    work = asyncio.gather(*workers)
    watcher = asyncio.create_task(watch())
    try:
        await work
    except asyncio.CancelledError:  # the app exited
        pass
    watcher.cancel()
    app_after, own_after = app_cpu_seconds(app.pid), own_cpu_seconds()
    wall = time.time() - start
    await asyncio.sleep(2)  # the last job's clean-up
    after = temp_entries()

    rss = [m for _, m, _ in memory]
    third = max(1, len(rss) // 3)
    served = sum(len(v) for v in recorder.latencies.values())
    failed = sum(len(v) for v in recorder.errors.values())
    result = {
        "benchmark": "load", "backend": args.backend, "users": args.users, "trainers": args.trainers, "seconds": args.seconds,
        "think_s": list(think), "rate": rate, "max_jobs": args.max_jobs, "wall_s": round(wall, 1),
        "requests_served": served, "errors": failed,
        "error_examples": {k: v[:3] for k, v in recorder.errors.items()},
        "latency_s": {k: percentiles(v) for k, v in sorted(recorder.latencies.items())},
        "jobs_completed": recorder.jobs_done, "app_exit_code": app.poll(),  # None: the app ran to the end
        "cpu_cores_busy": {"app": round((app_after[0] - app_before[0]) / wall, 3) if app.poll() is None else None,
                           "app_children": round((app_after[1] - app_before[1]) / wall, 3) if app.poll() is None else None,
                           "simulated_users": round((own_after - own_before) / wall, 3)},
        "temp_entries_added": len(after - before), "job_folders_left": sum(name.startswith("minilab-job-") for name in after - before),
        "memory_mb": {"peak": max(rss, default=0), "first_third_mean": round(float(np.mean(rss[:third])), 1) if rss else None,
                      "last_third_mean": round(float(np.mean(rss[-third:])), 1) if rss else None,
                      "by_minute": [round(float(np.mean([m for t, m, _ in memory if minute * 60 <= t < minute * 60 + 60])), 1)
                                    for minute in range(int(max((t for t, _, _ in memory), default=0) // 60) + 1)],
                      "app_children_peak": max((c for _, _, c in memory), default=0)},
    }
    image, sentence = result["latency_s"].get("image", {}), result["latency_s"].get("sentence", {})
    result["targets"] = {"no_failed_request": failed == 0,  # None: that endpoint was not driven in this run
                         "image_p95_under_1_s": image["p95"] < 1.0 if "p95" in image else None,
                         "sentence_p95_under_0.5_s": sentence["p95"] < 0.5 if "p95" in sentence else None}
    return result


async def drive(url: str, app: subprocess.Popen, args: argparse.Namespace, think: tuple[float, float], rates: list[float],
                data_zip: Path) -> list[dict]:
    """Warm up once, then one measured phase per rate, all against the same running app."""
    # Idle connections are dropped after 3 s, before uvicorn's 5 s keep-alive ends them: reusing one that the server
    # is closing fails the request (ServerDisconnectedError), an error of this script, not of the app.
    connector = aiohttp.TCPConnector(limit=1000, keepalive_timeout=3)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, read_bufsize=2**22) as http:
        photos, info = await warm_up(http, url)
        results = []
        for i, rate in enumerate(rates):
            log(f"{'open loop at %g requests/s' % rate if rate > 0 else 'closed loop, %d users' % args.users}, "
                f"{args.trainers} trainers, {args.seconds:g} s")
            results.append(await run_phase(http, url, app, args, rate, think, photos, info, data_zip, seed=i))
            log(f"served {results[-1]['requests_served']}, errors {results[-1]['errors']}, "
                f"cpu {results[-1]['cpu_cores_busy']}")
            if app.poll() is not None:
                break  # no app left for the other rates
        return results


def meets_targets(result: dict) -> bool:
    return all(value is True for value in result["targets"].values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20, help="closed loop: simulated users (each one session)")
    parser.add_argument("--trainers", type=int, default=2, help="users who keep fine-tune jobs running")
    parser.add_argument("--seconds", type=float, default=60, help="length of the run (of each rate, with --sweep)")
    parser.add_argument("--job-budget", type=int, default=15, help="training seconds of each fine-tune job")
    parser.add_argument("--max-jobs", type=int, default=2, help="MINILAB_MAX_JOBS for the app (jobs run at once)")
    parser.add_argument("--think", default="0.5,1.5", help="seconds a user waits between requests: MIN,MAX (uniform)")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="open loop: requests per second in total, at Poisson times (0: closed loop)")
    parser.add_argument("--sweep", default="", help="open loop at each rate in turn, R1,R2,...: one app, one JSON line")
    parser.add_argument("--ray-address", default=None,
                        help="MINILAB_RAY_ADDRESS for the app (training jobs on Ray); default: the caller's environment")
    args = parser.parse_args()
    if not 0 <= args.users <= 200 or not 0 <= args.trainers <= 20 or not 5 <= args.seconds <= 3600 or not 0 <= args.rate <= 200:
        sys.exit("users 0-200, trainers 0-20, seconds 5-3600, rate 0-200")
    try:
        think = tuple(float(v) for v in args.think.split(","))
        assert len(think) == 2 and 0 <= think[0] <= think[1] <= 60
    except (ValueError, AssertionError):
        sys.exit("--think takes MIN,MAX seconds, for example 0.5,1.5")
    try:
        rates = [float(v) for v in args.sweep.split(",")] if args.sweep else [args.rate]
        assert all(0 < r <= 200 for r in rates) or not args.sweep
    except (ValueError, AssertionError):
        sys.exit("--sweep takes rates in requests/s, each 0-200, for example 2,4,6,8")

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = dict(os.environ, MINILAB_OFFLINE="1", MINILAB_MAX_JOBS=str(args.max_jobs))
    if args.ray_address is not None:
        env["MINILAB_RAY_ADDRESS"] = args.ray_address
    ray_address = env.get("MINILAB_RAY_ADDRESS", "").strip()  # the same rule as engine.jobs.backend_from_env
    args.backend = f"ray:{ray_address}" if ray_address else env.get("MINILAB_JOB_BACKEND", "").strip().lower() or "process"
    app_log = tempfile.NamedTemporaryFile(prefix="minilab-load-", suffix=".log", delete=False)
    log(f"starting the app on {url} (backend {args.backend}, log {app_log.name})")
    app = subprocess.Popen([sys.executable, "app.py", "--port", str(port)], cwd=ROOT, env=env, stdout=app_log,
                           stderr=subprocess.STDOUT)
    tmp = Path(tempfile.mkdtemp(prefix="minilab-load-"))
    try:
        wait_for_page(url, app_log.name)
        log("app up; warming up")
        results = asyncio.run(drive(url, app, args, think, rates, shapes_zip(tmp / "shapes.zip")))
    finally:
        app.terminate()
        app.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)
    if not args.sweep:
        print(json.dumps(results[0]))
        return
    passing = [r["rate"] for r in results if meets_targets(r)]
    print(json.dumps({"benchmark": "load-sweep", "backend": args.backend, "trainers": args.trainers, "seconds": args.seconds,
                      "max_jobs": args.max_jobs, "rates": rates, "results": results,
                      "max_rate_meeting_targets": max(passing) if passing else None}))


if __name__ == "__main__":
    main()
