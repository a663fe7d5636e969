"""Fine-tune tab: upload your own images or text, see what minilab understood, train live, then look at
what the model gets wrong, try it, download it, and find it in the other tabs.

Training runs as a job of engine.jobs (the same runner as the RL tab): it belongs to this browser's owner key
(kept in localStorage), survives a reload, and is polled by a gr.Timer. Cancel and pause are flags the
training loop checks. One job per browser at a time; the runner queues jobs across users.
"""
from __future__ import annotations

import tempfile
import uuid
from pathlib import Path

import gradio as gr
import pandas as pd

from demos import zerogpu
from demos.common import (LIVE_STATES, confusion_figure, control_job, ended_empty, ensure_owner, friendly_errors, latest_job, made_model, model_zip,
                          session_key)
from engine.errors import UserError
from engine.finetune import default_config
from engine.registry import default_registry, model_entry_for_folder

KINDS = {"Images": "image", "Labelled text": "text", "Plain text": "chargpt"}
JOB_PREFIX = "finetune-"
EXAMPLES_DIR = Path(__file__).parent / "examples"
REVIEWS_EXAMPLE = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "reviews.tsv"
HUB_BACKBONES = [(f"{name} (hub, probe only)", name) for name in
                 ("torchvision/resnet50", "torchvision/mobilenet_v3_large", "torchvision/efficientnet_b0",
                  "google/vit-base-patch16-224")]
NO_UPLOAD = "Upload data to see what minilab understood."
POLL_S = 1.0  # how often the page asks for progress
IDLE = "No training yet: upload data, check what was understood, and press **Train**."


def _paths(files) -> list[str]:
    if not files:
        raise UserError("Upload your data first.")
    files = files if isinstance(files, list) else [files]
    return [file if isinstance(file, str) else file.name for file in files]


# ---- 1. what was understood ---------------------------------------------------------------------------------


@friendly_errors
def inspect_upload(kind_label: str, files):
    """Read the upload the way training will, and show classes, counts, samples and what was skipped. Runs again
    when the kind changes. A problem is written in the summary, beside the upload, where it replaces what an
    earlier upload said (a passing error toast left "Ready to train" from the previous files on the page)."""
    if not files:
        return NO_UPLOAD, []
    try:
        return _understood(KINDS[kind_label], _paths(files))
    except UserError as error:
        return f"❌ **Cannot read this upload:** {error}", []


def _understood(kind: str, paths: list[str]) -> tuple[str, list]:
    with tempfile.TemporaryDirectory(prefix="minilab-inspect-") as workdir:
        if kind == "image":
            from engine.uploads import check_classes, read_image_upload
            from engine.vision.finetune import decode_images, thumbnail

            dataset = read_image_upload(paths, workdir)
            counts = dataset.counts()
            samples = []
            for name in dataset.classes[:12]:
                files_of_class = [f for f, label in zip(dataset.files, dataset.labels) if label == name][:4]
                decoded, _ = decode_images(files_of_class, 64)
                samples += [(thumbnail(image, 96), name) for image in decoded if image is not None]
            lines = [f"**{len(dataset.files):,} images in {len(counts)} classes.**"]
            problem = _problem(check_classes, counts)
        elif kind == "text":
            from engine.text.data import read_labelled_text
            from engine.uploads import check_classes

            if len(paths) != 1:
                raise UserError(f"Upload one CSV or TSV file (there are {len(paths)}: clear the list with ✕ and add just one).")
            table = read_labelled_text(paths[0])
            counts, samples = table.counts(), []
            lines = [f"**{len(table.texts):,} rows in {len(counts)} classes** (text column `{table.text_column}`, "
                     f"label column `{table.label_column}`).", "",
                     *[f"- *{label}*: {text[:120]}" for text, label in list(zip(table.texts, table.labels))[:5]]]
            dataset = table
            problem = _problem(check_classes, counts, "rows")
        else:
            from engine.text.data import read_text_file

            if len(paths) != 1:
                raise UserError(f"Upload one plain-text (.txt) file (there are {len(paths)}: clear the list with ✕ and add just one).")
            text = read_text_file(paths[0])
            counts, samples = {}, []
            lines = [f"**{len(text):,} characters**, {len(set(text))} different ones, {text.count(chr(10)):,} lines. "
                     f"The last 10% is kept aside to measure the validation loss.", "", "```", text[:400], "```"]
            problem = None if len(text.strip()) >= 1000 else "a generator needs at least 1,000 characters"
            dataset = None
    if counts:
        lines += ["", "| class | count |", "|---|---|", *[f"| {name} | {n:,} |" for name, n in list(counts.items())[:30]]]
        if len(counts) > 30:
            lines.append(f"| … and {len(counts) - 30} more | |")
    skipped = list(getattr(dataset, "skipped", []) or [])
    if skipped:
        shown = [item if isinstance(item, str) else f"{item[0]}: {item[1]}" for item in skipped[:10]]
        lines += ["", f"**Skipped {len(skipped):,}:**", *[f"- {line}" for line in shown]]
        if len(skipped) > 10:
            lines.append(f"- … and {len(skipped) - 10:,} more")
    lines += ["", f"❌ **Cannot train yet:** {problem}" if problem else "✅ Ready to train."]
    return "\n".join(lines), samples


