"""Fine-tune on upload, text: a classifier from a labelled CSV/TSV, or a character-level generator from a .txt.

Classifier ("lora", the default): the MiniLM encoder with the shipped `sst2` model's LoRA adapters and a
head, trained together for the time budget (25 s). When the labels are sst2's own (negative/positive) the
head starts from sst2's too, so training adapts a model that already reads sentiment to the upload's domain.
On the written reviews of benchmarks/finetune_text.py this beat the probe by 1.5 points on average.
"probe" (seconds): sentence vectors from a frozen encoder, then a logistic-regression head. Two encoders are
on offer: plain all-MiniLM-L6-v2, and the same encoder with sst2's adapters (much better on reviews). "auto"
picks, by cross-validation on the training rows alone, the encoder and the strength of the L2 penalty; the
validation rows are only scored. Either way the saved model is the usual minilm-classifier (adapters + head),
so every tab and the CLI can load it.

Generator: the char GPT of engine.text.chargpt, small enough to learn words in a minute or two on a CPU,
from scratch or continuing from the shipped Shakespeare model (its vocabulary grown for new characters).
"""
from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from engine.errors import UserError
from engine.linear_probe import cross_validated_accuracy, fit_logistic
from engine.safe_import import import_names
from engine.uploads import check_classes

ProgressFn = Callable[[dict], None]
TEXT_BACKBONES = ("auto", "sst2", "minilm")
MAX_TEXT_ROWS = 200_000
MAX_MISCLASSIFIED = 30


@dataclass
class TextFinetuneConfig:
    strategy: str = "lora"  # "lora": adapters and head (best); "probe": a new head on frozen sentence vectors (seconds)
    backbone: str = "auto"  # auto (chosen by cross-validation), sst2 (sentiment-tuned encoder) or minilm (plain)
    time_budget: float = 25.0  # seconds (the LoRA schedule follows it; a probe takes what it needs)
    val_fraction: float = 0.15
    lora_epochs: float = 3.0
    lora_lr: float = 1e-3
    start_weight: float = 0.3  # sentiment uploads: the model kept is 0.7 x the fine-tuned weights + 0.3 x sst2's (WiSE-FT)
    seed: int = 0

    def validate(self) -> "TextFinetuneConfig":
        if self.strategy not in ("probe", "lora"):
            raise UserError(f"Unknown strategy {self.strategy!r}; choose probe or lora.")
        if self.backbone not in TEXT_BACKBONES:
            raise UserError(f"Unknown encoder {self.backbone!r}; choose one of {', '.join(TEXT_BACKBONES)}.")
        if not 0 < self.time_budget <= 3600:
            raise UserError(f"The time budget must be between 1 second and an hour, got {self.time_budget}.")
        if not 0.05 <= self.val_fraction <= 0.5:
            raise UserError(f"The validation fraction must be between 0.05 and 0.5, got {self.val_fraction}.")
        if self.lora_epochs <= 0 or self.lora_lr <= 0:
            raise UserError("LoRA epochs and learning rate must be positive.")
        if not 0 <= self.start_weight < 1:
            raise UserError(f"The starting model's weight in the blend must be at least 0 and below 1, got {self.start_weight}.")
        return self


# ---- encoders (loaded once per process, shared by every job: they are read-only) -------------------------

_encoders: dict[str, object] = {}
_encoders_lock = threading.Lock()


def sst2_folder() -> Path:
    from engine.registry import CHECKPOINTS_DIR

    folder = CHECKPOINTS_DIR / "sst2"
    if not (folder / "weights.safetensors").is_file():
        raise UserError(f"The sst2 encoder is missing from {CHECKPOINTS_DIR}; use the minilm encoder.")
    return folder


def encoder(name: str):
    """A TextPredictor whose `features` are the sentence vectors of encoder `name` (int8 on the CPU)."""
    from engine.device import quantize_for_cpu
    from engine.text.classify import TextClassifier, TextPredictor, base_folder, load_text_classifier

    with _encoders_lock:
        if name not in _encoders:
            if name == "sst2":
                _encoders[name] = load_text_classifier(sst2_folder(), trace=False)  # only its features are used
            else:
                AutoTokenizer, = import_names("transformers", "AutoTokenizer")

                from engine.text.classify import BASE_PACKAGE

                model = TextClassifier({"base": BASE_PACKAGE, "method": "probe", "n_labels": 2}).eval()
                model.encoder = quantize_for_cpu(model.encoder)
                tokenizer = AutoTokenizer.from_pretrained(base_folder(BASE_PACKAGE), local_files_only=True)
                _encoders[name] = TextPredictor(model, tokenizer, ["a", "b"], name="minilm")
        return _encoders[name]


