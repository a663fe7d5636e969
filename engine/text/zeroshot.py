"""Zero-shot text classification: type label names, get a classifier, with no labelled example at all.

The idea (as in "dataless" classification): a sentence encoder puts texts with similar meanings close together,
so a text about sport lies nearer the sentence "This text is about sports." than "This text is about business.".
Each label becomes a hypothesis sentence (the template with the label in it), the encoder turns texts and
hypotheses into unit vectors (all-MiniLM-L6-v2, offline), and the cosine similarity scores each pair.

Four things make it much better than that plain recipe, none of which looks at a labelled example:

1. Label names are expanded generically: "Sci/Tech" reads "science and technology" (separators become "and",
   common abbreviations are spelt out, camelCase is split). Nothing here knows any topic's vocabulary.
2. Several templates are averaged (the user's and a few generic ones): one wording's quirks cancel out.
3. A batch calibrates itself: each label's mean similarity over the batch is subtracted, so a label whose
   hypothesis happens to sit close to every text stops winning everything.
4. A batch teaches itself (transductive EM, like a von Mises-Fisher mixture): label each text softly, move
   each label's vector to the mean of its texts (plus its own hypothesis, which keeps its meaning), and repeat.
   The labels settle on the clusters the texts really form.

On benchmarks/data/news_dev.tsv (240 news texts written for minilab), typing World, Sports, Business, Sci/Tech:
plain 76.2%, with 1-3 77.9%, with 4 as well 96%+ (docs/zero-few-shot.md has the commands and figures).
"""
from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.errors import UserError

DEFAULT_TEMPLATE = "This text is about {}."
# Generic wordings, not tied to any kind of text; averaged with the user's own template.
TEMPLATES = ("{}.", "This text is about {}.", "This is about {}.", "The topic of this text is {}.",
             "This article is about {}.", "A text about {}.")
MAX_LABELS = 100
MAX_LABEL_CHARS = 100
MAX_TEXTS = 10_000  # one batch
MIN_ADAPT = 20  # a batch this large (or larger) calibrates and teaches itself; fewer texts tell too little
# Common abbreviations in label names, spelt out (a generic expansion: it knows words, not topics).
ABBREVIATIONS = {
    "sci": "science", "tech": "technology", "biz": "business", "econ": "economics", "fin": "finance",
    "govt": "government", "gov": "government", "intl": "international", "int'l": "international", "pol": "politics",
    "ent": "entertainment", "env": "environment", "edu": "education", "med": "medicine", "info": "information",
    "misc": "miscellaneous", "admin": "administration", "dept": "department", "mgmt": "management",
    "lit": "literature", "geo": "geography", "hist": "history", "bio": "biology", "chem": "chemistry",
    "phys": "physics", "math": "mathematics", "maths": "mathematics", "comp": "computers", "auto": "automobiles",
    "pos": "positive", "neg": "negative", "neu": "neutral", "q&a": "questions and answers", "faq": "questions",
}


# ---- what the user types ------------------------------------------------------------------------------------


def parse_labels(labels: str | list[str]) -> list[str]:
    """Comma-separated label names (or a list) -> clean names, refusing what cannot make a classifier."""
    if isinstance(labels, str):
        labels = labels.replace("\n", ",").split(",")
    names = [" ".join(str(name).split()) for name in labels]
    if any(not name for name in names) and any(names):
        raise UserError("One of the labels is empty: check for two commas in a row or a comma at the end.")
    names = [name for name in names if name]
    if len(names) < 2:
        raise UserError(f"Type at least 2 labels, separated by commas (got {len(names)}), e.g. World, Sports, Business.")
    if len(names) > MAX_LABELS:
        raise UserError(f"{len(names)} labels; the limit is {MAX_LABELS}.")
    long = [name for name in names if len(name) > MAX_LABEL_CHARS]
    if long:
        raise UserError(f"A label is a name, not a text: {long[0][:40]!r}… is longer than {MAX_LABEL_CHARS} characters.")
    seen: dict[str, str] = {}
    for name in names:
        if name.lower() in seen:
            raise UserError(f"The label {name!r} appears twice (labels are compared ignoring case).")
        seen[name.lower()] = name
    return names


def parse_descriptions(text: str | dict | None, labels: list[str]) -> dict[str, str]:
    """Optional descriptions, one `label: words` per line (or a dict) -> {label: words}; unknown labels refused."""
    if not text:
        return {}
    items = list(text.items()) if isinstance(text, dict) else []
    if isinstance(text, str):
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            if ":" not in line:
                raise UserError(f"Description line {number} needs the form `label: a few words` ({line.strip()[:40]!r}).")
            name, words = line.split(":", 1)
            items.append((name, words))
    by_lower = {name.lower(): name for name in labels}
    descriptions = {}
    for name, words in items:
        key = " ".join(str(name).split()).lower()
        if key not in by_lower:
            raise UserError(f"A description is for {name.strip()!r}, which is not one of your labels ({', '.join(labels)}).")
        if " ".join(str(words).split()):
            descriptions[by_lower[key]] = " ".join(str(words).split())
    return descriptions