def _problem(check, counts: dict, *args) -> str | None:
    try:
        check(counts, *args)
    except UserError as error:
        return str(error)
    return None


# ---- 2. train -----------------------------------------------------------------------------------------------


def _config(kind: str, backbone, strategy, text_backbone, text_strategy, init, budget, epochs, lr, batch_size,
            val_fraction, image_size, flip, seed, start_weight=None, architecture=None):
    config = default_config(kind)
    for name, value in (("time_budget", budget), ("seed", seed)):
        if value is not None:
            setattr(config, name, type(getattr(config, name))(value))
    if kind == "image":
        config.backbone, config.strategy, config.flip = backbone, strategy, bool(flip)
        for name, value in (("max_epochs", epochs), ("lr", lr), ("batch_size", batch_size), ("val_fraction", val_fraction),
                            ("image_size", image_size)):
            if value is not None:
                setattr(config, name, type(getattr(config, name))(value))
    elif kind == "text":
        config.backbone, config.strategy = text_backbone, text_strategy
        if val_fraction is not None:
            config.val_fraction = float(val_fraction)
        if start_weight is not None:
            config.start_weight = float(start_weight)
    else:
        config.init = init
        config.architecture = architecture or config.architecture
    return config.validate()


@friendly_errors
def start(owner: str | None, kind_label: str, files, *settings):
    from engine.finetune import finetune_job
    from engine.jobs import default_runner

    owner = ensure_owner(owner)
    kind = KINDS[kind_label]
    paths = _paths(files)
    runner = default_runner()
    if any(job.state in LIVE_STATES and job.name.startswith(JOB_PREFIX) for job in runner.jobs(owner)):
        raise UserError("Your model is still training: cancel it before starting another.")
    config = _config(kind, *settings)
    name = {"image": "my-images", "text": "my-text", "chargpt": f"my-{getattr(config, 'architecture', '')}-writer"}[kind]
    name += f"-{uuid.uuid4().hex[:6]}"
    runner.submit(owner, finetune_job(kind, paths, config, name), name=JOB_PREFIX + kind,
                  config={"kind": kind, "model_name": name, "time_budget": config.time_budget}, inputs=paths)
    return owner, gr.Timer(active=True)


def _latest_job(owner: str | None):
    return latest_job(owner, JOB_PREFIX)


@friendly_errors
def control(action: str, owner: str | None):
    control_job(action, owner, JOB_PREFIX)
    return gr.Timer(active=True)


# ---- 3. watch it, then look at the result ---------------------------------------------------------------------


