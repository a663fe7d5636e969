"""Text tab, "Inside": a character GPT and a character LSTM side by side. Look inside either (the GPT's attention,
the LSTM's cells and gates), see how they raced on the same text, and race your own pair on your own .txt.

The maths is in engine.text.inspect (and the training in engine.text.chargpt / charlstm through the job runner);
this file lays out the page and draws the pictures (matplotlib figures and Gradio plots: nothing from a CDN).
"""
from __future__ import annotations

import uuid
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd

from demos.common import LIVE_STATES, ended_empty, ensure_owner, friendly_errors, made_model, model_list, session_key
from demos.zerogpu import TRAINING_NOTE, gpu
from engine.errors import UserError
from engine.registry import default_registry, model_entry_for_folder

JOB_PREFIX = "race-"  # the pair's jobs; the Fine-tune tab's jobs have their own prefix
WRAP = 64  # characters per line in the coloured-text pictures
EXAMPLE_TEXT = ('MENENIUS:\nWhat work\'s, my countrymen, in hand? where go you\nWith bats and clubs? The matter? '
                'speak, I pray you.\n\nFirst Citizen:\n"Our business is not unknown to the senate;" they have had '
                'inkling this fortnight (what we intend to do).')
EXAMPLES = [[EXAMPLE_TEXT], ['JULIET:\nO Romeo, Romeo! wherefore art thou Romeo?\nDeny thy father and refuse thy name;'],
            ["def f(x):\n    return (x + 1) * [x, (x - 1)]\n"]]
ARCHITECTURES = {"gpt": "GPT", "lstm": "LSTM"}


def lm_choices(session: str | None) -> list[tuple[str, str]]:
    """minilab's own character models (shipped and this browser's): the ones that can be looked inside."""
    options = []
    for entry in default_registry().list("lm", session):
        if entry.folder is not None:
            from engine.checkpoints import read_card

            architecture = read_card(entry.folder).get("architecture", "")
            options.append((f"{entry.name}  ·  {'LSTM' if architecture == 'charlstm' else 'GPT'}", entry.name))
    return options


def _default(options: list[tuple[str, str]], preferred: str) -> str | None:
    values = [value for _, value in options]
    return preferred if preferred in values else (values[0] if values else None)


def _character_model(name: str, session: str | None):
    if not name:
        raise UserError("Pick a model first.")
    lm = default_registry().get(name, session)
    if not hasattr(lm, "tokenizer"):
        raise UserError(f"{name} is a hub model: only minilab's character GPT and LSTM can be looked inside.")
    return lm


# ----------------------------------------------------------------------------------------------------------
# Pictures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _lines(tokens: list[str]) -> list[list[int]]:
    """Positions of the tokens, wrapped at WRAP columns and after each newline."""
    lines, line = [], []
    for t, char in enumerate(tokens):
        line.append(t)
        if char == "\n" or len(line) == WRAP:
            lines.append(line)
            line = []
    if line:
        lines.append(line)
    return lines


def coloured_text(tokens: list[str], rows: list[tuple[str, np.ndarray]], vmin: float, vmax: float, cmap: str,
                  mark: int | None = None):
    """The text drawn once per row (a head, a cell), each character on a background coloured by its value."""
    plt = _plt()
    colours = plt.get_cmap(cmap)
    lines = _lines(tokens)
    height = len(rows) * (len(lines) * 0.2 + 0.35)
    figure = plt.figure(figsize=(WRAP * 0.13, max(1.0, height)))
    axes = figure.add_axes([0, 0, 1, 1])
    axes.set_xlim(0, WRAP)
    total = len(rows) * (len(lines) + 1.6)
    axes.set_ylim(total, 0)
    axes.axis("off")
    y = 0.0
    for title, values in rows:
        axes.text(0, y + 0.8, title, fontsize=8, fontweight="bold", va="bottom")
        y += 1.0
        for line in lines:
            for column, t in enumerate(line):
                value = (float(values[t]) - vmin) / (vmax - vmin or 1.0)
                axes.add_patch(plt.Rectangle((column, y), 1, 1, color=colours(min(1.0, max(0.0, value))), linewidth=0))
                if t == mark:
                    axes.add_patch(plt.Rectangle((column, y), 1, 1, fill=False, edgecolor="black", linewidth=1.5))
                char = "⏎" if tokens[t] == "\n" else tokens[t]
                axes.text(column + 0.5, y + 0.55, char, ha="center", va="center", fontsize=7, family="monospace")
            y += 1.0
        y += 0.6
    plt.close(figure)
    return figure


