"""The CUDA path, proven: every tab's work on one device, through the engine functions the tabs call, as JSON.

    python benchmarks/gpu_check.py                               # the device minilab picks (MINILAB_DEVICE, else CUDA, MPS, CPU)
    python benchmarks/gpu_check.py --device cuda --compare-cpu   # and the same on the CPU, beside it
    python benchmarks/gpu_check.py --device cpu --quick --threads 1

What runs, on the chosen device:
- every shipped model, loaded through the registry as the tabs load it: image classifiers (a prediction's latency,
  batch mode, Grad-CAM, the look-inside pictures), text classifiers (one sentence, its explanation, a batch),
  character language models (streamed generation), the CartPole agent (the Play button's video and Compare's
  returns), and backbones (a forward pass);
- a fine-tune of each kind, through engine.finetune.run_finetune as the Fine-tune tab's job runs it, on data made
  here: digits drawn with Pillow (a zip of class folders), benchmarks/data/reviews.tsv (labelled text), and the
  README (plain text); then the new model loaded and tried as the tabs do;
- DQN training as the RL tab runs it (engine.rl.live.training_job), and, on a GPU, DQN on that GPU too.

Each step reports the device its model's parameters are on, and each training the devices its optimizers
stepped parameters on (a global optimizer hook), so the JSON shows where the work really ran; a model on another
device than the one asked for fails its step. Where the engine keeps work on the CPU by design, the step says so
and what it does on the GPU instead (int8 quantization and TorchScript are CPU-only; the RL tab's small MLP trains
and plays on the CPU; the fine-tunes choose their backbone or encoder with frozen CPU features). A failed step is
an "error" string in the JSON, and the script exits with status 1; a device this machine lacks exits with 2.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import io
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

EXAMPLES = ROOT / "demos" / "examples"
REVIEWS = ROOT / "benchmarks" / "data" / "reviews.tsv"
SENTENCES = ["A warm, funny and beautifully acted film; I smiled all the way home.",
             "The battery died after two days and support never answered my emails."]
CPU_ONLY_TEXT = "int8 dynamic quantization and TorchScript tracing are CPU-only: on {device} it runs float32, eagerly"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---- plumbing: the device, timing, where parameters are, which devices optimizers stepped -------------------------


def forget_device_choice() -> None:
    """Make minilab work its device out again (engine.device caches the answer)."""
    import engine.device

    for name in ("chosen_device", "pick_device"):
        function = getattr(engine.device, name, None)
        if hasattr(function, "cache_clear"):
            function.cache_clear()


def use_device(name: str) -> torch.device:
    """Make `name` the device minilab picks, as MINILAB_DEVICE does ("auto": minilab's own choice), and return it.
    Raises engine.errors.UserError for a device this machine lacks."""
    from engine.device import pick_device

    if name != "auto":
        os.environ["MINILAB_DEVICE"] = name
    forget_device_choice()
    return pick_device()


def expected_training_device() -> torch.device:
    """Where fine-tune jobs train: the chosen device (on a ZeroGPU Space, engine.device.training_device says CPU)."""
    import engine.device

    return getattr(engine.device, "training_device", engine.device.pick_device)()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function: Callable[[], object], runs: int, device: torch.device, warmup: int = 2) -> list[float]:
    """Milliseconds of each of `runs` calls, after `warmup` calls (first CUDA kernels, cuDNN's choices)."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        function()
        sync(device)
        times.append((time.perf_counter() - started) * 1000)
    return times


def p50(times: list[float]) -> float:
    return round(statistics.median(times), 2)


def p95(times: list[float]) -> float:
    return round(float(np.percentile(times, 95)), 2)


def same_device(actual: torch.device, wanted: torch.device) -> bool:
    return actual.type == wanted.type and (wanted.index is None or actual.index == wanted.index)


def params_on(module: torch.nn.Module, wanted: torch.device) -> str:
    """The device of the module's parameters; raise when any of them is elsewhere than `wanted`."""
    devices = {parameter.device for parameter in module.parameters()}
    if not devices:
        raise RuntimeError(f"{module.__class__.__name__} has no parameters to check")
    wrong = sorted(str(device) for device in devices if not same_device(device, wanted))
    if wrong:
        raise RuntimeError(f"parameters on {', '.join(wrong)}, not on {wanted}")
    return ", ".join(sorted(str(device) for device in devices))


@contextlib.contextmanager
def optimizer_devices():
    """{optimizer class name: sorted devices of the parameters it stepped}, for every optimizer step inside."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    seen: dict[str, set[str]] = {}

    def hook(optimizer, _args, _kwargs) -> None:
        devices = {str(p.device) for group in optimizer.param_groups for p in group["params"]}
        seen.setdefault(optimizer.__class__.__name__, set()).update(devices)

    handle = register_optimizer_step_post_hook(hook)
    stepped: dict[str, list[str]] = {}
    try:
        yield stepped
    finally:
        handle.remove()
        stepped.update({name: sorted(devices) for name, devices in seen.items()})


def check_trained_on(stepped: dict[str, list[str]], optimizer: str, wanted: torch.device) -> None:
    """Raise unless `optimizer` stepped parameters, all of them on `wanted`."""
    if optimizer not in stepped:
        raise RuntimeError(f"no {optimizer} step was taken (optimizers seen: {stepped or 'none'})")
    wrong = [device for device in stepped[optimizer] if not same_device(torch.device(device), wanted)]
    if wrong:
        raise RuntimeError(f"{optimizer} stepped parameters on {', '.join(wrong)}, not on {wanted}")


def step(name: str, results: dict, function: Callable[[], dict]) -> None:
    """results[name] = function(); an exception becomes {"error": "..."} there (its traceback goes to stderr)."""
    started = time.perf_counter()
    try:
        results[name] = function()
    except Exception as error:  # noqa: BLE001 - every failure is reported, and the next step still runs
        traceback.print_exc(file=sys.stderr)
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        results[name] = {"error": f"{error.__class__.__name__}: {message}"[:300]}
    log(f"  {name}: {time.perf_counter() - started:.1f} s" + (" FAILED" if "error" in results[name] else ""))


def errors_in(report: dict, path: str = "") -> list[str]:
    """Every "error" in the report, as "where: message"."""
    found = []
    for key, value in report.items():
        if key == "error":
            found.append(f"{path or 'run'}: {value}")
        elif isinstance(value, dict):
            found += errors_in(value, f"{path}.{key}" if path else key)
    return found


# ---- data made on the spot -----------------------------------------------------------------------------------------


def render_digit(digit: str, size: int = 96, stroke: int = 3, rotate: float = 0.0, shift: tuple[int, int] = (0, 0)) -> Image.Image:
    """A digit drawn in black on white with Pillow's bundled font, like a photo of a handwritten digit."""
    canvas = Image.new("L", (size, size), 255)
    ImageDraw.Draw(canvas).text((size / 2 + shift[0], size / 2 + shift[1]), digit, fill=0,
                                font=ImageFont.load_default(size=int(size * 0.7)), anchor="mm", stroke_width=stroke, stroke_fill=0)
    return canvas.rotate(rotate, fillcolor=255).convert("RGB")


def digit_zip(folder: Path, digits: str, per_class: int) -> Path:
    """A zip of class folders (1/, 4/, 7/...) of drawn digits, varied in slant, stroke and place: an image upload."""
    rng = np.random.default_rng(0)
    path = folder / "digits.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for digit in digits:
            for index in range(per_class):
                image = render_digit(digit, stroke=int(rng.integers(2, 6)), rotate=float(rng.uniform(-15, 15)),
                                     shift=(int(rng.integers(-8, 9)), int(rng.integers(-8, 9))))
                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
                archive.writestr(f"digits/{digit}/{digit}_{index}.png", buffer.getvalue())
    return path


def plain_text(folder: Path, limit: int = 60_000) -> Path:
    """A plain-text upload: the README and the benchmark notes (prose, a few tens of thousands of characters)."""
    text = "\n\n".join(path.read_text(encoding="utf-8") for path in (ROOT / "README.md", ROOT / "benchmarks" / "RESULTS.md")
                       if path.is_file())
    if len(text) < 5_000:  # no docs here: the engine's own source is text too
        text += "\n\n".join(path.read_text(encoding="utf-8") for path in sorted((ROOT / "engine").rglob("*.py")))
    path = folder / "book.txt"
    path.write_text(text[:limit], encoding="utf-8")
    return path


def review_texts() -> list[str]:
    with open(REVIEWS, encoding="utf-8", newline="") as handle:
        return [row["text"] for row in csv.DictReader(handle, delimiter="\t")]


def photo_for(classifier) -> Image.Image:
    """What a user would give the model: a digit for digit models, a photo otherwise (an example, or noise)."""
    if classifier.input_kind == "digit":
        example = EXAMPLES / "digit_7.png"
        return Image.open(example).convert("RGB") if example.is_file() else render_digit("7", size=200, stroke=6)
    example = EXAMPLES / "cat.jpg"
    if example.is_file():
        return Image.open(example).convert("RGB")
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8))


