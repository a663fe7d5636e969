"""Two Ray nodes on this machine (loopback): does a job run on the node it is pinned to, and what happens to a
job, and to the app, when the node running it dies mid-training?

    nice -n 10 python benchmarks/ray_two_nodes.py

Starts a head node and a worker node as separate `ray start --block` processes, each in its own process group
and temp dir (so the worker node can be killed alone, like a machine losing power: SIGKILL to its whole group;
`ray stop` would stop every Ray on the machine), then from this process (the "app"):
1. two small DQN trainings at once, one pinned to each node with a custom resource (head_node / worker_node);
2. a long one on the worker node, whose node is killed once the job reports progress: it must end failed with
   a one-line reason, and leave no model folder here;
3. a small job on the head afterwards: the app still answers.
Progress goes to stderr; one JSON line with everything measured goes to stdout. Only the processes this script
started are stopped at the end.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# Loopback only, so no token auth: with Ray 2.60's default (a token in ~/.ray/auth_token) the nodes started here
# refused each other ("InvalidAuthToken") on this machine. Set before Ray is imported; the nodes inherit it.
os.environ["RAY_AUTH_MODE"] = "disabled"

import ray  # noqa: E402

from engine.jobs import JobRunner  # noqa: E402
from engine.ray_jobs import RayBackend  # noqa: E402
from engine.rl.dqn import DQNConfig, load_agent  # noqa: E402
from engine.rl.live import training_job  # noqa: E402

RAY = str(Path(sys.executable).with_name("ray"))


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_node(name: str, temp_dir: Path, args: list[str]) -> subprocess.Popen:
    """`ray start --block` in a new process group: raylet, agents and workers all land in it."""
    command = [RAY, "start", "--block", "--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0",
               f"--temp-dir={temp_dir}", "--disable-usage-stats",
               f"--dashboard-agent-listen-port={free_port()}", *args]
    log(f"starting the {name} node: {' '.join(command[1:])}")
    out = open(temp_dir.with_suffix(".log"), "w")
    return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))


def kill_node(process: subprocess.Popen, temp_dir: Path) -> list[int]:
    """SIGKILL the node's process group, and any process that still names its temp dir; returns the pids."""
    killed = []
    try:
        os.killpg(process.pid, signal.SIGKILL)
        killed.append(process.pid)
    except ProcessLookupError:
        pass
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(temp_dir) in cmdline:
            try:
                os.kill(int(proc.name), signal.SIGKILL)
                killed.append(int(proc.name))
            except (ProcessLookupError, PermissionError):
                pass
    process.wait(timeout=10)
    return killed


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        status = Path(f"/proc/{pid}/status").read_text()
        return "zombie" not in status
    except (OSError, ProcessLookupError):
        return False


def wait_for(check, timeout: float, what: str) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)
    return time.monotonic() - started


def dqn(steps: int) -> object:
    return training_job(DQNConfig(total_steps=steps, hidden=[16], eval_every=0, final_eval_episodes=0,
                                  learning_starts=100), command="benchmarks/ray_two_nodes.py")


def main() -> None:
    t0 = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="rn-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    head_dir, worker_dir = base / "head", base / "wrk"
    head_dir.mkdir()
    worker_dir.mkdir()
    port = free_port()
    head = start_node("head", head_dir, ["--head", f"--port={port}", "--include-dashboard=false",
                                         f"--ray-client-server-port={free_port()}", '--resources={"head_node": 1}'])
    worker = None
    out: dict = {"address": f"127.0.0.1:{port}"}
    try:
        wait_for(lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0, 60, "the head's GCS port")
        worker = start_node("worker", worker_dir, [f"--address=127.0.0.1:{port}", '--resources={"worker_node": 1}'])
        backend = RayBackend(f"127.0.0.1:{port}", grace_s=5.0)
        runner = JobRunner(backend=backend, max_concurrent=2, threads=1, time_limit_s=300)
        backend._connect()
        out["nodes_up_s"] = round(wait_for(lambda: sum(n["Alive"] for n in ray.nodes()) == 2, 60, "two nodes")
                                  + time.monotonic() - t0, 1)
        info = runner.describe()
        out["nodes"] = [{k: node[k] for k in ("node", "id", "alive")} | {"resources": {
            k: v for k, v in node["resources"].items() if k in ("CPU", "head_node", "worker_node")}}
            for node in info["nodes"]]
        log(f"cluster up: {out['nodes']}")

        # 1. one job per node, at the same time
        started = time.monotonic()
        pinned = {where: runner.submit("bench", dqn(1500), name=f"dqn-{where}",
                                       config={"ray_resources": {f"{where}_node": 0.01}})
                  for where in ("head", "worker")}
        statuses = {where: runner.wait(job_id, "bench", timeout=240) for where, job_id in pinned.items()}
        out["pinned_jobs"] = {where: {"state": s.state, "node": s.node, "events": len(s.events), "error": s.error,
                                      "loadable": s.state == "succeeded" and bool(load_agent(s.result["folder"])),
                                      "seconds": round(s.finished - s.started, 1)}
                              for where, s in statuses.items()}
        out["pinned_jobs_wall_s"] = round(time.monotonic() - started, 1)
        out["ran_on_different_nodes"] = statuses["head"].node != statuses["worker"].node
        log(f"pinned jobs: {out['pinned_jobs']}")

        # 2. a long job on the worker node; kill the node once it trains
        victim = runner.submit("bench", dqn(500_000), name="dqn-victim",
                               config={"ray_resources": {"worker_node": 0.01}})
        wait_for(lambda: len(runner.status(victim, "bench").events) >= 3, 120, "the victim's progress")
        local_workdir = runner._jobs[victim].workdir  # the runner's folder for it here (private; a benchmark)
        actor_pid = next(w["pid"] for w in runner.describe()["workers"] if w["job"] == victim[:8])
        before = runner.status(victim, "bench")
        log(f"victim runs on {before.node} (actor pid {actor_pid}), {len(before.events)} events; killing the worker node")
        killed_at = time.monotonic()
        killed = kill_node(worker, worker_dir)
        worker = None
        end = runner.wait(victim, "bench", timeout=180)
        out["killed_job"] = {"state": end.state, "error": end.error, "reason": end.reason, "node": end.node,
                             "events_before_kill": len(before.events),
                             "seconds_kill_to_failed": round(time.monotonic() - killed_at, 1),
                             "local_workdir_left": local_workdir is not None and Path(local_workdir).exists(),
                             "result": end.result, "actor_process_alive": alive(actor_pid),
                             "killed_pids": len(killed)}
        log(f"victim ended: {out['killed_job']}")

        # 3. the app still answers: a small job on the head
        started = time.monotonic()
        after = runner.submit("bench", dqn(600), name="dqn-after", config={"ray_resources": {"head_node": 0.01}})
        s = runner.wait(after, "bench", timeout=180)
        out["after_kill_job"] = {"state": s.state, "node": s.node, "error": s.error,
                                 "seconds": round(time.monotonic() - started, 1)}
        out["nodes_after_kill"] = [{"id": n["id"], "alive": n["alive"]} for n in runner.describe()["nodes"]]
        log(f"after the kill: {out['after_kill_job']}, nodes {out['nodes_after_kill']}")
        runner.shutdown(timeout=10)
    finally:
        try:
            ray.shutdown()
        except Exception:  # noqa: BLE001
            pass
        if worker is not None:
            kill_node(worker, worker_dir)
        kill_node(head, head_dir)
        log(f"stopped both nodes (logs in {base})")
    out["total_s"] = round(time.monotonic() - t0, 1)
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
