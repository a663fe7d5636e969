"""Text generation behind one interface: minilab's character GPT, its character LSTM and any Hugging Face causal LM.

`stream(prompt, ...)` yields (piece of text, its probability) as each piece is sampled, so the UI can show
the text growing and colour each piece by how sure the model was. Generation stops when `should_stop()`
turns true (the stop button), checked before every piece.
"""
from __future__ import annotations

import math

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from engine.errors import UserError
from engine.safe_import import import_names
from engine.text.chargpt import CharGPT, CharTokenizer, evaluate_text, filter_logits, generate, load_chargpt, trace_step
from engine.text.charlstm import CharLSTM, load_charlstm, step_layers
from engine.text.charlstm import evaluate_text as evaluate_lstm_text
from engine.text.charlstm import generate as generate_lstm

MAX_NEW_TOKENS = 5_000
MAX_PROMPT_CHARS = 10_000


@dataclass
class SamplingSettings:
    max_new_tokens: int = 300
    temperature: float = 0.8
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    seed: int = 0

    def validate(self) -> "SamplingSettings":
        for name, value in vars(self).items():
            if isinstance(value, float) and not math.isfinite(value):
                raise UserError(f"{name.replace('_', ' ')} must be a finite number (got {value}).")
        if not 1 <= int(self.max_new_tokens) <= MAX_NEW_TOKENS:
            raise UserError(f"Maximum length must be between 1 and {MAX_NEW_TOKENS:,} (got {self.max_new_tokens}).")
        if not 0.01 <= float(self.temperature) <= 5:
            raise UserError(f"Temperature must be between 0.01 and 5 (got {self.temperature}).")
        if not 0 <= int(self.top_k) <= 100_000:
            raise UserError(f"top-k must be 0 (off) or a positive number of candidates (got {self.top_k}).")
        if not 0 < float(self.top_p) <= 1:
            raise UserError(f"top-p must be in (0, 1] (got {self.top_p}).")
        if not 0 <= int(self.seed) < 2**63:
            raise UserError(f"The seed must be a non-negative whole number (got {self.seed}).")
        return self


class CharLM:
    """A shipped or session-trained character GPT."""

    kind = "characters"

    def __init__(self, model: CharGPT, tokenizer: CharTokenizer, card: dict | None = None, name: str = "",
                 step_graph: torch.jit.ScriptModule | None = None):
        self.model, self.tokenizer, self.card, self.name = model.eval(), tokenizer, card or {}, name
        self.step_graph = step_graph  # one character as one TorchScript graph (chargpt.trace_step), or None

    def unknown_characters(self, prompt: str) -> list[str]:
        return self.tokenizer.unknown(prompt)

    def stream(self, prompt: str, settings: SamplingSettings,
               should_stop: Callable[[], bool] = lambda: False) -> Iterator[tuple[str, float]]:
        settings.validate()
        yield from generate(self.model, self.tokenizer, prompt[-MAX_PROMPT_CHARS:], int(settings.max_new_tokens),
                            float(settings.temperature), int(settings.top_k), float(settings.top_p), int(settings.seed),
                            should_stop=should_stop, step_graph=self.step_graph)

    def evaluate(self, text: str) -> dict:
        ids = torch.tensor(self.tokenizer.encode(text), dtype=torch.long)
        result = evaluate_text(self.model, ids)
        return {**result, "unknown_chars": sum(1 for c in text if c not in self.tokenizer.index)}


class CharLSTMLM:
    """A shipped or session-trained character LSTM: the same interface as CharLM."""

    kind = "characters"

    def __init__(self, model: CharLSTM, tokenizer: CharTokenizer, card: dict | None = None, name: str = "",
                 step_layers: torch.nn.ModuleList | None = None):
        self.model, self.tokenizer, self.card, self.name = model.eval(), tokenizer, card or {}, name
        self.step_layers = step_layers  # each layer's gates as one Linear (charlstm.step_layers), maybe int8

    def unknown_characters(self, prompt: str) -> list[str]:
        return self.tokenizer.unknown(prompt)

    def stream(self, prompt: str, settings: SamplingSettings,
               should_stop: Callable[[], bool] = lambda: False) -> Iterator[tuple[str, float]]:
        settings.validate()
        yield from generate_lstm(self.model, self.tokenizer, prompt[-MAX_PROMPT_CHARS:], int(settings.max_new_tokens),
                                 float(settings.temperature), int(settings.top_k), float(settings.top_p), int(settings.seed),
                                 should_stop=should_stop, layers=self.step_layers)

    def evaluate(self, text: str) -> dict:
        ids = torch.tensor(self.tokenizer.encode(text), dtype=torch.long)
        result = evaluate_lstm_text(self.model, ids)
        return {**result, "unknown_chars": sum(1 for c in text if c not in self.tokenizer.index)}