def attention_grid(view):
    """Every layer's (rows) and head's (columns) attention: query position down, key position across."""
    plt = _plt()
    layers, heads = view.attention.shape[:2]
    figure, axes = plt.subplots(layers, heads, figsize=(1.9 * heads, 1.9 * layers), squeeze=False)
    for layer in range(layers):
        for head in range(heads):
            ax = axes[layer][head]
            ax.imshow(view.attention[layer, head] ** 0.5, cmap="viridis", vmin=0, vmax=1)  # sqrt: faint links show
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"layer {layer} · head {head}", fontsize=7)
    figure.suptitle("Attention (row: the character reading; column: the earlier character it reads)", fontsize=8)
    figure.tight_layout()
    plt.close(figure)
    return figure


def saturation_figure(view):
    """The paper's Figure 3: per cell, the fraction of steps each gate is nearly shut (< 0.1) against nearly open (> 0.9)."""
    plt = _plt()
    per_cell = view.saturation_per_cell  # (n_layer, 3, hidden, 2)
    layers = per_cell.shape[0]
    figure, axes = plt.subplots(1, layers, figsize=(3.2 * layers, 3.2), squeeze=False)
    for layer in range(layers):
        ax = axes[0][layer]
        for gate, (name, colour) in enumerate(zip(view.gates, ("tab:blue", "tab:green", "tab:red"))):
            ax.scatter(per_cell[layer, gate, :, 0], per_cell[layer, gate, :, 1], s=5, alpha=0.5, color=colour, label=name)
        ax.plot([0, 1], [1, 0], color="grey", linewidth=0.5)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("fraction nearly shut (< 0.1)", fontsize=8)
        ax.set_ylabel("fraction nearly open (> 0.9)", fontsize=8)
        ax.set_title(f"layer {layer}", fontsize=9)
        ax.legend(fontsize=7, markerscale=2)
    figure.tight_layout()
    plt.close(figure)
    return figure


def guesses_table(tokens: list[str], top5) -> pd.DataFrame:
    def show(char: str) -> str:
        return {"\n": "⏎", " ": "␣"}.get(char, char)

    rows = []
    for t, guesses in enumerate(top5):
        following = show(tokens[t + 1]) if t + 1 < len(tokens) else ""
        rows.append({"position": t, "character": show(tokens[t]), "next (actual)": following,
                     "top-5 guesses": "  ".join(f"{show(c)} {p:.0%}" for c, p in guesses)})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------------------
# Inside the GPT and the LSTM


@gpu(duration=10)
def attention_on_gpu(lm, text: str):
    from engine.text.inspect import attention

    return attention(lm.model, lm.tokenizer, text)


@gpu(duration=10)
def cells_on_gpu(lm, text: str, layer: int):
    from engine.text.inspect import cells

    return cells(lm.model, lm.tokenizer, text, layer)


@friendly_errors
def inspect_text(model_name: str, text: str, query: float, layer: float, cell: float, request: gr.Request):
    """Everything the Inside panel shows for one model and one text; the panels of the other kind are hidden."""
    lm = _character_model(model_name, session_key(request))
    from engine.text.charlstm import CharLSTM

    text = text or ""
    if isinstance(lm.model, CharLSTM):
        return _lstm_views(lm, text, int(layer or 0), int(cell or 0))
    return _gpt_views(lm, text, query, int(layer or 0))


def _gpt_views(lm, text: str, query: float | None, layer: int):
    view = attention_on_gpu(lm, text)
    T, layers = len(view.tokens), view.attention.shape[0]
    query = T - 1 if query is None or query < 0 or query >= T else int(query)
    layer = min(max(layer, 0), layers - 1)
    heads = [(f"layer {layer} · head {h}: where '{_show(view.tokens[query])}' at position {query} looks",
              view.attention[layer, h, query]) for h in range(view.attention.shape[1])]
    picture = coloured_text(view.tokens, heads, 0.0, float(max(1e-6, view.attention[layer, :, query].max())), "Greens", mark=query)
    note = f"**GPT**, {layers} layers × {view.attention.shape[1]} heads, {T} characters. " + (view.message or "")
    hide = gr.update(visible=False)
    return (note, gr.update(value=attention_grid(view), visible=True), gr.update(value=picture, visible=True),
            gr.Slider(maximum=max(0, T - 1), value=query, visible=True), gr.Slider(maximum=layers - 1, value=layer),
            guesses_table(view.tokens, view.top5), hide, hide, hide, gr.Number(visible=False))


