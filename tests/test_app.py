"""The app through gradio_client against a launched server: classify, batch mode, errors, system status."""
import socket

import pytest
from gradio_client import Client, handle_file

from tests.conftest import draw_strokes, render_digit


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launched_client(max_file_size: str):
    """The app launched on a free loopback port; yields a gradio_client Client, closes the app afterwards."""
    from app import build_app

    demo = build_app()
    demo.queue(default_concurrency_limit=2)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, show_error=True, max_file_size=max_file_size)
    yield Client(f"http://127.0.0.1:{port}/", verbose=False)
    demo.close()


@pytest.fixture(scope="module")
def client():
    yield from launched_client("5mb")


def test_classify_a_digit_photo(client, tmp_path):
    path = tmp_path / "seven.png"
    draw_strokes([[(0.25, 0.2), (0.75, 0.2), (0.45, 0.85)]], transparent=False).save(path)
    top, cam, timing, seen, filters, activations = client.predict("mnist", handle_file(str(path)), None, "photo", api_name="/classify")
    assert top["label"] == "7"
    assert len(top["confidences"]) == 5
    assert "ms" in timing and cam
    assert seen is None and filters is None and not activations  # the look-inside panel is closed: not computed
    seen, filters, activations = client.predict("mnist", handle_file(str(path)), None, "photo", api_name="/look_inside")
    assert seen and filters and len(activations) == 4
    assert client.predict("mnist", None, None, "photo", api_name="/look_inside") == (None, None, [])  # no image yet: quietly empty


def test_classify_the_drawing_pad(client, tmp_path):
    path = tmp_path / "one.png"
    draw_strokes([[(0.52, 0.15), (0.5, 0.85)]]).save(path)
    sketch = {"background": None, "layers": [], "composite": handle_file(str(path))}
    top = client.predict("mnist", None, sketch, "draw", api_name="/classify")[0]
    assert top["label"] == "1"


def test_bad_inputs_get_messages_and_the_server_survives(client, tmp_path):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="No image yet"):
        client.predict("mnist", None, None, "photo", api_name="/classify")
    empty = tmp_path / "empty.png"
    draw_strokes([]).save(empty)
    with pytest.raises(AppError, match="empty"):
        client.predict("mnist", None, {"background": None, "layers": [], "composite": handle_file(str(empty))}, "draw", api_name="/classify")
    broken = tmp_path / "broken.png"
    render_digit("3").save(broken)
    broken.write_bytes(broken.read_bytes()[:300])
    with pytest.raises(AppError, match="damaged or truncated"):
        client.predict("mnist", handle_file(str(broken)), None, "photo", api_name="/classify")
    text = tmp_path / "notes.png"
    text.write_text("hello, not an image")
    with pytest.raises(AppError):
        client.predict("mnist", handle_file(str(text)), None, "photo", api_name="/classify")
    with pytest.raises(AppError, match="unavailable"):
        client.predict("torchvision/resnet50", handle_file(str(broken)), None, "photo", api_name="/classify")
    good = tmp_path / "three.png"
    render_digit("3", stroke=2).save(good)
    assert client.predict("mnist", handle_file(str(good)), None, "photo", api_name="/classify")[0]["label"] == "3"


def test_batch_mode_returns_a_table_and_csv(client, tmp_path):
    files = []
    for digit in "0147":
        path = tmp_path / f"{digit}.png"
        render_digit(digit, stroke=2).save(path)
        files.append(handle_file(str(path)))
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"\x00" * 100)
    files.append(handle_file(str(junk)))
    table, csv_path = client.predict("mnist", files, api_name="/classify_batch")
    rows = table["data"]
    assert [row[0] for row in rows] == ["0.png", "1.png", "4.png", "7.png", "junk.jpg"]
    assert sum(row[1] == row[0][0] for row in rows[:4]) >= 3
    assert rows[-1][4]  # the unreadable file has an error message, the rest still classified
    with open(csv_path) as handle:
        assert handle.readline().strip() == "file,label,probability,top5,error"


