"""Text tab: sentiment with per-word explanations and batch mode; generation streamed character by character."""
from __future__ import annotations

import csv
import tempfile
import threading
import time
from pathlib import Path

import gradio as gr

from demos.common import friendly_errors, model_list, session_key
from demos.zerogpu import gpu
from engine.errors import UserError
from engine.registry import default_registry, hf_text_entry

SENTIMENT_TASKS = ("sentiment", "text-classification")
MAX_BATCH_LINES = 2_000
STREAM_EVERY_S = 0.05  # push the growing text to the page at most 20 times a second

SENTIMENT_EXAMPLES = [
    "A warm, funny and beautifully acted film; I smiled all the way home.",
    "The battery died after two days and support never answered my emails.",
    "The pasta was cold, but the waiter was lovely and the dessert made up for it.",
    "not bad at all",
    "I wanted to like this phone, I really did.",
]
PROMPT_EXAMPLES = ["ROMEO:\n", "First Citizen:\nWhat say you to the", "KING HENRY:\nO God of battles,", "To be, or not"]

# One stop flag per browser session while it generates: the Stop button sets it, the sampling loop checks it
# before every character. A flag lives only as long as its generation, so the dict does not grow with visitors.
_stop_flags: dict[str, threading.Event] = {}
_stop_lock = threading.Lock()


def _flag_key(session: str | None) -> str:
    return session or "anonymous"


def stop_flag(session: str | None) -> threading.Event:
    with _stop_lock:
        return _stop_flags.setdefault(_flag_key(session), threading.Event())


def _running_flag(session: str | None) -> threading.Event | None:
    with _stop_lock:
        return _stop_flags.get(_flag_key(session))


def _drop_stop_flag(session: str | None, flag: threading.Event) -> None:
    with _stop_lock:
        if _stop_flags.get(_flag_key(session)) is flag:
            del _stop_flags[_flag_key(session)]


def choices(tasks: tuple[str, ...], session: str | None) -> list[tuple[str, str]]:
    return [(f"{e.name}  ·  {e.source}", e.name) for task in tasks for e in default_registry().list(task, session)]


def _default(options: list[tuple[str, str]], preferred: str) -> str | None:
    values = [value for _, value in options]
    return preferred if preferred in values else (values[0] if values else None)


# ----------------------------------------------------------------------------------------------------------
# Sentiment


def _load(model_name: str, session: str | None):
    registry = default_registry()
    ok, why = registry.availability(model_name, session)
    if not ok:
        raise UserError(f"{model_name} is unavailable: {why}.")
    return registry.get(model_name, session)


@friendly_errors
def classify_text(model_name: str, text: str, request: gr.Request):
    """Label probabilities and each word's push, for one text."""
    if not model_name:
        raise UserError("Pick a model first.")
    predictor = _load(model_name, session_key(request))
    started = time.perf_counter()
    result = explain_on_gpu(predictor, text or "")
    ms = (time.perf_counter() - started) * 1000
    biggest = max([abs(score) for _, score in result["words"]] + [1e-6])
    words = [(word + " ", round(score / biggest, 3)) for word, score in result["words"]]
    note = f"Each word's colour: how much removing it changes the probability of **{result['towards']}** "
    note += "(red: pushes towards it, blue: away from it)."  # Gradio colours positive scores red, negative blue
    if result["truncated_words"]:
        note += f" Only the first {len(result['words'])} words are explained ({result['truncated_words']} more are not)."
    note += f" {ms:.0f} ms for the label and {len(result['words']) + 1} forward passes."
    return result["probabilities"], words, note


@gpu(duration=15)
def explain_on_gpu(predictor, text: str) -> dict:
    """The label and each word's push: one forward pass per word (on ZeroGPU, a GPU is lent for this call)."""
    return predictor.explain(text)