def load_char_lm(folder: str | Path, device: torch.device | str = "cpu", name: str = "",
                 quantize: bool | None = None, trace: bool = True) -> CharLM | CharLSTMLM:
    """A saved character model ready to sample. A GPT: on the CPU its Linear layers run in int8 unless
    quantize=False (twice the characters per second; the validation loss moves by about 0.001 nats), and each
    sampled character runs as one TorchScript graph unless trace=False. An LSTM runs as it was trained."""
    from engine.checkpoints import read_card
    from engine.device import quantize_for_cpu

    if read_card(folder)["architecture"] == "charlstm":  # sampling steps through fused layers, int8 on the CPU
        model, tokenizer, card = load_charlstm(folder, device)
        layers = step_layers(model)
        if quantize if quantize is not None else torch.device(device).type == "cpu":
            layers = quantize_for_cpu(layers)
        return CharLSTMLM(model, tokenizer, card, name or card["name"], layers)
    model, tokenizer, card = load_chargpt(folder, device)
    on_cpu = torch.device(device).type == "cpu"
    if quantize if quantize is not None else on_cpu:
        model = quantize_for_cpu(model)
    step_graph = trace_step(model) if trace and on_cpu else None
    return CharLM(model, tokenizer, card, name or card["name"], step_graph)


class HFCausalLM:
    """Any Hugging Face causal language model (a hub id in the local cache, or a local folder), sampled
    token by token with its key-value cache and the same controls as the character model."""

    kind = "tokens"

    def __init__(self, model_id: str, device: torch.device | str = "cpu", local_files_only: bool = True):
        AutoModelForCausalLM, AutoTokenizer = import_names("transformers", "AutoModelForCausalLM", "AutoTokenizer")

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_id, local_files_only=local_files_only)
            self.model = AutoModelForCausalLM.from_pretrained(model_id, local_files_only=local_files_only).to(device).eval()
        except OSError as error:
            raise UserError(f"{model_id} could not be loaded: {str(error).splitlines()[0]}") from error
        self.name = model_id
        self.context = int(getattr(self.model.config, "n_positions", None) or getattr(self.model.config, "max_position_embeddings", 1024))

    def unknown_characters(self, prompt: str) -> list[str]:
        return []  # byte-level tokenizers can encode anything

    @torch.no_grad()
    def stream(self, prompt: str, settings: SamplingSettings,
               should_stop: Callable[[], bool] = lambda: False) -> Iterator[tuple[str, float]]:
        settings.validate()
        device = next(self.model.parameters()).device
        ids = self.tokenizer(prompt[-MAX_PROMPT_CHARS:], return_tensors="pt")["input_ids"][:, -(self.context // 2):]
        if ids.shape[1] == 0:
            start = self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.tokenizer.eos_token_id
            ids = torch.tensor([[start or 0]])
        generator = torch.Generator().manual_seed(int(settings.seed))
        output = self.model(input_ids=ids.to(device), use_cache=True)
        generated: list[int] = []
        shown = ""
        for _ in range(min(int(settings.max_new_tokens), self.context - ids.shape[1])):
            if should_stop():
                return
            last = output.logits[0, -1]
            probs = filter_logits(last, float(settings.temperature), int(settings.top_k), float(settings.top_p)).cpu()
            next_id = int(torch.multinomial(probs, 1, generator=generator))
            generated.append(next_id)
            text = self.tokenizer.decode(generated, skip_special_tokens=True)
            piece, shown = text[len(shown):], text  # decode the whole tail: multi-byte characters come out whole
            yield piece, float(F.softmax(last.float(), dim=-1)[next_id])
            if next_id == self.tokenizer.eos_token_id:
                return
            output = self.model(input_ids=torch.tensor([[next_id]], device=device), past_key_values=output.past_key_values,
                                use_cache=True)

    @torch.no_grad()
    def evaluate(self, text: str) -> dict:
        """Nats per character (not per token), so that it compares with the character models."""
        device = next(self.model.parameters()).device
        ids = self.tokenizer(text, return_tensors="pt")["input_ids"][0]
        total, window = 0.0, self.context
        for start in range(0, max(1, len(ids) - 1), window):
            chunk = ids[start:start + window + 1].unsqueeze(0).to(device)
            if chunk.shape[1] < 2:
                break
            logits = self.model(input_ids=chunk[:, :-1]).logits
            total += float(F.cross_entropy(logits[0].float(), chunk[0, 1:], reduction="sum"))
        return {"val_loss": total / max(1, len(text)), "n_chars": len(text), "unknown_chars": 0}