def test_system_status_lists_models_with_reasons(client):
    device, models, loaded, where, workers = client.predict(api_name="/system_status")
    assert "Device" in device
    assert "Training jobs run in" in where  # the backend the app was started with
    # a request runs on one thread and a job on the cores (the tab said "cpu threads: 1", as if training did too)
    assert "cpu threads per request:** 1" in device and "cpu threads per training job:**" in device
    rows = models["data"]
    by_name = {row[1]: row for row in rows}
    assert by_name["mnist"][3] == "yes"
    assert by_name["torchvision/resnet50"][3] == "no" and "offline" in by_name["torchvision/resnet50"][4]
    assert by_name["all-MiniLM-L6-v2"][2] == "package"
    assert by_name["cartpole"][3] == "yes"


# --- Reinforcement learning tab -------------------------------------------------------------------------
OWNER_A, OWNER_B = "a" * 32, "b" * 32
SMALL_RUN = dict(total_steps=3000, lr=1e-3, hidden="64,64", num_envs=4, batch_size=64, gamma=0.99, buffer_size=5000,
                 eps_duration=1500, seed=0)


def value_of(update):
    """A component update (e.g. a dropdown with new choices) comes back as a dict; its value is what we want."""
    return update.get("value") if isinstance(update, dict) else update


def poll_until_done(client, owner: str, timeout_s: float = 120.0) -> tuple:
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = client.predict(owner, None, api_name="/rl_poll")
        if "done" in result[0] or "cancelled" in result[0] or "failed" in result[0]:
            return result
        time.sleep(0.5)
    pytest.fail(f"the training job did not finish within {timeout_s} s: {result[0]}")


def test_rl_play_shipped_agent_beside_a_random_one(client):
    video, verdict = client.predict("cartpole", 3, OWNER_A, api_name="/rl_play")
    assert str(video["video"] if isinstance(video, dict) else video).endswith(".mp4")
    assert "cartpole" in verdict and "random agent" in verdict
    plot, text = client.predict("cartpole", 0, 5, OWNER_A, api_name="/rl_compare")
    assert "averages" in text


def test_rl_train_then_replay_download_and_reload(client, tmp_path):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="learning rate"):
        client.predict(OWNER_A, *{**SMALL_RUN, "lr": -0.1}.values(), api_name="/rl_train")
    with pytest.raises(AppError, match="buffer"):
        client.predict(OWNER_A, *{**SMALL_RUN, "buffer_size": 0}.values(), api_name="/rl_train")
    owner, _ = client.predict(OWNER_A, *SMALL_RUN.values(), api_name="/rl_train")
    assert owner == OWNER_A
    progress, rewards, learning, agent, download, _ = poll_until_done(client, OWNER_A)
    agent = value_of(agent)
    assert "done" in progress and agent.startswith("my-cartpole-")
    assert "█" * 20 in progress and "░" not in progress  # a finished run's bar is full, whenever its last episode ended
    assert rewards is not None  # the reward curve has points
    video, verdict = client.predict(agent, 0, OWNER_A, api_name="/rl_play")
    assert "return" in verdict
    # another browser sees neither the job nor the agent
    other = client.predict(OWNER_B, None, api_name="/rl_poll")
    assert "No training yet" in other[0]
    with pytest.raises(AppError, match="Unknown model"):
        client.predict(agent, 0, OWNER_B, api_name="/rl_play")
    # the downloaded zip loads again (into the other browser, as a user would share it)
    owner_b, loaded = client.predict(handle_file(download), OWNER_B, api_name="/rl_upload")
    loaded = value_of(loaded)
    assert owner_b == OWNER_B and loaded.startswith("uploaded-")
    assert "return" in client.predict(loaded, 1, OWNER_B, api_name="/rl_play")[1]
    # a foreign file is refused with a reason
    junk = tmp_path / "agent.zip"
    junk.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(AppError, match="not a readable zip"):
        client.predict(handle_file(str(junk)), OWNER_B, api_name="/rl_upload")


def test_an_agent_cancelled_before_it_saved_anything_is_not_said_to_be_kept():
    """A run cancelled in the queue has no agent; the RL tab said "cancelled (kept what it learned)" anyway."""
    from types import SimpleNamespace

    from demos import rl

    job = SimpleNamespace(state="cancelled", done=True, result=None, progress={}, config={"total_steps": 1000},
                          elapsed=0.0, queue_position=0, error=None)
    assert "nothing to keep" in rl._progress_markdown(job) and "kept" not in rl._progress_markdown(job)
    job.result = {"folder": "/agents/x", "metrics": {"total_steps": 500}}
    assert "kept what it learned" in rl._progress_markdown(job) and "500" in rl._progress_markdown(job)
