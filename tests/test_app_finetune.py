"""The Fine-tune tab through gradio_client: upload, see what was understood, train, poll, see the accuracy,
try the model, download it, load it again in another browser, and never see another browser's job."""
from __future__ import annotations

import time
import zipfile
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from tests.test_app import launched_client
from tests.test_finetune import shape_png, shapes_zip, write_reviews

ALICE, BOB = "a" * 32, "b" * 32
# backbone, strategy, text encoder, text strategy, char init, budget, epochs, lr, batch, val fraction, size, flip, seed,
# sst2's share in a sentiment model
QUICK_IMAGES = ["cifar10", "finetune", "auto", "probe", "scratch", 3, 60, 0.2, 64, 0.3, 16, False, 0, 0.3]


def test_the_pages_text_settings_reach_the_engine():
    from demos.finetune import _config
    from engine.errors import UserError

    config = _config("text", "cifar10", "finetune", "sst2", "lora", "scratch", 20, 60, 0.2, 64, 0.2, 0, False, 3, 0.5)
    assert (config.backbone, config.strategy, config.time_budget, config.val_fraction, config.seed, config.start_weight) == \
        ("sst2", "lora", 20.0, 0.2, 3, 0.5)
    with pytest.raises(UserError, match="below 1"):
        _config("text", "cifar10", "finetune", "auto", "lora", "scratch", 20, 60, 0.2, 64, 0.2, 0, False, 0, 1.0)


@pytest.fixture(scope="module")
def client():
    yield from launched_client("20mb")  # a fine-tuned image model's zip is about 6 MB


def wait_until_done(client, owner: str, timeout_s: float = 180.0) -> tuple:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        result = client.predict(owner, api_name="/finetune_poll")
        if "done" in result[0] or "failed" in result[0] or "cancelled" in result[0]:
            return result
        time.sleep(0.5)
    raise AssertionError(f"the job did not finish: {result[0]}")


def test_inspect_train_try_download_and_reload_elsewhere(client, tmp_path):
    upload = handle_file(str(shapes_zip(tmp_path / "shapes.zip", 10, [("shapes/notes.txt", b"hi")])))
    summary, samples = client.predict("Images", [upload], api_name="/finetune_inspect")
    assert "20 images in 2 classes" in summary and "Ready to train" in summary and "notes.txt" in summary
    assert len(samples) == 8  # four per class

    owner, _ = client.predict(ALICE, "Images", [upload], *QUICK_IMAGES, api_name="/finetune_start")
    assert owner == ALICE
    with pytest.raises(AppError, match="still training"):
        client.predict(ALICE, "Images", [upload], *QUICK_IMAGES, api_name="/finetune_start")
    progress, loss, accuracy, results, confusion, per_class, mistakes, text_mistakes, download, _ = wait_until_done(client, ALICE)
    assert "done" in progress and "Validation accuracy" in results
    assert loss is not None and accuracy is not None and confusion is not None
    assert confusion["visible"] and per_class["visible"]  # the result panels show once there are results
    assert [row[0] for row in per_class["value"]["data"]] == ["circle", "square"]
    assert all(row[1].endswith("%") for row in per_class["value"]["data"])

    image = tmp_path / "circle.png"
    image.write_bytes(shape_png("circle", __import__("random").Random(9)))
    label = client.predict(handle_file(str(image)), ALICE, api_name="/finetune_try_image")
    assert {c["label"] for c in label["confidences"]} == {"circle", "square"}

    # another browser sees nothing of it, and cannot use it
    assert client.predict(BOB, api_name="/finetune_poll")[0].startswith("No training yet")
    with pytest.raises(AppError, match="Train a model first"):
        client.predict(handle_file(str(image)), BOB, api_name="/finetune_try_image")
    with pytest.raises(AppError, match="No training is running"):
        client.predict(BOB, api_name="/finetune_cancel")

    # the downloaded zip loads again, in the other browser
    assert download.endswith(".zip") and zipfile.is_zipfile(download)
    owner, message = client.predict(handle_file(download), BOB, api_name="/finetune_load_model")
    assert owner == BOB and "Loaded" in message and "Image classification" in message


