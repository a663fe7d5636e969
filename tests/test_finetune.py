"""Fine-tune on upload, without a browser: the upload parsers with every bad input the issue lists, each
training path end to end on tiny data made here, the job runner around them, and the CLI."""
from __future__ import annotations

import csv
import io
import json
import random
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from engine.errors import UserError
from engine.jobs import CANCELLED, FAILED, SUCCEEDED, JobRunner
from engine.uploads import MAX_CLASSES, check_classes, read_image_upload

ROOT = Path(__file__).resolve().parents[1]


def shape_png(kind: str, rng: random.Random, size: int = 24) -> bytes:
    """A dark circle or square on a light background, somewhere in the picture."""
    image = Image.new("RGB", (size, size), (235, 235, 235))
    draw = ImageDraw.Draw(image)
    r = rng.uniform(0.25, 0.35) * size
    cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
    box = [cx - r, cy - r, cx + r, cy + r]
    (draw.ellipse if kind == "circle" else draw.rectangle)(box, fill=(rng.randint(0, 80), 40, 40))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def shapes_zip(path: Path, per_class: int = 10, extra: list[tuple[str, bytes]] = ()) -> Path:
    rng = random.Random(0)
    with zipfile.ZipFile(path, "w") as archive:
        for kind in ("circle", "square"):
            for i in range(per_class):
                archive.writestr(f"shapes/{kind}/{i}.png", shape_png(kind, rng))
        for name, data in extra:
            archive.writestr(name, data)
    return path


# ---- upload parsing ------------------------------------------------------------------------------------------


def test_zip_of_class_folders_with_junk_lists_what_it_skipped(tmp_path):
    junk = [("shapes/__MACOSX/._0.png", b"x"), ("shapes/circle/.DS_Store", b"x"), ("shapes/circle/notes.txt", b"hi"),
            ("shapes/inner.zip", b"PK"), ("shapes/readme.md", b"#")]
    dataset = read_image_upload([shapes_zip(tmp_path / "up.zip", 3, junk)], tmp_path / "work")
    assert dataset.counts() == {"circle": 3, "square": 3}
    reasons = " | ".join(f"{name}: {why}" for name, why in dataset.skipped)
    assert "hidden or system file" in reasons and "not an image" in reasons
    assert "archive inside the archive" in reasons and "not inside a class folder" in reasons
    assert all((tmp_path / "work") in f.parents for f in dataset.files)  # nothing outside the job's folder


def test_loose_images_with_a_csv(tmp_path):
    rng = random.Random(1)
    paths = []
    for i, kind in enumerate(["circle", "square"] * 3):
        path = tmp_path / f"img{i}.png"
        path.write_bytes(shape_png(kind, rng))
        paths.append(path)
    (tmp_path / "stray.png").write_bytes(shape_png("circle", rng))
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("Filename,Label\nimg0.png,circle\nIMG1.PNG,square\nimg2.png,circle\nimg3.png,square\n"
                        "img4.png,circle\nimg5.png,square\nmissing.png,circle\n,\nimg2.png,\n")
    dataset = read_image_upload([*paths, tmp_path / "stray.png", csv_path], tmp_path / "work")
    assert dataset.counts() == {"circle": 3, "square": 3}
    reasons = dict(dataset.skipped)
    assert "was not uploaded" in " ".join(reasons.values()) and reasons["stray.png"].startswith("not listed")
    assert "no label" in " ".join(reasons.values())


def test_zip_of_images_with_a_csv_inside(tmp_path):
    rng = random.Random(2)
    with zipfile.ZipFile(tmp_path / "up.zip", "w") as archive:
        for i in range(4):
            archive.writestr(f"pics/{i}.png", shape_png("circle" if i % 2 else "square", rng))
        archive.writestr("labels.csv", "file,class\npics/0.png,square\npics/1.png,circle\n2.png,square\n3.png,circle\n")
    dataset = read_image_upload([tmp_path / "up.zip"], tmp_path / "work")
    assert dataset.counts() == {"circle": 2, "square": 2}


@pytest.mark.parametrize("content, message", [
    ("picture,tag\na.png,x\n", "has no filename column .* and no label column"),
    ("filename\na.png\n", "has no label column"),
    ("", "empty"),
])
def test_csv_without_the_needed_columns_is_named(tmp_path, content, message):
    (tmp_path / "a.png").write_bytes(shape_png("circle", random.Random(0)))
    (tmp_path / "labels.csv").write_text(content)
    with pytest.raises(UserError, match=message):
        read_image_upload([tmp_path / "a.png", tmp_path / "labels.csv"], tmp_path / "work")