SENTIMENT_NAMES = {"negative": "negative", "neg": "negative", "positive": "positive", "pos": "positive"}  # sst2's labels
SST2_AGREEMENT = 0.75  # sst2 must already give this share of the sample the upload's labels to keep its head


def sst2_head_order(texts: list[str], labels: list[str], classes: list[str], seed: int, sample: int = 300) -> tuple[list[int] | None, float | None]:
    """Which of sst2's head rows (negative, positive) serve the upload's classes, in the classes' order, or None for
    a new head; and the share of a sample of the training rows on which sst2 already gives the upload's labels.
    Labels that name sst2's own (Negative/Positive, neg/pos, any case) keep its head without asking. Two other
    labels (0/1, bad/good, 1 star/5 stars, or the two sentiments swapped) keep it too when sst2, before any
    training, agrees with them on SST2_AGREEMENT of the sample either way round: the upload is then sentiment
    however it is written, and training starts from a model that already reads it. Anything else (three
    classes, spam/ham, which kind of review) gets a new head."""
    from engine.checkpoints import read_card

    sst2_labels = list(read_card(sst2_folder())["labels"])
    named = [SENTIMENT_NAMES.get(name.strip().lower()) for name in classes]
    if set(named) == set(sst2_labels) and len(named) == len(sst2_labels):  # each of sst2's names once, any order
        return [sst2_labels.index(name) for name in named], None
    if len(classes) != len(sst2_labels):
        return None, None
    index = np.random.default_rng(seed).permutation(len(texts))[:sample]
    predicted = encoder("sst2").predict_proba([texts[i] for i in index]).argmax(1)
    truth = np.array([classes.index(labels[i]) for i in index])
    agreement = float((predicted == truth).mean())  # classes[0] read as negative, classes[1] as positive
    if agreement >= SST2_AGREEMENT:
        return [0, 1], agreement
    if 1 - agreement >= SST2_AGREEMENT:
        return [1, 0], 1 - agreement
    return None, max(agreement, 1 - agreement)


def arch_for(backbone: str, classes: list[str], head_order: list[int] | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """The minilm-classifier arch_config of a model on this encoder, and the weights it starts from: the sst2
    adapters, and sst2's head too, its rows in `head_order` (from sst2_head_order), when the upload is sentiment:
    training then adapts a model that already reads sentiment to the upload's domain. Otherwise a new head."""
    from safetensors.torch import load_file

    from engine.checkpoints import read_card
    from engine.text.classify import BASE_PACKAGE

    if backbone == "minilm":
        return {"base": BASE_PACKAGE, "method": "probe", "n_labels": len(classes)}, {}
    folder = sst2_folder()
    card = read_card(folder)
    arch = dict(card["arch_config"], n_labels=len(classes))
    weights = {k: v for k, v in load_file(folder / "weights.safetensors").items() if head_order or not k.startswith("head.")}
    if head_order:  # the head's rows in the upload's order of classes
        weights["head.weight"], weights["head.bias"] = weights["head.weight"][head_order], weights["head.bias"][head_order]
    return arch, weights


def blend_with_start(arch: dict, start: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor],
                     start_weight: float) -> tuple[dict, dict[str, torch.Tensor]]:
    """WiSE-FT (Wortsman et al., 2022): the weights start_weight x start + (1 - start_weight) x tuned. Fine-tuning
    on a thousand rows forgets some of what sst2 learnt from 67,000; the blend keeps it, and scored above both ends
    (benchmarks/RESULTS.md). Blending two adapters B0 A0 and B1 A1 gives one of twice the rank, [w B0, (1-w) B1]
    stacked on [A0; A1], with lora_alpha doubled to keep the scale alpha / r: exact, and saved like any other."""
    blended = {}
    for key, value in tuned.items():
        if "lora_A" in key:
            blended[key] = torch.cat([start[key], value], 0)
        elif "lora_B" in key:
            blended[key] = torch.cat([start_weight * start[key], (1 - start_weight) * value], 1)
        else:  # the head
            blended[key] = start_weight * start[key] + (1 - start_weight) * value
    return {**arch, "lora_r": 2 * int(arch["lora_r"]), "lora_alpha": 2 * int(arch["lora_alpha"])}, blended


