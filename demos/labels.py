"""Text tab, "Your labels": type label names and get a classifier at once (zero-shot), or paste a few examples
a label and get a better one in seconds (few-shot, optionally fine-tuned SetFit-style in the background).
The methods live in engine.text.zeroshot and engine.text.fewshot; this file is only the page."""
from __future__ import annotations

import csv
import tempfile
import time
import uuid
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd

from demos.common import confusion_figure, ended_empty, friendly_errors, latest_job, made_model, model_zip, session_key
from engine.errors import UserError

NEWS_LABELS = "World, Sports, Business, Sci/Tech"
ROOT = Path(__file__).resolve().parents[1]
FEWSHOT_EXAMPLE = ROOT / "benchmarks" / "data" / "news_fewshot_8.tsv"
MAX_BATCH = 2_000
JOB_PREFIX = "labels-setfit"
LIVE_STATES = ("queued", "running", "paused")
ZERO_SHOT_EXAMPLES = [
    ["Striker signs for rival club in record transfer. The forward joins on a five-year deal."],
    ["Central bank leaves interest rates unchanged as inflation cools."],
    ["Astronomers spot water vapour in the atmosphere of a distant planet."],
    ["Ceasefire collapses as fighting resumes near the border."],
]
ABOUT_ZERO = (
    "**Zero-shot: no examples at all.** Each label becomes a sentence (your template with the label in it, plus "
    "a few other wordings averaged; `Sci/Tech` is read as *science and technology*), and the all-MiniLM-L6-v2 "
    "encoder, offline, scores each text by how close its meaning is to each label's sentence. "
    "A **batch of 20 texts or more** also teaches itself: each label's score is calibrated against the whole "
    "batch, then the texts it labels most surely pull the label towards them, a few rounds over "
    "(self-training, like k-means started from your labels). No labelled example is used anywhere.")
ABOUT_FEW = (
    "**Few-shot: 2 to 32 examples a label.** Paste `label<TAB>text` lines (two columns copied from a spreadsheet) "
    "or upload a CSV/TSV. **Build** makes a classifier in seconds: each label's *prototype* is the average "
    "meaning of its examples, pulled towards the label's own name; a text goes to the nearest prototype. "
    "**Fine-tune** (about 30 s, in the background) first teaches the encoder itself that examples with the same "
    "label belong together (SetFit-style, on pairs of examples). Both join the **Sentiment** tab's model list for "
    "this session and download as a zip.")


def _config(template: str, multi: bool, threshold: float, adapt: str):
    from engine.text.zeroshot import ZeroShotConfig

    return ZeroShotConfig(template=template or "", multi_label=bool(multi), threshold=float(threshold or 0.5),
                          adapt=adapt or "auto").validate()


def _classifier(labels: str, descriptions: str, template: str, multi: bool, threshold: float, adapt: str = "auto"):
    from engine.text.zeroshot import ZeroShotClassifier

    if not (labels or "").strip():
        raise UserError("Type your labels first, separated by commas (e.g. World, Sports, Business, Sci/Tech).")
    return ZeroShotClassifier(labels, descriptions, _config(template, multi, threshold, adapt))


# ---- zero-shot -------------------------------------------------------------------------------------------------


@friendly_errors
def zero_shot_one(labels: str, descriptions: str, template: str, multi: bool, threshold: float, show_raw: bool, text: str):
    """One text: a probability for each label (sorted bars), and the raw similarities on request."""
    classifier = _classifier(labels, descriptions, template, multi, threshold)
    started = time.perf_counter()
    result = classifier.classify([text or ""])
    ms = (time.perf_counter() - started) * 1000
    probabilities = dict(zip(result.labels, map(float, result.probabilities[0])))
    raw = pd.DataFrame({"label": result.labels, "cosine similarity": np.round(result.similarities[0], 4),
                        "probability": np.round(result.probabilities[0], 4)}).sort_values("probability", ascending=False)
    note = f"How: {classifier.describe()}."
    if multi:
        given = result.predicted()[0]
        note += (f" **Multi-label**: each label is scored alone; at or above {result.threshold:.2f}: "
                 f"**{', '.join(given) if given else 'none'}**.")
    else:
        note += " **Single-label**: the probabilities are a softmax over the labels."
    note += f" {ms:.0f} ms."
    return probabilities, gr.Dataframe(value=raw, visible=bool(show_raw)), note