def check_template(template: str | None) -> str:
    template = (template or "").strip() or DEFAULT_TEMPLATE
    if template.count("{}") != 1:
        raise UserError(f"The template must contain {{}} exactly once, where the label goes (got {template!r}); "
                        f"for example {DEFAULT_TEMPLATE!r}.")
    try:
        template.format("x")
    except (IndexError, KeyError, ValueError) as error:
        raise UserError(f"The template {template!r} has braces other than {{}}: write {{{{ or }}}} for a brace.") from error
    return template


def expand_label(name: str) -> str:
    """A label name as words: "Sci/Tech" -> "science and technology", "HomeGarden" -> "home garden"."""
    text = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name)  # camelCase
    text = re.sub(r"\s*[/&+|]\s*", " and ", text)
    text = re.sub(r"[_\-.]+", " ", text)
    words = [ABBREVIATIONS.get(word.lower(), word) for word in text.split()]
    return " ".join(words).lower() or name


# ---- the encoder, shared ----------------------------------------------------------------------------------


def embed(texts: list[str]) -> np.ndarray:
    """Unit sentence vectors from all-MiniLM-L6-v2 (int8 on a CPU, loaded once per process and shared)."""
    from engine.text.finetune import encoder

    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    vectors = encoder("minilm").features(texts)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9)


_label_cache: OrderedDict[tuple[str, ...], np.ndarray] = OrderedDict()
_label_lock = threading.Lock()
LABEL_CACHE_SIZE = 512  # hypothesis sets; a set of 4 labels x 7 templates is 11 kB of vectors


def _cached_embed(sentences: tuple[str, ...]) -> np.ndarray:
    with _label_lock:
        if sentences in _label_cache:
            _label_cache.move_to_end(sentences)
            return _label_cache[sentences]
    vectors = embed(list(sentences))
    with _label_lock:
        _label_cache[sentences] = vectors
        while len(_label_cache) > LABEL_CACHE_SIZE:
            _label_cache.popitem(last=False)
    return vectors


# ---- the classifier ---------------------------------------------------------------------------------------


@dataclass
class ZeroShotConfig:
    template: str = DEFAULT_TEMPLATE
    multi_label: bool = False  # each label scored alone (a text may have none, one or several)
    threshold: float = 0.5  # multi-label: a label is given when its probability reaches this
    ensemble: bool = True  # average the user's template with the generic TEMPLATES
    expand: bool = True  # "Sci/Tech" -> "science and technology"
    adapt: str = "auto"  # a batch calibrates and teaches itself: "auto" (MIN_ADAPT texts or more), "on", "off"
    temperature: float = 0.05  # softmax over cosine similarities (they differ by tenths: this spreads them)
    em_iters: int = 10  # rounds of batch self-training at most (it usually settles in 3-6)
    anchor: float = 0.5  # weight of a label's own hypothesis in its vector while self-training (keeps its meaning)
    multi_center: float = 0.07  # multi-label: the cosine similarity that reads as probability 0.5 ...
    multi_scale: float = 0.03  # ... and how many hundredths of similarity make it e (2.7) times likelier

    def validate(self) -> "ZeroShotConfig":
        self.template = check_template(self.template)
        if self.adapt not in ("auto", "on", "off"):
            raise UserError(f"Batch adaptation is auto, on or off, not {self.adapt!r}.")
        if not 0 < self.threshold < 1:
            raise UserError(f"The threshold must be between 0 and 1 (exclusive), got {self.threshold}.")
        if not 0 < self.temperature <= 10 or self.multi_scale <= 0:
            raise UserError("The temperature and the multi-label scale must be positive.")
        if not 0 <= self.em_iters <= 100 or self.anchor < 0:
            raise UserError("Self-training rounds must be 0-100 and the anchor weight at least 0.")
        return self


@dataclass
class ZeroShotResult:
    labels: list[str]
    probabilities: np.ndarray  # (N, C): softmax rows (single-label) or independent probabilities (multi-label)
    similarities: np.ndarray  # (N, C): raw cosine similarity of each text to each label's vector
    adapted: bool  # whether the batch calibrated and taught itself
    rounds: int = 0  # self-training rounds run
    multi_label: bool = False
    threshold: float = 0.5
    notes: list[str] = field(default_factory=list)

    def predicted(self) -> list[str] | list[list[str]]:
        if self.multi_label:
            return [[self.labels[j] for j in np.argsort(-row) if row[j] >= self.threshold] for row in self.probabilities]
        return [self.labels[j] for j in self.probabilities.argmax(1)]


