"""Text for the build: the built-in WordNet sentences or a user's file (txt, jsonl, csv), labelled or not, split.

The built-in corpus (`None` or "wordnet", embedding teachers only) is the union of every
`compression/corpus/wordnet_*.txt` (WordNet 3.0 usage examples, and glosses where present; see
`compression/corpus/README.md`), files in name order, lines de-duplicated in first-seen order.

User files (`--data`):

    FILE.txt     one sentence a line; for a classifier teacher these are unlabelled, and quality is
                 agreement with the teacher
    FILE.jsonl   one JSON object a line: {"text": "...", "label": ...}; label optional (then on every
                 line or on none), a name from the teacher's id2label or an integer index
    FILE.csv     a header row with a `text` column and optionally a `label` column (csv module dialect:
                 quotes around fields with commas)

Splits are fixed by the seed: a seeded shuffle, then held-out test (20%, at most 2,000), validation
(10%, at most 1,000) and the rest for training; labelled data is stratified, so every split has the
label proportions of the whole. The held-out test split is never used for calibration, training or
selection. Every problem is a one-line `UsageError` naming the file, the line and the fix.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compression.errors import UsageError

__all__ = ["BUILTIN", "CORPUS_DIR", "MIN_SENTENCES", "Sentences", "TextData", "builtin_files",
           "load_sentences", "load_text", "read_builtin", "split_sentences", "split_text"]

CORPUS_DIR = Path(__file__).resolve().parent.parent / "corpus"
BUILTIN = "wordnet"
TEST_MAX, VAL_MAX = 2000, 1000
TEST_FRACTION, VAL_FRACTION = 0.2, 0.1
MIN_SENTENCES = 50
_FORMATS = "'wordnet' (built-in), FILE.txt (one sentence a line), FILE.jsonl ({\"text\", \"label\"}) or FILE.csv (text,label)"


@dataclass(frozen=True)
class Sentences:
    """A corpus cut into train / validation / held-out test."""

    name: str
    source: str
    seed: int
    train: list[str]
    validation: list[str]
    test: list[str]

    def sizes(self) -> dict[str, int]:
        """Sentences per split, as recorded in the manifest."""
        return {"train": len(self.train), "validation": len(self.validation), "test": len(self.test)}


@dataclass(frozen=True)
class TextData:
    """Sentences cut into train / validation / held-out test, with label indices when the data has them."""

    name: str
    source: str
    seed: int
    train: list[str]
    validation: list[str]
    test: list[str]
    y_train: np.ndarray | None = None
    y_val: np.ndarray | None = None
    y_test: np.ndarray | None = None

    @property
    def labelled(self) -> bool:
        return self.y_train is not None

    def sizes(self) -> dict[str, int]:
        """Sentences per split, as recorded in the manifest."""
        return {"train": len(self.train), "validation": len(self.validation), "test": len(self.test)}


def builtin_files() -> list[Path]:
    """The files of the built-in corpus: every `compression/corpus/wordnet_*.txt`, in name order."""
    return sorted(CORPUS_DIR.glob("wordnet_*.txt"))


def _read_lines(path: Path) -> list[str]:
    """Non-empty, stripped, de-duplicated lines in first-seen order."""
    seen: dict[str, None] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot be read ({exc.strerror})") from None
    for line in text.splitlines():
        line = line.strip()
        if line:
            seen.setdefault(line, None)
    return list(seen)


def read_builtin() -> tuple[list[str], str]:
    """(sentences, source description) of the built-in corpus."""
    files = builtin_files()
    if not files:
        raise UsageError(f"the built-in corpus (wordnet_*.txt in {CORPUS_DIR}) is missing from this checkout")
    seen: dict[str, None] = {}
    for path in files:
        for line in _read_lines(path):
            seen.setdefault(line, None)
    names = ", ".join(f"compression/corpus/{p.name}" for p in files)
    return list(seen), f"Princeton WordNet 3.0 sentences (WordNet 3.0 licence; {names})"


def _split_order(n: int, seed: int, y: np.ndarray | None) -> np.ndarray:
    """A seeded order of n rows; with labels, every prefix holds each label in its overall proportion.

    Each label's rows (in shuffled order) get evenly spaced keys (rank + offset) / count, the offset
    drawn per label; sorting all rows by key interleaves the labels proportionally.
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    if y is None:
        return order
    keys = np.zeros(n)
    shuffled = y[order]
    for label in np.unique(y):
        members = order[shuffled == label]
        keys[members] = (np.arange(len(members)) + rng.random()) / len(members)
    return order[np.argsort(keys[order], kind="stable")]


def split_text(texts: list[str], seed: int, name: str, source: str, y: np.ndarray | None = None) -> TextData:
    """Seeded (and, with labels, stratified) test (20%, at most 2,000), validation (10%, at most
    1,000) and train splits."""
    if len(texts) < MIN_SENTENCES:
        raise UsageError(f"{name}: {len(texts)} distinct sentences; need at least {MIN_SENTENCES}")
    order = _split_order(len(texts), seed, y)
    n_test = min(TEST_MAX, int(len(texts) * TEST_FRACTION))
    n_val = min(VAL_MAX, int(len(texts) * VAL_FRACTION))
    parts = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
    test, val, train = ([texts[i] for i in part] for part in parts)
    if y is None:
        return TextData(name, source, seed, train, val, test)
    return TextData(name, source, seed, train, val, test, y_train=y[parts[2]].astype(np.int64),
                    y_val=y[parts[1]].astype(np.int64), y_test=y[parts[0]].astype(np.int64))