def _read_batch(lines: str, upload) -> tuple[list[str], list[str] | None]:
    from engine.text.zeroshot import read_texts

    if upload is not None:
        texts, given, _ = read_texts(upload if isinstance(upload, str) else upload.name)
        return texts, given
    return [line.strip() for line in (lines or "").splitlines() if line.strip()], None


@friendly_errors
def zero_shot_batch(labels: str, descriptions: str, template: str, multi: bool, threshold: float, adapt: str,
                    show_raw: bool, lines: str, upload):
    """Many texts: a table (top label, its probability, each label's probability or raw similarity), the accuracy
    when an uploaded file has labels, and the table as a CSV."""
    from engine.text.zeroshot import match_file_labels, score

    classifier = _classifier(labels, descriptions, template, multi, threshold, adapt)
    texts, given = _read_batch(lines, upload)
    if not texts:
        raise UserError("Paste some lines (one text per line) or upload a CSV/TSV file first.")
    if len(texts) > MAX_BATCH:
        raise UserError(f"{len(texts):,} texts; a batch takes up to {MAX_BATCH:,} here (the CLI takes more).")
    truth = match_file_labels(given, classifier.labels, multi) if given is not None else None
    started = time.perf_counter()
    result = classifier.classify(texts)
    seconds = time.perf_counter() - started
    predicted = result.predicted()
    values = result.similarities if show_raw else result.probabilities
    columns = ["text", "label", "probability", "given label"] + [f"{'similarity' if show_raw else 'p'}: {label}"
                                                                 for label in result.labels]
    rows = []
    for i, text in enumerate(texts):
        top = int(result.probabilities[i].argmax())
        label = ", ".join(predicted[i]) if multi else predicted[i]
        shown_truth = "" if truth is None else ", ".join(truth[i])
        rows.append([text[:300], label, round(float(result.probabilities[i, top]), 4), shown_truth,
                     *[round(float(v), 4) for v in values[i]]])
    how = (f"{len(texts):,} texts in {seconds:.1f} s. "
           + ("The batch calibrated itself and self-trained "
              f"({result.rounds} round{'s' * (result.rounds != 1)}): each label is now the centre of the texts it took."
              if result.adapted else "; ".join(result.notes).capitalize() + "." if result.notes else ""))
    counts = pd.Series([p for row in predicted for p in (row if multi else [row])]).value_counts()
    how += " Predicted: " + ", ".join(f"{label} {counts.get(label, 0)}" for label in result.labels) + "."
    if truth is not None:
        scored = score(result, truth)
        how = f"Accuracy against the file's labels: **{scored['accuracy']:.1%}** ({scored['n']:,} texts). " + how
    out = Path(tempfile.mkdtemp(prefix="minilab-labels-")) / "predictions.csv"
    with open(out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(rows)
    return pd.DataFrame(rows, columns=columns), str(out), how


# ---- few-shot --------------------------------------------------------------------------------------------------


def _examples(examples: str, upload) -> tuple[list[str], list[str]]:
    from engine.text.fewshot import parse_examples, read_examples

    if upload is not None:
        texts, labels, _ = read_examples(upload if isinstance(upload, str) else upload.name)
        return texts, labels
    return parse_examples(examples)


def _register(folder: str, name: str, session: str | None) -> None:
    """The new model joins this session's model lists (the Sentiment tab lists every text classifier)."""
    from engine.registry import default_registry, model_entry_for_folder

    if session is None:
        return
    registry = default_registry()
    registry.forget_missing(session)
    registry.add(model_entry_for_folder(Path(folder), name, "session", session=session))


def _results(result: dict, name: str) -> tuple[str, object, str, dict]:
    metrics = result["metrics"]
    how = ("the encoder fine-tuned on pairs of your examples (SetFit-style, "
           f"{metrics.get('steps', '?')} steps), then prototypes" if metrics["method"] == "setfit"
           else "prototypes on the frozen encoder's sentence vectors")
    caveat = "; the tuned encoder saw them all, so this is optimistic" if metrics["method"] == "setfit" else ""
    text = (f"### {name}\nLeave-one-out accuracy **{metrics['loo_accuracy']:.1%}** on your {metrics['n_train']} examples "
            f"(each one classified by a model built from the others{caveat}). "
            f"Made in {metrics['seconds']:.1f} s: {how}. It is in the **Sentiment** tab's model list now; try it below.")
    figure = confusion_figure(result["confusion"], result["classes"])
    return text, figure, model_zip(Path(result["folder"]), name), {"name": name, "folder": result["folder"]}


@friendly_errors
def fewshot_build(labels: str, examples: str, upload, request: gr.Request):
    """The instant classifier: prototypes on frozen sentence vectors, with the labels' names as a prior."""
    from engine.text.fewshot import FewShotConfig, fit_fewshot

    texts, example_labels = _examples(examples, upload)
    name = f"my-labels-{uuid.uuid4().hex[:6]}"
    out = Path(tempfile.mkdtemp(prefix="minilab-fewshot-")) / name
    result = fit_fewshot(texts, example_labels, FewShotConfig(method="prototypes"), (labels or "").strip() or None,
                         out=out, command="minilab Text tab, Your labels: Build")
    _register(result["folder"], name, session_key(request))
    text, figure, download, state = _results(result, name)
    return text, gr.Plot(value=figure, visible=True), download, state


def setfit_config():
    """The Fine-tune button's settings: the engine's defaults (at most 30 s from the click to a saved model)."""
    from engine.text.fewshot import FewShotConfig

    return FewShotConfig(method="setfit").validate()


@friendly_errors
def fewshot_setfit(labels: str, examples: str, upload, request: gr.Request):
    """Start the SetFit-style fine-tune as a background job (engine.jobs); the timer polls it."""
    from engine.jobs import default_runner
    from engine.text.fewshot import check_examples, fewshot_job

    session = session_key(request)
    if not session:
        raise UserError("No browser session: reload the page.")
    texts, example_labels = _examples(examples, upload)
    typed = (labels or "").strip() or None
    check_examples(texts, list(example_labels), typed)  # a mistake is shown now, not when the job starts
    runner = default_runner()
    if any(job.state in LIVE_STATES and job.name.startswith(JOB_PREFIX) for job in runner.jobs(session)):
        raise UserError("A fine-tune is already running for this page: wait for it to finish.")
    config = setfit_config()
    name = f"my-labels-setfit-{uuid.uuid4().hex[:6]}"

    runner.submit(session, fewshot_job(texts, list(example_labels), config, typed, name), name=JOB_PREFIX, config={"time_budget": config.time_budget, "model_name": name},
                  time_limit_s=config.time_budget + 60)
    return "⏳ Fine-tuning started…", gr.Timer(active=True)


def fewshot_poll(state: dict | None, request: gr.Request):
    """Timer tick: the job's progress; once it has made a model, its results (and the timer stops)."""
    session = session_key(request)
    job = latest_job(session, JOB_PREFIX)
    unchanged = (gr.Markdown(), gr.Plot(), gr.File(), state)
    if job is None:
        return "", *unchanged, gr.Timer(active=False)
    if made_model(job):
        name = job.result["name"]
        _register(job.result["folder"], name, session)
        text, figure, download, new_state = _results(job.result, name)
        return "✅ Fine-tuned.", text, gr.Plot(value=figure, visible=True), download, new_state, gr.Timer(active=False)
    if job.state == "failed":
        return f"❌ Fine-tuning failed: {job.error}", *unchanged, gr.Timer(active=False)
    if stopped := ended_empty(job, "Fine-tune"):
        return stopped, *unchanged, gr.Timer(active=False)
    if job.state == "queued":
        return f"⏳ Waiting for the trainer: position {job.queue_position} in the queue.", *unchanged, gr.Timer(active=True)
    progress = job.progress or {}
    step = f" · step {progress['epoch']}, pair loss {progress['train_loss']:.3f}" if progress.get("kind") == "epoch" else ""
    budget = float(job.config.get("time_budget") or 30)
    return f"🏃 Fine-tuning: {job.elapsed:.0f} s of about {budget:.0f}{step}", *unchanged, gr.Timer(active=True)


_example_vectors: dict[str, tuple[list[str], list[str], np.ndarray]] = {}  # model folder -> its examples' vectors


@friendly_errors
def fewshot_try(state: dict | None, lines: str, request: gr.Request):
    """Classify with the latest few-shot model; each prediction with its nearest training example."""
    from engine.registry import default_registry
    from engine.text.fewshot import normalise, read_saved_examples

    if not state or not state.get("name"):
        raise UserError("Build a classifier first (paste examples and press Build).")
    texts = [line.strip() for line in (lines or "").splitlines() if line.strip()]
    if not texts:
        raise UserError("Type a text to classify (one per line for several).")
    if len(texts) > MAX_BATCH:
        raise UserError(f"{len(texts):,} texts; up to {MAX_BATCH:,} at a time.")
    predictor = default_registry().get(state["name"], session_key(request))
    folder = state["folder"]
    if folder not in _example_vectors:
        example_texts, example_labels = read_saved_examples(folder) or ([], [])
        _example_vectors.clear()  # one model's examples at a time: a few hundred kB
        _example_vectors[folder] = (example_texts, example_labels, normalise(predictor.features(example_texts)))
    example_texts, example_labels, vectors = _example_vectors[folder]
    probs = predictor.predict_proba(texts)
    similarity = normalise(predictor.features(texts)) @ vectors.T
    rows = []
    for i, text in enumerate(texts):
        top, near = int(probs[i].argmax()), int(similarity[i].argmax())
        rows.append([text[:300], predictor.labels[top], round(float(probs[i, top]), 4), example_labels[near],
                     example_texts[near][:300], round(float(similarity[i, near]), 3)])
    table = pd.DataFrame(rows, columns=["text", "label", "probability", "nearest example's label", "nearest example",
                                        "similarity"])
    first = dict(zip(predictor.labels, map(float, probs[0])))
    nearest = f"Nearest training example ({rows[0][3]}, similarity {rows[0][5]:.2f}): *{rows[0][4]}*"
    return first, nearest, table


def refresh_sentiment(current: str | None, request: gr.Request):
    from demos.common import model_list
    from demos.text import SENTIMENT_TASKS, choices

    return model_list(choices(SENTIMENT_TASKS, session_key(request)), current)


# ---- layout ----------------------------------------------------------------------------------------------------


def build(sentiment_model: gr.Dropdown | None = None) -> dict:
    """The "Your labels" part of the Text tab. `sentiment_model`: the Sentiment tab's model list, refreshed when a
    few-shot model is made."""
    labels = gr.Textbox(label="Your labels (comma-separated)", value=NEWS_LABELS, elem_id="zs-labels",
                        info="At least 2, at most 100; each one a name such as Sports or Sci/Tech")
    with gr.Accordion("Descriptions, template and options", open=False):
        with gr.Row():
            descriptions = gr.Textbox(label="Descriptions (optional), one `label: a few words` per line", lines=3,
                                      placeholder="Sci/Tech: computers, the internet, space and science research")
            with gr.Column():
                template = gr.Textbox(label="Template ({} is where a label goes)", value="This text is about {}.",
                                      elem_id="zs-template")
                show_raw = gr.Checkbox(value=False, label="Show the raw cosine similarities", elem_id="zs-raw")
        with gr.Row():
            multi = gr.Checkbox(value=False, label="Multi-label: score each label alone (a text may get several or none)",
                                elem_id="zs-multi")
            threshold = gr.Slider(0.05, 0.95, value=0.5, step=0.05, label="Multi-label threshold")
            adapt = gr.Radio([("auto (20 texts or more)", "auto"), ("always", "on"), ("never", "off")], value="auto",
                             label="Batches calibrate and self-train")
    with gr.Tabs():
        with gr.Tab("Zero-shot", id="zero-shot"):
            gr.Markdown(ABOUT_ZERO)
            with gr.Row():
                with gr.Column(scale=5):
                    text = gr.Textbox(label="Text", lines=4, elem_id="zs-text",
                                      placeholder="Paste a headline, a question, a review…")
                    button = gr.Button("Classify", variant="primary", elem_id="zs-button")
                    zs_examples = gr.Examples(examples=ZERO_SHOT_EXAMPLES, inputs=[text], label="Examples", cache_examples=False)
                with gr.Column(scale=5):
                    label = gr.Label(label="Probability of each label", elem_id="zs-label")
                    raw = gr.Dataframe(label="Raw similarities", interactive=False, visible=False, elem_id="zs-raw-table")
                    note = gr.Markdown(elem_id="zs-note")
            with gr.Accordion("Batch: many lines or a CSV/TSV in, a table out", open=False):
                with gr.Row():
                    lines = gr.Textbox(label=f"One text per line (up to {MAX_BATCH:,})", lines=6, elem_id="zs-lines")
                    upload = gr.File(label="…or a CSV/TSV with a text column (a label column is scored if present)",
                                     file_types=[".csv", ".tsv", ".txt"], elem_id="zs-file")
                batch_button = gr.Button("Classify all", elem_id="zs-batch-button")
                summary = gr.Markdown(elem_id="zs-summary")
                table = gr.Dataframe(label="Predictions", interactive=False, wrap=True, elem_id="zs-table")
                download = gr.File(label="Download as CSV", interactive=False)
        with gr.Tab("Few-shot", id="few-shot"):
            gr.Markdown(ABOUT_FEW)
            with gr.Row():
                examples = gr.Textbox(label="Examples: one label<TAB>text per line", lines=8, elem_id="fs-examples",
                                      placeholder="Sports\tLate goal lifts United to victory.\n"
                                                  "Business\tOil climbs to a record high.")
                example_file = gr.File(label="…or a CSV/TSV with text and label columns", file_types=[".csv", ".tsv", ".txt"],
                                       elem_id="fs-file")
            if FEWSHOT_EXAMPLE.is_file():
                gr.Examples(examples=[[FEWSHOT_EXAMPLE.read_text(encoding="utf-8").split("\n", 1)[1].strip()]],
                            inputs=[examples], label="Example: 8 news items for each of World, Sports, Business, Sci/Tech",
                            example_labels=["32 news examples"])
            with gr.Row():
                build_button = gr.Button("Build (seconds)", variant="primary", elem_id="fs-build")
                setfit_button = gr.Button("Fine-tune the encoder (about 30 s, in the background)", elem_id="fs-setfit")
            progress = gr.Markdown(elem_id="fs-progress")
            results = gr.Markdown(elem_id="fs-results")
            with gr.Row():
                confusion = gr.Plot(label="Leave-one-out confusion matrix", visible=False)
                model_file = gr.File(label="Your model (zip)", interactive=False, elem_id="fs-download")
            gr.Markdown("#### Try it")
            with gr.Row():
                with gr.Column():
                    try_text = gr.Textbox(label="Text (one per line for several)", lines=3, elem_id="fs-try")
                    try_button = gr.Button("Classify", elem_id="fs-try-button")
                with gr.Column():
                    try_label = gr.Label(label="Prediction", elem_id="fs-label")
                    nearest = gr.Markdown(elem_id="fs-nearest")
            try_table = gr.Dataframe(label="Predictions with their nearest training example", interactive=False, wrap=True)
    model_state = gr.State(None)
    timer = gr.Timer(1.0, active=False)

    options = [labels, descriptions, template, multi, threshold]
    button.click(zero_shot_one, inputs=[*options, show_raw, text], outputs=[label, raw, note], api_name="zero_shot")
    text.submit(zero_shot_one, inputs=[*options, show_raw, text], outputs=[label, raw, note], api_name=False)
    zs_examples.load_input_event.then(zero_shot_one, inputs=[*options, show_raw, text], outputs=[label, raw, note],
                                      api_name=False)  # a click on an example shows its answer at once
    batch_button.click(zero_shot_batch, inputs=[*options, adapt, show_raw, lines, upload], outputs=[table, download, summary],
                       api_name="zero_shot_batch")
    build_button.click(fewshot_build, inputs=[labels, examples, example_file],
                               outputs=[results, confusion, model_file, model_state], api_name="few_shot_build")
    setfit_button.click(fewshot_setfit, inputs=[labels, examples, example_file], outputs=[progress, timer],
                        api_name="few_shot_finetune")
    timer.tick(fewshot_poll, inputs=model_state, outputs=[progress, results, confusion, model_file, model_state, timer],
                        show_progress="hidden", concurrency_limit=None, api_name="few_shot_poll")
    try_button.click(fewshot_try, inputs=[model_state, try_text], outputs=[try_label, nearest, try_table],
                     api_name="few_shot_try")
    if sentiment_model is not None:  # a new model is offered in the Sentiment tab at once
        model_state.change(refresh_sentiment, inputs=sentiment_model, outputs=sentiment_model, api_name=False)
    return {"labels": labels, "model_state": model_state}