def test_a_job_waits_its_turn_and_one_cancelled_in_the_queue_says_nothing_was_kept(client, tmp_path):
    """One trainer: a second browser's job shows its place in the queue; cancelled there, it never trained, so the
    page must not claim it "kept the best model so far" (it did), nor offer a download or results."""
    upload = handle_file(str(shapes_zip(tmp_path / "shapes.zip", 10)))
    first, second = "c" * 31 + "1", "d" * 31 + "2"
    long_run = list(QUICK_IMAGES)
    long_run[5] = 120  # the budget: the first job holds the trainer until it is cancelled
    client.predict(first, "Images", [upload], *long_run, api_name="/finetune_start")
    client.predict(second, "Images", [upload], *QUICK_IMAGES, api_name="/finetune_start")
    assert "in the queue" in client.predict(second, api_name="/finetune_poll")[0]
    client.predict(second, api_name="/finetune_cancel")
    progress, _, _, results, confusion, per_class, _, _, download, _ = client.predict(second, api_name="/finetune_poll")
    assert "before a model was saved" in progress and "kept" not in progress
    assert results == "" and download is None and not confusion["visible"] and not per_class["visible"]
    deadline = time.monotonic() + 60  # the first job trains an epoch (its worker process may still be starting)
    while not client.predict(first, api_name="/finetune_poll")[1] and time.monotonic() < deadline:
        time.sleep(0.5)
    client.predict(first, api_name="/finetune_cancel")
    progress, *_ = wait_until_done(client, first)
    assert "cancelled (kept the best model so far)" in progress


def test_push_without_network_says_so(client):
    with pytest.raises(AppError, match="access token"):
        client.predict("", "me/model", ALICE, api_name="/finetune_push")
    with pytest.raises(AppError, match="Hub cannot be reached|repository id"):
        client.predict("hf_fake", "me/model", ALICE, api_name="/finetune_push")


def test_text_classifier_via_the_tab(client, tmp_path):
    upload = handle_file(str(write_reviews(tmp_path / "reviews.csv")))
    summary, _ = client.predict("Labelled text", [upload], api_name="/finetune_inspect")
    assert "48 rows in 2 classes" in summary and "`review`" in summary and "`verdict`" in summary
    settings = ["cifar10", "finetune", "minilm", "probe", "scratch", 10, 60, 0.05, 64, 0.25, 0, False, 0, 0.3]
    client.predict("c" * 32, "Labelled text", [upload], *settings, api_name="/finetune_start")
    result = wait_until_done(client, "c" * 32)
    assert "Validation accuracy" in result[3] and result[7] is not None
    label, _ = client.predict("what a wonderful film, loved it", "c" * 32, api_name="/finetune_try_text")
    assert {c["label"] for c in label["confidences"]} == {"disliked", "liked"}


def test_bad_uploads_get_messages(client, tmp_path):
    single = tmp_path / "single.zip"
    with zipfile.ZipFile(single, "w") as archive:
        for i in range(3):
            archive.writestr(f"cats/{i}.png", shape_png("circle", __import__("random").Random(i)))
    summary, _ = client.predict("Images", [handle_file(str(single))], api_name="/finetune_inspect")
    assert "Cannot train yet" in summary and "at least 2" in summary
    not_zip = tmp_path / "fake.zip"
    not_zip.write_bytes(b"this is not a zip")
    summary, samples = client.predict("Images", [handle_file(str(not_zip))], api_name="/finetune_inspect")
    assert "Cannot read this upload" in summary and "not a readable zip" in summary and samples == []
    # the same reviews file read as images, then as labelled text (the page re-reads it when the kind changes)
    reviews = handle_file(str(write_reviews(tmp_path / "reviews.csv")))
    assert "Cannot read this upload" in client.predict("Images", [reviews], api_name="/finetune_inspect")[0]
    assert "Ready to train" in client.predict("Labelled text", [reviews], api_name="/finetune_inspect")[0]
    assert client.predict("Images", [], api_name="/finetune_inspect")[0].startswith("Upload data to see")
    with pytest.raises(AppError, match="Upload your data first"):
        client.predict("d" * 32, "Images", [], *QUICK_IMAGES, api_name="/finetune_start")
    short = tmp_path / "short.txt"
    short.write_text("hello")
    summary, _ = client.predict("Plain text", [handle_file(str(short))], api_name="/finetune_inspect")
    assert "at least 1,000" in summary


def test_two_browsers_never_see_each_others_models_or_files(client, tmp_path):
    """Two real sessions (two clients): B cannot use A's model by name, nor read files the app does not serve."""
    import urllib.error
    import urllib.request

    other = Client(client.src, verbose=False)
    upload = handle_file(str(shapes_zip(tmp_path / "shapes.zip", 6)))
    client.predict("f" * 32, "Images", [upload], *QUICK_IMAGES, api_name="/finetune_start")
    result = wait_until_done(client, "f" * 32)
    name = result[3].split("\n")[0].removeprefix("### ")
    assert name.startswith("my-images-")
    (tmp_path / "x.png").write_bytes(shape_png("circle", __import__("random").Random(1)))
    image = handle_file(str(tmp_path / "x.png"))
    with pytest.raises(AppError, match="Unknown model|not in the list of choices"):
        other.predict(name, image, None, "photo", api_name="/classify")
    assert other.predict("0" * 32, api_name="/finetune_poll")[0].startswith("No training yet")
    base = client.src.rstrip("/")
    for path in ("/etc/passwd", str(Path(__file__).resolve()), str(Path(result[8]).parent)):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{base}/gradio_api/file={path}", timeout=10)
        assert refused.value.code in (403, 404)


