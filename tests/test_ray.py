"""The Ray job backend (engine.ray_jobs) on one embedded Ray shared by the whole module.

The job functions are module-level, so Ray can pickle them by reference: the actors import them from
tests.test_ray (RayBackend puts the repo root on their PYTHONPATH). Jobs and test talk only through the runner
(progress events, the wish), as they would across machines; no test depends on guessing how long a step takes.
"""
from __future__ import annotations

import functools
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from engine.errors import UserError  # noqa: E402
from engine.jobs import JobContext, JobFailed, JobRunner  # noqa: E402
from engine.ray_jobs import RayBackend, relocate, unpack, zip_folder  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WAIT = 60.0  # upper bound for anything the tests wait on (an actor starts in seconds)


@pytest.fixture(scope="module")
def cluster():
    """One Ray for the module; every RayBackend("local") below finds it initialised and reuses it."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture
def runner(cluster):
    runners = []

    def make(**kwargs) -> JobRunner:
        backend = RayBackend("local", grace_s=kwargs.pop("grace_s", 2.0))
        made = JobRunner(backend=backend, threads=1, **kwargs)
        runners.append(made)
        return made

    yield make
    for made in runners:
        made.shutdown(timeout=10)


def wait_until(check, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# ---- jobs (module level: pickled by reference) ----

def write_model(upload: str, ctx: JobContext) -> dict:
    """Read the upload it was submitted with, report three steps, write a model folder, return paths into the
    (remote) workdir."""
    copy = ctx.input_path(upload)
    for step in range(1, 4):
        ctx.report(step=step, steps=3)
    folder = ctx.workdir / "model"
    folder.mkdir()
    (folder / "card.json").write_text('{"name": "tiny"}')
    (folder / "weights.bin").write_bytes(b"\x00" * 1000)
    return {"folder": str(folder), "files": [str(folder / "card.json")], "upload": copy.read_text(),
            "copy": str(copy)}


def loop_until_stopped(ctx: JobContext) -> None:
    """A training loop in miniature: one step, remember it as the best, check should_stop()."""
    step = 0
    while not ctx.should_stop():
        step += 1
        ctx.save_best({"step": step})
        ctx.report(step=step)
        time.sleep(0.05)
    return None  # the runner hands back the best so far


def stuck(ctx: JobContext) -> None:
    """A job that never checks should_stop(): one long call."""
    ctx.report(step=1, workdir=str(ctx.workdir))
    time.sleep(600)


def user_mistake(ctx: JobContext) -> None:
    raise UserError("The upload has no images in it.")


def bug(ctx: JobContext) -> None:
    raise KeyError("labels")


# ---- without a cluster ----

def test_paths_into_the_node_workdir_are_rewritten():
    result = {"folder": "/tmp/r/model", "list": ["/tmp/r", ("/tmp/r/a", 3)], "other": "/tmp/rx/model",
              "path": Path("/tmp/r/b"), "n": 1}
    assert relocate(result, "/tmp/r", "/home/l") == {
        "folder": "/home/l/model", "list": ["/home/l", ("/home/l/a", 3)], "other": "/tmp/rx/model",
        "path": Path("/home/l/b"), "n": 1}


def test_unpack_brings_whole_folders_and_refuses_damage(tmp_path):
    source = tmp_path / "remote" / "model"
    source.mkdir(parents=True)
    (source / "card.json").write_text("{}")
    data = zip_folder(tmp_path / "remote")
    local = tmp_path / "local"
    local.mkdir()
    unpack(data, local)
    assert (local / "model" / "card.json").read_text() == "{}"
    assert [p.name for p in local.iterdir()] == ["model"]  # no staging folder left
    with pytest.raises((zipfile.BadZipFile, JobFailed)):
        unpack(data[: len(data) // 2], tmp_path / "local")


def test_without_ray_installed_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    backend = RayBackend("local")
    with pytest.raises(UserError, match="requirements-ray.txt"):
        backend._connect()
    assert "requirements-ray.txt" in backend.describe()["error"]


def test_an_unreachable_cluster_is_a_clear_error_not_a_hang():
    """In a fresh process: this one's Ray is initialised (and reused) once the cluster fixture has run."""
    code = ("from engine.ray_jobs import RayBackend\n"
            "backend = RayBackend('127.0.0.1:1', connect_timeout_s=3)\n"
            "print(backend.describe()['error'])\n")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "Could not reach the Ray cluster at 127.0.0.1:1 within 3 s" in done.stdout, done.stderr[-2000:]
    assert time.monotonic() - started < 30


# ---- on the embedded cluster ----

