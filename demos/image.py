"""Image classification tab: photo or drawing in, top-5 labels, Grad-CAM, a look inside, and batch mode."""
from __future__ import annotations

import csv
import tempfile
from pathlib import Path

import gradio as gr

from demos.common import friendly_errors, model_list, session_key
from demos.zerogpu import gpu
from engine.errors import UserError
from engine.registry import default_registry, hf_image_entry

TASK = "image-classification"
EXAMPLES = Path(__file__).parent / "examples"
MAX_BATCH = 200


def model_choices(session: str | None) -> list[tuple[str, str]]:
    return [(f"{e.name}  ·  {e.source}", e.name) for e in default_registry().list(TASK, session)]


def about_markdown(classifier) -> str:
    card = classifier.card
    metrics = card.get("metrics") or {}
    lines = [f"### {classifier.name}", card.get("description", "")]
    lines.append(f"- **Source:** {classifier.source}")
    if card.get("architecture"):
        lines.append(f"- **Architecture:** {card['architecture']} {card.get('arch_config', '')}")
    if card.get("parameters"):
        lines.append(f"- **Parameters:** {card['parameters']:,}")
    lines.append(f"- **Classes:** {len(classifier.labels)}" + (f" ({', '.join(classifier.labels)})" if len(classifier.labels) <= 12 else ""))
    if card.get("training_data"):
        lines.append(f"- **Training data:** {card['training_data']}")
    for key, value in metrics.items():
        if isinstance(value, float) and "accuracy" in key:
            lines.append(f"- **{key.replace('_', ' ')}:** {value:.2%}")
    if card.get("command"):
        lines.append(f"- **Reproduce:** `{card['command']}`")
    return "\n".join(lines)


def _image_from(photo, sketch, source: str):
    if source == "draw":
        if not sketch or sketch.get("composite") is None:
            raise UserError("The drawing is empty: draw a digit (0-9) in the sketchpad first.")
        return sketch["composite"]
    if photo is None:
        raise UserError("No image yet: upload, paste or take a photo first (or click an example).")
    return photo


def inside_pictures(classifier, tensor) -> tuple:
    """ConvNetJS-style look inside: what the network sees, its first filters, and activation maps per stage.
    Only minilab's own networks have stages to show; hub models get nothing here."""
    from engine.vision.classify import ShippedClassifier
    from engine.vision.explain import first_layer_filters, stage_activations

    if not isinstance(classifier, ShippedClassifier):
        return None, None, []
    seen = classifier.show_input(tensor).resize((128, 128))
    return seen, first_layer_filters(classifier.model), stage_activations(classifier.model, tensor)


@friendly_errors
def classify(model_name: str, photo, sketch, source: str, inside_open: bool = False, request: gr.Request = None):
    """Top-5, Grad-CAM and timing for one image; the look-inside pictures too when their panel is open
    (they cost as much again, so a closed panel skips them)."""
    classifier = default_registry().get(model_name, session_key(request))
    image = _image_from(photo, sketch, source)
    if source == "draw" and classifier.input_kind != "digit":
        gr.Warning(f"{classifier.name} was trained on photos; pick 'mnist' for drawn digits.")
    if source == "photo" and classifier.input_kind == "digit":
        gr.Info("mnist expects one dark digit on a light background (or the reverse); other photos give guesses.")
    return predict_and_explain(classifier, image, inside_open)


@gpu(duration=20)
def predict_and_explain(classifier, image, inside_open: bool) -> tuple:
    """The GPU part of a click (on ZeroGPU, a GPU is lent for this call only): top-5, Grad-CAM, look-inside."""
    from engine.vision.classify import ShippedClassifier
    from engine.vision.explain import grad_cam, overlay, square_view

    result = classifier.classify(image)
    heat = grad_cam(classifier, result["input"], result["class_index"])
    digit = isinstance(classifier, ShippedClassifier) and classifier.input_kind == "digit"
    backdrop = classifier.show_input(result["input"]) if digit else square_view(image)
    inside = inside_pictures(classifier, result["input"]) if inside_open else (None, None, [])
    timing = f"**{result['ms']:.1f} ms** on {classifier.device} (preprocessing + forward pass)"
    return result["top"], overlay(backdrop, heat), timing, *inside


@friendly_errors
def look_inside(model_name: str, photo, sketch, source: str, request: gr.Request):
    """The look-inside pictures for the current image, when the panel opens."""
    try:
        image = _image_from(photo, sketch, source)
    except UserError:  # nothing to look at yet: an empty panel, not an error
        return None, None, []
    classifier = default_registry().get(model_name, session_key(request))
    return look_inside_on_gpu(classifier, image)


@gpu(duration=15)
def look_inside_on_gpu(classifier, image) -> tuple:
    return inside_pictures(classifier, classifier.prepare(image))


@friendly_errors
def describe_model(model_name: str, request: gr.Request):
    registry = default_registry()
    ok, why = registry.availability(model_name, session_key(request))
    if not ok:
        return f"### {model_name}\n**Unavailable:** {why}"
    classifier = registry.get(model_name, session_key(request))
    return about_markdown(classifier)


@friendly_errors
def classify_batch(model_name: str, files, request: gr.Request):
    if not files:
        raise UserError("Choose some images first (you can select several at once).")
    if len(files) > MAX_BATCH:
        raise UserError(f"{len(files)} images chosen; batch mode takes up to {MAX_BATCH} at a time.")
    classifier = default_registry().get(model_name, session_key(request))
    paths = [f if isinstance(f, str) else f.name for f in files]
    rows = classify_files_on_gpu(classifier, paths)
    table = [[r["file"], r.get("label", ""), round(r.get("probability", 0.0), 4),
              ", ".join(f"{k} {v:.2f}" for k, v in r.get("top", {}).items()), r["error"]] for r in rows]
    out = Path(tempfile.mkdtemp(prefix="minilab-batch-")) / "predictions.csv"
    with open(out, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "label", "probability", "top5", "error"])
        writer.writerows(table)
    return table, str(out)