def softmax(scores: np.ndarray) -> np.ndarray:
    scores = scores - scores.max(1, keepdims=True)
    exp = np.exp(scores)
    return exp / exp.sum(1, keepdims=True)


def self_train(x: np.ndarray, label_vectors: np.ndarray, temperature: float, iters: int, anchor: float
               ) -> tuple[np.ndarray, int]:
    """Transductive EM on a batch of unit vectors x (N, D), starting from the labels' vectors (C, D).
    E-step: each text's soft label from its calibrated similarities. M-step: each label's vector becomes the mean
    of its texts (weighted by those soft labels) plus `anchor` times its hypothesis vector. Calibration: every
    label's mean similarity over the batch is subtracted, which keeps one label from taking every text.
    Returns the final calibrated scores (N, C) and the rounds run."""
    scores = x @ label_vectors.T
    scores = scores - scores.mean(0)
    rounds, previous = 0, None
    for rounds in range(1, iters + 1):
        soft = softmax(scores / temperature)
        centres = soft.T @ x
        centres /= np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-9)
        centres = centres + anchor * label_vectors
        centres /= np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-9)
        scores = x @ centres.T
        scores = scores - scores.mean(0)
        assigned = scores.argmax(1)
        if previous is not None and np.array_equal(assigned, previous):
            break
        previous = assigned
    return scores, rounds


def label_hypotheses(labels: list[str], descriptions: dict[str, str], config: ZeroShotConfig) -> dict[str, list[str]]:
    """Each label's sentences: its name (expanded) and its description, each in every template."""
    templates = [config.template] + ([t for t in TEMPLATES if t != config.template] if config.ensemble else [])
    out = {}
    for label in labels:
        phrases = [expand_label(label) if config.expand else label] + ([descriptions[label]] if label in descriptions else [])
        out[label] = [template.format(phrase) for phrase in phrases for template in templates]
    return out


class ZeroShotClassifier:
    """Label names (and optional descriptions) in; probabilities for any text or batch out."""

    def __init__(self, labels: str | list[str], descriptions: str | dict | None = None,
                 config: ZeroShotConfig | None = None):
        self.config = (config or ZeroShotConfig()).validate()
        self.labels = parse_labels(labels)
        self.descriptions = parse_descriptions(descriptions, self.labels)
        self.templates = [self.config.template] + ([t for t in TEMPLATES if t != self.config.template]
                                                   if self.config.ensemble else [])
        self.hypotheses = label_hypotheses(self.labels, self.descriptions, self.config)
        self.label_vectors = self._label_vectors()

    def _label_vectors(self) -> np.ndarray:
        """Each label's vector: the normalised mean of its hypotheses' vectors (one encoder pass for all)."""
        sentences = tuple(s for label in self.labels for s in self.hypotheses[label])
        vectors = _cached_embed(sentences)
        out, start = [], 0
        for label in self.labels:
            count = len(self.hypotheses[label])
            mean = vectors[start:start + count].mean(0)
            out.append(mean / max(float(np.linalg.norm(mean)), 1e-9))
            start += count
        return np.stack(out)

    def describe(self) -> str:
        """What the classifier does, in a sentence or two for the page."""
        shown = "; ".join(f"{label} → “{self.hypotheses[label][0]}”" for label in self.labels[:6])
        more = f" (and {len(self.labels) - 6} more)" if len(self.labels) > 6 else ""
        how = (f"each label becomes a sentence ({shown}{more})"
               + (f", averaged over {len(self.templates)} wordings" if len(self.templates) > 1 else "")
               + "; a text's score for a label is the cosine similarity of their all-MiniLM-L6-v2 vectors")
        return how

    def classify(self, texts: list[str], vectors: np.ndarray | None = None) -> ZeroShotResult:
        from engine.text.classify import clean_text

        if not texts:
            raise UserError("There is no text to classify.")
        if len(texts) > MAX_TEXTS:
            raise UserError(f"{len(texts):,} texts; a batch takes at most {MAX_TEXTS:,}.")
        texts = [clean_text(text) for text in texts]
        x = embed(texts) if vectors is None else vectors
        config = self.config
        raw = x @ self.label_vectors.T
        notes = []
        if config.multi_label:
            probabilities = 1 / (1 + np.exp(-(raw - config.multi_center) / config.multi_scale))
            return ZeroShotResult(self.labels, probabilities, raw, False, 0, True, config.threshold,
                                  ["multi-label: each label is scored alone, from its similarity"])
        adapt = config.adapt == "on" or (config.adapt == "auto" and len(texts) >= MIN_ADAPT)
        rounds = 0
        if adapt and len(texts) >= 2:
            scores, rounds = self_train(x, self.label_vectors, config.temperature, config.em_iters, config.anchor)
            notes.append(f"the batch calibrated itself and self-trained for {rounds} round{'s' * (rounds != 1)}")
        else:
            adapt, scores = False, raw
            if config.adapt == "auto" and len(texts) > 1:
                notes.append(f"a batch of {MIN_ADAPT} texts or more would also calibrate and self-train")
        return ZeroShotResult(self.labels, softmax(scores / config.temperature), raw, adapt, rounds, False,
                              config.threshold, notes)

    def predict(self, text: str) -> dict[str, float]:
        """One text -> {label: probability}."""
        result = self.classify([text])
        return dict(zip(self.labels, map(float, result.probabilities[0])))