def _lstm_views(lm, text: str, layer: int, cell: int):
    from engine.text.inspect import find_cells, text_properties

    layers, hidden = lm.model.config.n_layer, lm.model.config.hidden
    layer = min(max(layer, 0), layers - 1)
    if not 0 <= cell < hidden:
        raise UserError(f"The LSTM has {hidden} cells per layer: pick a cell between 0 and {hidden - 1}.")
    view = cells_on_gpu(lm, text, layer)
    found = find_cells(view.cells, text_properties("".join(view.tokens)), top=3)[:12]
    table = pd.DataFrame([{"cell": f["cell"], "follows": f["property"], "correlation": round(f["correlation"], 3)}
                          for f in found])
    picture = coloured_text(view.tokens, [(f"layer {layer} · cell {cell}: tanh(c), blue −1 … red +1", view.cells[:, cell])],
                            -1.0, 1.0, "RdBu_r")
    note = (f"**LSTM**, {layers} layers × {hidden} cells, {len(view.tokens)} characters. Click a row of the search to "
            "colour the text by that cell. " + (view.message or ""))
    hide = gr.update(visible=False)
    return (note, hide, gr.update(value=picture, visible=True), gr.Slider(visible=False),
            gr.Slider(maximum=layers - 1, value=layer), guesses_table(view.tokens, view.top5),
            gr.update(value=table, visible=True), gr.update(value=saturation_figure(view), visible=True),
            gr.update(visible=True), gr.Number(maximum=hidden - 1, value=cell, visible=True))


def _show(char: str) -> str:
    return {"\n": "⏎", " ": "␣"}.get(char, char)


def pick_found_cell(table: pd.DataFrame, event: gr.SelectData) -> int:
    """A click on a row of the cell search: that row's cell."""
    row = event.index[0] if isinstance(event.index, (list, tuple)) else event.index
    return int(table.iloc[int(row)]["cell"])


# ----------------------------------------------------------------------------------------------------------
# The race: the shipped pair (from their cards) and a pair of your own


def shipped_race() -> tuple[pd.DataFrame | None, str]:
    """The race stored in the shipped cards by benchmarks/lstm_vs_gpt.py --write-cards."""
    from engine.checkpoints import read_card
    from engine.registry import CHECKPOINTS_DIR

    rows, lines = [], []
    for folder, label in (("shakespeare", "GPT"), ("shakespeare-lstm", "LSTM")):
        try:
            race = read_card(CHECKPOINTS_DIR / folder).get("race")
        except UserError:
            race = None
        if not race:
            continue
        rows += [{"seconds": s, "validation loss": v, "model": label} for s, v in race["curve"]]
        lines.append(f"| {label} | {race['parameters']:,} | {race['iters']:,} | {race['final_val_loss']:.3f} |")
        command = race.get("command", "")
    if not rows:
        return None, "The shipped models' race is not in their cards."
    text = (f"Both trained from scratch on the first 90% of Tiny Shakespeare, **{race['seconds']:.0f} s each on "
            f"{race['threads']} CPU threads**, one after the other; validation: the last 10%.\n\n"
            "| model | parameters | steps | final validation loss (nats/char) |\n| --- | --- | --- | --- |\n"
            + "\n".join(lines) + f"\n\nMeasured with `{command}`.")
    return pd.DataFrame(rows), text