def test_results_say_so_when_no_validation_example_is_wrong(monkeypatch):
    """With every held-out image right, the page said nothing and showed an empty gallery; now it says why."""
    from types import SimpleNamespace

    import torch

    from demos import finetune

    monkeypatch.setattr(finetune, "model_zip", lambda folder, name: f"{folder}.zip")
    result = {"kind": "image", "name": "m", "folder": "/nowhere/m", "classes": ["a", "b"], "confusion": [[2, 0], [0, 2]],
              "misclassified": [], "metrics": {"val_accuracy": 1.0, "n_val": 4, "n_train": 10, "seconds": 3,
                                                "per_class_accuracy": {"a": 1.0, "b": 1.0}}}
    text, _, _, gallery, _, _ = finetune._results(SimpleNamespace(result=result))
    assert "no mistakes to show" in text and gallery == []
    mistake = {"image": torch.zeros(3, 8, 8, dtype=torch.uint8), "file": "x.png", "true": "a", "predicted": "b", "confidence": 0.9}
    text, _, _, gallery, _, _ = finetune._results(SimpleNamespace(result=dict(result, misclassified=[mistake])))
    assert "no mistakes" not in text and len(gallery) == 1 and "labelled a, predicted b" in gallery[0][1]
    # a small upload that reaches the epoch ceiling before its time is up says why it ended early
    result["metrics"].update(epochs_run=40, max_epochs=100, epoch_ceiling_reached=False)
    text = finetune._results(SimpleNamespace(result=result))[0]
    assert "40 epochs" in text and "ended early" not in text
    result["metrics"].update(epochs_run=100, epoch_ceiling_reached=True)
    text = finetune._results(SimpleNamespace(result=result))[0]
    assert "100 epochs, the most allowed, so it ended early" in text


def test_the_progress_bar_of_a_failed_or_cancelled_job_stays_where_it_stopped():
    """A failed job's bar was drawn full, as if it had finished."""
    from types import SimpleNamespace

    from demos import finetune

    job = SimpleNamespace(state="failed", done=True, elapsed=10.0, config={"time_budget": 50}, progress={}, result=None,
                          error="The upload holds no images.", queue_position=0)
    line = finetune._progress_markdown(job)
    assert "failed: The upload holds no images." in line and "█" * 4 + "░" * 16 in line
    job.state, job.result = "cancelled", {"folder": "/models/m"}
    assert "█" * 4 + "░" * 16 in finetune._progress_markdown(job)
    job.state, job.elapsed = "succeeded", 51.0
    assert "█" * 20 in finetune._progress_markdown(job) and "░" not in finetune._progress_markdown(job)


def test_a_training_worker_killed_mid_job_fails_that_job_only(client, tmp_path):
    """The kernel (or anyone) kills a job's worker process: that job reads failed with the reason, the app goes on
    answering everyone else, and the next job trains as before."""
    import os
    import re
    import signal

    from engine.jobs import default_runner

    owner = "e" * 32
    upload = handle_file(str(shapes_zip(tmp_path / "shapes.zip", 10)))
    long_run = list(QUICK_IMAGES)
    long_run[5] = 120
    client.predict(owner, "Images", [upload], *long_run, api_name="/finetune_start")
    deadline = time.monotonic() + 60
    while not client.predict(owner, api_name="/finetune_poll")[1] and time.monotonic() < deadline:
        time.sleep(0.5)  # training, with a curve
    node = default_runner().jobs(owner)[-1].node
    os.kill(int(re.search(r"pid (\d+)", node).group(1)), signal.SIGKILL)
    progress = wait_until_done(client, owner)[0]
    assert "failed" in progress and "SIGKILL" in progress
    assert client.predict(api_name="/system_status")[3]  # another request, answered
    client.predict(owner, "Images", [upload], *QUICK_IMAGES, api_name="/finetune_start")
    assert "done" in wait_until_done(client, owner)[0]


def test_a_job_stopped_by_force_says_how():
    """The worker's one-line reason reaches the progress line, beside "kept the best model so far"."""
    from demos.finetune import _progress_markdown
    from engine.jobs import JobStatus

    job = JobStatus(id="x", name="finetune-image", state="cancelled", queue_position=0, progress={}, events=[],
                    elapsed=3.0, error=None, result={"folder": "somewhere"}, created=0.0, started=0.0, finished=1.0,
                    config={"time_budget": 10}, backend="process", node="worker pid 1",
                    reason="stopped by force 10 s after the stop request")
    line = _progress_markdown(job)
    assert "kept the best model so far" in line and "stopped by force 10 s" in line