def _progress_markdown(job) -> str:
    if job.state == "queued":
        return f"⏳ Waiting for the trainer: position **{job.queue_position}** in the queue."
    if stopped := ended_empty(job, "Train"):
        return stopped
    progress = job.progress or {}
    budget = float(job.config.get("time_budget") or 1)
    stage = progress.get("stage") if progress.get("kind") == "stage" else "training"
    # Only a finished run's bar is full: a failed or cancelled one stays where it stopped.
    done_fraction = 1.0 if job.state == "succeeded" else min(0.99, job.elapsed / budget)
    filled = int(20 * done_fraction)
    bar = "█" * filled + "░" * (20 - filled)
    left = max(0.0, budget - job.elapsed)
    line = f"`{bar}` {job.elapsed:.0f} s" + (f" · about {left:.0f} s left ({stage})" if job.state == "running" else "")
    status = {"running": "🏃 training", "paused": "⏸ paused", "succeeded": "✅ done",
              "cancelled": "⏹ cancelled (kept the best model so far)", "timed_out": "⏱ time limit reached",
              "failed": f"❌ failed: {job.error}"}[job.state]
    if getattr(job, "reason", None) and job.state != "failed":  # stopped by force: say how
        status += f": {job.reason}"
    return f"**{status}**  \n{line}"


def _curves(events: list[dict]) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    epochs = [e for e in events if e.get("kind") == "epoch"]
    loss_rows, acc_rows = [], []
    for e in epochs:
        for key, series in (("train_loss", "training loss"), ("val_loss", "validation loss")):
            if isinstance(e.get(key), (int, float)):
                loss_rows.append({"epoch": e["epoch"], "value": e[key], "series": series})
        for key, series in (("train_acc", "training accuracy"), ("val_acc", "validation accuracy"),
                            ("cv_acc", "cross-validated accuracy")):
            if isinstance(e.get(key), (int, float)):
                acc_rows.append({"epoch": e["epoch"], "value": e[key], "series": series})
    return (pd.DataFrame(loss_rows) if loss_rows else None), (pd.DataFrame(acc_rows) if acc_rows else None)


def _register(job, owner: str, request: gr.Request | None) -> str:
    """Put the new model in the registry for this browser's owner key and this page's session, so that the
    Image and Text tabs list it; no other session sees it."""
    name = job.result["name"]
    registry = default_registry()
    for session in {owner, session_key(request)} - {None}:
        registry.forget_missing(session)
        if name not in [e.name for e in registry.list(_task(job.result["kind"]), session)]:
            registry.add(model_entry_for_folder(Path(job.result["folder"]), name, "session", session=session))
    return name


def _task(kind: str) -> str:
    return {"image": "image-classification", "text": "text-classification", "chargpt": "lm"}[kind]