def test_progress_result_model_folder_and_inputs(runner, tmp_path):
    upload = tmp_path / "upload.csv"
    upload.write_text("text,label\nhello,greeting\n")
    jobs = runner()
    job_id = jobs.submit("alice", functools.partial(write_model, str(upload)), name="tiny", inputs=[upload])
    status = jobs.wait(job_id, "alice", timeout=WAIT)
    assert status.state == "succeeded", status.error
    assert status.backend == "ray" and status.node.startswith("node ")
    assert [event["step"] for event in status.events] == [1, 2, 3]
    folder = Path(status.result["folder"])
    assert (folder / "card.json").read_text() == '{"name": "tiny"}' and (folder / "weights.bin").stat().st_size == 1000
    assert folder.parent.name.startswith("minilab-job-")  # the runner's local workdir, not the actor's
    assert status.result["files"] == [str(folder / "card.json")]
    # the upload travelled with the job as a copy, and the node's copy went with it
    assert status.result["upload"] == upload.read_text() and status.result["copy"] != str(upload)
    assert not Path(status.result["copy"]).exists()


def test_pause_resume_cancel_keeps_the_best_and_describe_shows_the_node(runner):
    jobs = runner()
    job_id = jobs.submit("alice", loop_until_stopped, name="loop")
    wait_until(lambda: jobs.status(job_id, "alice").progress.get("step", 0) >= 3)

    info = jobs.describe()
    assert info["backend"] == "ray" and len(info["nodes"]) == 1
    assert info["nodes"][0]["alive"] and info["nodes"][0]["resources"]["CPU"] == 2
    assert info["workers"][0]["job"] == job_id[:8] and info["workers"][0]["node"].startswith("node ")
    assert info["jobs"][0]["node"] == info["workers"][0]["node"]

    jobs.pause(job_id, "alice")
    time.sleep(1.0)  # the pause reaches the actor within a poll or two
    paused_at = jobs.status(job_id, "alice").progress["step"]
    time.sleep(1.0)
    assert jobs.status(job_id, "alice").progress["step"] <= paused_at + 1
    jobs.resume(job_id, "alice")
    wait_until(lambda: jobs.status(job_id, "alice").progress["step"] >= paused_at + 3)

    jobs.cancel(job_id, "alice")
    status = jobs.wait(job_id, "alice", timeout=WAIT)
    assert status.state == "cancelled" and status.reason is None
    assert status.result["step"] >= paused_at + 3 and status.result["step"] == status.progress["step"]


def test_a_stuck_job_is_stopped_by_force_and_a_time_limit_stops_a_job(runner):
    jobs = runner(grace_s=1.0, max_concurrent=2)  # two jobs side by side, one CPU each
    job_id = jobs.submit("alice", stuck, name="stuck")
    limited = jobs.submit("alice", loop_until_stopped, name="loop", time_limit_s=1.5)
    wait_until(lambda: jobs.status(job_id, "alice").progress.get("step") == 1)
    started = time.monotonic()
    jobs.cancel(job_id, "alice")
    status = jobs.wait(job_id, "alice", timeout=WAIT)
    assert status.state == "cancelled" and "stopped by force 1 s" in status.reason
    assert time.monotonic() - started < 10
    assert status.result is None
    wait_until(lambda: not Path(status.progress["workdir"]).parent.exists())  # the node's folder is cleaned up
    status = jobs.wait(limited, "alice", timeout=WAIT)
    assert status.state == "timed_out" and status.reason is None and status.result["step"] >= 1


def test_errors_come_back_as_one_line(runner):
    jobs = runner(max_concurrent=2)
    mistake = jobs.submit("alice", user_mistake, name="mistake")
    crash = jobs.submit("alice", bug, name="bug")
    assert jobs.wait(mistake, "alice", timeout=WAIT).error == "The upload has no images in it."
    status = jobs.wait(crash, "alice", timeout=WAIT)
    assert status.state == "failed" and status.error == "KeyError: 'labels'"


def test_a_real_dqn_training_via_ray_leaves_a_loadable_agent(runner):
    from engine.rl.dqn import DQNConfig, load_agent
    from engine.rl.live import training_job

    config = DQNConfig(total_steps=600, hidden=[16], eval_every=0, final_eval_episodes=0, learning_starts=100)
    jobs = runner()
    job_id = jobs.submit("alice", training_job(config), name="cartpole")
    status = jobs.wait(job_id, "alice", timeout=120)
    assert status.state == "succeeded", status.error
    assert status.events and Path(status.result["folder"]).is_dir()
    qnet, card = load_agent(status.result["folder"])
    assert card["task"] and sum(p.numel() for p in qnet.parameters()) > 0


def test_the_cli_trains_on_the_cluster_and_says_where(cluster, tmp_path, monkeypatch, capsys):
    """`MINILAB_RAY_ADDRESS=... python -m engine train ...`: the job runs on a node, the model lands at --out here."""
    import json

    from engine.__main__ import main

    monkeypatch.setenv("MINILAB_RAY_ADDRESS", "local")
    out = tmp_path / "agent"
    assert main(["train", "cartpole", "--budget-steps", "600", "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["backend"] == "ray" and "Ray node" in result["node"] and result["model"] == str(out)
    assert (out / "weights.safetensors").is_file() and (out / "card.json").is_file()
