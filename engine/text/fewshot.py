"""Few-shot text classification: a handful of examples per label (2 to 32) -> a classifier in seconds.

Two ways, both on all-MiniLM-L6-v2 sentence vectors (unit length, so similarity is a dot product):

- "prototypes" (instant): each label's prototype is the mean direction of its examples, pulled towards the
  label's own zero-shot vector (its name in a few sentences, engine.text.zeroshot) by `prior`. The name is
  one more, very clean, example: with 8 examples a label it helps, with 2 it matters a lot. A text goes to
  the nearest prototype (softmax over the cosines / temperature).
- "setfit" (about 25 s): SetFit-style (Tunstall et al., 2022) contrastive fine-tuning of the encoder, then the
  same prototypes on the tuned vectors. SetFit trains on pairs, "these two share a label" (pull together) or
  not (push apart). With so few examples every step can use every pair at once: all examples (and every
  label's name sentence, so the names keep their meaning) go through the encoder together, and the loss is
  the mean squared gap between each pair's cosine and its target (1 same label, 0 different), positives and
  negatives weighted equally. LoRA adapters do the learning (the encoder's 22.7M weights stay frozen), so the
  model saves in 1 MB and loads like every other fine-tune.

Shown for every model: leave-one-out accuracy (each example classified by prototypes built without it) and
the confusion matrix behind it, and for each prediction the nearest training example.
Both save as the usual `minilm-classifier` folder (a head on normalised sentence vectors), so the Text tab,
`python -m engine eval text` and a download all work as for any fine-tune.
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from engine.errors import UserError
from engine.text.zeroshot import ZeroShotClassifier, ZeroShotConfig, label_hypotheses, parse_labels

ProgressFn = Callable[[dict], None]
MIN_PER_LABEL = 2  # one to learn from while another is left out
MAX_PER_LABEL = 32  # few-shot; more goes to the Fine-tune tab's LoRA training
EXAMPLES_FILE = "examples.tsv"  # kept in the model folder: each prediction shows its nearest example


@dataclass
class FewShotConfig:
    method: str = "prototypes"  # "prototypes" (instant, frozen encoder) or "setfit" (contrastive fine-tuning)
    prior: float = 1.0  # weight of a label's name (its zero-shot vector) in its prototype; 0 = examples alone
    temperature: float = 0.05  # softmax over cosines
    template: str = "This text is about {}."  # the label-name sentences (as in zero-shot)
    time_budget: float = 30.0  # setfit: seconds from the start to a saved model (training gets what is left)
    max_steps: int = 50  # setfit: at most this many optimizer steps (each sees every pair of examples)
    lr: float = 1e-3  # setfit: adapters (AdamW); 40 steps at 1e-3 beat 20 at 2e-3 on the dev draws (97.4 vs 95.6%)
    lora_r: int = 8
    lora_alpha: int = 16
    batch_size: int = 64  # setfit: sequences per step (all of them when fewer)
    max_tokens: int = 64  # setfit: training truncates here (news items and reviews are shorter)
    bf16: bool = True  # setfit: bfloat16 autocast where the CPU runs it fast (engine.device.bfloat16_is_fast)
    seed: int = 0

    def validate(self) -> "FewShotConfig":
        if self.method not in ("prototypes", "setfit"):
            raise UserError(f"Unknown few-shot method {self.method!r}; choose prototypes or setfit.")
        if self.prior < 0 or not 0 < self.temperature <= 10:
            raise UserError("The label-name weight must be at least 0 and the temperature positive.")
        if not 1 <= self.time_budget <= 600:
            raise UserError(f"The time budget must be between 1 and 600 seconds, got {self.time_budget}.")
        if self.max_steps < 0 or self.lr <= 0 or self.lora_r < 1 or self.batch_size < 4 or self.max_tokens < 8:
            raise UserError("Steps, learning rate, LoRA rank, batch size and token length must be positive.")
        ZeroShotConfig(template=self.template).validate()
        return self


# ---- the examples --------------------------------------------------------------------------------------------


def parse_examples(text: str) -> tuple[list[str], list[str]]:
    """Pasted `label<TAB>text` lines -> texts, labels. A first line `label<TAB>text` is read as a header."""
    texts, labels = [], []
    for number, line in enumerate((text or "").splitlines(), start=1):
        if not line.strip():
            continue
        if "\t" not in line:
            raise UserError(f"Example line {number} has no tab: write `label<TAB>text` ({line.strip()[:40]!r}). "
                            "Copying two columns from a spreadsheet gives exactly that.")
        label, body = (part.strip() for part in line.split("\t", 1))
        if number == 1 and label.lower() == "label" and body.lower() in ("text", "sentence"):
            continue
        if not label or not body:
            raise UserError(f"Example line {number} has an empty {'label' if not label else 'text'}.")
        texts.append(" ".join(body.split("\t")))
        labels.append(" ".join(label.split()))
    if not texts:
        raise UserError("Paste some examples first: one `label<TAB>text` per line, 2 to 32 for each label.")
    return texts, labels


def read_examples(path: str | Path) -> tuple[list[str], list[str], list[str]]:
    """A CSV/TSV with text and label columns -> texts, labels, skipped rows."""
    from engine.text.data import read_labelled_text

    table = read_labelled_text(path)
    return table.texts, table.labels, table.skipped


def check_examples(texts: list[str], labels: list[str], typed: str | list[str] | None = None) -> list[str]:
    """The label names, in the typed order (else in order of appearance), after refusing examples that cannot
    make a few-shot classifier: a typed label with no example, an example's label that was not typed
    (counted), fewer than 2 labels or more than 100, fewer than 2 or more than 32 examples for a label."""
    if typed:
        names = parse_labels(typed)
        by_lower = {name.lower(): name for name in names}
        unknown: dict[str, int] = {}
        for i, label in enumerate(labels):
            if label.lower() in by_lower:
                labels[i] = by_lower[label.lower()]
            else:
                unknown[label] = unknown.get(label, 0) + 1
        if unknown:
            shown = ", ".join(f"{name!r} ({n})" for name, n in sorted(unknown.items(), key=lambda item: -item[1])[:10])
            raise UserError(f"{sum(unknown.values())} example(s) have a label that is not among your labels "
                            f"({', '.join(names)}): {shown}. Add the label, or fix the examples.")
        missing = [name for name in names if name not in labels]
        if missing:
            raise UserError(f"No example for {', '.join(repr(m) for m in missing)}: give each label at least "
                            f"{MIN_PER_LABEL} examples.")
    else:
        names = list(dict.fromkeys(labels))
        if len(names) < 2:
            raise UserError(f"The examples have {len(names)} label ({', '.join(names) or 'none'}); a classifier needs "
                            "at least 2.")
        parse_labels(names)  # at most 100 distinct, sensible names
    counts = {name: labels.count(name) for name in names}
    few = [f"{name!r} ({n})" for name, n in counts.items() if n < MIN_PER_LABEL]
    if few:
        raise UserError(f"Each label needs at least {MIN_PER_LABEL} examples (one is left out to check the others); "
                        f"too few for {', '.join(few[:10])}.")
    many = [f"{name!r} ({n})" for name, n in counts.items() if n > MAX_PER_LABEL]
    if many:
        raise UserError(f"Few-shot takes at most {MAX_PER_LABEL} examples a label; {', '.join(many[:10])} have more. "
                        "For larger files use the Fine-tune tab (or `python -m engine finetune text`).")
    return names


# ---- the classifier ------------------------------------------------------------------------------------------


def normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-9)


def meaningful(name: str) -> bool:
    """Whether a label's name can say what it means: "Sports" can, "0" or "3" cannot (no letters)."""
    return any(ch.isalpha() for ch in name)