def _results(job) -> tuple[str, object, pd.DataFrame | None, list, pd.DataFrame | None, str | None]:
    result = job.result
    metrics = result["metrics"]
    kind = result["kind"]
    name = result["name"]
    if kind == "chargpt":
        text = (f"### {name}\nValidation loss **{metrics['val_loss']:.3f}** nats per character "
                f"({metrics['iters']:,} steps, {metrics['seconds']:.0f} s). A sample:\n\n```\n{result['sample']}\n```\n"
                "Try it below, or pick it in **Text → Generate**.")
        return text, None, None, [], None, model_zip(Path(result["folder"]), name)
    per_class = pd.DataFrame([{"class": c, "accuracy": f"{a:.1%}"} for c, a in metrics["per_class_accuracy"].items()])
    where = "**Image classification**" if kind == "image" else "**Text → Sentiment** (it lists every text classifier)"
    extra = f" · encoder: {metrics['encoder']}" if metrics.get("encoder") else ""
    if metrics.get("sst2_agreement") and not metrics.get("cv_accuracy_by_encoder"):  # sentiment under other names
        extra += f", which read your labels as sentiment: it agreed with {metrics['sst2_agreement']:.0%} of them before training"
    if metrics.get("blended_with_start"):  # WiSE-FT: part of sst2 as it started, which holds what it learnt from SST-2
        share = metrics["blended_with_start"]
        extra += f" · kept as {1 - share:.0%} the fine-tuned weights and {share:.0%} sst2's, which remembers SST-2's 67,000 sentences"
    if kind == "image" and metrics.get("epochs_run"):
        extra += f" · {metrics['epochs_run']} epochs"
        if metrics.get("epoch_ceiling_reached"):
            extra += ", the most allowed, so it ended early; Advanced raises the ceiling"
    if kind == "image" and metrics.get("backbone"):
        extra += f" · from the {metrics['backbone']} network"
        if metrics.get("inverted"):
            extra += ", which sees your dark-on-light images inverted, as it was trained"
    for key in ("cv_accuracy_by_encoder", "cv_accuracy_by_backbone"):  # which network's features fit the upload best
        if metrics.get(key):
            extra += " (chosen by cross-validation: " + ", ".join(f"{name} {score:.0%}" for name, score in metrics[key].items()) + ")"
    text = (f"### {name}\nValidation accuracy **{metrics['val_accuracy']:.1%}** on {metrics['n_val']:,} held-out "
            f"examples (trained on {metrics['n_train']:,}; {metrics['seconds']:.0f} s{extra}). "
            f"Try it below; it is also in {where} for this session.")
    if not result["misclassified"]:
        text += " Every held-out example is classified right, so there are no mistakes to show."
    figure = confusion_figure(result["confusion"], result["classes"], "Confusion matrix (validation)")
    gallery, table = [], None
    if kind == "image":
        from engine.vision.finetune import thumbnail

        gallery = [(thumbnail(m["image"]), f"{m['file']}: labelled {m['true']}, predicted {m['predicted']} "
                    f"({m['confidence']:.0%})") for m in result["misclassified"]]
    else:
        table = pd.DataFrame([{k: m[k] for k in ("text", "true", "predicted", "confidence", "loss")} for m in result["misclassified"]])
    return text, figure, per_class, gallery, table, model_zip(Path(result["folder"]), name)


def poll(owner: str | None, request: gr.Request):
    """Timer tick (and page load): progress and curves; once the job ends, the results and the new model."""
    job = _latest_job(owner)
    # The result panels stay hidden until there is something in them (empty ones look broken).
    hidden = (gr.Plot(value=None, visible=False), gr.Dataframe(value=None, visible=False),
              gr.Gallery(value=[], visible=False), gr.Dataframe(value=None, visible=False))
    if job is None:
        return IDLE, None, None, "", *hidden, None, gr.Timer(active=False)
    loss, accuracy = _curves(job.events)
    if made_model(job):
        _register(job, owner, request)
        text, figure, per_class, gallery, table, download = _results(job)
        kind = job.result["kind"]
        return (_progress_markdown(job), loss, accuracy, text,
                gr.Plot(value=figure, visible=figure is not None),
                gr.Dataframe(value=per_class, visible=per_class is not None),
                gr.Gallery(value=gallery, visible=kind == "image" and bool(gallery)),
                gr.Dataframe(value=table, visible=kind == "text" and table is not None and len(table) > 0),
                download, gr.Timer(active=False))
    if job.done:  # ended without a model
        return (_progress_markdown(job), loss, accuracy, "", *hidden, None, gr.Timer(active=False))
    # Still training: plain values only. Any component update (gr.Plot(visible=...), gr.Timer(...), even gr.skip())
    # makes Gradio rebuild that component's whole config, JSON schemas and all; at one poll a second per trainer,
    # that was most of what a training job cost the web server. The result panels were hidden when the job
    # started, so empty values leave them as they are; the timer's value is its interval.
    return (_progress_markdown(job), loss, accuracy, "", None, None, [], None, None, POLL_S)


