"""Reading labelled text files (CSV or TSV with a header) and plain text, whatever their encoding.

Users upload files from Excel, Windows Notepad or a Unix shell: UTF-8 with or without a byte-order mark,
UTF-16, or a legacy 8-bit code page. We try those in turn, refuse binary files, and say exactly which
column or row is the problem.
"""
from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import UserError

TEXT_COLUMNS = ("sentence", "text", "content", "review", "comment")
LABEL_COLUMNS = ("label", "labels", "sentiment", "class", "category", "target")
MAX_TEXT_FILE_BYTES = 50 * 2**20
SENTIMENT_NAMES = {"0": "negative", "1": "positive", "neg": "negative", "pos": "positive",
                   "negative": "negative", "positive": "positive"}


def decode_bytes(raw: bytes, name: str = "the file") -> str:
    """Bytes -> text: UTF-8 (BOM or not), UTF-16 with a BOM, else cp1252 / latin-1. Binary is refused."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError as error:
            raise UserError(f"{name}: starts like UTF-16 text but does not decode ({error.reason}).") from error
    if b"\x00" in raw[:65536]:
        raise UserError(f"{name}: looks like a binary file, not text (it contains NUL bytes).")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    try:
        return raw.decode("cp1252")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def read_text_file(path: str | Path, max_bytes: int = MAX_TEXT_FILE_BYTES) -> str:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file.")
    size = path.stat().st_size
    if size > max_bytes:
        raise UserError(f"{path.name}: {size / 2**20:.1f} MB is more than the {max_bytes / 2**20:.0f} MB allowed.")
    return decode_bytes(path.read_bytes(), path.name)


@dataclass
class LabelledText:
    texts: list[str]
    labels: list[str] | None  # label names as written (negative/positive for 0/1 sentiment files); None: no label column
    text_column: str
    label_column: str | None
    skipped: list[str] = field(default_factory=list)  # "row 7: empty text", ...

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.labels or []))

    def counts(self) -> dict[str, int]:
        return {name: (self.labels or []).count(name) for name in self.classes}


def _pick(columns: list[str], wanted: tuple[str, ...], what: str, name: str) -> str:
    lowered = {c.strip().lower(): c for c in columns}
    for candidate in wanted:
        if candidate in lowered:
            return lowered[candidate]
    raise UserError(f"{name}: no {what} column. The header has {', '.join(repr(c) for c in columns) or 'no columns'}; "
                    f"name one of them {' or '.join(repr(w) for w in wanted[:3])}.")


def columns_by_content(rows: list[list[str]]) -> tuple[int, int, bool] | None:
    """(text column, label column, whether the first line is a row) of a two-column file whose header names neither:
    the label column is the one that repeats its values (fewer distinct ones than the other, and than its rows).
    The first line is a row, not a header, when its label is one of those values, as in UCI's "sentence<TAB>0"
    files: a header's name is not a value of its own column. None when the values do not tell."""
    body = [row for row in rows[1:] if len(row) == 2 and row[0].strip() and row[1].strip()]
    values = [{row[i].strip().lower() for row in body} for i in (0, 1)]
    label = 0 if len(values[0]) < len(values[1]) else 1
    if len(values[label]) == len(values[1 - label]) or len(values[label]) >= len(body):
        return None
    return 1 - label, label, rows[0][label].strip().lower() in values[label]


# TSV files such as GLUE's contain bare quotes inside sentences: read them without quote handling
QUOTING = {"\t": csv.QUOTE_NONE, ",": csv.QUOTE_MINIMAL, ";": csv.QUOTE_MINIMAL}
csv.field_size_limit(10 * 2**20)