def split_sentences(sentences: list[str], seed: int, name: str, source: str) -> Sentences:
    """Seeded shuffle, then test (20%, at most 2,000), validation (10%, at most 1,000), train."""
    data = split_text(sentences, seed, name, source)
    return Sentences(data.name, data.source, data.seed, data.train, data.validation, data.test)


def load_sentences(spec: str | None, seed: int) -> Sentences:
    """Unlabelled sentences for an embedding teacher: the built-in corpus or a user file."""
    data = load_text(spec, seed, "embedding", None)
    return Sentences(data.name, data.source, data.seed, data.train, data.validation, data.test)


def _label_index(value: object, labels: list[str], where: str) -> int:
    if isinstance(value, bool):
        value = str(value).lower()
    if isinstance(value, str):
        if value in labels:
            return labels.index(value)
        if value.strip().lstrip("-").isdigit():
            value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and 0 <= value < len(labels):
        return value
    raise UsageError(f"{where}: label {value!r} is not one of the teacher's labels ({', '.join(labels)}) "
                     f"nor an index 0..{len(labels) - 1}")


def _rows_jsonl(path: Path) -> list[tuple[int, str, object]]:
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path}:{number}: not valid JSON ({exc.msg}); write one object a line, "
                             'e.g. {"text": "great film", "label": "positive"}') from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise UsageError(f"{path}:{number}: expected an object with a string \"text\", "
                             'e.g. {"text": "great film", "label": "positive"}')
        rows.append((number, row["text"], row.get("label")))
    return rows


def _rows_csv(path: Path) -> list[tuple[int, str, object]]:
    rows = []
    try:
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            fields = [name.strip() for name in reader.fieldnames or []]
            if "text" not in fields:
                raise UsageError(f"{path}:1: no 'text' column in the header ({','.join(fields) or 'empty'}); "
                                 "the first row must name the columns, e.g. text,label")
            reader.fieldnames = fields
            for row in reader:
                text = row.get("text")
                if text is None:
                    raise UsageError(f"{path}:{reader.line_num}: no value in the 'text' column; "
                                     "quote fields that contain commas")
                label = row.get("label")
                rows.append((reader.line_num, text, label if label not in (None, "") else None))
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from None
    except csv.Error as exc:
        raise UsageError(f"{path}: not readable as CSV ({exc}); write a header row text,label") from None
    return rows


def _labelled(path: Path, rows: list[tuple[int, str, object]], task: str, labels: list[str] | None
              ) -> tuple[list[str], np.ndarray | None]:
    """De-duplicated texts (first occurrence wins) and their label indices (None when unlabelled)."""
    use_labels = task == "classification"
    if use_labels and not labels:
        raise ValueError("a classification task needs the teacher's labels")
    has = None
    seen: dict[str, int | None] = {}
    for number, text, label in rows:
        text = text.strip()
        if not text:
            continue
        if use_labels:
            if has is None:
                has = label is not None
            elif has != (label is not None):
                raise UsageError(f"{path}:{number}: {'no label' if label is None else 'a label'} here "
                                 f"but {'not ' if not has else ''}on the rows before; label every row or none")
        index = _label_index(label, labels, f"{path}:{number}") if use_labels and label is not None else None
        seen.setdefault(text, index)
    texts = list(seen)
    if use_labels and has:
        return texts, np.array([seen[t] for t in texts], dtype=np.int64)
    return texts, None


def load_text(spec: str | None, seed: int, task: str, labels: list[str] | None) -> TextData:
    """The corpus named by `spec` (see the module docstring), split; labels only for classifiers."""
    if task not in ("embedding", "classification"):
        raise ValueError(f"task {task!r}: embedding or classification")
    if spec in (None, BUILTIN):
        if task == "classification":
            raise UsageError("--data: a classifier teacher needs its own text: FILE.jsonl or FILE.csv "
                             "(text,label), or FILE.txt (unlabelled; quality is agreement with the teacher)")
        sentences, source = read_builtin()
        return split_text(sentences, seed, BUILTIN, source)
    path = Path(spec)
    suffix = path.suffix.lower()
    if suffix not in (".txt", ".jsonl", ".csv"):
        raise UsageError(f"--data {spec!r}: give {_FORMATS}")
    if not path.is_file():
        raise UsageError(f"--data {spec!r}: no such file")
    if suffix == ".txt":
        texts, y = _read_lines(path), None
    else:
        rows = _rows_jsonl(path) if suffix == ".jsonl" else _rows_csv(path)
        texts, y = _labelled(path, rows, task, labels)
    kind = "labelled " if y is not None else ""
    return split_text(texts, seed, path.stem, f"user file {path.name} ({kind}{suffix[1:]})", y)