def clear_results():
    """A new job starts: the previous one's results go (once, rather than at every poll)."""
    return ("", gr.Plot(value=None, visible=False), gr.Dataframe(value=None, visible=False),
            gr.Gallery(value=[], visible=False), gr.Dataframe(value=None, visible=False), None)


# ---- 4. use it ----------------------------------------------------------------------------------------------


def _finished_model(owner: str | None, kind: str | None = None):
    job = _latest_job(owner)
    if job is None or not made_model(job):
        raise UserError("Train a model first (or wait until it has finished).")
    if kind and job.result["kind"] != kind:
        raise UserError(f"Your latest model is not {'an image classifier' if kind == 'image' else 'a text model'}.")
    _register(job, owner, None)  # in case no poll has seen the job end yet
    return job, default_registry().get(job.result["name"], owner)


@friendly_errors
def try_image(image, owner: str | None):
    if image is None:
        raise UserError("Upload or paste an image to try.")
    _, classifier = _finished_model(owner, "image")
    return classifier.classify(image, top_k=5)["top"]


@friendly_errors
def try_text(text: str, owner: str | None):
    job, model = _finished_model(owner)
    if job.result["kind"] == "text":
        return model.predict(text), ""
    if job.result["kind"] == "chargpt":
        from engine.text.generate import SamplingSettings

        settings = SamplingSettings(max_new_tokens=300, temperature=0.8, top_k=0, top_p=1.0, seed=0)
        return None, (text or "") + "".join(piece for piece, _ in model.stream(text or "\n", settings))
    raise UserError("Your latest model classifies images: try it with an image.")


@friendly_errors
def push(token: str, repo_id: str, owner: str | None):
    from engine.hub import push_model_folder

    job, _ = _finished_model(owner)
    url = push_model_folder(job.result["folder"], repo_id, token)
    return f"✅ Pushed to [{url}]({url})."


@friendly_errors
def load_model_zip(file, owner: str | None, request: gr.Request):
    """A zip downloaded from this tab (or any minilab model zip) becomes a model of this session again."""
    from engine.checkpoints import read_card, unpack_model_zip
    from engine.registry import load_model_folder

    if file is None:
        raise UserError("Choose a model zip first.")
    owner = ensure_owner(owner)
    path = Path(file if isinstance(file, str) else file.name)
    folder = unpack_model_zip(path, tempfile.mkdtemp(prefix="minilab-model-"))
    card = read_card(folder)
    if card["task"] == "rl":
        raise UserError("That is a CartPole agent: load it in the Reinforcement learning tab.")
    if card["task"] == "image-backbone":
        raise UserError("That is a backbone, which the Fine-tune tab starts from; its classes mean nothing on their own.")
    load_model_folder(folder, card["task"], card["name"])  # refuses a broken model now, with the reason
    name = f"uploaded-{path.stem[:24]}-{uuid.uuid4().hex[:4]}"
    registry = default_registry()
    for session in {owner, session_key(request)} - {None}:
        registry.add(model_entry_for_folder(folder, name, "session", session=session))
    where = {"image-classification": "Image classification", "lm": "Text → Generate"}.get(card["task"], "Text → Sentiment")
    return owner, f"✅ Loaded **{name}** ({card['task']}): pick it in **{where}**."


# ---- layout ---------------------------------------------------------------------------------------------------


HINTS = {"image": "A **zip of class folders** (`cats/…`, `dogs/…`), or several images plus a **CSV of filename,label**.",
         "text": "A **CSV or TSV** with a text column (`text`, `sentence`, `review`…) and a label column (`label`, `class`…), "
                 "or any two columns, with a header or none.",
         "chargpt": "A **plain-text file** (.txt): a book, song lyrics, code… 100 kB or more gives words and lines."}


def _budget(kind: str) -> float:
    """The engine's default training time for a kind: the page starts where the CLI and benchmarks do."""
    return default_config(kind).time_budget