# ---- the probe: logistic regression on sentence vectors -----------------------------------------------------


L2_GRID = (0.01, 0.1, 1.0, 10.0)  # on standardised features; few hundred rows need strong shrinkage


# ---- the whole path ------------------------------------------------------------------------------------------


def pick_encoder(texts: list[str], labels: list[str], classes: list[str], seed: int, sample: int = 300) -> tuple[str, dict]:
    """The encoder LoRA starts from when the labels are not sst2's: the one whose frozen sentence vectors a logistic
    regression fits best, cross-validated on a sample of the training rows (about 1 s on 2 cores; 3 folds and
    two L2 strengths are enough: the two encoders differ by 8 points or more on the tasks tried). sst2's
    encoder is tuned to sentiment: on which kind of review a sentence is (products, films, restaurants) it scored
    6-10 points below plain MiniLM this way, and on sentiment under other label names 8-12 points above."""
    index = np.random.default_rng(seed).permutation(len(texts))[:sample]
    y = torch.tensor([classes.index(labels[i]) for i in index])
    scores = {}
    for name in ("sst2", "minilm"):
        x = torch.from_numpy(encoder(name).features([texts[i] for i in index]))
        scores[name] = max(cross_validated_accuracy(x, y, len(classes), l2, folds=3, seed=seed) for l2 in (0.1, 1.0))
    return max(scores, key=scores.get), scores


def read_text_upload(paths: list[str | Path]):
    from engine.text.data import read_labelled_text
    from engine.uploads import check_upload_size

    paths = [Path(p) for p in paths]
    if len(paths) != 1:
        raise UserError(f"Upload one CSV or TSV file with a text column and a label column (got {len(paths)} files).")
    check_upload_size(paths)
    table = read_labelled_text(paths[0])
    if len(table.texts) > MAX_TEXT_ROWS:
        raise UserError(f"{paths[0].name} has {len(table.texts):,} rows; the limit is {MAX_TEXT_ROWS:,}.")
    check_classes(table.counts(), what="rows")
    return table