@gpu(duration=lambda classifier, paths: 10 + len(paths) // 20)
def classify_files_on_gpu(classifier, paths: list[str]) -> list[dict]:
    return classifier.classify_many(paths, [Path(p).name for p in paths])


@friendly_errors
def add_hub_model(model_id: str, request: gr.Request):
    model_id = (model_id or "").strip()
    if not model_id or " " in model_id:
        raise UserError("Type a Hugging Face model id such as google/vit-base-patch16-224.")
    session = session_key(request)
    default_registry().add(hf_image_entry(model_id, session=session))
    ok, why = default_registry().availability(model_id, session)
    if ok:
        gr.Info(f"{model_id} added ({why}).")
    else:
        gr.Warning(f"{model_id} added to the list but is unavailable now: {why}.")
    return gr.Dropdown(choices=model_choices(session), value=model_id)


def refresh_models(current: str, request: gr.Request):
    """Called on page load and tab select: fine-tuned models of this session appear in the list."""
    choices = model_choices(session_key(request))
    return model_list(choices, current)


def build() -> dict:
    """Lay out the tab; return the components other code (app, tests) may want to reach."""
    choices = model_choices(None)
    default = "cifar10" if any(v == "cifar10" for _, v in choices) else (choices[0][1] if choices else None)
    with gr.Row():
        with gr.Column(scale=5):
            model = gr.Dropdown(choices=choices, value=default, label="Model", elem_id="image-model", info="shipped models work offline; hub models when cached or online")
            source = gr.Radio(choices=[("Photo", "photo"), ("Draw a digit", "draw")], value="photo", label="Input")
            photo = gr.Image(type="filepath", sources=["upload", "webcam", "clipboard"], label="Image", height=300, elem_id="photo-input")
            sketch = gr.Sketchpad(label="Draw a digit (pick the mnist model)", canvas_size=(280, 280), type="numpy", image_mode="RGBA",
                                  brush=gr.Brush(default_size=14, colors=["#000000"], default_color="#000000", color_mode="fixed"),
                                  visible=False, elem_id="sketch-input")
            run = gr.Button("Classify", variant="primary", elem_id="classify-button")
            examples = [[str(p), "cifar10", "photo"] for p in sorted(EXAMPLES.glob("*.jpg"))]
            examples += [[str(p), "mnist", "photo"] for p in sorted(EXAMPLES.glob("digit_*.png"))]
            # A click shows the example's result at once (the classify step is chained below); the hidden third
            # column switches the input back to Photo if the drawing pad was showing.
            example_table = gr.Examples(examples=examples, inputs=[photo, model, source], visible_columns=[0, 1],
                                        cache_examples=False, label="Examples: photos for cifar10, digits for mnist") if examples else None
        with gr.Column(scale=5):
            labels = gr.Label(num_top_classes=5, label="Top 5", elem_id="top5")
            timing = gr.Markdown()
            cam = gr.Image(label="Grad-CAM: where the evidence for the top class is", type="pil", height=256, interactive=False)
            inside_open = gr.State(False)
            with gr.Accordion("Look inside the network", open=False) as inside:
                seen = gr.Image(label="What the network sees (after preprocessing)", type="pil", height=140, interactive=False)
                filters = gr.Image(label="First layer's filters", type="pil", interactive=False)
                activations = gr.Gallery(label="Activation maps per stage (strongest channels)", columns=1, height="auto")
            with gr.Accordion("About this model", open=False):
                about = gr.Markdown()
    with gr.Accordion("Batch mode: many images in, a table out", open=False):
        files = gr.File(file_count="multiple", file_types=["image"], label=f"Images (up to {MAX_BATCH})")
        batch_run = gr.Button("Classify all")
        table = gr.Dataframe(headers=["file", "label", "probability", "top5", "error"], label="Predictions", interactive=False)
        csv_file = gr.File(label="Download as CSV", interactive=False)
    with gr.Accordion("Add a Hugging Face image classifier", open=False):
        with gr.Row():
            hub_id = gr.Textbox(label="Model id", placeholder="google/vit-base-patch16-224", scale=4)
            hub_add = gr.Button("Add", scale=1)

    source.change(lambda s: (gr.Image(visible=s == "photo"), gr.Sketchpad(visible=s == "draw"),
                             gr.Dropdown(value="mnist") if s == "draw" else gr.Dropdown()),
                  inputs=source, outputs=[photo, sketch, model], api_name=False)
    outputs = [labels, cam, timing, seen, filters, activations]
    run.click(classify, inputs=[model, photo, sketch, source, inside_open], outputs=outputs, api_name="classify")
    photo.upload(classify, inputs=[model, photo, sketch, source, inside_open], outputs=outputs, api_name=False)
    if example_table is not None:
        example_table.load_input_event.then(classify, inputs=[model, photo, sketch, source, inside_open], outputs=outputs,
                                            api_name=False)
    inside.expand(lambda: True, outputs=inside_open, api_name=False, queue=False).then(
        look_inside, inputs=[model, photo, sketch, source], outputs=[seen, filters, activations], api_name="look_inside")
    inside.collapse(lambda: False, outputs=inside_open, api_name=False, queue=False)
    model.change(describe_model, inputs=model, outputs=about, api_name="describe_model")
    batch_run.click(classify_batch, inputs=[model, files], outputs=[table, csv_file], api_name="classify_batch")
    hub_add.click(add_hub_model, inputs=hub_id, outputs=model, api_name=False)
    return {"model": model, "about": about, "refresh": refresh_models}