@gpu(duration=lambda predictor, texts: 10 + len(texts) // 100)
def predict_on_gpu(predictor, texts: list[str]):
    return predictor.predict_proba(texts)


def _read_batch(lines: str, upload) -> tuple[list[str], list[str] | None]:
    """Texts from pasted lines, or from an uploaded CSV/TSV (its text column; its labels when it has some)."""
    from engine.text.data import decode_bytes, parse_labelled_text

    if upload is not None:
        path = Path(upload if isinstance(upload, str) else upload.name)
        table = parse_labelled_text(decode_bytes(path.read_bytes(), path.name), path.name, labels_required=False)
        return table.texts, table.labels
    return [line.strip() for line in (lines or "").splitlines() if line.strip()], None


@friendly_errors
def classify_batch(model_name: str, lines: str, upload, request: gr.Request):
    texts, given = _read_batch(lines, upload)
    if not texts:
        raise UserError("Paste some lines (one text per line) or upload a CSV/TSV file first.")
    if len(texts) > MAX_BATCH_LINES:
        raise UserError(f"{len(texts):,} texts; batch mode takes up to {MAX_BATCH_LINES:,} at a time.")
    predictor = _load(model_name, session_key(request))
    probs = predict_on_gpu(predictor, texts)
    rows = []
    for text, label, row in zip(texts, given or [""] * len(texts), probs):
        best = int(row.argmax())
        rows.append([text[:300], predictor.labels[best], round(float(row[best]), 4), label])
    summary = ""
    if given is not None:
        from engine.text.evaluate import match_labels

        try:
            truth = match_labels(given, predictor.labels)
            correct = sum(t == r[1] for t, r in zip(truth, rows))
            summary = f"Accuracy against the file's labels: **{correct / len(rows):.1%}** ({correct}/{len(rows)})."
        except UserError as error:
            summary = f"The file's labels could not be compared: {error}"
    out = Path(tempfile.mkdtemp(prefix="minilab-text-")) / "predictions.csv"
    with open(out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label", "probability", "given_label"])
        writer.writerows(rows)
    return rows, str(out), summary


@friendly_errors
def add_hub_model(model_id: str, task: str, request: gr.Request):
    model_id = (model_id or "").strip()
    if not model_id or " " in model_id:
        raise UserError("Type a Hugging Face model id, such as distilbert-base-uncased-finetuned-sst-2-english or distilgpt2.")
    session = session_key(request)
    default_registry().add(hf_text_entry(model_id, task, session=session))
    ok, why = default_registry().availability(model_id, session)
    (gr.Info if ok else gr.Warning)(f"{model_id} added" + (f" ({why})." if ok else f", but unavailable now: {why}."))
    tasks = SENTIMENT_TASKS if task == "sentiment" else ("lm",)
    return gr.Dropdown(choices=choices(tasks, session), value=model_id)


def add_hub_model_to_list(model_id: str, task: str, request: gr.Request):
    updated = add_hub_model(model_id, task, request)
    return (updated, gr.Dropdown()) if task == "sentiment" else (gr.Dropdown(), updated)


# ----------------------------------------------------------------------------------------------------------
# Generation


@friendly_errors
def generate_stream(model_name: str, prompt: str, max_new: float, temperature: float, top_k: float, top_p: float,
                    seed: float, colour: bool, request: gr.Request):
    """Yield (text so far, coloured pieces, status) as characters are sampled; the Stop button ends it."""
    from engine.text.generate import SamplingSettings

    session = session_key(request)
    if not model_name:
        raise UserError("Pick a model first.")
    settings = SamplingSettings(int(max_new or 0), float(temperature or 0), int(top_k or 0), float(top_p or 0),
                                int(seed or 0)).validate()
    lm = _load(model_name, session)
    prompt = prompt or ""
    unknown = lm.unknown_characters(prompt)
    if unknown:
        shown = "".join(unknown[:20])
        gr.Warning(f"{model_name} never saw these characters, so they were read as spaces: {shown!r}")
    flag = stop_flag(session)
    flag.clear()
    text, pieces, last_push, started = "", [], 0.0, time.perf_counter()
    try:
        for piece, probability in sample_on_gpu(lm, prompt, settings, flag.is_set):
            if flag.is_set():  # on ZeroGPU the sampling runs in another process, which cannot see the flag
                break
            text += piece
            if colour:
                pieces.append((piece, round(1 - 2 * probability, 3)))  # a surprise (low probability) shows red
            now = time.perf_counter()
            if now - last_push >= STREAM_EVERY_S:
                last_push = now
                yield prompt + text, pieces if colour else None, f"{len(text)} {lm.kind} · {len(text) / (now - started):.0f}/s"
    finally:
        _drop_stop_flag(session, flag)
    seconds = time.perf_counter() - started
    how = "stopped" if flag.is_set() else "done"
    yield prompt + text, pieces if colour else None, f"{how}: {len(text)} {lm.kind} in {seconds:.1f} s ({len(text) / max(seconds, 1e-6):.0f}/s)"


@gpu(duration=lambda lm, prompt, settings, should_stop: 10 + int(settings.max_new_tokens) // 100)
def sample_on_gpu(lm, prompt: str, settings, should_stop):
    """(piece, probability) as each is sampled. On ZeroGPU this generator runs in a worker holding a GPU, its
    pieces streamed back; the duration asked for assumes at least 100 pieces a second."""
    yield from lm.stream(prompt, settings, should_stop=should_stop)


def stop_generation(request: gr.Request) -> str:
    flag = _running_flag(session_key(request))
    if flag is not None:  # nothing is generating otherwise
        flag.set()
    return "stopping…"


@friendly_errors
def describe_model(model_name: str, request: gr.Request) -> str:
    if not model_name:
        return ""
    registry = default_registry()
    entry = registry.entry(model_name, session_key(request))
    ok, why = registry.availability(model_name, session_key(request))
    lines = [f"**{entry.name}** ({entry.source}): {entry.description}"]
    if not ok:
        lines.append(f"**Unavailable:** {why}")
    if entry.folder is not None:
        from engine.checkpoints import read_card

        card = read_card(entry.folder)
        if card.get("command"):
            lines.append(f"Reproduce: `{card['command']}`")
    return "\n\n".join(lines)


def refresh_models(sentiment_current: str, lm_current: str, request: gr.Request):
    session = session_key(request)
    sentiment_options, lm_options = choices(SENTIMENT_TASKS, session), choices(("lm",), session)
    return (model_list(sentiment_options, sentiment_current, _default(sentiment_options, "sst2")),
            model_list(lm_options, lm_current, _default(lm_options, "shakespeare")))


def build(owner: gr.BrowserState | None = None) -> dict:
    """The tab; `owner` is the browser's owner key (the Inside part's training jobs belong to it)."""
    from demos import sequence

    owner = owner if owner is not None else gr.BrowserState(None, storage_key="minilab-owner")
    sentiment_options, lm_options = choices(SENTIMENT_TASKS, None), choices(("lm",), None)
    with gr.Tabs():
        with gr.Tab("Sentiment", id="sentiment"):
            with gr.Row():
                with gr.Column(scale=5):
                    sentiment_model = gr.Dropdown(choices=sentiment_options, value=_default(sentiment_options, "sst2"), label="Model")
                    text = gr.Textbox(label="Text", lines=4, placeholder="Type a review, a tweet, a sentence…", elem_id="sentiment-input")
                    classify_button = gr.Button("Classify", variant="primary", elem_id="sentiment-button")
                    sentiment_examples = gr.Examples(examples=[[e] for e in SENTIMENT_EXAMPLES], inputs=[text], label="Examples",
                                                     cache_examples=False)
                with gr.Column(scale=5):
                    label = gr.Label(label="Prediction", elem_id="sentiment-label")
                    words = gr.HighlightedText(label="Which words pushed where", show_legend=False, elem_id="sentiment-words")
                    note = gr.Markdown()
                    sentiment_about = gr.Markdown()
            with gr.Accordion("Batch mode: many lines or a CSV/TSV in, a table out", open=False):
                with gr.Row():
                    lines = gr.Textbox(label=f"One text per line (up to {MAX_BATCH_LINES:,})", lines=6)
                    upload = gr.File(label="…or a CSV/TSV with a text column (a label column is compared if present)",
                                     file_types=[".csv", ".tsv", ".txt"])
                batch_button = gr.Button("Classify all")
                summary = gr.Markdown()
                table = gr.Dataframe(headers=["text", "label", "probability", "given_label"], label="Predictions", interactive=False)
                download = gr.File(label="Download as CSV", interactive=False)
        with gr.Tab("Generate", id="generate"):
            with gr.Row():
                with gr.Column(scale=4):
                    lm_model = gr.Dropdown(choices=lm_options, value=_default(lm_options, "shakespeare"), label="Model",
                                           elem_id="lm-model")
                    prompt = gr.Textbox(label="Prompt", lines=3, value="ROMEO:\n", elem_id="prompt-input")
                    gr.Examples(examples=[[p] for p in PROMPT_EXAMPLES], inputs=[prompt], label="Example prompts")
                    with gr.Row():
                        generate_button = gr.Button("Generate", variant="primary", elem_id="generate-button")
                        stop_button = gr.Button("Stop", variant="stop", elem_id="stop-button")
                    max_new = gr.Slider(1, 2000, value=400, step=1, label="Maximum length (characters or tokens)")
                    temperature = gr.Slider(0.05, 2.0, value=0.8, step=0.05, label="Temperature", info="lower: safer, higher: wilder")
                    with gr.Row():
                        top_k = gr.Slider(0, 100, value=0, step=1, label="Top-k (0 = off)")
                        top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p (1 = off)")
                    with gr.Row():
                        seed = gr.Number(value=0, precision=0, label="Seed", minimum=0)
                        colour = gr.Checkbox(value=False, label="Colour each character by its probability")
                with gr.Column(scale=6):
                    output = gr.Textbox(label="Output", lines=18, max_lines=40, interactive=False, elem_id="generated-text")
                    status = gr.Markdown(elem_id="generate-status")
                    coloured = gr.HighlightedText(label="Probability of each sampled piece (blue: likely, red: a surprise)",
                                                  show_legend=False, combine_adjacent=False)
                    lm_about = gr.Markdown()
        with gr.Tab("Inside: GPT and LSTM", id="inside"):
            inside = sequence.build(owner)
        with gr.Tab("Your labels", id="labels"):
            from demos import labels as your_labels

            your_labels.build(sentiment_model)
    with gr.Accordion("Add a Hugging Face model (when cached or online)", open=False):
        with gr.Row():
            hub_id = gr.Textbox(label="Model id", placeholder="distilbert-base-uncased-finetuned-sst-2-english", scale=4)
            hub_task = gr.Radio([("Sentiment / text classification", "sentiment"), ("Text generation", "lm")], value="sentiment",
                                label="For", scale=3)
            hub_add = gr.Button("Add", scale=1)

    classify_button.click(classify_text, inputs=[sentiment_model, text], outputs=[label, words, note], api_name="classify_text")
    text.submit(classify_text, inputs=[sentiment_model, text], outputs=[label, words, note], api_name=False)
    sentiment_examples.load_input_event.then(classify_text, inputs=[sentiment_model, text], outputs=[label, words, note],
                                             api_name=False)  # a click on an example shows its explanation at once
    batch_button.click(classify_batch, inputs=[sentiment_model, lines, upload], outputs=[table, download, summary],
                       api_name="classify_text_batch")
    sentiment_model.change(describe_model, inputs=sentiment_model, outputs=sentiment_about, api_name=False)
    lm_model.change(describe_model, inputs=lm_model, outputs=lm_about, api_name=False)
    generate_button.click(generate_stream, inputs=[lm_model, prompt, max_new, temperature, top_k, top_p, seed, colour],
                          outputs=[output, coloured, status], api_name="generate", concurrency_limit=1)
    stop_button.click(stop_generation, outputs=status, api_name="stop_generation", concurrency_limit=None)
    hub_add.click(add_hub_model_to_list, inputs=[hub_id, hub_task], outputs=[sentiment_model, lm_model], api_name=False)
    return {"sentiment_model": sentiment_model, "lm_model": lm_model, "refresh": refresh_models,
            "sentiment_about": sentiment_about, "lm_about": lm_about, "inside": inside}