# ---- scoring a labelled file ------------------------------------------------------------------------------


MULTI_SEPARATORS = r"[|;]"  # multi-label files: a row's labels separated by | or ;


def match_file_labels(file_labels: list[str], labels: list[str], multi_label: bool = False) -> list[list[str]]:
    """The file's label values as the typed names (case-insensitive); values that are not typed labels are
    counted and refused in one message, never silently scored as wrong."""
    by_lower = {name.lower(): name for name in labels}
    matched, unknown = [], {}
    for value in file_labels:
        parts = [p.strip() for p in re.split(MULTI_SEPARATORS, value)] if multi_label else [value.strip()]
        names = []
        for part in parts:
            if not part:
                continue
            key = " ".join(part.split()).lower()
            if key in by_lower:
                names.append(by_lower[key])
            else:
                unknown[part] = unknown.get(part, 0) + 1
        matched.append(names)
    if unknown:
        shown = ", ".join(f"{name!r} ({count} row{'s' * (count != 1)})" for name, count in
                          sorted(unknown.items(), key=lambda item: -item[1])[:10])
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        total = sum(unknown.values())
        raise UserError(f"{total} row{'s' * (total != 1)} of the file have a label that is not among your labels "
                        f"({', '.join(labels)}): {shown}{more}. Add those labels, or remove the rows.")
    return matched


def score(result: ZeroShotResult, truth: list[list[str]]) -> dict:
    """Accuracy (single-label: the top label; multi-label: the exact set), per-class accuracy and confusion."""
    predicted = result.predicted()
    if result.multi_label:
        correct = sum(set(p) == set(t) for p, t in zip(predicted, truth))
        return {"accuracy": round(correct / len(truth), 4), "n": len(truth)}
    true = [t[0] for t in truth]
    labels = result.labels
    confusion = [[sum(1 for t, p in zip(true, predicted) if t == a and p == b) for b in labels] for a in labels]
    per_class = {c: round(confusion[i][i] / sum(confusion[i]), 4) for i, c in enumerate(labels) if sum(confusion[i])}
    correct = sum(t == p for t, p in zip(true, predicted))
    return {"accuracy": round(correct / len(true), 4), "n": len(true), "per_class_accuracy": per_class,
            "confusion": confusion}


def read_texts(path: str | Path) -> tuple[list[str], list[str] | None, list[str]]:
    """A CSV/TSV with a header and a text column (a label column is optional): texts, labels, skipped rows."""
    from engine.text.data import parse_labelled_text, read_text_file

    path = Path(path)
    table = parse_labelled_text(read_text_file(path), path.name, labels_required=False)
    return table.texts, table.labels, table.skipped


def classify_file(labels: str | list[str], path: str | Path, config: ZeroShotConfig | None = None,
                  descriptions: str | dict | None = None) -> dict:
    """What `python -m engine zero-shot` prints: every prediction, and the accuracy when the file has labels."""
    config = (config or ZeroShotConfig()).validate()
    names = parse_labels(labels)
    parse_descriptions(descriptions, names)
    texts, given, skipped = read_texts(path)  # a bad file is refused before the encoder is loaded
    truth = match_file_labels(given, names, config.multi_label) if given is not None else None
    classifier = ZeroShotClassifier(names, descriptions, config)
    result = classifier.classify(texts)
    predicted = result.predicted()
    rows = []
    for i, text in enumerate(texts):
        row = {"text": text, "label": predicted[i],
               "probabilities": {label: round(float(p), 4) for label, p in zip(result.labels, result.probabilities[i])}}
        if truth is not None:
            row["given"] = truth[i] if result.multi_label else truth[i][0]
        rows.append(row)
    report = {"labels": result.labels, "adapted": result.adapted, "rounds": result.rounds, "skipped_rows": len(skipped),
              "predictions": rows}
    if truth is not None:
        if any(not t for t in truth):
            raise UserError("Some rows have an empty label.")
        report.update(score(result, truth))
    return report