# ---- the tabs' inference ---------------------------------------------------------------------------------------------


def image_model(classifier, device: torch.device, runs: int, batch_size: int, results: dict, name: str) -> dict:
    """Image tab: classify (top-5), batch mode; Grad-CAM and the look-inside pictures go to their own sections."""
    from engine.vision.explain import first_layer_filters, grad_cam, overlay, square_view, stage_activations

    on = params_on(classifier.model, device)
    image = photo_for(classifier)
    times = timed(lambda: classifier.classify(image), runs, device)
    result = classifier.classify(image)
    batch = [image] * batch_size
    started = time.perf_counter()
    rows = classifier.classify_many(batch, [f"{i}.png" for i in range(len(batch))])
    batch_seconds = time.perf_counter() - started
    if any(row["error"] for row in rows):
        raise RuntimeError(f"batch mode: {rows[0]['error']}")
    figures = {"params_on": on, "latency_ms_p50": p50(times), "latency_ms_p95": p95(times),
               "top": next(iter(result["top"])), "batch_images_per_s": round(len(batch) / batch_seconds, 1)}

    def explain() -> None:
        heat = grad_cam(classifier, result["input"], result["class_index"])
        if heat.shape != tuple(result["input"].shape[-2:]) or not np.isfinite(heat).all():
            raise RuntimeError(f"Grad-CAM gave a {heat.shape} map (non-finite: {not np.isfinite(heat).all()}) "
                               f"for a {tuple(result['input'].shape[-2:])} input")
        backdrop = classifier.show_input(result["input"]) if classifier.input_kind == "digit" else square_view(image)
        overlay(backdrop, heat)

    def look_inside() -> None:  # demos/image.py inside_pictures, on the image as the panel's own event prepares it
        tensor = classifier.prepare(image)
        classifier.show_input(tensor).resize((128, 128))
        first_layer_filters(classifier.model)
        if not stage_activations(classifier.model, tensor):
            raise RuntimeError("no activation maps")

    step(name, results["gradcam_ms"], lambda: {"p50": p50(timed(explain, runs, device))})
    step(name, results["look_inside_ms"], lambda: {"p50": p50(timed(look_inside, max(3, runs // 4), device))})
    return figures


def text_classifier(predictor, device: torch.device, runs: int, batch_size: int) -> dict:
    """Text tab, sentiment: one text's label and its per-word explanation (the Classify button), and batch mode."""
    from engine.device import Int8Linear

    on = params_on(predictor.model, device)
    int8 = any(isinstance(module, Int8Linear) for module in predictor.model.modules())
    torchscript = getattr(predictor, "graph", None) is not None
    one = timed(lambda: predictor.predict(SENTENCES[0]), runs, device)
    explained = timed(lambda: predictor.explain(SENTENCES[0]), max(3, runs // 4), device)
    labels = [max(predictor.predict(text).items(), key=lambda item: item[1])[0] for text in SENTENCES]
    texts = (review_texts() * (batch_size // 10 + 1))[:batch_size]
    started = time.perf_counter()
    predictor.predict_proba(texts)
    batch_seconds = time.perf_counter() - started
    figures = {"params_on": on, "latency_ms_p50": p50(one), "latency_ms_p95": p95(one), "explain_ms_p50": p50(explained),
               "batch_texts_per_s": round(len(texts) / batch_seconds, 1), "labels_of_examples": labels,
               "int8": int8, "torchscript": torchscript}
    if device.type != "cpu":
        figures["note"] = CPU_ONLY_TEXT.format(device=device.type)
    return figures


def language_model(lm, device: torch.device, chars: int) -> tuple[dict, float]:
    """Text tab, generation: characters streamed as the Generate button streams them; (figures, characters/s)."""
    from engine.device import Int8Linear
    from engine.text.generate import SamplingSettings

    on = params_on(lm.model, device)
    settings = SamplingSettings(max_new_tokens=chars, temperature=0.8, top_k=0, top_p=1.0, seed=0)
    "".join(piece for piece, _ in lm.stream("ROMEO:\n", SamplingSettings(max_new_tokens=20, seed=1)))  # warm-up
    gaps, text, started = [], "", time.perf_counter()
    last = started
    for piece, probability in lm.stream("ROMEO:\n", settings):
        now = time.perf_counter()
        gaps.append((now - last) * 1000)
        last = now
        text += piece
        if not 0 <= probability <= 1:
            raise RuntimeError(f"a sampled piece has probability {probability}")
    seconds = time.perf_counter() - started
    rate = round(len(text) / seconds, 1)
    figures = {"params_on": on, "latency_ms_p50": p50(gaps), "chars_per_s": rate, "sample": text[:60],
               "int8": any(isinstance(module, Int8Linear) for module in lm.model.modules()),
               "torchscript": getattr(lm, "step_graph", None) is not None}
    if device.type != "cpu" and lm.model.__class__.__name__ == "CharGPT":
        figures["note"] = CPU_ONLY_TEXT.format(device=device.type) + " (each character through CharGPT.step)"
    return figures, rate


def cartpole_agent(qnet, device: torch.device, runs: int, episodes: int, workdir: Path) -> dict:
    """RL tab: the Play button (an episode beside a random agent, as an MP4) and Compare (returns over seeds)."""
    from engine.rl.dqn import evaluate_agent
    from engine.rl.live import agent_policy, compare_returns, watch

    on = params_on(qnet, torch.device("cpu"))  # the registry loads agents on the CPU (engine.rl.dqn.load_agent)
    policy = agent_policy(qnet)
    observation = np.array([0.01, -0.02, 0.03, 0.04], dtype=np.float32)
    times = timed(lambda: policy(observation), runs * 4, torch.device("cpu"))
    shown = watch(qnet, 0, workdir / "videos", label="cartpole")
    if not Path(shown["video"]).is_file() or Path(shown["video"]).stat().st_size == 0:
        raise RuntimeError("the Play button's video was not written")
    compared = compare_returns(qnet, 0, episodes)
    figures = {"params_on": on, "latency_ms_p50": p50(times), "play_return": shown["agent_return"],
               "random_return": shown["random_return"], "compare_mean_return": round(float(np.mean(compared["agent"])), 1)}
    if device.type != "cpu":
        # The tab plays on the CPU by design; the same policy code on the GPU must choose the same actions.
        moved = copy.deepcopy(qnet).to(device)
        observations = np.random.default_rng(0).normal(0, 0.5, (256, 4)).astype(np.float32)
        with torch.no_grad():
            same = bool((qnet(torch.from_numpy(observations)).argmax(1)
                         == moved(torch.from_numpy(observations).to(device)).argmax(1).cpu()).float().mean() >= 0.99)
        figures["note"] = "the RL tab loads and plays agents on the CPU by design (engine.rl.dqn.load_agent)"
        figures[f"on_{device.type}"] = {"params_on": params_on(moved, device), "same_actions_as_cpu": same,
                                        "mean_return": evaluate_agent(moved, episodes=min(episodes, 5))["mean_return"],
                                        "play_return": watch(moved, 0, workdir / "videos")["agent_return"]}
        if not same:
            raise RuntimeError(f"the agent chooses other actions on {device} than on the CPU")
    return figures


def backbone(folder: Path, device: torch.device, runs: int, batch_size: int) -> dict:
    """A backbone (glyphs): the Fine-tune tab starts from it; it is not offered for predictions. A forward pass."""
    from engine.checkpoints import load_model

    model, card = load_model(folder, device)
    prep = card["preprocessing"]
    batch = torch.randn(batch_size, int(prep.get("channels", 1)), int(prep["size"]), int(prep["size"]), device=device)
    with torch.inference_mode():
        times = timed(lambda: model(batch), runs, device)
        logits = model(batch)
    if not torch.isfinite(logits).all():
        raise RuntimeError("non-finite logits")
    return {"params_on": params_on(model, device), "latency_ms_p50": p50(times), "batch_size": batch_size,
            "note": "a backbone for fine-tunes: a forward pass of a batch"}


def shipped_models(device: torch.device, quick: bool, results: dict, workdir: Path) -> None:
    """Every model in checkpoints/, loaded through a fresh registry (so on this device), as its tab uses it."""
    from engine.registry import CHECKPOINTS_DIR, build_default_registry

    registry = build_default_registry()
    runs, batch = (5, 8) if quick else (50, 64)
    for entry in [e for e in registry.entries.values() if e.source == "shipped"]:
        name, task = entry.name, entry.task
        if task == "image-classification":
            step(name, results["models"], lambda: image_model(registry.get(name), device, runs, batch, results, name))
        elif task in ("sentiment", "text-classification"):
            step(name, results["models"], lambda: text_classifier(registry.get(name), device, runs, 4 * batch))
        elif task == "lm":
            def generation() -> dict:
                figures, rate = language_model(registry.get(name), device, 200 if quick else 1000)
                results["generation_chars_per_s"][name] = rate
                return figures

            step(name, results["models"], generation)
        elif task == "rl":
            step(name, results["models"], lambda: cartpole_agent(registry.get(name), device, runs, 5 if quick else 20, workdir))
        elif task == "image-backbone":
            step(name, results["models"], lambda: backbone(CHECKPOINTS_DIR / name, device, runs, batch))
        else:
            results["models"][name] = {"skipped": f"no check for task {task!r}"}


# ---- the Fine-tune tab and the RL tab's training --------------------------------------------------------------------


BUDGETS = {"quick": {"image": 4.0, "text": 4.0, "chargpt": 3.0, "dqn_steps": 1_500},
           "full": {"image": 30.0, "text": 20.0, "chargpt": 30.0, "dqn_steps": 30_000}}


def finetune(kind: str, paths: list[Path], budget: float, device: torch.device, workdir: Path) -> dict:
    """One fine-tune as the tab's job runs it, then its model loaded and tried as the Image/Text tabs would."""
    from engine.finetune import default_config, run_finetune
    from engine.registry import load_model_folder

    wanted = expected_training_device()
    config = default_config(kind)
    config.time_budget = budget
    config.validate()
    out = workdir / f"my-{kind}"
    started = time.perf_counter()
    with optimizer_devices() as stepped:
        result = run_finetune(kind, paths, config, workdir / f"job-{kind}", out, on_progress=lambda event: None)
    seconds = round(time.perf_counter() - started, 1)
    # the optimizer of the training itself: SGD (images) or AdamW (LoRA, char GPT); a probe fits its head by L-BFGS
    main_optimizer = "LBFGS" if getattr(config, "strategy", "") == "probe" else {"image": "SGD"}.get(kind, "AdamW")
    check_trained_on(stepped, main_optimizer, wanted)
    metrics = result["metrics"]
    figures = {"seconds": seconds, "budget_s": budget, "trained_on": stepped}
    if wanted.type != device.type:
        figures["note"] = f"fine-tunes train on {wanted} here (engine.device.training_device)"
    elif any(not same_device(torch.device(d), wanted) for devices in stepped.values() for d in devices):
        figures["note"] = ("the backbone or encoder is chosen on the CPU, by cross-validated logistic regression on "
                           "frozen features (LBFGS on the CPU); the training itself ran on " + str(wanted))
    model = load_model_folder(Path(result["folder"]), {"image": "image-classification", "text": "text-classification",
                                                        "chargpt": "lm"}[kind], out.name)
    if kind == "image":
        from engine.vision.explain import grad_cam

        tried = model.classify(render_digit("4", size=200, stroke=6))
        grad_cam(model, tried["input"], tried["class_index"])
        figures.update(accuracy=metrics["val_accuracy"], backbone=metrics.get("backbone"), epochs_run=metrics.get("epochs_run"),
                       tried={"params_on": params_on(model.model, device), "drawn_4_read_as": next(iter(tried["top"]))})
    elif kind == "text":
        label = max(model.predict(SENTENCES[0]).items(), key=lambda item: item[1])[0]
        figures.update(accuracy=metrics["val_accuracy"], encoder=metrics.get("encoder"),
                       tried={"params_on": params_on(model.model, device), "label_of_a_warm_review": label})
    else:
        from engine.text.generate import SamplingSettings

        text = "".join(piece for piece, _ in model.stream("\n", SamplingSettings(max_new_tokens=100, seed=0)))
        figures.update(val_loss=metrics["val_loss"], iters=metrics["iters"],
                       tried={"params_on": params_on(model.model, device), "sample": text[:60]})
    return figures


def dqn_as_the_tab_trains(steps: int, episodes: int, workdir: Path) -> dict:
    """The RL tab's Start button: its default settings (demos/rl.py), through engine.rl.live.training_job."""
    from engine.device import set_threads
    from engine.rl.dqn import DQNConfig, load_agent
    from engine.rl.live import training_job

    config = DQNConfig(total_steps=steps, lr=1e-3, lr_end=1e-4, hidden=[64, 64], num_envs=4, batch_size=128, gamma=0.99,
                       buffer_size=50_000, eps_duration=min(4_000, steps // 2), seed=0, eval_every=0,
                       final_eval_episodes=episodes)
    threads = torch.get_num_threads()
    context = SimpleNamespace(report=lambda **event: None, should_stop=lambda: False, workdir=workdir / "rl-job")
    context.workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        with optimizer_devices() as stepped:
            result = training_job(config)(context)  # sets its thread to 1 PyTorch thread, as the tab's job does
    finally:
        set_threads(threads)
    check_trained_on(stepped, "Adam", torch.device("cpu"))
    qnet, _ = load_agent(result["folder"])
    return {"seconds": round(time.perf_counter() - started, 1), "steps": steps, "mean_return": result["metrics"]["final100_mean"],
            "trained_on": stepped, "params_on": params_on(qnet, torch.device("cpu")),
            "note": "the RL tab trains on the CPU, on one thread, by design (engine/rl/live.py)"}


def dqn_on_device(steps: int, episodes: int, device: torch.device) -> dict:
    """The same DQN code with its network on `device` (the tab does not do this: it proves the code path)."""
    from engine.rl.dqn import DQNConfig, evaluate_agent, train_dqn

    config = DQNConfig(total_steps=steps, eps_duration=min(4_000, steps // 2), eval_every=0, final_eval_episodes=0, seed=0)
    started = time.perf_counter()
    with optimizer_devices() as stepped:
        qnet, metrics = train_dqn(config, device=device)
    check_trained_on(stepped, "Adam", device)
    return {"seconds": round(time.perf_counter() - started, 1), "steps": metrics["total_steps"], "updates": metrics["updates"],
            "mean_return": evaluate_agent(qnet, episodes=episodes)["mean_return"], "trained_on": stepped}


def training(device: torch.device, quick: bool, results: dict, workdir: Path) -> None:
    budget = BUDGETS["quick" if quick else "full"]
    episodes = 5 if quick else 20
    data = workdir / "data"
    data.mkdir()
    images = digit_zip(data, "147", 12 if quick else 40)
    reviews = data / "reviews.tsv"
    reviews.write_bytes(REVIEWS.read_bytes())
    book = plain_text(data)
    steps = results["training"]
    step("image", steps, lambda: finetune("image", [images], budget["image"], device, workdir))
    step("text", steps, lambda: finetune("text", [reviews], budget["text"], device, workdir))
    step("chargpt", steps, lambda: finetune("chargpt", [book], budget["chargpt"], device, workdir))
    step("dqn", steps, lambda: dqn_as_the_tab_trains(budget["dqn_steps"], episodes, workdir))
    if device.type != "cpu":
        step(f"dqn_on_{device.type}", steps, lambda: dqn_on_device(min(budget["dqn_steps"], 3_000), episodes, device))


# ---- one run, and the report ----------------------------------------------------------------------------------------


def run_suite(device: torch.device, quick: bool) -> dict:
    """Everything above on `device` (already chosen with use_device)."""
    import engine.text.finetune as text_finetune
    from engine.device import bfloat16_is_fast

    text_finetune._encoders.clear()  # the CPU encoders load again, so a second run costs what the first did
    results: dict = {"models": {}, "gradcam_ms": {}, "look_inside_ms": {}, "generation_chars_per_s": {}, "training": {},
                     "bf16_autocast_in_training": bfloat16_is_fast(device)}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="minilab-gpu-check-") as folder:
        log(f"on {device}: shipped models")
        shipped_models(device, quick, results, Path(folder))
        log(f"on {device}: training")
        training(device, quick, results, Path(folder))
    results["seconds"] = round(time.perf_counter() - started, 1)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps, or auto (minilab's own choice; default)")
    parser.add_argument("--threads", type=int, help="PyTorch CPU threads (default: PyTorch's own)")
    parser.add_argument("--quick", action="store_true", help="short training budgets and fewer timing runs")
    parser.add_argument("--compare-cpu", action="store_true", help="run everything on the CPU too and report it beside")
    args = parser.parse_args(argv)
    os.environ.setdefault("MINILAB_OFFLINE", "1")  # shipped models only: never wait for the network
    if args.threads:
        torch.set_num_threads(args.threads)
    from engine.errors import UserError

    requested = os.environ.get("MINILAB_DEVICE")
    try:
        try:
            device = use_device(args.device)
        except UserError as error:
            print(json.dumps({"device": args.device, "error": str(error)}))
            return 2
        report: dict = {"device": str(device), "gpu_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                        "torch": torch.__version__, "torch_cuda": torch.version.cuda, "threads": torch.get_num_threads(),
                        "quick": args.quick}
        report.update(run_suite(device, args.quick))
        if args.compare_cpu and device.type != "cpu":
            use_device("cpu")
            report["cpu_reference"] = run_suite(torch.device("cpu"), args.quick)
    finally:  # the device choice as it was: main() may run inside another program (the tests)
        if requested is None:
            os.environ.pop("MINILAB_DEVICE", None)
        else:
            os.environ["MINILAB_DEVICE"] = requested
        forget_device_choice()
    failures = errors_in(report)
    report["failed_steps"] = failures
    print(json.dumps(report))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