def prototypes(vectors: np.ndarray, y: np.ndarray, label_vectors: np.ndarray, prior: float | np.ndarray) -> np.ndarray:
    """(C, D) unit prototypes: each label's mean example direction plus `prior` times its name's vector
    (`prior` may be one weight per label)."""
    means = np.stack([normalise(vectors[y == k].mean(0)) for k in range(len(label_vectors))])
    return normalise(means + np.reshape(prior, (-1, 1)) * label_vectors)


def leave_one_out(vectors: np.ndarray, y: np.ndarray, label_vectors: np.ndarray, prior: float | np.ndarray) -> np.ndarray:
    """Each example's predicted class by prototypes built from all the other examples."""
    predicted = np.zeros(len(y), dtype=int)
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        predicted[i] = int((prototypes(vectors[keep], y[keep], label_vectors, prior) @ vectors[i]).argmax())
    return predicted


class FewShotClassifier:
    """Prototypes on (possibly tuned) unit sentence vectors, with the examples kept for nearest-example lookup."""

    def __init__(self, labels: list[str], texts: list[str], example_labels: list[str], vectors: np.ndarray,
                 label_vectors: np.ndarray, config: FewShotConfig, embed: Callable[[list[str]], np.ndarray]):
        self.labels, self.texts, self.config, self.embed = labels, texts, config, embed
        self.y = np.array([labels.index(label) for label in example_labels])
        self.vectors, self.label_vectors = vectors, label_vectors
        self.prior = np.array([config.prior if meaningful(name) else 0.0 for name in labels])  # names like "2" say nothing
        self.prototypes = prototypes(vectors, self.y, label_vectors, self.prior)

    def predict_proba(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(N, C) probabilities and (N,) index of each text's nearest training example."""
        from engine.text.zeroshot import softmax

        x = self.embed(texts)
        return softmax(x @ self.prototypes.T / self.config.temperature), (x @ self.vectors.T).argmax(1)

    def predict(self, text: str) -> dict[str, float]:
        probs, _ = self.predict_proba([text])
        return dict(zip(self.labels, map(float, probs[0])))

    def report(self) -> dict:
        """Leave-one-out accuracy, its confusion matrix (rows: true label) and per-label accuracy."""
        predicted = leave_one_out(self.vectors, self.y, self.label_vectors, self.prior)
        k = len(self.labels)
        confusion = [[int(((self.y == a) & (predicted == b)).sum()) for b in range(k)] for a in range(k)]
        return {"loo_accuracy": round(float((predicted == self.y).mean()), 4), "n_examples": len(self.y),
                "confusion": confusion, "classes": self.labels,
                "per_class_accuracy": {self.labels[a]: round(confusion[a][a] / max(1, sum(confusion[a])), 4) for a in range(k)},
                "loo_predicted": [self.labels[p] for p in predicted]}

    def head(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The prototypes as a linear head on unit vectors: logits = prototypes . x / temperature."""
        weight = torch.from_numpy(self.prototypes / self.config.temperature).float()
        return weight, torch.zeros(len(self.labels))


def label_sentence_vectors(labels: list[str], template: str, embed: Callable | None = None) -> tuple[np.ndarray, dict]:
    """Each label's zero-shot vector (engine.text.zeroshot, its templates averaged), by `embed` when given
    (a tuned encoder), and the hypothesis sentences behind it."""
    if embed is None:
        zero = ZeroShotClassifier(labels, config=ZeroShotConfig(template=template))
        return zero.label_vectors, zero.hypotheses
    hypotheses = label_hypotheses(labels, {}, ZeroShotConfig(template=template).validate())
    sentences = [s for label in labels for s in hypotheses[label]]
    vectors = embed(sentences)  # one pass for all; every label has as many sentences
    return normalise(vectors.reshape(len(labels), -1, vectors.shape[1]).mean(1)), hypotheses


def build_prototypes(texts: list[str], labels: list[str], names: list[str], config: FewShotConfig) -> FewShotClassifier:
    """The instant classifier: frozen all-MiniLM-L6-v2 vectors (int8 on a CPU), prototypes with the name prior."""
    from engine.text.zeroshot import embed

    label_vectors, _ = label_sentence_vectors(names, config.template)
    return FewShotClassifier(names, texts, labels, embed(texts), label_vectors, config, embed)


# ---- SetFit: contrastive fine-tuning of the encoder --------------------------------------------------------------


def pair_loss(vectors: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SetFit's CosineSimilarityLoss over every pair at once: (cos - [same label])^2, positives and negatives
    averaged separately and then together, so the many negative pairs do not drown the few positive ones."""
    unit = F.normalize(vectors, dim=-1)
    cos = unit @ unit.T
    same = (y[:, None] == y[None, :]).float()
    off_diagonal = 1 - torch.eye(len(y), device=vectors.device)
    positive, negative = same * off_diagonal, (1 - same)
    error = (cos - same) ** 2
    pos = (error * positive).sum() / positive.sum().clamp(min=1)
    neg = (error * negative).sum() / negative.sum().clamp(min=1)
    return 0.5 * (pos + neg)


def train_setfit(texts: list[str], labels: list[str], names: list[str], config: FewShotConfig,
                 on_progress: ProgressFn | None = None, should_stop: Callable[[], bool] = lambda: False,
                 started: float | None = None, reserve_s: float = 3.0):
    """LoRA adapters trained with pair_loss on the examples plus each label's name sentence (one per label, in
    the user's template). Training stops at max_steps or when the time budget minus `reserve_s` (what the
    prototypes and saving still take: 0.7 s for 32 examples on 2 cores) has passed since `started`. Returns the model (adapters
    merged, eval mode), its tokenizer, the adapters' trained weights (to save) and a training summary."""
    from engine.device import training_autocast
    from engine.safe_import import import_names
    from engine.text.classify import BASE_PACKAGE, TextClassifier, base_folder, pad_token_ids
    from engine.text.zeroshot import expand_label

    AutoTokenizer, = import_names("transformers", "AutoTokenizer")
    started = time.perf_counter() if started is None else started
    torch.manual_seed(config.seed)
    arch = {"base": BASE_PACKAGE, "method": "lora", "n_labels": len(names), "lora_r": config.lora_r,
            "lora_alpha": config.lora_alpha, "lora_dropout": 0.0, "lora_targets": ["query", "key", "value", "dense"],
            "normalize": True}
    model = TextClassifier(arch)
    tokenizer = AutoTokenizer.from_pretrained(base_folder(BASE_PACKAGE), local_files_only=True)
    named = [k for k, name in enumerate(names) if meaningful(name)]
    anchors = [config.template.format(expand_label(names[k])) for k in named]
    all_texts = texts + anchors
    y_all = torch.tensor([names.index(label) for label in labels] + named)
    encoded = tokenizer(all_texts, truncation=True, max_length=config.max_tokens)["input_ids"]
    pad = tokenizer.pad_token_id or 0
    generator = torch.Generator().manual_seed(config.seed)
    trainable = [p for p in model.parameters() if p.requires_grad and p is not model.head.weight and p is not model.head.bias]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=0.0)
    deadline = config.time_budget - reserve_s

    def batch() -> list[int]:
        """Every sequence when they fit in one batch; else a random batch with at least two of each label in it."""
        if len(all_texts) <= config.batch_size:
            return list(range(len(all_texts)))
        chosen: list[int] = []
        classes = torch.randperm(len(names), generator=generator).tolist()
        per_class = max(2, config.batch_size // len(names))
        for k in classes:
            rows = (y_all == k).nonzero().flatten()
            chosen += rows[torch.randperm(len(rows), generator=generator)[:per_class]].tolist()
            if len(chosen) >= config.batch_size:
                break
        return chosen

    model.train()
    losses, step = [], 0
    warmup = 3
    while step < config.max_steps:
        elapsed = time.perf_counter() - started
        if elapsed >= deadline or should_stop():
            break
        rows = batch()
        ids, mask = pad_token_ids([encoded[i] for i in rows], pad)
        fraction = max(step / max(1, config.max_steps), elapsed / max(deadline, 1e-6))
        for group in optimizer.param_groups:  # warm-up, then cosine decay over steps or time, whichever ends first
            group["lr"] = config.lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, fraction)))
        with training_autocast("cpu", config.bf16):
            vectors = model.features(ids, mask)
        loss = pair_loss(vectors.float(), y_all[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        step += 1
        if on_progress:
            on_progress({"kind": "epoch", "epoch": step, "train_loss": losses[-1], "elapsed": time.perf_counter() - started,
                         "steps": config.max_steps})
    adapters = {k: v.detach().clone() for k, v in model.saved_state().items() if "lora_" in k}
    model = model.merged().eval()
    return model, tokenizer, adapters, {"steps": step, "final_loss": round(losses[-1], 4) if losses else None,
                              "train_seconds": round(time.perf_counter() - started, 1)}


def tuned_embedder(model, tokenizer) -> Callable[[list[str]], np.ndarray]:
    """Unit sentence vectors from a (merged, float32) TextClassifier's encoder."""
    from engine.text.classify import TextPredictor

    predictor = TextPredictor(model, tokenizer, ["x"] * model.head.out_features)

    def embed(texts: list[str]) -> np.ndarray:
        return normalise(predictor.features(texts))

    return embed


# ---- the whole path: examples -> saved model ---------------------------------------------------------------------


def fit_fewshot(texts: list[str], labels: list[str], config: FewShotConfig, typed: str | list[str] | None = None,
                on_progress: ProgressFn | None = None, should_stop: Callable[[], bool] = lambda: False,
                out: str | Path | None = None, command: str = "") -> dict:
    """Examples -> classifier (and, with `out`, a saved model folder). Returns the classifier, its report and
    the folder. Everything, reading to saving, fits in config.time_budget for setfit."""
    from engine.text.classify import BASE_PACKAGE

    config.validate()
    started = time.perf_counter()
    report = on_progress or (lambda event: None)
    labels = list(labels)
    names = check_examples(texts, labels, typed)
    training = {"method": config.method, **{k: v for k, v in asdict(config).items() if k != "method"}}
    if config.method == "setfit":
        report({"kind": "stage", "stage": "fine-tuning the encoder on pairs of examples"})
        model, tokenizer, adapters, summary = train_setfit(texts, labels, names, config, on_progress, should_stop, started)
        embed = tuned_embedder(model, tokenizer)
        label_vectors, _ = label_sentence_vectors(names, config.template, embed)
        classifier = FewShotClassifier(names, texts, labels, embed(texts), label_vectors, config, embed)
        training.update(summary)
        arch = dict(model.arch_config)
        extra = {"steps": summary["steps"]}
    else:
        report({"kind": "stage", "stage": "prototypes"})
        classifier = build_prototypes(texts, labels, names, config)
        adapters, extra = {}, {}
        arch = {"base": BASE_PACKAGE, "method": "probe", "n_labels": len(names), "normalize": True}
    result = classifier.report()
    metrics = {"loo_accuracy": result["loo_accuracy"], "n_train": len(texts), "classes": names,
               "per_class_accuracy": result["per_class_accuracy"], "seconds": round(time.perf_counter() - started, 1),
               "method": config.method, **extra}
    folder = None
    if out is not None:
        folder = save_fewshot(classifier, arch, adapters, out, command, metrics, training)
        metrics["seconds"] = round(time.perf_counter() - started, 1)
    return {"classifier": classifier, "report": result, "metrics": metrics, "folder": str(folder) if folder else None,
            "confusion": result["confusion"], "classes": names}


def save_fewshot(classifier: FewShotClassifier, arch: dict, adapters: dict[str, torch.Tensor], out: str | Path,
                 command: str, metrics: dict, training: dict) -> Path:
    """A minilm-classifier folder: the prototypes as the head (on normalised vectors), the adapters for setfit,
    and the examples (examples.tsv) for nearest-example lookups."""
    from engine.checkpoints import load_own_state, save_model
    from engine.text.classify import MAX_TOKENS, TextClassifier

    weight, bias = classifier.head()
    counts = zip(classifier.labels, np.bincount(classifier.y, minlength=len(classifier.labels)))
    model = TextClassifier(arch)
    load_own_state(model, {**adapters, "head.weight": weight, "head.bias": bias})
    labels = classifier.labels
    how = ("SetFit-style: LoRA adapters tuned on pairs of examples, then prototypes" if arch.get("method") == "lora"
           else "prototypes on frozen sentence vectors")
    card = {"name": Path(out).name, "task": "text-classification", "architecture": "minilm-classifier", "arch_config": arch,
            "labels": labels, "preprocessing": {"tokenizer": "base encoder's WordPiece", "max_tokens": MAX_TOKENS,
                                                "pooling": "mean, then L2-normalised"},
            "training_data": f"{len(classifier.texts)} examples ({', '.join(f'{n} {label}' for label, n in counts)})",
            "training": training, "metrics": {k: v for k, v in metrics.items() if k != "classes"},
            "description": (f"all-MiniLM-L6-v2, few-shot ({how}), for {len(labels)} labels of your own "
                            f"({', '.join(labels[:6])}{', ...' if len(labels) > 6 else ''}); leave-one-out accuracy "
                            f"{metrics['loo_accuracy']:.1%}.")}
    if command:
        card["command"] = command
    folder = save_model(out, model, card)
    with open(folder / EXAMPLES_FILE, "w", encoding="utf-8") as handle:
        handle.write("label\ttext\n")
        for text, k in zip(classifier.texts, classifier.y):
            handle.write(f"{labels[k]}\t{' '.join(text.split())}\n")
    return folder


def read_saved_examples(folder: str | Path) -> tuple[list[str], list[str]] | None:
    """The examples a few-shot model folder keeps, or None (another kind of model)."""
    path = Path(folder) / EXAMPLES_FILE
    if not path.is_file():
        return None
    texts, labels, _ = read_examples(path)
    return texts, labels


# ---- the CLI: `python -m engine finetune text --data SMALL_FILE` ------------------------------------------------

FEWSHOT_STRATEGIES = ("setfit", "prototypes")


def wants_fewshot(paths: list[str], strategy: str | None) -> bool:
    """Whether `finetune text` should take the few-shot path: asked for by name, or a single file with at most
    MAX_PER_LABEL rows for every label (LoRA training needs hundreds of rows; its 15% validation split of
    8 rows a label is one or two). Larger files, or --strategy lora/probe, keep the usual path."""
    if strategy in FEWSHOT_STRATEGIES:
        return True
    if strategy is not None or len(paths) != 1 or not Path(paths[0]).is_file():
        return False
    from engine.text.data import read_labelled_text

    try:
        counts = read_labelled_text(paths[0]).counts()
    except UserError:
        return False  # the usual path explains what is wrong with the file
    return bool(counts) and max(counts.values()) <= MAX_PER_LABEL


def finetune_fewshot_file(path: str | Path, strategy: str | None, time_budget: float | None, seed: int | None,
                          out: str | Path, on_progress: ProgressFn | None = None, command: str = "") -> dict:
    """A small labelled file -> a saved few-shot model (SetFit-style unless strategy is prototypes)."""
    config = FewShotConfig(method="prototypes" if strategy == "prototypes" else "setfit")
    if time_budget is not None:
        config.time_budget = float(time_budget)
    if seed is not None:
        config.seed = int(seed)
    texts, labels, skipped = read_examples(path)
    result = fit_fewshot(texts, labels, config, on_progress=on_progress, out=out, command=command)
    return {"model": result["folder"], **result["metrics"], "skipped_rows": len(skipped)}


def fewshot_job(texts: list[str], labels: list[str], config: FewShotConfig, typed: str | list[str] | None, name: str,
                command: str = "minilab Text tab, Your labels: Fine-tune"):
    """A job for engine.jobs.JobRunner.submit that fits and saves a few-shot model in the job's folder; a partial
    of a module-level function, so it can be pickled for a worker process or a Ray node."""
    return functools.partial(_fit_in_job, list(texts), list(labels), config, typed, name, command)


def _fit_in_job(texts: list[str], labels: list[str], config: FewShotConfig, typed, name: str, command: str, ctx) -> dict:
    result = fit_fewshot(texts, labels, config, typed, lambda event: ctx.report(**event), ctx.should_stop,
                         out=ctx.workdir / name, command=command)
    result.pop("classifier")  # holds the float32 encoder: the saved folder is what stays
    from engine.checkpoints import zip_model_folder

    zip_model_folder(result["folder"], Path(result["folder"]).parent / f"{name}.zip")  # the download, made here
    return {**result, "name": name}
