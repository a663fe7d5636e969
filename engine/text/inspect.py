"""Looking inside the character models: the GPT's attention, the LSTM's memory cells, and a search for cells
that track something nameable in the text.

- `attention(model, tokenizer, text)`: every layer's and head's attention probabilities over a text, computed
  explicitly (queries, keys, rotary positions, causal softmax: the same maths as CharGPT.forward, which hides
  them inside F.scaled_dot_product_attention), and the model's top-5 guesses for the next character everywhere.
- `cells(model, tokenizer, text)`: the LSTM's cell activations tanh(c) step by step, and how often each gate is
  saturated (nearly shut or nearly open), as in "Visualizing and Understanding Recurrent Networks" (Karpathy,
  Johnson, Fei-Fei 2015), whose Figure 3 plots, per cell, the fraction of time each gate spends below 0.1
  against above 0.9.
- `text_properties(text)` and `find_cells(activations, properties)`: simple per-character properties (inside
  quotes, position in the line, ...) and the cells whose activation follows one of them most closely
  (Pearson correlation), the paper's "quote cell" and "line length cell" found automatically.

No Gradio here: the Inspect tab and `python -m engine inspect` both call these functions.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from engine.errors import UserError
from engine.text.chargpt import CharGPT, CharTokenizer, apply_rotary
from engine.text.charlstm import CharLSTM

TOP_K = 5  # next-character guesses shown per position
MAX_WARMUP_CHARS = 10_000  # an LSTM reads at most this much text before the part it shows (to set its state)
GATES = ("input", "forget", "output")  # the sigmoid gates of the saturation plot (the candidate is a tanh)
LOW, HIGH = 0.1, 0.9  # a gate below LOW is left-saturated (shut), above HIGH right-saturated (open)

Guesses = list[list[tuple[str, float]]]  # per position: the top-5 (next character, probability), most likely first


@dataclass
class AttentionView:
    tokens: list[str]  # the characters shown (the text's last block_size), as typed
    attention: np.ndarray  # (n_layer, n_head, T, T) float32: [layer][head][query][key]; rows sum to 1, zero above the diagonal
    top5: Guesses  # per position t: the model's guesses for character t+1
    unknown: list[str]  # distinct characters of the shown text the model never saw (each read as its fallback character)
    unknown_count: int  # how many times they occur in the shown text
    cut: bool  # True when the text was longer than the context and only its end is shown
    message: str  # "" or a sentence for the user about the cut and the unknown characters


@dataclass
class CellView:
    tokens: list[str]  # the characters shown (the text's last block_size), as typed
    layer: int  # the layer whose cells are shown, counted from 0
    cells: np.ndarray  # (T, hidden) float32: tanh(c) of that layer after reading each character, in [-1, 1]
    saturation: np.ndarray  # (n_layer, 3, 2): per layer and gate (GATES), fraction of (step, cell) values < LOW, > HIGH
    saturation_per_cell: np.ndarray  # (n_layer, 3, hidden, 2): the same per cell, over the steps (the paper's scatter)
    top5: Guesses  # per position t: the model's guesses for character t+1
    unknown: list[str]
    unknown_count: int
    cut: bool  # True when only the text's end is shown (the LSTM still read up to MAX_WARMUP_CHARS before it)
    message: str
    gates: tuple[str, ...] = GATES


# ----------------------------------------------------------------------------------------------------------
# What both views share: the text's cut, its unknown characters, the guesses


def _prepare(text: str, tokenizer: CharTokenizer, block: int) -> tuple[str, str, list[str], int, str]:
    """(text before the shown part, shown part, unknown characters, their count, message) for a text."""
    if not text:
        raise UserError("Type or paste some text to inspect.")
    before, shown = text[:-block], text[-block:]
    unknown = tokenizer.unknown(shown)
    count = sum(1 for c in shown if c not in tokenizer.index)
    notes = []
    if before:
        notes.append(f"The text has {len(text):,} characters; only the last {block} are shown.")
    if unknown:
        fallback = tokenizer.chars[tokenizer.fallback]
        notes.append(f"{count} character{'s' if count != 1 else ''} the model never saw "
                     f"({' '.join(repr(c) for c in unknown[:10])}{' ...' if len(unknown) > 10 else ''}) "
                     f"{'were' if count != 1 else 'was'} read as {fallback!r}.")
    return before, shown, unknown, count, " ".join(notes)


def _top5(logits: torch.Tensor, tokenizer: CharTokenizer) -> Guesses:
    """Logits (T, vocab) -> per position the TOP_K most likely next characters with their probabilities."""
    probs, ids = F.softmax(logits.float(), dim=-1).topk(min(TOP_K, logits.shape[-1]), dim=-1)
    return [[(tokenizer.chars[i], round(p, 4)) for i, p in zip(row_ids, row_probs)]
            for row_ids, row_probs in zip(ids.tolist(), probs.tolist())]


# ----------------------------------------------------------------------------------------------------------
# The GPT's attention


@torch.no_grad()
def attention_forward(model: CharGPT, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CharGPT.forward for ids (1, T) at positions 0..T-1 with the attention written out: logits (T, vocab) and
    probabilities (n_layer, n_head, T, T). The layers are called as modules, so int8 models work alike."""
    T = idx.shape[1]
    C, H = model.config.n_embd, model.config.n_head
    D = C // H
    cos, sin = model.rotary(0, T, idx.device)
    causal = torch.ones(T, T, dtype=torch.bool, device=idx.device).tril()
    x = model.embed(idx)  # (1, T, C); dropout is off in eval mode
    maps = []
    for block in model.blocks:
        q, k, v = block.attn.qkv(block.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(1, T, H, D).transpose(1, 2) for t in (q, k, v))  # (1, H, T, D)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(D)  # (1, H, T, T): query t against key s
        probs = scores.masked_fill(~causal, float("-inf")).softmax(dim=-1)  # no looking ahead
        maps.append(probs[0])
        y = (probs @ v).transpose(1, 2).reshape(1, T, C)
        x = x + block.attn.proj(y)
        x = x + block.mlp(block.ln2(x))
    logits = model.head(model.ln_f(x))[0]
    return logits, torch.stack(maps)