def test_a_csv_without_images_points_to_the_text_classifier(tmp_path):
    """A reviews CSV sent as images used to be told it lacks a filename column, as if images were on the way."""
    (tmp_path / "reviews.csv").write_text("text,label\ngreat,positive\nawful,negative\n")
    with pytest.raises(UserError, match="came without any images.*text classifier"):
        read_image_upload([tmp_path / "reviews.csv"], tmp_path / "work")


def test_images_without_a_csv_are_refused(tmp_path):
    (tmp_path / "a.png").write_bytes(shape_png("circle", random.Random(0)))
    with pytest.raises(UserError, match="exactly one CSV"):
        read_image_upload([tmp_path / "a.png"], tmp_path / "work")


def test_class_problems_are_all_named_at_once():
    with pytest.raises(UserError, match="at least 2"):
        check_classes({"cats": 10})
    with pytest.raises(UserError, match=r"too few in 'dogs' \(1\)"):
        check_classes({"cats": 10, "dogs": 1})
    with pytest.raises(UserError, match=f"the limit is {MAX_CLASSES}"):
        check_classes({f"class{i}": 3 for i in range(2000)})
    check_classes({"cats": 2, "dogs": 2})


def test_upload_above_the_size_cap_is_refused(tmp_path, monkeypatch):
    import engine.uploads as uploads

    monkeypatch.setattr(uploads, "MAX_UPLOAD_BYTES", 1000)
    with pytest.raises(UserError, match="the limit is"):
        read_image_upload([shapes_zip(tmp_path / "up.zip", 10)], tmp_path / "work")


def test_zip_slip_in_a_training_upload_writes_nothing_outside(tmp_path):
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as archive:
        archive.writestr("cats/a.png", shape_png("circle", random.Random(0)))
        archive.writestr("../../escaped.png", b"x")
    with pytest.raises(UserError, match="unsafe path"):
        read_image_upload([tmp_path / "evil.zip"], tmp_path / "work" / "deep")
    assert not list(tmp_path.rglob("escaped.png"))


def test_text_upload_problems(tmp_path):
    from engine.text.finetune import read_text_upload

    path = tmp_path / "one.csv"
    path.write_text("text,label\ngood,pos\nfine,pos\n")
    with pytest.raises(UserError, match="at least 2"):
        read_text_upload([path])
    path.write_text("text,label\ngood,pos\nbad,neg\nok,pos\n")
    with pytest.raises(UserError, match=r"too few in 'neg' \(1\)"):
        read_text_upload([path])
    path.write_text("text,stars,date\ngood,5,today\n")
    with pytest.raises(UserError, match="no label column"):
        read_text_upload([path])
    path.write_bytes("text;label\ncaf\xe9 cr\xe8me;pos\n\n;neg\nbad;neg\nworse;neg\nnice;pos\n".encode("cp1252"))
    table = read_text_upload([path])  # cp1252, semicolons, an empty row and a row without text
    assert table.texts[0] == "café crème" and table.counts() == {"neg": 2, "pos": 2}
    assert any("empty text" in row for row in table.skipped)


# ---- training, end to end ------------------------------------------------------------------------------------


@pytest.mark.parametrize("backbone, strategy", [("cifar10", "finetune"), ("glyphs", "finetune"), ("mnist", "probe"), ("scratch", "finetune")])
def test_image_finetune_end_to_end(tmp_path, backbone, strategy):
    from engine.vision.classify import ShippedClassifier
    from engine.vision.finetune import ImageFinetuneConfig, finetune_images

    events = []
    config = ImageFinetuneConfig(backbone=backbone, strategy=strategy, time_budget=3, image_size=16, val_fraction=0.3)
    result = finetune_images([shapes_zip(tmp_path / "up.zip", 10)], config, tmp_path / "work", tmp_path / "model",
                             on_progress=events.append)
    metrics = result["metrics"]
    assert metrics["classes"] == ["circle", "square"] and metrics["n_train"] + metrics["n_val"] == 20
    assert 0 <= metrics["val_accuracy"] <= 1 and len(result["confusion"]) == 2
    assert sum(map(sum, result["confusion"])) == metrics["n_val"]
    assert any(e.get("kind") == "epoch" and "val_acc" in e for e in events)
    if strategy == "probe":  # its rounds of L-BFGS are not epochs with a ceiling the user sets
        assert metrics["epoch_ceiling_reached"] is False
    classifier = ShippedClassifier(result["folder"])
    assert classifier.labels == ["circle", "square"]
    top = classifier.classify(Image.open(io.BytesIO(shape_png("circle", random.Random(5)))))["top"]
    assert set(top) == {"circle", "square"}
    for mistake in result["misclassified"]:
        assert mistake["true"] != mistake["predicted"] and mistake["image"].shape == (3, 16, 16)


