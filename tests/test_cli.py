"""The CLI end to end, as a user runs it: a dataset made here, JSON on the last line, exit codes."""
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT, draw_strokes

STROKES = {
    "1": [[(0.52, 0.15), (0.5, 0.85)]],
    "7": [[(0.25, 0.2), (0.75, 0.2), (0.45, 0.85)]],
    "0": [[(0.5, 0.15), (0.7, 0.3), (0.72, 0.65), (0.5, 0.85), (0.3, 0.65), (0.28, 0.3), (0.5, 0.15)]],
}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"MINILAB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())})


@pytest.fixture
def digit_zip(tmp_path: Path) -> Path:
    """Class folders of drawn digits, with a junk file and a macOS folder that must be skipped."""
    path = tmp_path / "digits.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for digit, strokes in STROKES.items():
            for index, width in enumerate((10, 14, 18)):
                image = draw_strokes(strokes, width=width, transparent=False).convert("RGB")
                target = tmp_path / f"{digit}_{index}.png"
                image.save(target)
                archive.write(target, f"digits/{digit}/{index}.png")
        archive.writestr("digits/1/notes.txt", "not an image")
        archive.writestr("__MACOSX/digits/._0.png", "resource fork")
    return path


def test_help_lists_commands():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "train" in result.stdout and "eval" in result.stdout


def test_eval_prints_accuracy_json_last(digit_zip):
    result = run_cli("eval", "image-classification", "--model", "mnist", "--data", str(digit_zip), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["n"] == 9
    assert report["accuracy"] >= 8 / 9
    assert report["skipped"] == 2
    assert set(report["per_class_accuracy"]) == {"0", "1", "7"}


def test_eval_accepts_a_model_folder_and_a_plain_folder(tmp_path, tiny_image_model):
    for label, colour in (("cat", (200, 50, 50)), ("dog", (50, 50, 200))):
        (tmp_path / "data" / label).mkdir(parents=True)
        from PIL import Image

        Image.new("RGB", (40, 40), colour).save(tmp_path / "data" / label / "a.jpg")
    result = run_cli("eval", "image-classification", "--model", str(tiny_image_model), "--data", str(tmp_path / "data"), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["n"] == 2 and report["accuracy"] in (0.0, 0.5, 1.0)


def test_eval_refuses_unknown_class_folders(tmp_path):
    (tmp_path / "data" / "giraffe").mkdir(parents=True)
    draw_strokes(STROKES["1"]).save(tmp_path / "data" / "giraffe" / "x.png")
    result = run_cli("eval", "image-classification", "--model", "mnist", "--data", str(tmp_path / "data"), "--json")
    assert result.returncode == 2
    assert "giraffe" in result.stderr
    assert "error" in json.loads(result.stdout.strip().splitlines()[-1])


def test_eval_refuses_unknown_model_and_missing_data(tmp_path):
    assert run_cli("eval", "image-classification", "--model", "no-such-model", "--data", str(tmp_path)).returncode == 2
    missing = run_cli("eval", "image-classification", "--model", "mnist", "--data", str(tmp_path / "nope.zip"))
    assert missing.returncode == 2 and "neither a folder nor a zip" in missing.stderr


def test_train_without_shared_data_is_a_clear_error(tmp_path):
    result = run_cli("train", "mnist", "--data-dir", str(tmp_path), "--out", str(tmp_path / "m"), "--json")
    assert result.returncode == 2 and "Training data not found" in result.stderr
    assert not (tmp_path / "m").exists()


def test_train_refuses_bad_settings(tmp_path):
    result = run_cli("train", "cifar10", "--epochs", "0", "--data-dir", str(tmp_path), "--json")
    assert result.returncode == 2 and "epochs" in result.stderr
    result = run_cli("train", "cifar10", "--widths", "4,8,8", "--data-dir", str(tmp_path), "--json")
    assert result.returncode == 2 and "needs 4 positive widths" in result.stderr


def test_eval_cartpole_prints_the_return_of_the_shipped_agent():
    result = run_cli("eval", "cartpole", "--model", "cartpole", "--episodes", "5", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["episodes"] == 5 and report["mean_return"] >= 475 and report["std_return"] >= 0


def test_eval_cartpole_refuses_what_is_not_an_agent(tmp_path):
    result = run_cli("eval", "cartpole", "--model", "mnist", "--episodes", "5", "--json")
    assert result.returncode == 2 and "not a reinforcement-learning agent" in result.stderr
    result = run_cli("eval", "cartpole", "--model", "cartpole", "--episodes", "0")
    assert result.returncode == 2 and "--episodes" in result.stderr


def test_train_cartpole_from_scratch_reports_the_solve_metrics(tmp_path):
    result = run_cli("train", "cartpole", "--seed", "1", "--budget-steps", "2000", "--out", str(tmp_path / "agent"), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("solved", "solve_steps", "solve_seconds", "stable_solve_steps", "stable_solve_seconds", "total_steps",
                "total_seconds", "final100_mean"):
        assert key in report
    assert report["total_steps"] >= 2000 and (tmp_path / "agent" / "card.json").is_file()
    assert report["backend"] == "local" and report["node"]  # no MINILAB_RAY_ADDRESS: it ran right here
    bad = run_cli("train", "cartpole", "--budget-steps", "-5", "--out", str(tmp_path / "bad"), "--json")
    assert bad.returncode == 2 and not (tmp_path / "bad").exists()


@pytest.mark.skipif(not (ROOT.parent / "shared" / "data" / "mnist").is_dir(), reason="../shared/data is not beside the checkout")
def test_train_runs_end_to_end_on_the_shared_data(tmp_path):
    result = run_cli("train", "mnist", "--epochs", "1", "--widths", "4,8,8,8", "--time-budget", "5", "--out", str(tmp_path / "m"), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["n_train"] > 0 and (tmp_path / "m" / "card.json").is_file()