def restore_settings(owner: str | None):
    """On page load: show the kind and training time of this browser's latest job, so that a reload which
    reattaches to a char model's job shows the char layout (and its try box), not the default Images one."""
    job = _latest_job(owner)
    if job is None:
        return gr.Radio(), gr.Slider()
    label = next(label for label, kind in KINDS.items() if kind == job.config["kind"])  # `start` sets both
    return gr.Radio(value=label), gr.Slider(value=job.config["time_budget"])


def default_budget(kind_label: str):
    """A kind chosen by the user starts from that kind's default training time (a kind set by a reload keeps
    its job's: so this answers the radio's input event, not its change event)."""
    return gr.Slider(value=_budget(KINDS[kind_label]))


def kind_changed(kind_label: str):
    kind = KINDS[kind_label]
    return (gr.Group(visible=kind == "image"), gr.Group(visible=kind == "text"), gr.Group(visible=kind == "chargpt"),
            HINTS[kind], gr.Image(visible=kind == "image"), gr.Textbox(visible=kind != "image"),
            gr.Button(visible=kind == "image"), gr.Button(visible=kind != "image"), gr.Gallery(visible=kind == "image"),
            gr.Textbox(visible=kind == "chargpt"), gr.Label(visible=kind != "chargpt"),
            gr.LinePlot(x_title="step" if kind == "chargpt" else "epoch"),  # a char model's curve is per step
            gr.LinePlot(visible=kind != "chargpt"))  # and it has no accuracy