def attention(model: CharGPT | CharLSTM, tokenizer: CharTokenizer, text: str) -> AttentionView:
    """Where every head of every layer looks, for a text of up to block_size characters (a longer one: its end)."""
    if isinstance(model, CharLSTM):
        raise UserError("This model has no attention: it is an LSTM, which reads one character at a time and "
                        "carries what it remembers in its cells. Inspect its cells instead.")
    if not isinstance(model, CharGPT):
        raise UserError("Attention can be shown only for minilab's character GPT.")
    model.eval()
    _, shown, unknown, count, message = _prepare(text, tokenizer, model.config.block_size)
    device = model.embed.weight.device
    idx = torch.tensor([tokenizer.encode(shown)], device=device)
    logits, maps = attention_forward(model, idx)
    return AttentionView(tokens=list(shown), attention=maps.float().cpu().numpy(), top5=_top5(logits, tokenizer),
                         unknown=unknown, unknown_count=count, cut=len(shown) < len(text), message=message)


# ----------------------------------------------------------------------------------------------------------
# The LSTM's cells


def gate_saturation(gates: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """From CharLSTM.inspect's (n_layer, 1, T, hidden) gates: the fraction of values below LOW and above HIGH,
    per layer and gate (n_layer, 3, 2) and per layer, gate and cell (n_layer, 3, hidden, 2)."""
    stacked = torch.stack([gates[name][:, 0] for name in GATES], dim=1)  # (n_layer, 3, T, hidden)
    per_cell = torch.stack(((stacked < LOW).float().mean(dim=2), (stacked > HIGH).float().mean(dim=2)), dim=-1)
    return per_cell.mean(dim=2).numpy(), per_cell.numpy()


@torch.no_grad()
def cells(model: CharGPT | CharLSTM, tokenizer: CharTokenizer, text: str, layer: int = -1) -> CellView:
    """The LSTM's cells tanh(c) of one layer (default the last) over the text's last block_size characters.
    Earlier text (up to MAX_WARMUP_CHARS) is read first by the fast nn.LSTM, so the shown cells start from the
    state the whole text leads to, not from zero."""
    if isinstance(model, CharGPT):
        raise UserError("This model has no memory cells: it is a GPT, which looks back at the characters themselves "
                        "through attention. Inspect its attention instead.")
    if not isinstance(model, CharLSTM):
        raise UserError("Cells can be shown only for minilab's character LSTM.")
    n_layer = model.config.n_layer
    if not -n_layer <= int(layer) < n_layer:
        raise UserError(f"The model has {n_layer} layer{'s' if n_layer != 1 else ''}: the layer must be between "
                        f"0 and {n_layer - 1} (or -1 for the last; got {layer}).")
    model.eval()
    before, shown, unknown, count, message = _prepare(text, tokenizer, model.config.block_size)
    device = model.embed.weight.device
    state = None
    if before:
        warmup = torch.tensor([tokenizer.encode(before[-MAX_WARMUP_CHARS:])], device=device)
        _, state = model.lstm(model.embed(warmup))
    logits, kept = model.inspect(torch.tensor([tokenizer.encode(shown)], device=device), state)
    layer = int(layer) % n_layer
    saturation, per_cell = gate_saturation({name: kept[name].cpu() for name in GATES})
    return CellView(tokens=list(shown), layer=layer, cells=kept["cell"][layer, 0].tanh().float().cpu().numpy(),
                    saturation=saturation, saturation_per_cell=per_cell, top5=_top5(logits[0], tokenizer),
                    unknown=unknown, unknown_count=count, cut=bool(before), message=message)


# ----------------------------------------------------------------------------------------------------------
# Searching for interpretable cells

SPEAKER_LINE = re.compile(r"[A-Z][A-Za-z' ]{0,40}:")  # "ROMEO:", "First Citizen:": a whole line, ending with ':'
OPENING, CLOSING = "([{", ")]}"


def text_properties(text: str) -> dict[str, np.ndarray]:
    """Per-character properties of a text, each a float array (len(text),), meant *after* reading that character
    (what a cell that tracks it would hold then): an opening quote is inside the quote, a closing one outside."""
    T = len(text)
    inside_quotes, inside_brackets = np.zeros(T), np.zeros(T)
    line_position, line_start, speaker = np.zeros(T), np.zeros(T), np.zeros(T)
    quoted, depth, column = False, 0, 0
    for t, char in enumerate(text):
        if char == '"':
            quoted = not quoted
        if char in OPENING:
            depth += 1
        elif char in CLOSING:
            depth = max(0, depth - 1)  # a closing bracket without an opening one (the text was cut) changes nothing
        inside_quotes[t], inside_brackets[t] = quoted, depth > 0
        column = 0 if char == "\n" else column + 1
        line_position[t] = column  # characters since the last newline (the newline itself: 0)
        line_start[t] = t == 0 or text[t - 1] == "\n"
    start = 0
    for line in text.split("\n"):
        if SPEAKER_LINE.fullmatch(line.strip()):
            speaker[start:start + len(line)] = 1.0
        start += len(line) + 1
    return {
        "inside quotes": inside_quotes,
        "inside brackets": inside_brackets,
        "position in line": line_position,
        "start of line": line_start,
        "inside a word": np.array([c.isalpha() for c in text], dtype=float),
        "upper case": np.array([c.isupper() for c in text], dtype=float),
        "speaker name": speaker,
    }


def find_cells(activations: np.ndarray, properties: dict[str, np.ndarray], top: int = 5) -> list[dict]:
    """The `top` cells most correlated (|Pearson r|) with each property, strongest pairs first, as dicts
    {"cell", "property", "correlation"}. A property that is constant over the text says nothing and is skipped;
    a constant cell has no correlation (NaN), counted as 0."""
    acts = np.asarray(activations, dtype=np.float64)  # (T, H)
    centred = acts - acts.mean(axis=0)
    cell_norms = np.sqrt((centred ** 2).sum(axis=0))  # (H,)
    found = []
    for name, values in properties.items():
        values = np.asarray(values, dtype=np.float64)
        if values.shape != (acts.shape[0],):
            raise ValueError(f"property {name!r} has {values.shape} values for {acts.shape[0]} steps")
        v = values - values.mean()
        v_norm = math.sqrt(float((v ** 2).sum()))
        if not v_norm > 1e-12:
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            r = (v @ centred) / (v_norm * cell_norms)
        r = np.nan_to_num(r, nan=0.0, posinf=0.0, neginf=0.0)
        for cell in np.argsort(-np.abs(r), kind="stable")[:top]:
            found.append({"cell": int(cell), "property": name, "correlation": float(r[cell])})
    return sorted(found, key=lambda item: -abs(item["correlation"]))
