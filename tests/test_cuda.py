"""The CUDA path. The tests marked `needs_cuda` run every tab's engine work on a GPU (predictions, Grad-CAM,
look-inside, generation, a short fine-tune of each kind, DQN steps and playback) and skip where there is none; the
others check the device plumbing on any machine, and that benchmarks/gpu_check.py runs end to end on the CPU."""
from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import device as device_module
from engine.errors import UserError
from tests.conftest import ROOT, render_digit

CHECKPOINTS = ROOT / "checkpoints"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def fresh_choice(monkeypatch):
    """Each test chooses its own device; none leaks into the next (chosen_device caches its answer)."""
    monkeypatch.delenv("MINILAB_DEVICE", raising=False)
    device_module.chosen_device.cache_clear()
    yield
    device_module.chosen_device.cache_clear()


def choose(monkeypatch, name: str) -> torch.device:
    monkeypatch.setenv("MINILAB_DEVICE", name)
    device_module.chosen_device.cache_clear()
    return device_module.pick_device()


@contextlib.contextmanager
def stepped_devices():
    """{optimizer class name: set of device types it stepped parameters on}, for the steps taken inside."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    seen: dict[str, set[str]] = {}
    handle = register_optimizer_step_post_hook(lambda optimizer, args, kwargs: seen.setdefault(
        optimizer.__class__.__name__, set()).update(p.device.type for g in optimizer.param_groups for p in g["params"]))
    try:
        yield seen
    finally:
        handle.remove()


def digit_zip(folder: Path, per_class: int = 6) -> Path:
    path = folder / "digits.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for digit in "17":
            for i in range(per_class):
                image_path = folder / f"{digit}_{i}.png"
                render_digit(digit, size=64, stroke=3, rotate=(i - per_class / 2) * 4).save(image_path)
                archive.write(image_path, f"{digit}/{image_path.name}")
    return path


# ---- the device plumbing, on any machine -----------------------------------------------------------------------


def test_minilab_device_cpu_chooses_the_cpu_and_models_load_there(monkeypatch):
    from engine.registry import build_default_registry

    assert choose(monkeypatch, "cpu") == torch.device("cpu")
    classifier = build_default_registry().get("mnist")
    assert next(classifier.model.parameters()).device.type == "cpu"


def test_minilab_device_cuda_without_a_gpu_is_a_clear_user_error(monkeypatch):
    """Asked for a GPU it lacks, minilab says so in words, where a model loads (the tabs show UserError messages)."""
    from engine.registry import build_default_registry

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("MINILAB_DEVICE", "cuda")
    with pytest.raises(UserError, match="no CUDA GPU"):
        device_module.pick_device()
    with pytest.raises(UserError, match="no CUDA GPU"):
        build_default_registry().get("mnist")


def test_gpu_check_refuses_a_missing_gpu_with_json_and_status_2(monkeypatch, capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_check

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--device", "cuda", "--quick"]) == 2
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["device"] == "cuda" and "no CUDA GPU" in report["error"]


@pytest.mark.parametrize("capability, fast", [((7, 5), False), ((8, 0), True), ((9, 0), True)])
def test_bfloat16_autocast_only_where_the_gpu_multiplies_it_natively(monkeypatch, capability, fast):
    """A T4 (7.5) only emulates bfloat16, slower than float32, though torch.cuda.is_bf16_supported() says yes."""
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert device_module.bfloat16_is_fast("cuda") is fast


def test_gpu_check_runs_end_to_end_on_the_cpu(tmp_path):
    """benchmarks/gpu_check.py --device cpu --quick: every step passes and the last line is the JSON report
    (about 40 s on 2 busy cores)."""
    result = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--quick", "--threads", "1"],
                            cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["device"] == "cpu" and report["gpu_name"] is None and report["failed_steps"] == []
    shipped = {folder.name for folder in CHECKPOINTS.iterdir() if (folder / "card.json").is_file()}
    assert set(report["models"]) == shipped
    assert all(figures["params_on"] == "cpu" for figures in report["models"].values())
    assert {"cifar10", "mnist"} <= set(report["gradcam_ms"]) and {"cifar10", "mnist"} <= set(report["look_inside_ms"])
    assert report["generation_chars_per_s"]["shakespeare"] > 0
    assert set(report["training"]) == {"image", "text", "chargpt", "dqn"}
    assert report["training"]["image"]["trained_on"]["SGD"] == ["cpu"]
    assert report["training"]["chargpt"]["trained_on"]["AdamW"] == ["cpu"]
    assert report["models"]["sst2"]["int8"] and report["models"]["shakespeare"]["torchscript"]  # the CPU's own paths


# ---- every tab's work on a GPU -------------------------------------------------------------------------------------


@needs_cuda
def test_image_predictions_grad_cam_and_look_inside_on_cuda():
    from engine.vision.classify import ShippedClassifier
    from engine.vision.explain import first_layer_filters, grad_cam, stage_activations

    digit = render_digit("3", size=200, stroke=6)
    on_gpu, on_cpu = ShippedClassifier(CHECKPOINTS / "mnist", "cuda"), ShippedClassifier(CHECKPOINTS / "mnist", "cpu")
    assert next(on_gpu.model.parameters()).is_cuda
    gpu, cpu = on_gpu.classify(digit), on_cpu.classify(digit)
    assert next(iter(gpu["top"])) == next(iter(cpu["top"])) == "3"
    # cuDNN may convolve in TF32 (10-bit mantissas) on Ampere and later: close, not equal
    assert abs(gpu["top"]["3"] - cpu["top"]["3"]) < 0.02
    gpu_map, cpu_map = grad_cam(on_gpu, gpu["input"], gpu["class_index"]), grad_cam(on_cpu, cpu["input"], cpu["class_index"])
    assert gpu_map.shape == cpu_map.shape == (28, 28) and np.abs(gpu_map - cpu_map).max() < 0.1
    assert len(stage_activations(on_gpu.model, gpu["input"])) >= 3 and first_layer_filters(on_gpu.model).size[0] > 0
    photo = ShippedClassifier(CHECKPOINTS / "cifar10", "cuda")
    rows = photo.classify_many([render_digit("5")] * 3, ["a", "b", "c"])
    assert all(not row["error"] for row in rows)


@needs_cuda
def test_text_classifier_on_cuda_runs_float_and_agrees_with_the_cpu():
    from engine.text.classify import load_text_classifier

    gpu = load_text_classifier(CHECKPOINTS / "sst2", "cuda")
    cpu = load_text_classifier(CHECKPOINTS / "sst2", "cpu", quantize=False, trace=False)
    assert next(gpu.model.parameters()).is_cuda and gpu.graph is None  # no int8, no TorchScript on a GPU
    texts = ["A warm, funny and beautifully acted film.", "The battery died after two days."]
    assert np.abs(gpu.predict_proba(texts) - cpu.predict_proba(texts)).max() < 5e-3
    assert gpu.explain(texts[0])["label"] == "positive"


@needs_cuda
def test_generation_on_cuda():
    from engine.text.generate import SamplingSettings, load_char_lm

    lm = load_char_lm(CHECKPOINTS / "shakespeare", "cuda")
    assert next(lm.model.parameters()).is_cuda and lm.step_graph is None
    pieces = list(lm.stream("ROMEO:\n", SamplingSettings(max_new_tokens=80, seed=3)))
    assert len(pieces) == 80 and all(piece in lm.tokenizer.chars and 0 <= p <= 1 for piece, p in pieces)
    again = list(lm.stream("ROMEO:\n", SamplingSettings(max_new_tokens=80, seed=3)))
    assert [piece for piece, _ in again] == [piece for piece, _ in pieces]  # the seed is a CPU generator: reproducible
    ids = torch.tensor([lm.tokenizer.encode("First Citizen:\nBefore we proceed")])
    cpu = load_char_lm(CHECKPOINTS / "shakespeare", "cpu", quantize=False, trace=False)
    with torch.no_grad():
        assert torch.allclose(lm.model(ids.cuda())[0].cpu(), cpu.model(ids)[0], atol=1e-2)
    if (CHECKPOINTS / "shakespeare-lstm" / "card.json").is_file():
        lstm = load_char_lm(CHECKPOINTS / "shakespeare-lstm", "cuda")
        assert next(lstm.model.parameters()).is_cuda
        assert len(list(lstm.stream("ROMEO:\n", SamplingSettings(max_new_tokens=40, seed=0)))) == 40


@needs_cuda
def test_each_fine_tune_trains_on_cuda_and_its_model_loads_there(monkeypatch, tmp_path):
    from engine.finetune import default_config, run_finetune
    from engine.registry import load_model_folder
    from engine.text.generate import SamplingSettings

    choose(monkeypatch, "cuda")
    book = tmp_path / "book.txt"
    book.write_text((ROOT / "README.md").read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    uploads = {"image": [digit_zip(tmp_path)], "text": [ROOT / "benchmarks" / "data" / "reviews.tsv"], "chargpt": [book]}
    tasks = {"image": "image-classification", "text": "text-classification", "chargpt": "lm"}
    trainer = {"image": "SGD", "text": "AdamW", "chargpt": "AdamW"}
    for kind, paths in uploads.items():
        config = default_config(kind)
        config.time_budget = 3
        with stepped_devices() as seen:
            result = run_finetune(kind, paths, config, tmp_path / f"work-{kind}", tmp_path / f"my-{kind}")
        assert seen[trainer[kind]] == {"cuda"}, (kind, seen)
        model = load_model_folder(Path(result["folder"]), tasks[kind], kind)
        assert next(model.model.parameters()).is_cuda
        if kind == "image":
            assert model.classify(render_digit("7"))["top"]
        elif kind == "text":
            assert set(model.predict("great value, I love it")) == set(result["metrics"]["classes"])
        else:
            assert len(list(model.stream("\n", SamplingSettings(max_new_tokens=30)))) == 30


@needs_cuda
def test_dqn_steps_and_playback_on_cuda(tmp_path):
    from engine.rl.dqn import DQNConfig, QNetwork, evaluate_agent, load_agent, train_dqn
    from engine.rl.live import agent_policy, watch

    config = DQNConfig(total_steps=800, learning_starts=200, eval_every=400, eval_episodes=2, final_eval_episodes=2)
    with stepped_devices() as seen:
        qnet, metrics = train_dqn(config, device="cuda")
    assert seen["Adam"] == {"cuda"} and metrics["updates"] > 0
    assert next(qnet.parameters()).device.type == "cpu"  # handed back on the CPU, ready to save and play
    agent, _ = load_agent(CHECKPOINTS / "cartpole")
    on_gpu = agent.to("cuda")
    assert evaluate_agent(on_gpu, episodes=3)["mean_return"] > 400
    action, q = agent_policy(on_gpu)(np.zeros(4, dtype=np.float32))
    assert action in (0, 1) and q.shape == (2,)
    assert Path(watch(on_gpu, 0, tmp_path)["video"]).stat().st_size > 0
    assert evaluate_agent(QNetwork(4, 2, [8]).cuda(), episodes=2)["episodes"] == 2


@needs_cuda
def test_gpu_check_passes_on_cuda():
    result = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cuda", "--quick"], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert result.returncode == 0 and report["failed_steps"] == [], report.get("failed_steps") or result.stderr[-3000:]
    assert report["device"].startswith("cuda") and report["gpu_name"]
    assert report["training"]["image"]["trained_on"]["SGD"][0].startswith("cuda")