def build(owner: gr.BrowserState) -> dict:
    gr.Markdown("Train a model on **your own data**, live. Images: a zip with one folder per class. Text: a labelled "
                "CSV, or any .txt to teach a character-level writer. Nothing leaves this server; your data and "
                "models are visible to you only.")
    if zerogpu.TRAINING_NOTE:
        gr.Markdown(f"ℹ️ {zerogpu.TRAINING_NOTE}")
    with gr.Row():
        with gr.Column(scale=5):
            kind = gr.Radio(list(KINDS), value="Images", label="What do you want to train?", elem_id="ft-kind")
            hint = gr.Markdown(HINTS["image"])
            # A fixed height: 500 images and a CSV would otherwise list every file down the page; they scroll here.
            files = gr.File(label="Your data", file_count="multiple", elem_id="ft-files", height=240,
                            file_types=[".zip", ".csv", ".tsv", ".txt", "image"])
            # The value of a multiple-file input is a list of files, so each example is [[path]] (a bare path
            # reached the handler as one file, not a list, and Gradio refused it before inspect_upload ran).
            # Made here, shown with the image settings below: the shapes example turns mirroring on (a mirrored shape
            # is the same shape; benchmarks/finetune_shapes.py, 3 seeds: 99.7-100% on 300 new shapes, 89-98% without).
            flip = gr.Checkbox(value=False, label="Mirror images (photos and shapes yes; digits and letters no)", render=False)
            if (EXAMPLES_DIR / "shapes.zip").is_file():
                gr.Examples(examples=[[[str(EXAMPLES_DIR / "shapes.zip")], True]], inputs=[files, flip], visible_columns=[0],
                            label="Example: 3 classes of drawn shapes")
            if REVIEWS_EXAMPLE.is_file():
                gr.Examples(examples=[[[str(REVIEWS_EXAMPLE)]]], inputs=[files],
                            label="Example: 60 labelled reviews (pick 'Labelled text')")
        with gr.Column(scale=5):
            summary = gr.Markdown(NO_UPLOAD, elem_id="ft-summary")
            samples = gr.Gallery(label="Samples per class", columns=6, height=220, elem_id="ft-samples", fit_columns=False)
    image_defaults = default_config("image")  # the settings the CLI and benchmarks use, so the page matches them
    text_defaults = default_config("text")
    with gr.Group(visible=True) as image_settings:
        with gr.Row():
            backbone = gr.Dropdown([("auto: glyphs or cifar10", "auto"),
                                    ("glyphs network (drawings; it never saw a real image)", "glyphs"),
                                    ("cifar10 network (photos)", "cifar10"), ("mnist network (digits)", "mnist"),
                                    ("from scratch", "scratch"), *HUB_BACKBONES], value=image_defaults.backbone, label="Start from",
                                   allow_custom_value=True, info="auto takes glyphs for grey drawings when its features fit "
                                                                 "them better, else cifar10; hub networks (probe only) when "
                                                                 "cached or online; or type a Hugging Face image model id")
            strategy = gr.Radio([("Fine-tune every layer (best)", "finetune"), ("Linear probe (seconds)", "probe")],
                                value="finetune", label="Strategy")
            flip.render()
    with gr.Group(visible=False) as text_settings:
        with gr.Row():
            text_strategy = gr.Radio([("LoRA fine-tune (best)", "lora"), ("Linear probe (seconds)", "probe")],
                                     value="lora", label="Strategy")
            text_backbone = gr.Dropdown([("automatic (sst2 for sentiment, else cross-validated)", "auto"), ("sentiment-tuned MiniLM (sst2)", "sst2"),
                                         ("plain MiniLM", "minilm")], value="auto", label="Encoder")
    with gr.Group(visible=False) as chargpt_settings:
        with gr.Row():
            architecture = gr.Radio([("GPT (self-attention)", "gpt"), ("LSTM (gates and cells)", "lstm")], value="gpt",
                                    label="Model", elem_id="ft-architecture",
                                    info="Text → Inside races both on your text and shows what each learnt")
            init = gr.Radio([("From scratch", "scratch"), ("Continue from the Shakespeare model", "shakespeare")],
                            value="scratch", label="Start")
    budget = gr.Slider(1, 600, value=image_defaults.time_budget, step=1, label="Training time (seconds)")
    with gr.Accordion("Advanced", open=False):
        with gr.Row():
            epochs = gr.Number(value=image_defaults.max_epochs, precision=0, label="Images: at most this many epochs")
            lr = gr.Number(value=image_defaults.lr, label="Images: learning rate (SGD, one-cycle)")
            batch_size = gr.Number(value=image_defaults.batch_size, precision=0, label="Images: batch size")
            val_fraction = gr.Slider(0.05, 0.5, value=image_defaults.val_fraction, step=0.05, label="Held out for validation")
            image_size = gr.Number(value=image_defaults.image_size, precision=0, label="Images: side in pixels (0 = the backbone's)")
            seed = gr.Number(value=image_defaults.seed, precision=0, label="Seed")
            start_weight = gr.Slider(0, 0.9, value=text_defaults.start_weight, step=0.05,
                                     label="Text, sentiment: sst2's share in the model kept", elem_id="ft-start-weight",
                                     info="blended with the fine-tuned weights (WiSE-FT); 0: fine-tuned alone")
    with gr.Row():
        train_button = gr.Button("Train", variant="primary", elem_id="ft-train")
        pause_button = gr.Button("Pause")
        resume_button = gr.Button("Resume")
        cancel_button = gr.Button("Cancel", variant="stop")
    progress = gr.Markdown(IDLE, elem_id="ft-progress")
    with gr.Row():
        # No fixed height: Gradio's plots count the legend inside it, and a short plot clips the legend away.
        loss_plot = gr.LinePlot(x="epoch", y="value", color="series", label="Loss", y_title="loss", elem_id="ft-loss")
        accuracy_plot = gr.LinePlot(x="epoch", y="value", color="series", label="Accuracy", y_title="accuracy", y_lim=[0, 1],
                                    elem_id="ft-accuracy")
    results = gr.Markdown(elem_id="ft-results")
    with gr.Row():
        confusion = gr.Plot(label="Confusion matrix", visible=False)
        per_class = gr.Dataframe(label="Accuracy per class", interactive=False, visible=False)
    mistakes = gr.Gallery(label="Validation images it gets most wrong (highest loss first: check their labels)",
                          columns=8, height=240, visible=False, fit_columns=False)  # one mistake: a thumbnail, not a banner
    text_mistakes = gr.Dataframe(label="Validation rows it gets most wrong (highest loss first)", interactive=False, wrap=True,
                                 visible=False)
    gr.Markdown("### Try it")
    with gr.Row():
        with gr.Column():
            try_image_input = gr.Image(type="pil", label="An image", sources=["upload", "clipboard", "webcam"], height=220,
                                       elem_id="ft-try-image")
            try_text_input = gr.Textbox(label="A sentence to classify, or a prompt", lines=3, visible=False)
            try_image_button = gr.Button("Classify")
            try_text_button = gr.Button("Run", visible=False)
        with gr.Column():
            try_label = gr.Label(num_top_classes=5, label="Prediction")
            try_output = gr.Textbox(label="Generated", lines=8, interactive=False, visible=False)  # char models only
    with gr.Row():
        download = gr.File(label="Your model (zip: weights, card, labels)", interactive=False, elem_id="ft-download")
        upload_model = gr.File(label="Load a model zip again", file_types=[".zip"])
    loaded = gr.Markdown()
    with gr.Accordion("Push to the Hugging Face Hub", open=False):
        with gr.Row():
            repo_id = gr.Textbox(label="Repository", placeholder="your-name/my-model")
            token = gr.Textbox(label="Access token (write)", type="password")
            push_button = gr.Button("Push")
        push_message = gr.Markdown()
    timer = gr.Timer(POLL_S, active=False)

    kind.change(kind_changed, inputs=kind, outputs=[image_settings, text_settings, chargpt_settings, hint,
                                                    try_image_input, try_text_input, try_image_button, try_text_button, samples,
                                                    try_output, try_label, loss_plot, accuracy_plot],
                api_name=False)
    kind.input(default_budget, inputs=kind, outputs=budget, api_name=False)
    backbone.change(lambda name: gr.Radio(value="probe") if "/" in (name or "") else gr.Radio(), inputs=backbone,
                    outputs=strategy, api_name=False)
    files.change(inspect_upload, inputs=[kind, files], outputs=[summary, samples], api_name="finetune_inspect")
    kind.change(inspect_upload, inputs=[kind, files], outputs=[summary, samples], api_name=False)  # a zip read as text says so
    settings = [backbone, strategy, text_backbone, text_strategy, init, budget, epochs, lr, batch_size, val_fraction,
                image_size, flip, seed, start_weight, architecture]
    started = train_button.click(start, inputs=[owner, kind, files, *settings], outputs=[owner, timer],
                                 api_name="finetune_start")
    started.success(clear_results, outputs=[results, confusion, per_class, mistakes, text_mistakes, download],
                    api_name=False, show_progress="hidden")
    pause_button.click(lambda o: control("pause", o), inputs=owner, outputs=timer, api_name="finetune_pause")
    resume_button.click(lambda o: control("resume", o), inputs=owner, outputs=timer, api_name="finetune_resume")
    cancel_button.click(lambda o: control("cancel", o), inputs=owner, outputs=timer, api_name="finetune_cancel")
    poll_outputs = [progress, loss_plot, accuracy_plot, results, confusion, per_class, mistakes, text_mistakes, download, timer]
    timer.tick(poll, inputs=owner, outputs=poll_outputs, show_progress="hidden", concurrency_limit=None, api_name="finetune_poll")
    try_image_button.click(try_image, inputs=[try_image_input, owner], outputs=try_label, api_name="finetune_try_image")
    try_text_button.click(try_text, inputs=[try_text_input, owner], outputs=[try_label, try_output], api_name="finetune_try_text")
    push_button.click(push, inputs=[token, repo_id, owner], outputs=push_message, api_name="finetune_push")
    upload_model.upload(load_model_zip, inputs=[upload_model, owner], outputs=[owner, loaded], api_name="finetune_load_model")
    return {"poll": poll, "poll_outputs": poll_outputs, "restore_settings": restore_settings, "kind": kind, "budget": budget}
