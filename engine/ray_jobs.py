"""Ray jobs: engine.jobs' "ray" backend, for training on the machines of a Ray cluster instead of this one.

Why Ray: one app, several machines (a GPU box, spare desktops) that take the training jobs, so the web server's
own machine stays quick. The runner does not change: it hands RayBackend.run() a JobControl and gets a result
or an exception back, exactly as with engine.workers' worker processes.

- Where: MINILAB_RAY_ADDRESS is `ray://host:10001` (Ray client to a remote cluster), `auto` (join the cluster
  already running on this machine, `ray start --head`), or `local` (start a private one-machine Ray inside the
  app). We connect on first use, with a timeout; a Ray already initialised in this process is reused as is.
- Code: every node runs the same minilab checkout, at the same path, with the same requirements
  (`pip install -r requirements-ray.txt`). Jobs are pickled by reference (module-level functions), so the nodes
  import them from that checkout: each job's runtime_env puts the repo root on PYTHONPATH (which also makes the
  tests' own module-level functions, tests.test_ray.*, importable there) and passes on the MINILAB_* settings.
- A job is one Ray actor (JobActor): `num_cpus` = the runner's threads per job (at least 1, at most the biggest
  node's CPUs), one GPU when the cluster has one and MINILAB_RAY_GPU is not 0. The actor makes its own workdir
  on its node, runs the function there, and buffers its progress events and best-so-far; this process polls it
  every POLL_S and forwards them, and forwards pause/resume/stop the other way (a threaded actor, so these
  calls reach it while it trains). When the function returns, the actor zips its workdir (the model folders)
  and sends it back with the result; here the zip is checked, unpacked into the job's local workdir, and every
  path in the result that pointed into the node's workdir is rewritten to point into the local one.
- Inputs: the files named in submit(inputs=[...]) (uploads) travel with the job, as bytes; the node writes them
  to a temporary folder of its own and the job finds them through ctx.input_path(original path).
- Stop: the stop wish first; a job still running `grace_s` later (stuck in a long native call) is killed with
  ray.kill(). Its best-so-far object stays with the runner; no files come back from a killed job, so no
  half-written model folder can appear locally (only a complete, checked zip is ever unpacked).
- Failures: no retries (max_restarts=0, max_task_retries=0). A job that loses its node or its actor process
  fails with a one-line reason ("the Ray node running it went away: ..."); the user starts it again. Restarting
  silently would rerun minutes of training from scratch, and a job that crashed its worker would crash again.
"""
from __future__ import annotations

import io
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import traceback
import uuid
import zipfile
from pathlib import Path, PurePath
from typing import Any

from engine.errors import UserError
from engine.jobs import JobContext, JobControl, JobFailed, JobStopped, _describe
from engine.workers import env_float as _env_float, make_way_for_the_server

ROOT = Path(__file__).resolve().parents[1]  # the checkout every node must have at this same path
POLL_S = 0.25  # how often run() asks the actor for news and checks the runner's wish
CALL_TIMEOUT_S = 60.0  # a control call the actor does not answer in this long: treated as a lost node
LOST_S = 90.0  # how long an unreachable actor may take to be declared dead or to answer again (Ray's node health
# check declares a silent node dead after about 30 s by default)
INSTALL_HINT = "pip install -r requirements-ray.txt"


def _import_ray():
    try:
        import ray
    except ImportError as error:
        raise UserError(f"The Ray job backend needs Ray, which is not installed here: {INSTALL_HINT}") from error
    return ray


def _one_line(text: str, limit: int = 300) -> str:
    line = re.sub(r"\b([0-9a-f]{8})[0-9a-f]{24,}\b", r"\1", " ".join(str(text).split()))  # ids: 8 hex digits
    return line if len(line) <= limit else line[:limit - 3] + "..."


# ---- the node's side: one actor per job -----------------------------------------------------------------------