@friendly_errors
def start_pair(owner: str | None, files, which: str, budget: float):
    """One training job per model picked, on the same .txt and the same time budget (they run one after the other
    when the server trains one job at a time, so each gets the same cores)."""
    from engine.finetune import finetune_job
    from engine.jobs import default_runner
    from engine.text.finetune import CharFinetuneConfig

    owner = ensure_owner(owner)
    paths = [f if isinstance(f, str) else f.name for f in (files or [])]
    if len(paths) != 1 or not paths[0].lower().endswith(".txt"):
        raise UserError("Upload one plain-text file (.txt): a book, lyrics, code…")
    runner = default_runner()
    if any(job.state in LIVE_STATES and job.name.startswith(JOB_PREFIX) for job in runner.jobs(owner)):
        raise UserError("Your pair is still training: cancel it before starting another.")
    pair = uuid.uuid4().hex[:6]
    for architecture in (["lstm", "gpt"] if which == "both" else [which]):
        config = CharFinetuneConfig(architecture=architecture, time_budget=float(budget)).validate()
        name = f"my-{architecture}-{pair}"
        runner.submit(owner, finetune_job("chargpt", paths, config, name, command="minilab Text tab, Inside"),
                      name=JOB_PREFIX + architecture, config={"kind": "chargpt", "model_name": name, "pair": pair,
                                                              "architecture": architecture, "time_budget": float(budget)},
                      inputs=paths)
    return owner, gr.Timer(active=True)


def _pair_jobs(owner: str | None) -> list:
    from engine.jobs import default_runner

    if not owner:
        return []
    jobs = [job for job in default_runner().jobs(owner) if job.name.startswith(JOB_PREFIX)]
    if not jobs:
        return []
    pair = jobs[-1].config.get("pair")
    return [job for job in jobs if job.config.get("pair") == pair]


@friendly_errors
def cancel_pair(owner: str | None):
    from engine.jobs import default_runner

    live = [job for job in _pair_jobs(owner) if not job.done]
    if not live:
        raise UserError("No pair is training.")
    for job in live:
        default_runner().cancel(job.id, owner)
    return gr.Timer(active=True)


def _register(job, owner: str, session: str | None) -> None:
    """The pair's models join this browser's lists (Generate and Inside), as the Fine-tune tab's do."""
    registry = default_registry()
    for who in {owner, session} - {None}:
        registry.forget_missing(who)
        if job.result["name"] not in [e.name for e in registry.list("lm", who)]:
            registry.add(model_entry_for_folder(Path(job.result["folder"]), job.result["name"], "session", session=who))


def poll_pair(owner: str | None, request: gr.Request):
    """Timer tick: each job's state, the curves side by side, and the results once both have ended."""
    jobs = _pair_jobs(owner)
    if not jobs:
        return "No pair trained yet.", None, "", gr.Timer(active=False)
    lines, rows, results = [], [], []
    for job in jobs:
        label = ARCHITECTURES.get(job.config.get("architecture"), "?")
        budget = float(job.config.get("time_budget") or 1)
        state = {"queued": f"waiting (position {job.queue_position})", "running": f"training, {job.elapsed:.0f} of {budget:.0f} s",
                 "paused": "paused", "succeeded": "done", "cancelled": "cancelled (kept its best model)",
                 "timed_out": "stopped at the time limit", "failed": f"failed: {job.error}"}[job.state]
        lines.append(f"- **{label}** ({job.config.get('model_name')}): {ended_empty(job, 'Race') or state}")
        rows += [{"seconds": e["elapsed"], "validation loss": e["val_loss"], "model": label}
                 for e in job.events if e.get("kind") == "epoch" and isinstance(e.get("val_loss"), float)]
        if made_model(job):
            _register(job, owner, session_key(request))
            metrics = job.result["metrics"]
            results.append(f"### {label}: {job.result['name']}\nValidation loss **{metrics['val_loss']:.3f}** nats per "
                           f"character, {metrics.get('parameters', 0):,} parameters, {metrics['iters']:,} steps. "
                           f"A sample:\n```\n{job.result['sample'][:300]}\n```")
    if results:
        results.append("Both are in **Generate** and in the list above for this browser (reload the list with the tab).")
    curves = pd.DataFrame(rows) if rows else None
    return "\n".join(lines), curves, "\n\n".join(results), gr.Timer(active=not all(job.done for job in jobs))


# ----------------------------------------------------------------------------------------------------------
# Layout


def refresh_models(current: str | None, request: gr.Request):
    options = lm_choices(session_key(request))
    return model_list(options, current, _default(options, "shakespeare"))