def test_image_finetune_learns_shapes(tmp_path):
    """Not just runs: 40 circles and squares are told apart on held-out images."""
    from engine.vision.finetune import ImageFinetuneConfig, finetune_images

    config = ImageFinetuneConfig(time_budget=8, image_size=16, val_fraction=0.25)
    result = finetune_images([shapes_zip(tmp_path / "up.zip", 20)], config, tmp_path / "work", tmp_path / "model")
    assert result["metrics"]["val_accuracy"] >= 0.8


def test_an_image_finetune_says_when_its_epoch_ceiling_ended_it_before_its_time(tmp_path):
    from engine.vision.finetune import ImageFinetuneConfig, finetune_images

    config = ImageFinetuneConfig(time_budget=30, image_size=16, val_fraction=0.3, max_epochs=2)
    metrics = finetune_images([shapes_zip(tmp_path / "up.zip", 10)], config, tmp_path / "work", tmp_path / "model")["metrics"]
    assert metrics["epochs_run"] == 2 and metrics["epoch_ceiling_reached"] is True and metrics["seconds"] < 30


def write_reviews(path: Path, n: int = 24, names: tuple[str, str] = ("liked", "disliked")) -> Path:
    """n good and n bad reviews, labelled names[0] and names[1]."""
    rng = random.Random(0)
    good = ["a wonderful film", "I loved every minute", "great food and friendly staff", "works perfectly, very happy"]
    bad = ["a terrible film", "I hated every minute", "cold food and rude staff", "broke after a day, very unhappy"]
    rows = [("review", "verdict")]
    for i in range(n):
        rows += [(f"{rng.choice(good)} {i}", names[0]), (f"{rng.choice(bad)} {i}", names[1])]
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)  # quoted where a review holds a comma
    return path


def write_topics(path: Path, n: int = 12) -> Path:
    """Reviews labelled by what they are about (film or food), good and bad alike: not sentiment."""
    rng = random.Random(1)
    film = ["a wonderful film", "a terrible film", "the actors were superb", "the plot made no sense"]
    food = ["great food and friendly staff", "cold food and rude staff", "the soup was delicious", "the pasta was bland"]
    rows = [("review", "topic")] + [row for i in range(n) for row in ((f"{rng.choice(film)} {i}", "film"), (f"{rng.choice(food)} {i}", "food"))]
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return path


def test_text_probe_end_to_end_and_eval_matches_label_names(tmp_path):
    from engine.text.evaluate import evaluate_sentiment_file
    from engine.text.finetune import TextFinetuneConfig, finetune_text_classifier

    result = finetune_text_classifier([write_reviews(tmp_path / "r.csv")], TextFinetuneConfig(strategy="probe"), tmp_path / "model")
    metrics = result["metrics"]
    assert metrics["classes"] == ["disliked", "liked"] and metrics["encoder"] in ("sst2", "minilm")
    assert metrics["val_accuracy"] >= 0.8
    (tmp_path / "eval.tsv").write_text("text\tlabel\nI loved it, wonderful\tLIKED\nawful and rude\tDisliked\n")
    scored = evaluate_sentiment_file(str(tmp_path / "model"), str(tmp_path / "eval.tsv"))
    assert scored["n"] == 2 and scored["accuracy"] == 1.0