class JobActor:
    """Runs one job on a Ray node. Created with ray.remote(...).options(...) by RayBackend; several threads
    (max_concurrency) so that poll() and wish() are answered while run() trains."""

    def __init__(self, job_id: str, config: dict, threads: int, nice: int):
        self.job_id, self.config, self.threads, self.nice = job_id, config, threads, nice
        self.root = Path(tempfile.mkdtemp(prefix="minilab-ray-job-"))  # all the job leaves on this node
        self.workdir = self.root / "work"  # what comes back
        self.workdir.mkdir()
        self.changed = threading.Condition()  # guards everything below
        self.wanted, self.wish_seq = "run", -1
        self.events: list[dict] = []
        self.first = 0  # index of events[0] in the job's whole event sequence (delivered ones are dropped)
        self.best: Any = None
        self.best_version = 0
        self.begun = False

    def where(self) -> dict:
        import ray

        return {"node_id": ray.get_runtime_context().get_node_id(), "ip": ray.util.get_node_ip_address(),
                "hostname": socket.gethostname(), "pid": os.getpid(), "workdir": str(self.workdir),
                "root": str(self.root)}

    def wish(self, wanted: str, seq: int) -> None:
        """run | pause | stop. Calls may overtake each other in a threaded actor, hence the sequence number."""
        with self.changed:
            if seq > self.wish_seq:
                self.wanted, self.wish_seq = wanted, seq
                self.changed.notify_all()

    def poll(self, since: int, best_version: int) -> dict:
        """Events from index `since` on (older ones were delivered and are dropped), the best-so-far if it is
        newer than the caller's, and whether the training function has started."""
        with self.changed:
            drop = max(0, min(since - self.first, len(self.events)))
            del self.events[:drop]
            self.first += drop
            best = self.best if self.best_version > best_version else None
            return {"events": list(self.events), "best_version": self.best_version, "best": best,
                    "begun": self.begun}

    def run(self, fn, inputs: dict[str, bytes]) -> dict:
        """Run the job to its end: {"result", "zip", "workdir"} or {"error": one line}. Never raises, so the
        caller can tell the job's own failure from a lost node. `inputs` are the files the job reads (uploads),
        by their path on the submitting machine; the job finds its copies through ctx.input_path()."""
        # This process is the job's alone. On the app's own machine (local), it also keeps off the server's core.
        make_way_for_the_server(self.nice, pin=os.environ.get("MINILAB_RAY_ADDRESS", "").strip() == "local")
        from engine.device import set_threads

        set_threads(self.threads)
        inputs_dir = self.root / "inputs"  # outside the workdir: not sent back
        copies = {}
        for index, (path, data) in enumerate(inputs.items()):
            copy = inputs_dir / str(index) / Path(path).name
            copy.parent.mkdir(parents=True)
            copy.write_bytes(data)
            copies[path] = str(copy)
        ctx = JobContext(self.job_id, self.workdir, self.config, self._report, self._should_stop, self._save_best,
                         copies)
        with self.changed:
            self.begun = True
        try:
            result = fn(ctx)
            archive = zip_folder(self.workdir)
        except BaseException as exc:  # noqa: BLE001 - every ending is reported as one line
            if not isinstance(exc, UserError):
                traceback.print_exc()  # Ray forwards it to the driver's log
            return {"error": _describe(exc)}
        finally:
            shutil.rmtree(self.root, ignore_errors=True)  # what matters is in the zip now
        return {"result": result, "zip": archive, "workdir": str(self.workdir)}

    def _report(self, event: dict) -> None:
        with self.changed:
            self.events.append(event)

    def _save_best(self, obj: Any) -> None:
        with self.changed:
            self.best, self.best_version = obj, self.best_version + 1

    def _should_stop(self) -> bool:
        with self.changed:
            while self.wanted == "pause":
                self.changed.wait()
            return self.wanted == "stop"


def read_inputs(paths: list[str]) -> dict[str, bytes]:
    """The job's input files, to ship with it. A missing one is left out: the job says so in its own words."""
    return {str(path): Path(path).read_bytes() for path in paths if Path(path).is_file()}