def detect_delimiter(lines: list[str], sample: int = 200) -> str:
    """Tab, comma or semicolon: the one that splits the first lines into the same number (two or more) of fields
    most often. The first line alone can mislead: UCI's "A very, very, very slow-moving, aimless movie...<TAB>0"
    has four commas and one tab. Ties go to the tab, then the comma."""
    def agreement(delimiter: str) -> float:
        counts = Counter(len(row) for row in csv.reader(lines[:sample], delimiter=delimiter, quoting=QUOTING[delimiter]) if row)
        fields, times = counts.most_common(1)[0] if counts else (1, 0)
        return times / counts.total() if fields >= 2 else 0.0

    return max(QUOTING, key=agreement)  # max keeps the first of equals


def parse_labelled_text(content: str, name: str = "the file", sentiment: bool = False,
                        labels_required: bool = True) -> LabelledText:
    """CSV or TSV (the delimiter read from the first lines, detect_delimiter) -> texts and label names; in a two-column file with other names,
    or none, the values tell text from label (columns_by_content). Rows with an empty text or label are skipped
    and reported. With `sentiment`, labels 0/1/neg/pos are read as negative/positive. Without `labels_required`,
    a file with no label column gives its texts and labels=None."""
    content = content.lstrip("\ufeff")
    lines = content.splitlines()
    if not lines or not lines[0].strip():
        raise UserError(f"{name}: the file is empty or its first line (the header) is blank.")
    delimiter = detect_delimiter(lines)
    try:
        rows = list(csv.reader(io.StringIO(content), delimiter=delimiter, quoting=QUOTING[delimiter]))
    except csv.Error as error:
        raise UserError(f"{name}: not a readable CSV/TSV file ({error}).") from error
    header = [column.strip() for column in rows[0]]
    known_text = [c for c in header if c.lower() in TEXT_COLUMNS]
    known_label = [c for c in header if c.lower() in LABEL_COLUMNS]
    by_content = len(header) == 2 and labels_required and not known_text + known_label and columns_by_content(rows)
    headerless = bool(by_content) and by_content[2]
    if by_content:
        if headerless or header[0] == header[1]:  # the columns are named by their place
            header = ["column 1", "column 2"]
        if headerless:
            rows = [header, *rows]
        text_column, label_column = header[by_content[0]], header[by_content[1]]
    elif len(header) == 2 and labels_required and len(set(header)) == 2 and len(known_text) + len(known_label) == 1:
        # two columns and one has a name we know (review,verdict or score,comment): the other is the other one
        other = header[1 - header.index((known_text or known_label)[0])]
        text_column, label_column = (known_text[0], other) if known_text else (other, known_label[0])
    else:
        text_column = _pick(header, TEXT_COLUMNS, "text", name)
        has_labels = labels_required or bool(known_label)
        label_column = _pick(header, LABEL_COLUMNS, "label", name) if has_labels else None
    ti = header.index(text_column)
    li = header.index(label_column) if label_column else ti
    texts, labels, skipped = [], [], []
    for number, row in enumerate(rows[1:], start=1 if headerless else 2):  # the file's own line numbers
        if not any(cell.strip() for cell in row):
            continue  # blank line
        if len(row) <= max(ti, li):
            skipped.append(f"row {number}: {len(row)} field(s), expected {len(header)}")
            continue
        text, label = row[ti].strip(), row[li].strip()
        if not text:
            skipped.append(f"row {number}: empty text")
            continue
        if not label:
            skipped.append(f"row {number}: empty label")
            continue
        if sentiment and label_column:
            if label.lower() not in SENTIMENT_NAMES:
                skipped.append(f"row {number}: label {label[:20]!r} is not 0/1 or negative/positive")
                continue
            label = SENTIMENT_NAMES[label.lower()]
        texts.append(text)
        labels.append(label)
    if not texts:
        reasons = "; ".join(skipped[:5])
        raise UserError(f"{name}: no usable rows{f' ({reasons})' if reasons else ''}.")
    return LabelledText(texts, labels if label_column else None, text_column, label_column, skipped)


def read_labelled_text(path: str | Path, sentiment: bool = False) -> LabelledText:
    path = Path(path)
    return parse_labelled_text(read_text_file(path), path.name, sentiment=sentiment)