def test_text_lora_end_to_end(tmp_path):
    from engine.text.classify import load_text_classifier
    from engine.text.finetune import TextFinetuneConfig, finetune_text_classifier

    config = TextFinetuneConfig(strategy="lora", time_budget=20, lora_epochs=8)  # 8 steps of 20 rows
    events = []
    result = finetune_text_classifier([write_topics(tmp_path / "r.csv", 12)], config, tmp_path / "model", events.append)
    # labels that are not sentiment: the encoder whose sentence vectors fit them best (cross-validated) is chosen
    metrics = result["metrics"]
    scores = metrics["cv_accuracy_by_encoder"]
    assert result["history"] and set(scores) == {"sst2", "minilm"} and metrics["encoder"] == max(scores, key=scores.get)
    assert metrics["sst2_agreement"] < 0.75  # sst2 could not read these labels as sentiment either way round
    assert {"kind": "stage", "stage": "choosing the encoder"} in events
    # the page's curves: training-loss points every 3 steps, validation points every 10 steps and at the end,
    # and at step 0 too when training starts from sst2's adapters (a started model is scored first)
    points = [e for e in events if e["kind"] == "epoch"]
    assert [e["step"] for e in points if "val_acc" not in e] == [3, 6]
    assert all(e["train_loss"] > 0 for e in points if "val_acc" not in e)
    assert [e["step"] for e in points if "val_acc" in e] == ([0, 8] if metrics["encoder"] == "sst2" else [8])
    predictor = load_text_classifier(result["folder"])
    assert set(predictor.predict("a film")) == {"film", "food"}


def test_sentiment_under_any_names_keeps_sst2s_head(tmp_path):
    """sst2's own label names keep its head without asking; two other labels keep it, in the right order, when sst2
    already agrees with them before training (0/1, or good/bad written the other way round); labels that are not
    sentiment, or more than two classes, get a new head."""
    from engine.text.finetune import arch_for, sst2_head_order

    good = ["a wonderful film", "I loved every minute", "great food and friendly staff", "works perfectly, very happy"] * 5
    bad = ["a terrible film", "I hated every minute", "cold food and rude staff", "broke after a day, very unhappy"] * 5
    texts = good + bad
    for names in (["negative", "positive"], ["Negative", "Positive"], ["neg", "pos"], ["NEG ", "POS"]):
        assert sst2_head_order(texts, [names[1]] * 20 + [names[0]] * 20, names, seed=0) == ([0, 1], None), names
    order, agreement = sst2_head_order(texts, ["1"] * 20 + ["0"] * 20, ["0", "1"], seed=0)
    assert order == [0, 1] and agreement >= 0.9
    order, agreement = sst2_head_order(texts, ["bad"] * 20 + ["good"] * 20, ["bad", "good"], seed=0)  # the names swapped
    assert order == [1, 0] and agreement >= 0.9
    topics = ["film" if "film" in t or "minute" in t else "food" for t in texts]
    order, agreement = sst2_head_order(texts, topics, ["film", "food"], seed=0)
    assert order is None and agreement < 0.75
    assert sst2_head_order(texts, ["a"] * 14 + ["b"] * 13 + ["c"] * 13, ["a", "b", "c"], seed=0) == (None, None)

    _, kept = arch_for("sst2", ["negative", "positive"], [0, 1])
    _, swapped = arch_for("sst2", ["bad", "good"], [1, 0])
    _, new = arch_for("sst2", ["film", "food"])
    assert torch.equal(swapped["head.weight"], kept["head.weight"].flip(0)) and torch.equal(swapped["head.bias"], kept["head.bias"].flip(0))
    assert set(kept) - set(new) == {"head.weight", "head.bias"}


def test_lora_on_sentiment_labels_starts_from_the_whole_sst2_model(tmp_path):
    """Reviews labelled negative/positive start from sst2 with its head: the starting model is scored before any
    step, and the model kept blends it back in (WiSE-FT): an adapter of twice sst2's rank."""
    from engine.text.finetune import TextFinetuneConfig, finetune_text_classifier

    path = write_reviews(tmp_path / "r.csv", 12)
    path.write_text(path.read_text().replace("disliked", "Negative").replace("liked", "Positive"))
    config = TextFinetuneConfig(strategy="lora", time_budget=4, lora_epochs=1)
    result = finetune_text_classifier([path], config, tmp_path / "model")
    assert result["metrics"]["classes"] == ["Negative", "Positive"]  # the upload's own names are kept
    assert result["metrics"]["encoder"] == "sst2" and "cv_accuracy_by_encoder" not in result["metrics"]  # no choice to make
    first = result["history"][0]
    assert first["step"] == 0 and first["val_acc"] >= 0.8  # sst2 reads these reviews before any training
    assert result["metrics"]["blended_with_start"] == 0.3
    card = json.loads((Path(result["folder"]) / "card.json").read_text())
    assert (card["arch_config"]["lora_r"], card["arch_config"]["lora_alpha"]) == (16, 32)