def stratified_rows(labels: list[str], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    from engine.vision.data import stratified_split

    names = sorted(set(labels))
    index = np.array([names.index(label) for label in labels])
    train, val = stratified_split(index, val_fraction, seed)
    return train.tolist(), val.tolist()


def finetune_text_classifier(paths: list[str | Path], config: TextFinetuneConfig, out: str | Path,
                             on_progress: ProgressFn | None = None, should_stop: Callable[[], bool] = lambda: False,
                             device: torch.device | str = "cpu", command: str = "") -> dict:
    """Upload -> model folder at `out`; returns metrics, the confusion matrix and the worst mistakes."""
    from engine.checkpoints import load_own_state
    from engine.text.classify import (TextClassifier, TextTrainConfig, evaluate_predictor, load_text_classifier,
                                      save_text_classifier, train_text_classifier)

    config.validate()
    started = time.perf_counter()
    report = on_progress or (lambda event: None)
    report({"kind": "stage", "stage": "reading the upload"})
    table = read_text_upload(paths)
    classes = table.classes
    train_rows, val_rows = stratified_rows(table.labels, config.val_fraction, config.seed)
    train_texts, val_texts = [table.texts[i] for i in train_rows], [table.texts[i] for i in val_rows]
    train_labels, val_labels = [table.labels[i] for i in train_rows], [table.labels[i] for i in val_rows]
    read_seconds = time.perf_counter() - started
    report({"kind": "stage", "stage": "training", "n_train": len(train_rows), "n_val": len(val_rows), "classes": classes,
            "read_seconds": round(read_seconds, 1)})
    history: list[dict] = []
    chosen = {}
    if config.strategy == "probe":
        y = torch.tensor([classes.index(label) for label in train_labels])
        candidates = ["sst2", "minilm"] if config.backbone == "auto" else [config.backbone]
        best = (-1.0, None, None, None)
        for step, backbone in enumerate(candidates, start=1):
            if should_stop():
                break
            features = torch.from_numpy(encoder(backbone).features(train_texts))
            for l2 in L2_GRID:
                score = cross_validated_accuracy(features, y, len(classes), l2, seed=config.seed)
                if score > best[0]:
                    best = (score, backbone, l2, features)
            elapsed = time.perf_counter() - started
            event = {"kind": "epoch", "epoch": step, "epochs": len(candidates), "encoder": backbone,
                     "cv_acc": best[0] if best[1] == backbone else score, "elapsed": elapsed,
                     "eta": elapsed / step * (len(candidates) - step)}
            history.append(event)
            report(event)
        if best[1] is None:
            raise UserError("Training was stopped before any encoder was tried.")
        score, backbone, l2, features = best
        head = fit_logistic(features, y, len(classes), l2)
        arch, encoder_weights = arch_for(backbone, classes)
        model = TextClassifier(arch)
        load_own_state(model, {**encoder_weights, "head.weight": head.weight.detach(), "head.bias": head.bias.detach()})
        chosen = {"encoder": backbone, "l2": l2, "cv_accuracy": round(score, 4)}
        training = {**asdict(config), **chosen}
    else:
        backbone, chosen, head_order = config.backbone, {}, None
        if backbone in ("auto", "sst2"):  # sentiment keeps sst2's head; other labels go to the encoder that fits them best
            report({"kind": "stage", "stage": "choosing the encoder"})
            head_order, agreement = sst2_head_order(train_texts, train_labels, classes, config.seed)
            chosen = {} if agreement is None else {"sst2_agreement": round(agreement, 4)}
            backbone = "sst2" if head_order or backbone == "sst2" else None
        if backbone is None:
            backbone, scores = pick_encoder(train_texts, train_labels, classes, config.seed)
            chosen["cv_accuracy_by_encoder"] = {name: round(score, 4) for name, score in scores.items()}
        arch, encoder_weights = arch_for(backbone, classes, head_order)
        # The budget runs from the click: reading the upload and choosing the encoder come out of it.
        train_config = TextTrainConfig(epochs=config.lora_epochs, lr=config.lora_lr, seed=config.seed,
                                       time_budget=max(1.0, config.time_budget - (time.perf_counter() - started)), method="lora",
                                       lora_r=int(arch.get("lora_r", 8)), lora_alpha=int(arch.get("lora_alpha", 16)),
                                       eval_every=10, report_every=3,  # about 80 steps in 25 s: curves that move
                                       keep="last")

        def relay(event: dict) -> None:
            """Validation passes and training-loss reports both become points of the page's curves."""
            if event.get("kind") not in ("eval", "step"):
                return report(event)
            point = {**event, "kind": "epoch", "epoch": round(event["epoch"], 2)}
            if event["kind"] == "eval":
                history.append(point)
            report(point)

        model, _, fit = train_text_classifier(train_texts, train_labels, val_texts, val_labels, train_config, relay,
                                              should_stop, device, init_state=encoder_weights)
        if head_order and config.start_weight > 0:  # the start reads the upload's labels already: blend it back in
            tuned = {k: v.cpu() for k, v in model.saved_state().items()}
            arch, state = blend_with_start(model.arch_config, encoder_weights, tuned, config.start_weight)
            model = TextClassifier(arch)
            load_own_state(model, state)
            chosen["blended_with_start"] = config.start_weight
        chosen = {"encoder": backbone, **chosen}
        training = {**asdict(config), **chosen}
    folder = save_text_classifier(model.cpu(), classes, out, Path(out).name, "text-classification",
                                  {"n_train": len(train_rows), "n_val": len(val_rows)}, training,
                                  f"an upload of {len(table.texts):,} labelled rows ({table.text_column} / {table.label_column})",
                                  command)
    # As the tabs will serve it (merged, int8 on a CPU); the tabs trace their own copy when they load it.
    predictor = load_text_classifier(folder, device, trace=False)
    result = evaluate_predictor(predictor, val_texts, val_labels)
    probs = result["probabilities"]
    truth = np.array([classes.index(label) for label in val_labels])
    losses = -np.log(np.clip(probs[np.arange(len(truth)), truth], 1e-12, 1.0))
    order = [int(i) for i in np.argsort(-losses) if result["predicted"][i] != val_labels[i]][:MAX_MISCLASSIFIED]
    mistakes = [{"text": val_texts[i], "true": val_labels[i], "predicted": result["predicted"][i],
                 "confidence": round(float(probs[i].max()), 4), "loss": round(float(losses[i]), 4)} for i in order]
    metrics = {"val_accuracy": round(result["accuracy"], 4), "n_train": len(train_rows), "n_val": len(val_rows),
               "classes": classes, "seconds": round(time.perf_counter() - started, 1), "read_seconds": round(read_seconds, 1),
               "per_class_accuracy": {k: round(v, 4) for k, v in result["per_class_accuracy"].items()},
               "skipped": len(table.skipped), **chosen}
    _update_card_metrics(folder, metrics)
    return {"folder": str(folder), "metrics": metrics, "confusion": result["confusion"], "classes": classes,
            "misclassified": mistakes, "history": history, "skipped": [(row, "") for row in table.skipped]}


def _update_card_metrics(folder: Path, metrics: dict) -> None:
    """Write the metrics measured on the served model into its card (the folder was saved before scoring)."""
    import json

    card_path = Path(folder) / "card.json"
    card = json.loads(card_path.read_text())
    card["metrics"] = {k: v for k, v in metrics.items() if k != "classes"}
    card["description"] = (f"all-MiniLM-L6-v2 ({metrics.get('encoder', 'minilm')} encoder) with a head for "
                           f"{len(card['labels'])} classes of your own ({', '.join(card['labels'][:6])}"
                           f"{', ...' if len(card['labels']) > 6 else ''}).")
    card_path.write_text(json.dumps(card, indent=2))


# ---- the generator ----------------------------------------------------------------------------------------


@dataclass
class CharFinetuneConfig:
    architecture: str = "gpt"  # "gpt" (engine.text.chargpt) or "lstm" (engine.text.charlstm)
    init: str = "scratch"  # "scratch" or "shakespeare" (continue from the shipped model of that architecture)
    time_budget: float = 100.0  # seconds of training
    hidden: int = 256  # lstm: cells per layer (2 layers of 256: about the GPT's 0.6M parameters)
    n_layer: int = 3
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 96
    batch_size: int = 32
    lr: float = 3e-3  # from scratch; continuing uses a tenth of it
    dropout: float = 0.1
    sample_chars: int = 400
    seed: int = 1337

    def validate(self) -> "CharFinetuneConfig":
        if self.architecture not in ("gpt", "lstm"):
            raise UserError(f"Train a gpt or an lstm, not {self.architecture!r}.")
        if self.init not in ("scratch", "shakespeare"):
            raise UserError(f"Start from scratch or shakespeare, not {self.init!r}.")
        if not 0 < self.time_budget <= 3600:
            raise UserError(f"The time budget must be between 1 second and an hour, got {self.time_budget}.")
        if min(self.n_layer, self.n_head, self.n_embd, self.block_size, self.batch_size) < 1 or self.lr <= 0:
            raise UserError("Layers, heads, width, context, batch size and learning rate must be positive.")
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
            raise UserError(f"The width ({self.n_embd}) must be a multiple of the heads ({self.n_head}) with an even quotient.")
        return self


def grow_vocabulary(model, tokenizer, text: str):
    """Continue from a model on a text with characters it has never seen: new rows in the embedding and the output
    layer (the GPT ties the two; the LSTM's head also has a bias), freshly initialised, the old rows kept."""
    from engine.text.chargpt import CharTokenizer

    new = "".join(tokenizer.unknown(text))
    if not new:
        return model, tokenizer
    old = model.config.vocab_size
    config = type(model.config)(**{**asdict(model.config), "vocab_size": old + len(new)})
    grown = type(model)(config)
    state, fresh = model.state_dict(), grown.state_dict()
    for key in ("embed.weight", "head.weight", "head.bias"):
        if key in state and key in fresh:
            rows = fresh[key].clone()
            rows[:old] = state[key]
            state[key] = rows
    if "head.weight" in fresh and fresh["head.weight"].data_ptr() == fresh["embed.weight"].data_ptr():
        state["head.weight"] = state["embed.weight"]  # tied
    grown.load_state_dict(state)
    return grown, CharTokenizer(tokenizer.chars + new)


def finetune_chargpt(paths: list[str | Path], config: CharFinetuneConfig, out: str | Path,
                     on_progress: ProgressFn | None = None, should_stop: Callable[[], bool] = lambda: False,
                     device: torch.device | str = "cpu", command: str = "") -> dict:
    from engine.text import chargpt, charlstm
    from engine.text.data import read_text_file
    from engine.uploads import check_upload_size

    config.validate()
    started = time.perf_counter()
    report = on_progress or (lambda event: None)
    paths = [Path(p) for p in paths]
    if len(paths) != 1:
        raise UserError(f"Upload one plain-text (.txt) file (got {len(paths)} files).")
    check_upload_size(paths)
    text = read_text_file(paths[0])
    if len(text.strip()) < 1000:
        raise UserError(f"{paths[0].name} holds {len(text.strip()):,} characters; a generator needs at least 1,000 "
                        "(100,000 or more gives words and lines).")
    init = None
    lstm = config.architecture == "lstm"
    if lstm:  # the same layers count, context and batch as the GPT; the LSTM learns well at a lower rate
        module = charlstm
        train = charlstm.CharLSTMTrainConfig(
            model=charlstm.CharLSTMConfig(hidden=config.hidden, n_layer=min(config.n_layer, 3), dropout=config.dropout),
            max_iters=1_000_000, time_budget=config.time_budget, batch_size=config.batch_size, seq_len=config.block_size,
            lr=config.lr * 2 / 3, min_lr=config.lr / 30, warmup_iters=50, eval_every=50, eval_batches=4, seed=config.seed)
    else:
        module = chargpt
        train = chargpt.CharTrainConfig(
            model=chargpt.CharGPTConfig(block_size=config.block_size, n_layer=config.n_layer, n_head=config.n_head,
                                        n_embd=config.n_embd, dropout=config.dropout),
            max_iters=1_000_000, time_budget=config.time_budget, batch_size=config.batch_size,
            lr=config.lr, min_lr=config.lr / 10, warmup_iters=50, eval_every=50, eval_batches=4, seed=config.seed)
    if config.init == "shakespeare":
        from engine.registry import CHECKPOINTS_DIR

        shipped = CHECKPOINTS_DIR / ("shakespeare-lstm" if lstm else "shakespeare")
        model, tokenizer, _ = (module.load_charlstm if lstm else module.load_chargpt)(shipped)
        init = grow_vocabulary(model, tokenizer, text)
        train.lr, train.min_lr = train.lr / 10, train.lr / 100
    report({"kind": "stage", "stage": "training", "n_chars": len(text)})

    def relay(event: dict) -> None:
        if event.get("kind") == "eval":
            report({**event, "kind": "epoch", "epoch": event["iter"]})

    trainer, saver = (charlstm.train_charlstm, charlstm.save_charlstm) if lstm else (chargpt.train_chargpt, chargpt.save_chargpt)
    model, tokenizer, fit = trainer(text, train, relay, should_stop, device, init=init)
    folder = saver(model.cpu(), tokenizer, out, Path(out).name, fit, asdict(config),
                   f"an upload: {paths[0].name} ({len(text):,} characters; last 10% for validation)", command)
    with torch.no_grad():
        sample = "".join(ch for ch, _ in module.generate(model, tokenizer, "\n", config.sample_chars, temperature=0.8,
                                                         seed=config.seed))
    metrics = {"val_loss": fit["val_loss"], "n_train": fit["n_train_chars"], "n_val": fit["n_val_chars"],
               "classes": [], "seconds": round(time.perf_counter() - started, 1), "iters": fit["iters"],
               "vocabulary": len(tokenizer.chars), "architecture": config.architecture,
               "parameters": sum(p.numel() for p in model.parameters())}
    history = [{"kind": "epoch", "epoch": h["iter"], "train_loss": h["train_loss"], "val_loss": h["val_loss"],
                "elapsed": h["elapsed"]} for h in fit["history"]]
    return {"folder": str(folder), "metrics": metrics, "sample": sample, "history": history, "skipped": []}