def build(owner: gr.BrowserState) -> dict:
    options = lm_choices(None)
    gr.Markdown("Two ways to read text one character at a time. A **GPT** looks back at every earlier character at "
                "once through *attention* (queries, keys and values); an **LSTM** reads one character after another "
                "and keeps what matters in *cells*, guarded by input, forget and output *gates*. Both here were "
                "trained on the same Shakespeare; pick one and look inside.")
    with gr.Row():
        with gr.Column(scale=4):
            model = gr.Dropdown(choices=options, value=_default(options, "shakespeare"), label="Model", elem_id="inside-model")
            text = gr.Textbox(label="Text (up to the model's context: 128 characters for the GPT, 256 shown for the LSTM)",
                              value=EXAMPLE_TEXT, lines=6, elem_id="inside-text")
            gr.Examples(examples=EXAMPLES, inputs=[text], label="Examples")
            look = gr.Button("Look inside", variant="primary", elem_id="inside-button")
            with gr.Row():
                layer = gr.Slider(0, 3, value=0, step=1, label="Layer")
                query = gr.Slider(0, 127, value=127, step=1, label="GPT: the character reading (position)")
                cell = gr.Number(value=0, precision=0, minimum=0, label="LSTM: cell", visible=False, elem_id="inside-cell")
        with gr.Column(scale=6):
            note = gr.Markdown(elem_id="inside-note")
            grid = gr.Plot(label="Every layer and head", visible=False, elem_id="inside-grid")
            focus = gr.Plot(label="Coloured text", visible=False, elem_id="inside-focus")
    with gr.Row():
        found = gr.Dataframe(label="Cells that follow something in the text (|correlation|, best first)", interactive=False,
                             visible=False, elem_id="inside-found")
        saturation = gr.Plot(label="Gate saturation per cell (Karpathy, Johnson, Fei-Fei 2015, Figure 3)", visible=False)
    found_hint = gr.Markdown("The quote, bracket and line-position cells of the paper are what the search looks for; "
                             "a cell that follows 'inside a word' or 'upper case' is common.", visible=False)
    guesses = gr.Dataframe(label="Next-character guesses at each position (top 5)", interactive=False, max_height=300)

    gr.Markdown("### The race: the same text, the same time, the same cores")
    race_curves, race_text = shipped_race()
    gr.LinePlot(race_curves, x="seconds", y="validation loss", color="model", label="Shipped pair: validation loss against time",
                elem_id="race-shipped")
    gr.Markdown(race_text)
    with gr.Accordion("Race your own pair on your own .txt", open=False):
        if TRAINING_NOTE:
            gr.Markdown(f"ℹ️ {TRAINING_NOTE}")
        with gr.Row():
            files = gr.File(label="A plain-text file (.txt)", file_count="multiple", file_types=[".txt"], height=140)
            with gr.Column():
                which = gr.Radio([("Both", "both"), ("LSTM", "lstm"), ("GPT", "gpt")], value="both", label="Train")
                budget = gr.Slider(10, 600, value=100, step=5, label="Training time for each (seconds)")
        with gr.Row():
            race_button = gr.Button("Race", variant="primary", elem_id="race-button")
            cancel_button = gr.Button("Cancel", variant="stop")
        race_progress = gr.Markdown(elem_id="race-progress")
        pair_curves = gr.LinePlot(x="seconds", y="validation loss", color="model", label="Your pair: validation loss",
                                  elem_id="race-curves")
        race_results = gr.Markdown(elem_id="race-results")
    timer = gr.Timer(1.0, active=False)

    views = [note, grid, focus, query, layer, guesses, found, saturation, found_hint, cell]
    look.click(inspect_text, inputs=[model, text, query, layer, cell], outputs=views, api_name="inspect")
    for control in (query, layer):
        control.release(inspect_text, inputs=[model, text, query, layer, cell], outputs=views, api_name=False)
    cell.submit(inspect_text, inputs=[model, text, query, layer, cell], outputs=views, api_name=False)
    model.change(lambda: gr.Slider(value=0), outputs=layer, api_name=False)
    found.select(pick_found_cell, inputs=found, outputs=cell, api_name=False).then(
        inspect_text, inputs=[model, text, query, layer, cell], outputs=views, api_name=False)
    race_button.click(start_pair, inputs=[owner, files, which, budget], outputs=[owner, timer], api_name="race_start")
    cancel_button.click(cancel_pair, inputs=owner, outputs=timer, api_name="race_cancel")
    poll_outputs = [race_progress, pair_curves, race_results, timer]
    timer.tick(poll_pair, inputs=owner, outputs=poll_outputs, show_progress="hidden", concurrency_limit=None, api_name="race_poll")
    return {"model": model, "refresh": refresh_models, "poll": poll_pair, "poll_outputs": poll_outputs}
