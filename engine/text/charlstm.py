"""A character-level LSTM in one file, in the manner of Karpathy's char-rnn: model, training, evaluation, sampling.

Text becomes a sequence of character ids; an embedding, a stack of LSTM layers and a linear head predict the
next character at every step; the loss is the cross-entropy in nats per character, as for the GPT beside it
(`chargpt.py`), so the two compare directly.

An LSTM layer keeps two vectors per step, the hidden state h and the cell state c. Four gates, each a
sigmoid (or tanh) of a linear function of the input x and the previous h, decide what the cell does:

    i = sigmoid(W_ii x + W_hi h + b_i)      input gate: how much of the candidate to write
    f = sigmoid(W_if x + W_hf h + b_f)      forget gate: how much of the old cell to keep
    g = tanh   (W_ig x + W_hg h + b_g)      candidate: what to write
    o = sigmoid(W_io x + W_ho h + b_o)      output gate: how much of the cell to show
    c' = f * c + i * g
    h' = o * tanh(c')

Two paths compute the same layers from the same weights:
- the fast path, `nn.LSTM` (cuDNN or oneDNN kernels), for training, evaluation and sampling;
- the inspection path, `CharLSTM.inspect`, which runs the equations above step by step in plain tensor maths
  and keeps every gate and cell on the way (a unit test checks that both give the same logits). That is what
  "Visualizing and Understanding Recurrent Networks" (Karpathy, Johnson, Fei-Fei 2015) looks at.

Training is truncated backpropagation through time, as char-rnn: the training text is cut into `batch_size`
long contiguous streams, each batch is the next `seq_len` characters of every stream, and the state is carried
from one batch to the next (detached), so the network learns to use context longer than one segment.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from engine.checkpoints import load_model, load_own_state, save_model
from engine.device import training_autocast
from engine.errors import UserError
from engine.text.chargpt import CharTokenizer, filter_logits, split_text

ProgressFn = Callable[[dict], None]
State = tuple[torch.Tensor, torch.Tensor]  # (h, c), each (n_layer, batch, hidden)
MAX_PROMPT_CHARS = 10_000


@dataclass
class CharLSTMConfig:
    vocab_size: int = 65
    n_embd: int = 64  # size of each character's embedding
    hidden: int = 512  # cells per layer
    n_layer: int = 2
    dropout: float = 0.25
    block_size: int = 256  # characters shown at once by the inspection views (the LSTM itself has no limit)


class CharLSTM(nn.Module):
    def __init__(self, config: CharLSTMConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.n_embd)
        self.lstm = nn.LSTM(config.n_embd, config.hidden, config.n_layer, batch_first=True,
                            dropout=config.dropout if config.n_layer > 1 else 0.0)
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden, config.vocab_size)
        with torch.no_grad():  # forget gates start open (bias 1): cells keep their contents early in training
            for layer in range(config.n_layer):
                getattr(self.lstm, f"bias_ih_l{layer}")[config.hidden:2 * config.hidden].fill_(1.0)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                state: State | None = None) -> tuple[torch.Tensor, torch.Tensor | None, State]:
        """Logits (B, T, vocab) for ids (B, T), the loss if targets are given, and the state after the last step."""
        out, state = self.lstm(self.embed(idx), state)
        logits = self.head(self.drop(out))
        loss = None if targets is None else F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss, state

    def layer_weights(self, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """W_ih (4H, in), W_hh (4H, H) and the summed bias (4H,) of one layer; rows in PyTorch's order i, f, g, o."""
        lstm = self.lstm
        bias = getattr(lstm, f"bias_ih_l{layer}") + getattr(lstm, f"bias_hh_l{layer}")
        return getattr(lstm, f"weight_ih_l{layer}"), getattr(lstm, f"weight_hh_l{layer}"), bias

    @torch.no_grad()
    def inspect(self, idx: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The same network as forward(), computed one step at a time with every gate kept (eval mode, no dropout).
        Returns logits (B, T, vocab) and a dict of (n_layer, B, T, hidden) tensors: input, forget, output
        (sigmoids), candidate (tanh), cell (c) and hidden (h)."""
        B, T = idx.shape
        H, L = self.config.hidden, self.config.n_layer
        if state is None:
            zeros = torch.zeros(L, B, H, device=idx.device)
            state = (zeros, zeros)
        x = self.embed(idx)  # (B, T, E)
        names = ("input", "forget", "candidate", "output", "cell", "hidden")
        kept = {name: torch.empty(L, B, T, H, device=idx.device) for name in names}
        for layer in range(L):
            w_ih, w_hh, bias = self.layer_weights(layer)
            h, c = state[0][layer], state[1][layer]
            x_part = x @ w_ih.T + bias  # the input's share of every gate, all steps at once: (B, T, 4H)
            outputs = []
            for t in range(T):
                i, f, g, o = (x_part[:, t] + h @ w_hh.T).chunk(4, dim=-1)
                i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
                c = f * c + i * g
                h = o * c.tanh()
                for name, value in zip(names, (i, f, g, o, c, h)):
                    kept[name][layer, :, t] = value
                outputs.append(h)
            x = torch.stack(outputs, dim=1)  # this layer's h at every step is the next layer's input
        return self.head(x), kept

    # Saved as float16 (half the bytes); loading casts back to float32.
    def saved_state(self) -> dict[str, torch.Tensor]:
        return {k: v.half() if v.is_floating_point() else v for k, v in self.state_dict().items()}

    def load_saved_state(self, state: dict[str, torch.Tensor]) -> None:
        load_own_state(self, state)


def build_charlstm(arch_config: dict) -> CharLSTM:
    return CharLSTM(CharLSTMConfig(**arch_config))


# ----------------------------------------------------------------------------------------------------------
# Sampling: one character at a time, the state carried; no context limit and a constant cost per character.


def step_layers(model: CharLSTM) -> nn.ModuleList:
    """Each layer's two matrices and two biases as one Linear over [x, h]: one product per layer and step.
    Why not nn.LSTM for one step: on the CPU it goes through oneDNN, which sets up its kernel on every call
    (about 5 ms a step, against 0.5 ms here); and one Linear can be made int8 (load_char_lm), a quarter of the
    bytes to read per character, which is what a step of a 3M-parameter network waits for."""
    layers = nn.ModuleList()
    H = model.config.hidden
    order = torch.cat([torch.arange(0, 2 * H), torch.arange(3 * H, 4 * H), torch.arange(2 * H, 3 * H)])  # i f o g
    for layer in range(model.config.n_layer):
        w_ih, w_hh, bias = model.layer_weights(layer)
        fused = nn.Linear(w_ih.shape[1] + w_hh.shape[1], w_ih.shape[0]).to(w_ih.device)
        with torch.no_grad():  # rows reordered so that the three sigmoid gates come first: one sigmoid, one tanh
            fused.weight.copy_(torch.cat([w_ih, w_hh], dim=1)[order])
            fused.bias.copy_(bias[order])
        layers.append(fused)
    return layers.eval()


@torch.inference_mode()
def generate(model: CharLSTM, tokenizer: CharTokenizer, prompt: str, max_new_chars: int = 500,
             temperature: float = 0.8, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
             should_stop: Callable[[], bool] = lambda: False, layers: nn.ModuleList | None = None) -> Iterator[tuple[str, float]]:
    """Yield (character, its probability under the unfiltered model) one at a time, checking `should_stop()`
    before each. The whole prompt is read by nn.LSTM (the LSTM has no window), then each character is one step
    of the gate equations through `layers` (step_layers, made here when not given)."""
    from engine.text.chargpt import direct_linear

    model.eval()
    device = next(model.parameters()).device
    ids = tokenizer.encode(prompt[-MAX_PROMPT_CHARS:]) or [tokenizer.fallback]
    generator = torch.Generator().manual_seed(int(seed))
    out, (h, c) = model.lstm(model.embed(torch.tensor([ids], device=device)))
    last = model.head(out[0, -1])
    products = [direct_linear(layer) for layer in (layers if layers is not None else step_layers(model))]
    h, c = list(h.unbind(0)), list(c.unbind(0))  # per layer: (1, hidden)
    head, H = direct_linear(model.head), model.config.hidden
    for _ in range(int(max_new_chars)):
        if should_stop():
            return
        probs = filter_logits(last, temperature, top_k, top_p).cpu()
        next_id = int(torch.multinomial(probs, 1, generator=generator))
        yield tokenizer.chars[next_id], float(F.softmax(last.float(), dim=-1)[next_id])
        x = model.embed.weight[next_id].unsqueeze(0)
        for layer, product in enumerate(products):
            gates = product(torch.cat([x, h[layer]], dim=1))  # (1, 4H): input, forget, output, candidate
            i, f, o = gates[:, :3 * H].sigmoid().chunk(3, dim=1)
            c[layer] = torch.addcmul(f * c[layer], i, gates[:, 3 * H:].tanh())  # c' = f c + i g
            x = h[layer] = o * c[layer].tanh()
        last = head(x)[0]


# ----------------------------------------------------------------------------------------------------------
# Evaluation: nats per character on a text


@torch.no_grad()
def evaluate_text(model: CharLSTM, ids: torch.Tensor, streams: int = 32, warmup: int = 128) -> dict:
    """Mean cross-entropy per character over `ids`, each character after the first predicted exactly once.

    The text is cut into `streams` contiguous pieces read side by side as one batch; each piece is preceded by
    the `warmup` characters before it, read but not scored, so that every scored character (but the first few of
    the text) has at least that much context, as the GPT's sliding window gives at least half its context."""
    model.eval()
    device = next(model.parameters()).device
    n = ids.numel() - 1
    if n < 1:
        raise UserError("The evaluation text needs at least 2 characters.")
    streams = max(1, min(streams, n // max(1, warmup)))
    bounds = [round(s * n / streams) for s in range(streams + 1)]
    total, count = 0.0, 0
    rows = []
    for s in range(streams):
        start, end = bounds[s], bounds[s + 1]
        first = max(0, start - warmup)
        rows.append((first, start, end))
    length = max(end - first for first, _, end in rows)
    x = torch.zeros(streams, length, dtype=torch.long)
    y = torch.full((streams, length), -100, dtype=torch.long)  # -100: not scored
    for row, (first, start, end) in enumerate(rows):
        x[row, :end - first] = ids[first:end]
        y[row, start - first:end - first] = ids[start + 1:end + 1]
    state = None
    for t in range(0, length, 512):  # in chunks, the state carried, to bound the memory of one pass
        logits, _, state = model(x[:, t:t + 512].to(device), state=state)
        target = y[:, t:t + 512].to(device)
        total += float(F.cross_entropy(logits.float().transpose(1, 2), target, reduction="sum", ignore_index=-100))
        count += int((target != -100).sum())
    return {"val_loss": total / count, "n_chars": count}


# ----------------------------------------------------------------------------------------------------------
# Training


@dataclass
class CharLSTMTrainConfig:
    model: CharLSTMConfig
    max_iters: int = 6000
    time_budget: float = 0.0  # seconds; 0 = no limit. The learning-rate schedule follows whichever ends first
    batch_size: int = 64  # contiguous streams read side by side
    seq_len: int = 128  # characters per step of truncated backpropagation
    lr: float = 3e-3
    min_lr: float = 1e-4  # cosine decay to this
    warmup_iters: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    eval_every: int = 250
    eval_batches: int = 8  # validation segments per progress estimate (the final score reads all of it)
    val_fraction: float = 0.1  # the last 10% of the text is held out
    seed: int = 1337
    bf16: bool = False  # bfloat16 autocast where the hardware runs it fast (the weights stay float32)


def stream_batches(ids: torch.Tensor, batch_size: int, seq_len: int, offset: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """char-rnn's batches: `ids` cut into batch_size contiguous streams, then seq_len characters of each at a time.
    Consecutive batches continue the same streams, so the state after one batch is the right start for the next."""
    per_stream = (len(ids) - 1 - offset) // batch_size
    steps = per_stream // seq_len
    if steps < 1:
        raise UserError(f"The text is too short for {batch_size} streams of {seq_len} characters.")
    x = ids[offset:offset + batch_size * per_stream].view(batch_size, per_stream)
    y = ids[offset + 1:offset + 1 + batch_size * per_stream].view(batch_size, per_stream)
    for step in range(steps):
        yield x[:, step * seq_len:(step + 1) * seq_len], y[:, step * seq_len:(step + 1) * seq_len]


def train_charlstm(text: str, config: CharLSTMTrainConfig, on_progress: ProgressFn | None = None,
                   should_stop: Callable[[], bool] = lambda: False, device: torch.device | str = "cpu",
                   init: tuple[CharLSTM, CharTokenizer] | None = None) -> tuple[CharLSTM, CharTokenizer, dict]:
    """Train on the first 90% of `text`; return the model with the lowest validation loss seen, its tokenizer and
    metrics (the same keys as train_chargpt, so the two can be drawn on one plot). `init` continues a model."""
    torch.manual_seed(config.seed)
    if init is not None:
        model, tokenizer = init
        config.model = model.config
    else:
        tokenizer = CharTokenizer.from_text(text)
        config.model.vocab_size = len(tokenizer.chars)
        model = CharLSTM(config.model)
    model.to(device)
    train_text, val_text = split_text(text, config.val_fraction)
    needed = config.batch_size * config.seq_len + 2
    if len(train_text) < needed or len(val_text) < 2:
        small = max(2, len(train_text) // (config.seq_len + 1))
        if len(train_text) < 2 * (config.seq_len + 1) or len(val_text) < 2:
            raise UserError(f"The text is too short: it needs at least {int(2 * (config.seq_len + 1) / (1 - config.val_fraction)) + 2} "
                            f"characters (it has {len(text)}).")
        config.batch_size = min(config.batch_size, small)  # a short text: fewer streams, each still seq_len long
    train_ids = torch.tensor(tokenizer.encode(train_text), dtype=torch.long)
    val_ids = torch.tensor(tokenizer.encode(val_text), dtype=torch.long)

    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, 0.99), weight_decay=config.weight_decay)
    autocast = lambda: training_autocast(device, config.bf16)  # noqa: E731
    generator = torch.Generator().manual_seed(config.seed)

    @torch.no_grad()
    def estimate_val_loss() -> float:
        """Loss on a few random validation segments, each read after 128 characters of warm-up."""
        model.eval()
        warm, length = min(128, len(val_ids) // 4), min(config.seq_len, len(val_ids) - 1)
        warm = max(0, min(warm, len(val_ids) - 1 - length))
        starts = torch.randint(warm, len(val_ids) - length, (config.eval_batches,), generator=generator)
        x = torch.stack([val_ids[s - warm:s + length] for s in starts]).to(device)
        y = torch.stack([val_ids[s - warm + 1:s + length + 1] for s in starts]).to(device)
        logits, _, _ = model(x)
        loss = F.cross_entropy(logits[:, warm:].float().reshape(-1, logits.size(-1)), y[:, warm:].reshape(-1))
        model.train()
        return float(loss)

    def progress_fraction(it: int, elapsed: float) -> float:
        fractions = [it / config.max_iters] + ([elapsed / config.time_budget] if config.time_budget > 0 else [])
        return min(1.0, max(fractions))

    def learning_rate(it: int, fraction: float) -> float:
        if it < config.warmup_iters:
            return config.lr * (it + 1) / config.warmup_iters
        return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * fraction))

    def epochs() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless batches; each pass over the text starts at a new random offset, so the segments' edges move."""
        while True:
            offset = int(torch.randint(config.seq_len, (1,), generator=generator))
            yield from stream_batches(train_ids, config.batch_size, config.seq_len, offset)
            yield None  # a new pass: the streams restart, so the state does too

    best_loss, best_state, history = float("inf"), None, []
    started, it, train_loss, state = time.perf_counter(), 0, float("nan"), None
    batches = epochs()
    model.train()
    while True:
        elapsed = time.perf_counter() - started
        fraction = progress_fraction(it, elapsed)
        last = fraction >= 1.0 or should_stop()
        if it % config.eval_every == 0 or last:
            val_loss = estimate_val_loss()
            history.append({"iter": it, "train_loss": train_loss, "val_loss": val_loss, "elapsed": elapsed})
            if val_loss < best_loss:
                best_loss, best_state = val_loss, {k: v.detach().clone() for k, v in model.state_dict().items()}
            if on_progress:
                eta = elapsed / fraction - elapsed if fraction > 0 else None
                on_progress({"kind": "eval", "iter": it, "max_iters": config.max_iters, "fraction": fraction,
                             "train_loss": train_loss, "val_loss": val_loss, "elapsed": elapsed, "eta": eta})
        if last:
            break
        pair = next(batches)
        if pair is None:  # a new pass over the text: new streams, so a fresh state
            state, pair = None, next(batches)
        x, y = (t.to(device) for t in pair)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(it, fraction)
        with autocast():
            _, loss, state = model(x, y, state)
        state = tuple(s.detach().float() for s in state)  # truncated backpropagation: the values go on, the graph stops
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        train_loss = 0.9 * train_loss + 0.1 * loss.item() if it > 0 and math.isfinite(train_loss) else loss.item()
        it += 1
    seconds = time.perf_counter() - started
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    final = evaluate_text(model, val_ids)
    metrics = {"val_loss": round(final["val_loss"], 4), "n_val_chars": final["n_chars"], "n_train_chars": len(train_text),
               "iters": it, "seconds": round(seconds, 1), "stopped_early": should_stop(), "history": history}
    return model, tokenizer, metrics


# ----------------------------------------------------------------------------------------------------------
# Saving and loading


def save_charlstm(model: CharLSTM, tokenizer: CharTokenizer, folder: str | Path, name: str, metrics: dict,
                  training: dict, training_data: str, command: str | None = None) -> Path:
    card = {
        "name": name,
        "task": "lm",
        "architecture": "charlstm",
        "arch_config": asdict(model.config),
        "labels": [],
        "preprocessing": {"tokenizer": "characters", "chars": tokenizer.chars},
        "training_data": training_data,
        "training": training,
        "metrics": {k: v for k, v in metrics.items() if k != "history"},
        "curve": [{k: entry[k] for k in ("iter", "elapsed", "val_loss")} for entry in metrics.get("history", [])],
    }
    if command:
        card["command"] = command
    return save_model(folder, model, card)


def load_charlstm(folder: str | Path, device: torch.device | str = "cpu") -> tuple[CharLSTM, CharTokenizer, dict]:
    model, card = load_model(folder, device)
    if card["task"] != "lm" or card["architecture"] != "charlstm":
        raise UserError(f"{Path(folder).name} is a {card['task']} model ({card['architecture']}), not a character LSTM.")
    chars = card["preprocessing"].get("chars")
    if not isinstance(chars, str) or len(chars) != model.config.vocab_size:
        raise UserError(f"{Path(folder).name}: the card's character list does not match the model's vocabulary.")
    return model, CharTokenizer(chars), card
