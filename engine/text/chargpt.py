"""A character-level GPT in one file, in the manner of nanoGPT: model, training loop, evaluation, sampling.

Text becomes a sequence of character ids; a stack of transformer blocks (causal self-attention + MLP)
predicts the next character at every position; the loss is the cross-entropy in nats per character.

Two choices differ from nanoGPT, both for fast streaming on a CPU:
- positions are encoded with rotary embeddings (RoPE) instead of a learned table. Attention then depends
  only on how far apart two characters are, so sampling can keep a *rolling* key-value cache of the last
  `block_size` characters and generate forever at a constant cost per character;
- sampling keeps that key-value cache, a ring buffer of block_size slots per layer: each new character
  costs one position through the network (`CharGPT.step`, written with few tensor operations), not a full
  window, and no copying of the cache. `generate(..., use_cache=False)` is the plain re-run-the-window version; within the first
  `block_size` characters the two agree exactly (a unit test checks it).
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from engine.checkpoints import load_model, load_own_state, save_model
from engine.device import Int8Linear, training_autocast
from engine.errors import UserError

ProgressFn = Callable[[dict], None]
MAX_PROMPT_CHARS = 10_000


@dataclass
class CharGPTConfig:
    vocab_size: int = 65
    block_size: int = 128  # characters of context the model sees
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    dropout: float = 0.1


# ----------------------------------------------------------------------------------------------------------
# Characters <-> ids


class CharTokenizer:
    """The vocabulary is the set of characters of the training text, sorted."""

    def __init__(self, chars: str):
        if not chars:
            raise UserError("The text has no characters to learn.")
        self.chars = chars
        self.index = {c: i for i, c in enumerate(chars)}
        # characters the model never saw are replaced by this one (a space when the vocabulary has it)
        self.fallback = self.index.get(" ", 0)

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls("".join(sorted(set(text))))

    def unknown(self, text: str) -> list[str]:
        return sorted(set(text) - set(self.chars))

    def encode(self, text: str) -> list[int]:
        return [self.index.get(c, self.fallback) for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)


# ----------------------------------------------------------------------------------------------------------
# The model


def rotary_tables(positions: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of angle position * 10000^(-2i/head_dim), shape (T, head_dim/2)."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim))
    angles = positions.float()[:, None] * inv_freq[None, :]
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each (even, odd) pair of features of x (B, H, T, D) by its position's angle."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    rotated = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return rotated.flatten(-2).type_as(x)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: CharGPTConfig):
        super().__init__()
        assert config.n_embd % config.n_head == 0, "n_embd must be divisible by n_head"
        self.n_head, self.block_size, self.dropout = config.n_head, config.block_size, config.dropout
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=False)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: list | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache:  # one new position: write it over the oldest slot of the ring, attend to every filled slot
            k_ring, v_ring, filled = cache[:3]
            slot = filled % self.block_size
            k_ring[:, :, slot], v_ring[:, :, slot] = k[:, :, 0], v[:, :, 0]
            cache[2] = filled = filled + 1
            k, v = k_ring[:, :, :min(filled, self.block_size)], v_ring[:, :, :min(filled, self.block_size)]
        elif cache is not None:  # the prompt: keep its last block_size keys and values in a ring buffer
            keep = min(T, self.block_size)
            kv_ring = k.new_zeros(2, B, self.n_head, self.block_size, C // self.n_head)  # keys, values: one buffer
            k_ring, v_ring = kv_ring[0], kv_ring[1]
            k_ring[:, :, :keep], v_ring[:, :, :keep] = k[:, :, -keep:], v[:, :, -keep:]
            cache[:] = [k_ring, v_ring, keep, kv_ring]
        # Keys carry their rotary positions, so attention does not care in which order the ring holds them.
        causal = T > 1  # a single query position may see every cached key
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).contiguous().view(B, T, C))


class Block(nn.Module):
    def __init__(self, config: CharGPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln2 = nn.LayerNorm(config.n_embd)
        self.mlp = nn.Sequential(nn.Linear(config.n_embd, 4 * config.n_embd), nn.GELU(),
                                 nn.Linear(4 * config.n_embd, config.n_embd), nn.Dropout(config.dropout))

    def forward(self, x, cos, sin, cache=None):
        x = x + self.attn(self.ln1(x), cos, sin, cache)
        return x + self.mlp(self.ln2(x))


class CharGPT(nn.Module):
    def __init__(self, config: CharGPTConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.head.weight = self.embed.weight  # weight tying, as in GPT-2
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, start: int = 0,
                caches: list[list[torch.Tensor]] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, vocab) for ids (B, T) at positions start..start+T-1, and the loss if targets are given.
        With `caches` (one list per block), keys and values are appended there for the next call."""
        T = idx.shape[1]
        cos, sin = self.rotary(start, T, idx.device)
        x = self.drop(self.embed(idx))
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, caches[i] if caches is not None else None)
        logits = self.head(self.ln_f(x))
        loss = None if targets is None else F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss


    def step(self, token: int, position: int, caches: list[list]) -> torch.Tensor:
        """Logits (vocab,) of the character after `token`, which sits at `position`; reads and extends the ring
        caches that forward(..., caches=...) made for the prompt. The same maths as forward() for one position,
        in as few tensor operations as possible: at one character per call, the fixed cost of each operation
        (microseconds, whatever its size) matters as much as the arithmetic. The Linear layers are called through
        direct_linear (float or int8 alike), without nn.Module's call machinery. Rotary embedding is one complex
        product, done in place: (x_even + i x_odd) * (cos + i sin)."""
        C, H, block = self.config.n_embd, self.config.n_head, self.config.block_size
        D = C // H
        cos, sin = self.rotary(position, 1, self.embed.weight.device)
        rotation = torch.complex(cos[0], sin[0])  # (D/2,)
        x = self.embed.weight[token].unsqueeze(0)  # (1, C)
        cached = self.__dict__.get("_step_layers")
        if cached is None or cached[0] is not self.blocks[0].attn.qkv:  # once per model: attribute access through
            # nn.Module costs too, dozens of times a character (rebuilt if the layers were swapped, as quantization does)
            layers = [(b.ln1.weight, b.ln1.bias, direct_linear(b.attn.qkv), direct_linear(b.attn.proj), b.ln2.weight,
                       b.ln2.bias, direct_linear(b.mlp[0]), b.mlp[1], direct_linear(b.mlp[2])) for b in self.blocks]
            cached = self.__dict__["_step_layers"] = (self.blocks[0].attn.qkv, layers, direct_linear(self.head))
        _, layers, head = cached
        for (ln1_w, ln1_b, qkv_layer, proj, ln2_w, ln2_b, fc, gelu, out), cache in zip(layers, caches):
            qkv = qkv_layer(F.layer_norm(x, (C,), ln1_w, ln1_b))[0]  # (3C,): q, k, v
            torch.view_as_complex(qkv[: 2 * C].view(2 * H, D // 2, 2)).mul_(rotation)  # rotate q and k in place
            k_ring, v_ring, filled, kv_ring = cache  # k_ring, v_ring: (1, H, block, D) views of kv_ring
            kv_ring[:, 0, :, filled % block] = qkv[C:].view(2, H, D)  # this position's key and value, at once
            cache[2] = filled = filled + 1
            n = min(filled, block)
            y = F.scaled_dot_product_attention(qkv[:C].view(1, H, 1, D), k_ring[:, :, :n], v_ring[:, :, :n])
            x = x + proj(y.view(1, C))
            x = x + out(gelu(fc(F.layer_norm(x, (C,), ln2_w, ln2_b))))
        return head(F.layer_norm(x, (C,), self.ln_f.weight, self.ln_f.bias))[0]

    def rotary(self, start: int, length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows start..start+length-1 of the cos/sin tables, computed once (and regrown when sampling runs long):
        recomputing them for every sampled character would cost more than the attention itself."""
        cached = self.__dict__.get("_rotary_cache")
        if cached is None or cached[0].shape[0] < start + length or cached[0].device != device:
            size = max(4 * self.config.block_size, 2 * (start + length))
            cached = rotary_tables(torch.arange(size, device=device), self.config.n_embd // self.config.n_head)
            self.__dict__["_rotary_cache"] = cached
        return cached[0][start:start + length], cached[1][start:start + length]

    # Saved as float16 (half the bytes, a change in loss of about 1e-4 nats), and the output layer, which
    # shares its matrix with the embedding, only once: loading casts back to float32 and ties it again.
    def saved_state(self) -> dict[str, torch.Tensor]:
        return {k: v.half() if v.is_floating_point() else v for k, v in self.state_dict().items() if k != "head.weight"}

    def load_saved_state(self, state: dict[str, torch.Tensor]) -> None:
        load_own_state(self, state)



class StepGraph(nn.Module):
    """CharGPT.step with shapes that never change, so that TorchScript can record it once and replay it as one
    graph (see trace_step). Every step attends to all block_size slots of the ring, a mask (0 or -inf) hiding
    the slots not written yet, and the character, its position and its ring slot arrive together as one tensor
    `where` = [token, position, slot]. The maths is step()'s; `rings` are the kv_ring buffers forward() made."""

    def __init__(self, model: CharGPT, positions: int = 8192):
        super().__init__()
        self.model = model
        config = model.config
        self.C, self.H, self.D = config.n_embd, config.n_head, config.n_embd // config.n_head
        cos, sin = rotary_tables(torch.arange(positions, device=model.embed.weight.device), self.D)
        self.register_buffer("rotations", torch.complex(cos, sin))  # (positions, D/2): row p rotates position p

    def forward(self, where: torch.Tensor, mask: torch.Tensor, rings: list[torch.Tensor]) -> torch.Tensor:
        C, H, D, model = self.C, self.H, self.D, self.model
        token, position, slot = where[0:1], where[1:2], where[2:3]
        rotation = self.rotations.index_select(0, position)[0]
        mask.index_fill_(3, slot, 0.0)  # from now on this slot holds a key worth attending to
        x = F.embedding(token, model.embed.weight)  # (1, C)
        for block, ring in zip(model.blocks, rings):
            qkv = block.attn.qkv(F.layer_norm(x, (C,), block.ln1.weight, block.ln1.bias))[0]  # (3C,): q, k, v
            qk = torch.view_as_real(torch.view_as_complex(qkv[: 2 * C].view(2 * H, D // 2, 2)) * rotation).reshape(2 * C)
            ring.index_copy_(3, slot, torch.cat((qk[C:], qkv[2 * C:])).view(2, 1, H, 1, D))  # rotated key, value
            y = F.scaled_dot_product_attention(qk[:C].view(1, H, 1, D), ring[0], ring[1], attn_mask=mask)
            x = x + block.attn.proj(y.view(1, C))
            x = x + block.mlp[2](block.mlp[1](block.mlp[0](F.layer_norm(x, (C,), block.ln2.weight, block.ln2.bias))))
        return model.head(F.layer_norm(x, (C,), model.ln_f.weight, model.ln_f.bias))[0]


def empty_mask(model: CharGPT, filled: int) -> torch.Tensor:
    """StepGraph's attention mask after a prompt of `filled` characters (at most block_size)."""
    mask = torch.full((1, 1, 1, model.config.block_size), float("-inf"), device=model.embed.weight.device)
    mask[..., :filled] = 0.0
    return mask


def trace_step(model: CharGPT) -> torch.jit.ScriptModule | None:
    """StepGraph as one TorchScript graph, or None where the graph would not do what StepGraph does (a tracer
    records one run: a Python branch on a tensor's value would be frozen into it), checked over more characters
    than the ring holds. Why: one character is about sixty small tensor operations; called from Python each
    pays microseconds of overhead and, in a web server, a trip to win back the interpreter lock. The graph runs
    them in C++: shakespeare, int8, about twice the characters per second of step() (2026-12-07,
    benchmarks/text_speed.py --compare-eager). torch.compile does worse: it splits the step at every int8 Linear
    (slower than step()), and compiled in float32 (42 s to compile) it is no faster than the float32 graph, a third
    of the int8 graph's speed. If a later PyTorch no longer traces, this returns None and step() samples."""
    import warnings

    block = model.config.block_size
    start = min(3, block)  # a prompt of this many characters, then more characters than the ring holds
    prompt = torch.arange(start, device=model.embed.weight.device).remainder(model.config.vocab_size).unsqueeze(0)
    tokens = [(7 * i + 1) % model.config.vocab_size for i in range(block + 8)]
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notes about Python values: the check below is what counts
            step = StepGraph(model).eval()
            caches = [[] for _ in model.blocks]
            model(prompt, caches=caches)
            rings, mask = [cache[3] for cache in caches], empty_mask(model, start)  # the eager module's state
            graph_rings, graph_mask = [ring.clone() for ring in rings], mask.clone()  # and the graph's own copy
            example = torch.tensor([tokens[0], start, start % block])
            graph = torch.jit.trace(step, (example, mask.clone(), [ring.clone() for ring in rings]), check_trace=False)
            for i, token in enumerate(tokens):  # also TorchScript's optimizing first runs, here rather than on a click
                where = torch.tensor([token, start + i, (start + i) % block])
                if not torch.allclose(graph(where, graph_mask, graph_rings), step(where, mask, rings), atol=1e-5):
                    return None
    except Exception:  # noqa: BLE001 - an untraceable model still samples, eagerly
        return None
    return graph


def build_chargpt(arch_config: dict) -> CharGPT:
    return CharGPT(CharGPTConfig(**arch_config))


# ----------------------------------------------------------------------------------------------------------
# Sampling


def direct_linear(layer: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The layer's maths without nn.Module's call machinery, which costs as much as the product itself for one
    character: F.linear for a float layer; for a layer that dynamic quantization made int8, the same operator
    its forward() calls. Anything else is called as it is."""
    if type(layer) is nn.Linear:
        return functools.partial(F.linear, weight=layer.weight, bias=layer.bias)
    if type(layer) is Int8Linear and layer._packed_params.dtype == torch.qint8:
        operator, packed, reduce_range = (torch.ops.quantized.linear_dynamic.default,
                                          layer._packed_params._packed_params, layer.reduce_range)
        return lambda x: operator(x, packed, reduce_range)
    return layer


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Probabilities over the vocabulary after temperature, top-k and nucleus (top-p) filtering."""
    logits = logits.float() / max(temperature, 1e-5)
    if 0 < top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = F.softmax(logits, dim=-1)
    if 0 < top_p < 1:
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(0) - sorted_probs < top_p  # always keeps the most likely character
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
        probs = probs / probs.sum()
    return probs


@torch.inference_mode()
def generate(model: CharGPT, tokenizer: CharTokenizer, prompt: str, max_new_chars: int = 500,
             temperature: float = 0.8, top_k: int = 0, top_p: float = 1.0, seed: int = 0, use_cache: bool = True,
             should_stop: Callable[[], bool] = lambda: False,
             step_graph: torch.jit.ScriptModule | None = None) -> Iterator[tuple[str, float]]:
    """Yield (character, its probability under the unfiltered model) one at a time. The loop checks
    `should_stop()` before every character, so a stop button takes effect at once. With `step_graph` (from
    trace_step) each character goes through the graph instead of step(): the same numbers, faster."""
    model.eval()
    device = next(model.parameters()).device
    block = model.config.block_size
    ids = tokenizer.encode(prompt[-MAX_PROMPT_CHARS:]) or [tokenizer.fallback]
    generator = torch.Generator().manual_seed(int(seed))
    caches = [[] for _ in model.blocks] if use_cache else None
    context = ids[-block:]
    logits, _ = model(torch.tensor([context], device=device), caches=caches)
    last, position = logits[0, -1], len(context)
    if step_graph is not None and (not use_cache or position + int(max_new_chars) > step_graph.rotations.shape[0]):
        step_graph = None  # its rotation table ends before this text would
    if step_graph is not None:
        rings, mask = [cache[3] for cache in caches], empty_mask(model, len(context))
    for _ in range(int(max_new_chars)):
        if should_stop():
            return
        probs = filter_logits(last, temperature, top_k, top_p).cpu()
        next_id = int(torch.multinomial(probs, 1, generator=generator))
        yield tokenizer.chars[next_id], float(F.softmax(last.float(), dim=-1)[next_id])
        ids.append(next_id)
        if step_graph is not None:
            last = step_graph(torch.tensor([next_id, position, position % block], device=device), mask, rings)
            position += 1
        elif use_cache:
            last = model.step(next_id, position, caches)
            position += 1
        else:
            logits, _ = model(torch.tensor([ids[-block:]], device=device))
            last = logits[0, -1]


# ----------------------------------------------------------------------------------------------------------
# Evaluation: nats per character on a text


@torch.no_grad()
def evaluate_text(model: CharGPT, ids: torch.Tensor, batch_size: int = 32) -> dict:
    """Mean cross-entropy per character over `ids`, each character after the first predicted exactly once.

    Windows of block_size overlap by half: the first window scores all its positions, later ones only the
    positions the previous window did not score, so nearly every scored character has at least
    block_size/2 characters of context (the usual sliding-window evaluation of language models)."""
    model.eval()
    device = next(model.parameters()).device
    n = ids.numel() - 1  # characters to predict
    if n < 1:
        raise UserError("The evaluation text needs at least 2 characters.")
    length = min(model.config.block_size, n)
    starts = list(range(0, n - length + 1, max(1, length // 2)))
    if starts[-1] != n - length:
        starts.append(n - length)  # the last window ends exactly at the end of the text
    total, count, scored_until = 0.0, 0, 0
    for first in range(0, len(starts), batch_size):
        chunk = starts[first:first + batch_size]
        x = torch.stack([ids[s:s + length] for s in chunk]).to(device)
        y = torch.stack([ids[s + 1:s + 1 + length] for s in chunk]).to(device)
        logits, _ = model(x)
        losses = F.cross_entropy(logits.float().transpose(1, 2), y, reduction="none").cpu()
        for row, s in enumerate(chunk):
            skip = scored_until - s  # positions the previous window already scored
            total += float(losses[row, skip:].sum())
            count += length - skip
            scored_until = s + length
    return {"val_loss": total / count, "n_chars": count}


# ----------------------------------------------------------------------------------------------------------
# Training


@dataclass
class CharTrainConfig:
    model: CharGPTConfig
    max_iters: int = 4500
    time_budget: float = 0.0  # seconds; 0 = no limit. The learning-rate schedule follows whichever ends first
    batch_size: int = 32
    lr: float = 2e-3  # small models like a larger learning rate than nanoGPT's 1e-3
    min_lr: float = 2e-4  # cosine decay to this
    warmup_iters: int = 200
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 250
    eval_batches: int = 10  # random validation windows per progress estimate (the final score uses all of it)
    val_fraction: float = 0.1  # the last 10% of the text is held out
    seed: int = 1337
    bf16: bool = True  # bfloat16 autocast where the hardware runs it fast (the weights stay float32)


def split_text(text: str, val_fraction: float = 0.1) -> tuple[str, str]:
    cut = int(len(text) * (1 - val_fraction))
    return text[:cut], text[cut:]


def train_chargpt(text: str, config: CharTrainConfig, on_progress: ProgressFn | None = None,
                  should_stop: Callable[[], bool] = lambda: False, device: torch.device | str = "cpu",
                  init: tuple[CharGPT, CharTokenizer] | None = None) -> tuple[CharGPT, CharTokenizer, dict]:
    """Train on the first 90% of `text`; return the model with the lowest validation loss seen, its
    tokenizer and metrics. `init` continues from an existing model (its vocabulary is kept)."""
    torch.manual_seed(config.seed)
    if init is not None:
        model, tokenizer = init
        config.model = model.config
    else:
        tokenizer = CharTokenizer.from_text(text)
        config.model.vocab_size = len(tokenizer.chars)
        model = CharGPT(config.model)
    model.to(device)
    block = config.model.block_size
    train_text, val_text = split_text(text, config.val_fraction)
    if len(train_text) < block + 2 or len(val_text) < 2:
        raise UserError(f"The text is too short: it needs at least {int((block + 2) / (1 - config.val_fraction)) + 1} characters "
                        f"for a context of {block} (it has {len(text)}).")
    train_ids = torch.tensor(tokenizer.encode(train_text), dtype=torch.long)
    val_ids = torch.tensor(tokenizer.encode(val_text), dtype=torch.long)
    val_block = min(block, len(val_ids) - 1)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.lr, betas=(0.9, 0.99))
    autocast = lambda: training_autocast(device, config.bf16)  # noqa: E731
    generator = torch.Generator().manual_seed(config.seed)

    def batch(ids: torch.Tensor, size: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(len(ids) - length, (size,), generator=generator)
        x = torch.stack([ids[s:s + length] for s in starts])
        y = torch.stack([ids[s + 1:s + 1 + length] for s in starts])
        return x.to(device), y.to(device)

    @torch.no_grad()
    def estimate_val_loss() -> float:
        model.eval()
        losses = []
        for _ in range(config.eval_batches):
            x, y = batch(val_ids, config.batch_size, val_block)
            with autocast():
                losses.append(float(model(x, y)[1]))
        model.train()
        return sum(losses) / len(losses)

    def progress_fraction(it: int, elapsed: float) -> float:
        fractions = [it / config.max_iters] + ([elapsed / config.time_budget] if config.time_budget > 0 else [])
        return min(1.0, max(fractions))

    def learning_rate(it: int, fraction: float) -> float:
        if it < config.warmup_iters:
            return config.lr * (it + 1) / config.warmup_iters
        return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * fraction))

    best_loss, best_state, history = float("inf"), None, []
    started, it, train_loss = time.perf_counter(), 0, float("nan")
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
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(it, fraction)
        x, y = batch(train_ids, config.batch_size, block)
        with autocast():
            _, loss = model(x, y)
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


def save_chargpt(model: CharGPT, tokenizer: CharTokenizer, folder: str | Path, name: str, metrics: dict,
                 training: dict, training_data: str, command: str | None = None) -> Path:
    card = {
        "name": name,
        "task": "lm",
        "architecture": "chargpt",
        "arch_config": asdict(model.config),
        "labels": [],
        "preprocessing": {"tokenizer": "characters", "chars": tokenizer.chars},
        "training_data": training_data,
        "training": training,
        "metrics": {k: v for k, v in metrics.items() if k != "history"},
    }
    if command:
        card["command"] = command
    return save_model(folder, model, card)


def load_chargpt(folder: str | Path, device: torch.device | str = "cpu") -> tuple[CharGPT, CharTokenizer, dict]:
    model, card = load_model(folder, device)
    if card["task"] != "lm" or card["architecture"] != "chargpt":
        raise UserError(f"{Path(folder).name} is a {card['task']} model, not a character-level language model.")
    chars = card["preprocessing"].get("chars")
    if not isinstance(chars, str) or len(chars) != model.config.vocab_size:
        raise UserError(f"{Path(folder).name}: the card's character list does not match the model's vocabulary.")
    return model, CharTokenizer(chars), card