def test_chargpt_from_scratch_and_from_shakespeare_with_new_characters(tmp_path):
    from engine.text.generate import load_char_lm
    from engine.text.finetune import CharFinetuneConfig, finetune_chargpt

    text = ("über café — naïve ☃ snow\n" * 60) + ("the quick brown fox\n" * 60)
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    for init in ("scratch", "shakespeare"):
        config = CharFinetuneConfig(init=init, time_budget=2, n_layer=1, n_embd=32, n_head=2, block_size=32, sample_chars=50)
        result = finetune_chargpt([tmp_path / "t.txt"], config, tmp_path / init)
        assert result["metrics"]["val_loss"] > 0 and len(result["sample"]) == 50
        lm = load_char_lm(result["folder"])
        assert not lm.tokenizer.unknown(text)  # the grown vocabulary covers ü, é, —, ☃
    assert lm.model.config.n_embd == 256  # continued from the shipped model, whatever the config's width


def test_chargpt_refuses_a_too_short_text(tmp_path):
    from engine.text.finetune import CharFinetuneConfig, finetune_chargpt

    (tmp_path / "t.txt").write_text("too short")
    with pytest.raises(UserError, match="at least 1,000"):
        finetune_chargpt([tmp_path / "t.txt"], CharFinetuneConfig(time_budget=1), tmp_path / "m")


# ---- through the job runner ----------------------------------------------------------------------------------


def test_job_reports_progress_and_cancel_keeps_a_model(tmp_path):
    from engine.finetune import finetune_job
    from engine.vision.finetune import ImageFinetuneConfig

    runner = JobRunner()
    upload = shapes_zip(tmp_path / "up.zip", 10)
    config = ImageFinetuneConfig(time_budget=60, image_size=16, max_epochs=500)
    job_id = runner.submit("alice", finetune_job("image", [upload], config, "my-images"), name="finetune-image")
    deadline = time.time() + 60
    while time.time() < deadline and not any(e.get("kind") == "step" for e in runner.status(job_id, "alice").events):
        time.sleep(0.1)
    runner.cancel(job_id, "alice")
    status = runner.wait(job_id, "alice", timeout=60)
    assert status.state == CANCELLED and status.elapsed < 30
    assert Path(status.result["folder"], "card.json").is_file()  # the model so far is kept
    assert not (Path(status.result["folder"]).parent / "upload").exists()  # the copied upload is gone
    with pytest.raises(UserError, match="No such job"):
        runner.status(job_id, "bob")
    runner.shutdown()


def test_a_failing_upload_fails_the_job_with_the_reason_and_cleans_up(tmp_path):
    from engine.finetune import finetune_job
    from engine.vision.finetune import ImageFinetuneConfig

    runner = JobRunner()
    bad = tmp_path / "one.zip"
    with zipfile.ZipFile(bad, "w") as archive:
        archive.writestr("cats/a.png", shape_png("circle", random.Random(0)))
        archive.writestr("cats/b.png", shape_png("circle", random.Random(1)))
    job_id = runner.submit("alice", finetune_job("image", [bad], ImageFinetuneConfig(time_budget=2), "m"), name="finetune-image")
    status = runner.wait(job_id, "alice", timeout=60)
    assert status.state == FAILED and "at least 2" in status.error
    good = runner.submit("alice", finetune_job("image", [shapes_zip(tmp_path / "up.zip", 4)],
                                                ImageFinetuneConfig(time_budget=1, image_size=16, val_fraction=0.5), "m2"),
                         name="finetune-image")
    assert runner.wait(good, "alice", timeout=120).state == SUCCEEDED  # the next job runs
    runner.shutdown()


# ---- the CLI -------------------------------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_cli_finetune_image_then_eval_the_folder_and_the_zip(tmp_path):
    from engine.checkpoints import zip_model_folder

    upload = shapes_zip(tmp_path / "up.zip", 8)
    done = run_cli("finetune", "image", "--data", str(upload), "--time-budget", "2", "--image-size", "16",
                   "--out", str(tmp_path / "model"), "--threads", "1", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"val_accuracy", "seconds", "n_train", "n_val", "classes"} <= set(summary)
    assert summary["classes"] == ["circle", "square"] and summary["n_train"] + summary["n_val"] == 16
    zipped = zip_model_folder(tmp_path / "model", tmp_path / "model.zip")
    for model in (str(tmp_path / "model"), str(zipped)):
        scored = run_cli("eval", "image", "--model", model, "--data", str(upload), "--json")
        assert scored.returncode == 0, scored.stderr
        assert json.loads(scored.stdout.strip().splitlines()[-1])["n"] == 16