def zip_folder(folder: Path) -> bytes:
    """The folder's contents as zip bytes. Stored, not deflated: weights hardly compress, and this is quick."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


def unpack(data: bytes, workdir: Path) -> None:
    """Check the zip, extract it beside, then move each top-level entry into workdir: a model folder appears
    whole or not at all."""
    workdir = Path(workdir)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        bad = archive.testzip()
        if bad is not None:
            raise JobFailed(f"the job's files came back damaged ({bad})")
        for name in archive.namelist():
            target = (workdir / name).resolve()
            if not target.is_relative_to(workdir.resolve()):
                raise JobFailed(f"the job's files came back with a path outside its folder ({name})")
        staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=workdir))
        try:
            archive.extractall(staging)
            for entry in staging.iterdir():
                destination = workdir / entry.name
                if destination.exists():
                    shutil.rmtree(destination) if destination.is_dir() else destination.unlink()
                entry.rename(destination)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def relocate(value: Any, remote: str, local: str) -> Any:
    """`value` with every string (or path) that names something in the node's workdir pointed at the local
    workdir instead; dicts, lists and tuples are walked."""
    if isinstance(value, str):
        if value == remote or value.startswith(remote.rstrip("/") + "/"):
            return local + value[len(remote):]
        return value
    if isinstance(value, PurePath):
        return Path(relocate(str(value), remote, local))
    if isinstance(value, dict):
        return {key: relocate(item, remote, local) for key, item in value.items()}
    if isinstance(value, list):
        return [relocate(item, remote, local) for item in value]
    if isinstance(value, tuple):
        return tuple(relocate(item, remote, local) for item in value)
    return value


def _remove_folder(path: str) -> None:
    """Run on a node after its job was killed: the workdir the actor could not remove itself."""
    shutil.rmtree(path, ignore_errors=True)


# ---- this process's side -------------------------------------------------------------------------------------

class RayBackend:
    """Runs each job as an actor on a Ray cluster (see the module docstring). `resources` are custom Ray
    resources every job asks for (say {"gpu_box": 0.01} to keep jobs on nodes started with that resource);
    a job's config key "ray_resources" adds its own. Unpinned by default."""

    name = "ray"

    def __init__(self, address: str = "local", grace_s: float | None = None, resources: dict | None = None,
                 connect_timeout_s: float | None = None, start_timeout_s: float | None = None):
        self.address = address.strip() or "local"
        self.grace_s = _env_float("MINILAB_CANCEL_GRACE", 10.0) if grace_s is None else grace_s
        self.resources = dict(resources or {})
        self.connect_timeout_s = (_env_float("MINILAB_RAY_CONNECT_TIMEOUT", 60.0) if connect_timeout_s is None
                                  else connect_timeout_s)
        # a job that no node can take (all busy, or it asks for more than any node has) fails after this long
        self.start_timeout_s = (_env_float("MINILAB_RAY_START_TIMEOUT", 600.0) if start_timeout_s is None
                                else start_timeout_s)
        self._lock = threading.Lock()
        self._ray = None
        self._actor_class = None
        self._remover = None
        self._running: dict[str, dict] = {}  # job id -> {"node": text, "pid": ..., "actor": handle}
        self._connecting: threading.Thread | None = None  # a ray.init() that may outlive its timeout
        self._failed: tuple[float, str] | None = None  # (time.monotonic(), message) of the last failed connect

    # ---- connecting ----

    def _connect(self):
        """Ray, initialised: reuse this process's connection, else join or start the cluster (with a timeout)."""
        with self._lock:
            if self._ray is not None:
                return self._ray
            ray = _import_ray()
            if not ray.is_initialized():
                if self._connecting is not None and self._connecting.is_alive():
                    raise UserError(f"Still trying to reach the Ray cluster at {self.address} "
                                    "(MINILAB_RAY_ADDRESS); try again in a minute.")
                try:
                    self._init(ray)
                except UserError as error:
                    self._failed = (time.monotonic(), str(error))
                    raise
            self._actor_class = ray.remote(max_restarts=0, max_task_retries=0, max_concurrency=4)(JobActor)
            self._remover = ray.remote(num_cpus=0, max_retries=0)(_remove_folder)
            self._ray = ray
            return ray

    def _init(self, ray) -> None:
        if self.address == "local":
            kwargs = {"address": "local", "num_cpus": int(_env_float("MINILAB_RAY_CPUS", 0)) or os.cpu_count() or 1,
                      "include_dashboard": False}
        elif self.address.startswith("ray://") or self.address == "auto" or ":" in self.address:
            kwargs = {"address": self.address}
        else:
            raise UserError(f"MINILAB_RAY_ADDRESS must be ray://host:port, host:port, auto or local; "
                            f"got {self.address!r}.")
        outcome: dict = {}

        def init() -> None:
            try:
                ray.init(**kwargs, ignore_reinit_error=True, logging_level="WARNING")
            except BaseException as error:  # noqa: BLE001 - handed to the waiting thread
                outcome["error"] = error
                return
            if self.address == "local":
                # Ray starts its local processes with PR_SET_PDEATHSIG, which Linux ties to the creating *thread*:
                # were this thread to end, its GCS and raylet would die with it (and Ray then ends this process).
                threading.Event().wait()

        # ray.init can retry an unreachable address for minutes; wait for it in a thread we can give up on
        thread = self._connecting = threading.Thread(target=init, name="minilab-ray-connect", daemon=True)
        thread.start()
        deadline = time.monotonic() + self.connect_timeout_s
        while thread.is_alive() and not ray.is_initialized() and "error" not in outcome and time.monotonic() < deadline:
            time.sleep(0.05)
        if thread.is_alive() and not ray.is_initialized():
            raise UserError(f"Could not reach the Ray cluster at {self.address} within "
                            f"{self.connect_timeout_s:g} s (MINILAB_RAY_ADDRESS). Is it running?")
        if "error" in outcome:
            raise UserError(f"Could not connect to the Ray cluster at {self.address} (MINILAB_RAY_ADDRESS): "
                            f"{_one_line(outcome['error'])}")

    # ---- running one job ----

    def _options(self, ray, control: JobControl) -> dict:
        nodes = [node for node in ray.nodes() if node.get("Alive")]
        biggest = max((node.get("Resources", {}).get("CPU", 0) for node in nodes), default=1)
        cpus = max(1, min(control.threads, int(biggest) or 1))
        has_gpu = any(node.get("Resources", {}).get("GPU", 0) >= 1 for node in nodes)
        gpus = 1 if has_gpu and os.environ.get("MINILAB_RAY_GPU", "").strip() != "0" else 0
        resources = {**self.resources, **dict(control.context.config.get("ray_resources") or {})}
        env_vars = {key: value for key, value in os.environ.items() if key.startswith("MINILAB_")}
        env_vars["PYTHONPATH"] = str(ROOT)
        return {"num_cpus": cpus, "num_gpus": gpus, "resources": resources,
                "runtime_env": {"env_vars": env_vars}, "name": f"minilab-job-{control.context.job_id[:8]}-"
                                                            f"{uuid.uuid4().hex[:6]}"}

    def run(self, control: JobControl) -> object:
        ray = self._connect()
        ctx = control.context
        options = self._options(ray, control)
        actor = self._actor_class.options(**options).remote(ctx.job_id, ctx.config, options["num_cpus"],
                                                            control.nice)
        with self._lock:
            self._running[ctx.job_id] = {"actor": actor, "node": None, "pid": None, "cpus": options["num_cpus"],
                                         "gpus": options["num_gpus"]}
        where = None
        try:
            where = self._wait_for_start(ray, actor, control, options)
            node = f"node {where['ip']} ({where['hostname']}, Ray node {where['node_id'][:8]})"
            control.placed(node)
            with self._lock:
                self._running[ctx.job_id].update(node=node, pid=where["pid"])
            return self._supervise(ray, actor, control, where)
        except ray.exceptions.RayActorError as error:
            raise JobFailed(self._death_reason(ray, error, where)) from None
        except ray.exceptions.RuntimeEnvSetupError as error:
            raise JobFailed(f"the Ray node could not set up the job's environment: {_one_line(error)}") from None
        except ray.exceptions.RayTaskError as error:  # the job could not be unpickled there, or its result here
            raise JobFailed(f"the job could not run on the Ray node: {_describe(error.cause)}") from None
        except ray.exceptions.GetTimeoutError:
            raise JobFailed(f"the Ray node running it stopped answering for {CALL_TIMEOUT_S:g} s") from None
        finally:
            with self._lock:
                self._running.pop(ctx.job_id, None)
            try:
                ray.kill(actor, no_restart=True)  # normally finished: frees its CPUs now, not at garbage collection
            except Exception:  # noqa: BLE001 - already gone, or the cluster is
                pass

    def _wait_for_start(self, ray, actor, control: JobControl, options: dict) -> dict:
        """Wait until a node has taken the actor; a cancel or the start timeout ends the wait."""
        ref = actor.where.remote()
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            done, _ = ray.wait([ref], timeout=POLL_S)
            if done:
                return ray.get(ref)
            if control.wanted() == "stop":
                raise JobStopped("stopped before any Ray node had taken it")
            if time.monotonic() > deadline:
                raise JobFailed(f"no Ray node took it within {self.start_timeout_s:g} s: it needs "
                                f"{options['num_cpus']} CPU(s), {options['num_gpus']} GPU(s)"
                                + (f" and {options['resources']}" if options["resources"] else "")
                                + " free on one node (MINILAB_RAY_START_TIMEOUT)")

    def _supervise(self, ray, actor, control: JobControl, where: dict) -> object:
        """Relay events and the best-so-far here, wishes there, until the job ends; then bring its files home."""
        ctx = control.context
        remote, local = where["workdir"], str(ctx.workdir)
        run_ref = actor.run.remote(control.fn, read_inputs(control.inputs))
        seen, best_version, begun, sent, seq, stop_since, lost_since = 0, 0, False, "run", 0, None, None
        while True:
            done, _ = ray.wait([run_ref], timeout=POLL_S)
            try:
                news = ray.get(actor.poll.remote(seen, best_version), timeout=CALL_TIMEOUT_S)
                lost_since = None
            except ray.exceptions.ActorUnavailableError as error:
                # Its node or process stopped answering. Wait for Ray's verdict (the node is declared dead and the
                # actor with it, or it answers again), so the reason given is the true one.
                lost_since = lost_since or time.monotonic()
                if time.monotonic() - lost_since > LOST_S:
                    raise JobFailed(f"the Ray node running it ({where['ip']}, Ray node {where['node_id'][:8]}) "
                                    f"stopped answering for {LOST_S:g} s") from error
                news, done = None, False
                time.sleep(POLL_S)
            if news is not None:
                if news["begun"] and not begun:
                    begun = True
                    control.started()  # the time limit counts from here, not from the actor's start-up
                for event in news["events"]:
                    ctx.report(**event)
                seen += len(news["events"])
                if news["best_version"] > best_version:
                    best_version = news["best_version"]
                    ctx.save_best(relocate(news["best"], remote, local))
            if done:
                break
            wanted = control.wanted()
            if wanted != sent:
                seq += 1
                actor.wish.remote(wanted, seq)
                sent = wanted
            if wanted == "stop":
                stop_since = stop_since or time.monotonic()
                if time.monotonic() - stop_since > self.grace_s:
                    ray.kill(actor, no_restart=True)
                    self._remover.options(scheduling_strategy=_on_node(ray, where["node_id"]),
                                          runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}}).remote(where["root"])
                    raise JobStopped(f"stopped by force {self.grace_s:g} s after the stop request: it did not reach "
                                     "its next stop check (a long native call?)")
        outcome = ray.get(run_ref)
        if "error" in outcome:
            raise JobFailed(outcome["error"])
        unpack(outcome["zip"], ctx.workdir)
        return relocate(outcome["result"], outcome["workdir"], local)

    def _death_reason(self, ray, error, where: dict | None) -> str:
        """One line: the node went away, or only the job's process died (a crash, Ray's memory monitor)."""
        lines = [line.strip() for line in str(error).splitlines()
                 if line.strip() and not line.startswith("\t") and "died unexpectedly before finishing" not in line]
        detail = _one_line(" ".join(lines) or type(error).__name__, 240)
        node_alive = True
        if where is not None:
            try:
                node_alive = any(node.get("NodeID") == where["node_id"] and node.get("Alive") for node in ray.nodes())
            except Exception:  # noqa: BLE001 - the cluster itself may be gone
                node_alive = False
        if not node_alive or "node" in detail.lower():
            place = f" ({where['ip']}, Ray node {where['node_id'][:8]})" if where else ""
            return f"the Ray node running it{place} went away: {detail}"
        return f"its Ray actor process died: {detail}"

    # ---- the System tab, and shutting down ----

    def describe(self) -> dict:
        """Nodes and running jobs for the System tab. Never raises, and never waits on a slow connect: while one is
        under way, or within 30 s of a failed one, it reports the problem instead."""
        if self._ray is None:
            if self._connecting is not None and self._connecting.is_alive():
                return {"backend": self.name, "address": self.address, "error": "connecting to the Ray cluster..."}
            if self._failed is not None and time.monotonic() - self._failed[0] < 30:
                return {"backend": self.name, "address": self.address, "error": self._failed[1]}
        try:
            ray = self._connect()
            nodes = [{"node": node.get("NodeManagerAddress"), "hostname": node.get("NodeManagerHostname"),
                      "id": str(node.get("NodeID", ""))[:8], "alive": bool(node.get("Alive")),
                      "resources": {key: value for key, value in node.get("Resources", {}).items()
                                    if not key.startswith("node:")}}
                     for node in ray.nodes()]
        except Exception as error:  # noqa: BLE001 - the System tab shows the problem instead of failing
            return {"backend": self.name, "address": self.address, "error": _one_line(error)}
        with self._lock:
            workers = [{"job": job_id[:8], "node": info["node"], "pid": info["pid"], "cpus": info["cpus"],
                        "gpus": info["gpus"]} for job_id, info in self._running.items()]
        return {"backend": self.name, "address": self.address, "nodes": nodes, "workers": workers,
                "cancel_grace_s": self.grace_s}

    def close(self) -> None:
        """Kill the actors of jobs still running (the runner has already asked them to stop). A Ray this backend
        started itself ("local") ends with the process; one shared with others is left running."""
        with self._lock:
            actors = [info["actor"] for info in self._running.values()]
            ray = self._ray
        for actor in actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001 - best effort at shutdown
                pass


def _on_node(ray, node_id: str):
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)