def test_cli_finetune_bad_input_exits_non_zero(tmp_path):
    (tmp_path / "t.csv").write_text("text,label\nonly one class,a\nanother,a\n")
    done = run_cli("finetune", "text", "--data", str(tmp_path / "t.csv"), "--json")
    assert done.returncode == 2 and "at least 2" in json.loads(done.stdout.strip().splitlines()[-1])["error"]
    done = run_cli("finetune", "chargpt", "--data", str(tmp_path / "t.csv"), "--backbone", "cifar10", "--json")
    assert done.returncode == 2 and "does not apply" in done.stdout


def test_image_probe_on_a_hub_backbone_saved_and_loaded_again(tmp_path, monkeypatch):
    """The hub path on a tiny Hugging Face model made here: probe, save only the head, load through the card."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    from engine.registry import load_model_folder
    from engine.vision.finetune import ImageFinetuneConfig, finetune_images

    hub = tmp_path / "tiny-vit"
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32, num_labels=5)
    ViTForImageClassification(config).save_pretrained(hub)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(hub)
    with pytest.raises(UserError, match="linear probe"):
        ImageFinetuneConfig(backbone=str(hub), strategy="finetune").validate()
    result = finetune_images([shapes_zip(tmp_path / "up.zip", 8)], ImageFinetuneConfig(backbone=str(hub), strategy="probe"),
                             tmp_path / "work", tmp_path / "model")
    assert result["metrics"]["classes"] == ["circle", "square"]
    card = json.loads((tmp_path / "model" / "card.json").read_text())
    assert card["architecture"] == "hub-probe" and card["preprocessing"]["size"] == 32
    from safetensors.torch import load_file

    assert set(load_file(tmp_path / "model" / "weights.safetensors")) == {"head.weight", "head.bias"}
    classifier = load_model_folder(tmp_path / "model", "image-classification", "mine")
    top = classifier.classify(Image.open(io.BytesIO(shape_png("square", random.Random(3)))))["top"]
    assert set(top) == {"circle", "square"}


def test_hub_backbone_offline_is_a_clear_error(tmp_path, monkeypatch):
    import torch

    from engine.vision.finetune import ImageFinetuneConfig, finetune_images

    monkeypatch.setenv("MINILAB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-cache"))
    with pytest.raises(UserError, match="not in the local cache"):
        finetune_images([shapes_zip(tmp_path / "up.zip", 4)], ImageFinetuneConfig(backbone="torchvision/resnet50", strategy="probe"),
                        tmp_path / "work", tmp_path / "model")


def test_time_schedule_has_the_shape_of_torchs_one_cycle():
    """fit_classifier's clock-driven schedule (used by fine-tunes) follows OneCycleLR's learning rate and momentum."""
    import torch

    from engine.vision.train import one_cycle

    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=0.2, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.2, total_steps=101, pct_start=0.2)
    warm = 0.2 * 101 - 1  # torch's warm-up ends at step pct_start * total_steps - 1, its decay at total_steps - 1
    for step in range(101):
        progress = 0.2 * step / warm if step <= warm else 0.2 + 0.8 * (step - warm) / (100 - warm)
        lr, momentum = one_cycle(progress, 0.2)
        group = optimizer.param_groups[0]
        assert abs(group["lr"] - lr) < 1e-6 and abs(group["momentum"] - momentum) < 1e-6, step
        optimizer.step()
        scheduler.step() if step < 100 else None


def test_a_csv_with_a_stray_carriage_return_is_a_clear_error(tmp_path):
    """Found by the fuzz test: csv raised its own error on a lone \\r inside a field."""
    (tmp_path / "labels.csv").write_bytes(b"\r\x01")
    with pytest.raises(UserError, match="labels.csv"):
        read_image_upload([tmp_path / "labels.csv"], tmp_path / "work")


def test_pixels_shifted_in_by_augmentation_take_the_ground_colour_not_the_darkest():
    """A drawing on white shifted right gets white at its left edge, not black (which would read as ink)."""
    from engine.vision.train import Augment, ground_colour, random_augment

    paper = torch.ones(8, 3, 16, 16)
    paper[:, :, 6:10, 6:10] = -2.0  # dark ink in the middle, in standardised units
    fill = ground_colour(paper)
    assert fill.shape == (1, 3, 1, 1) and torch.all(fill == 1.0)
    moved = random_augment(paper, Augment(flip=False, max_shift=0.25), fill)
    assert not torch.equal(moved, paper)
    assert moved[..., 0].min() > 0.99 and moved[..., -1].min() > 0.99  # the edges stay paper
