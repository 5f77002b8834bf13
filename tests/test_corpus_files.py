"""The shipped corpus files (counts, encoding, no duplicates or overlaps, licences) and their extractors."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

import pytest

from compression.text import otherdomain, wordnet

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "compression" / "corpus"
# The counts documented in compression/corpus/README.md.
COUNTS = {"wordnet_examples.txt": 29_422, "wordnet_glosses.txt": 101_724, "python_docs.txt": 1_500}
WORDNET = ("wordnet_examples.txt", "wordnet_glosses.txt")


def _lines(name: str) -> list[str]:
    return (CORPUS / name).read_text(encoding="utf-8").splitlines()


def _normal(line: str) -> str:
    return " ".join(line.lower().rstrip(".?!").split())


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_corpus_file_is_utf8_sorted_distinct_and_has_the_documented_count(name: str) -> None:
    raw = (CORPUS / name).read_bytes()
    text = raw.decode("utf-8")  # raises if not UTF-8
    assert text.endswith("\n") and "\r" not in text
    lines = text.splitlines()
    assert len(lines) == COUNTS[name]
    assert f"{COUNTS[name]:,}" in (CORPUS / "README.md").read_text(encoding="utf-8")
    assert len(set(lines)) == len(lines)
    assert lines == sorted(lines)
    assert all(line and line == line.strip() and line.isascii() for line in lines)
    assert all(line[0].isalpha() and len(line.split()) >= 5 for line in lines)


def test_the_corpus_files_share_no_line() -> None:
    examples, glosses = set(_lines("wordnet_examples.txt")), set(_lines("wordnet_glosses.txt"))
    assert not examples & glosses
    wordnet_lines = {_normal(line) for line in examples | glosses}
    other = [line for line in _lines("python_docs.txt") if _normal(line) in wordnet_lines]
    assert other == []


def test_the_other_domain_lines_are_plain_sentences() -> None:
    for line in _lines("python_docs.txt"):
        assert line[0].isupper() and line[-1] in ".?!" and 6 <= len(line.split()) <= 40, line
        assert not set(line) & set("`*_|<>[]{}=\\@#$%^~/"), line


def test_licences_travel_with_the_files_and_are_packaged() -> None:
    wordnet_licence = (CORPUS / "WORDNET_LICENSE.txt").read_text(encoding="utf-8")
    assert "WordNet 3.0 Copyright 2006 by Princeton University" in wordnet_licence
    psf = (CORPUS / "PYTHON_DOCS_LICENSE.txt").read_text(encoding="utf-8")
    assert "PSF LICENSE AGREEMENT FOR PYTHON" in psf
    assert "Python Software Foundation" in psf and "Summary of the changes" in psf
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))[
        "tool"]["setuptools"]["package-data"]["compression"]
    for path in CORPUS.iterdir():
        rel = path.relative_to(ROOT / "compression").as_posix()
        assert any(fnmatch.fnmatch(rel, glob) for glob in globs), f"{rel} is not packaged"


# --- the WordNet extractors, on a tiny dict folder in the real `data.<pos>` line format ---------------

_HEADER = ("  1 This software and database is being provided to you, the LICENSEE, by  \n"
           '  2 Princeton University "AS IS" | with no warranty of any kind; "a quoted header part here"  \n')
_NOUNS = [
    '04122825 06 n 01 board 0 001 @ 04341686 n 0000 | a long thin board with one edge thicker than the other;'
    ' used as siding by lapping one board over the board below; "the old house had weathered siding boards";'
    ' "he nailed the boards to the wall"  ',
    '05981230 09 n 01 stride 0 000 | significant progress (especially in the phrase "make strides");'
    ' "they made big strides in productivity"  ',
    '06681551 10 n 01 carrot 0 000 | promise of reward as in "carrot and stick"; "used the carrot of'
    ' subsidized housing to get their vote";',
    '05999797 09 n 01 field_theory 0 000 | (physics) a theory that explains a physical phenomenon in terms'
    ' of a field  ',
    '12143676 20 n 02 darnel 0 ryegrass 0 000 | darnel; ryegrass  ',
    '04122826 06 n 01 clapboard 0 000 | a long thin board with one edge thicker than the other  ',
    '05999798 09 n 01 orbit 0 000 | the Earth revolves around the Sun  ',
]
_VERBS = [
    '01835496 38 v 01 travel 0 000 | change location; move, travel, or proceed, also metaphorically;'
    ' "the Earth revolves around the Sun"; "\'tis the season to be jolly"; "go away"  ',
    '01836000 38 v 01 reach 0 000 | reach a goal, e.g., "make the first team"; "We made it!"  ',
]


@pytest.fixture()
def dict_dir(tmp_path: Path) -> Path:
    for pos, lines in (("noun", _NOUNS), ("verb", _VERBS), ("adj", []), ("adv", [])):
        (tmp_path / f"data.{pos}").write_text(_HEADER + "".join(line + "\n" for line in lines),
                                              encoding="latin-1")
    return tmp_path


def test_extract_wordnet_examples(dict_dir: Path) -> None:
    assert wordnet.extract_wordnet_examples(dict_dir) == [
        "he nailed the boards to the wall",
        "the Earth revolves around the Sun",
        "the old house had weathered siding boards",
        "they made big strides in productivity",
        "used the carrot of subsidized housing to get their vote",
    ]
    assert "go away" in wordnet.extract_wordnet_examples(dict_dir, min_words=2)


def test_extract_wordnet_glosses(dict_dir: Path) -> None:
    assert wordnet.extract_wordnet_glosses(dict_dir) == [
        "a long thin board with one edge thicker than the other",
        "move, travel, or proceed, also metaphorically",
        'significant progress (especially in the phrase "make strides")',
        "used as siding by lapping one board over the board below",
    ]
    # fewer words allowed: short clauses appear, dangling "e.g." / "as in" are still cut away
    short = wordnet.extract_wordnet_glosses(dict_dir, min_words=2)
    assert {"change location", "reach a goal", "promise of reward"} <= set(short)
    assert "the Earth revolves around the Sun" not in short  # it is a usage example


def test_wordnet_main_writes_both_files(dict_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert wordnet.main([str(dict_dir), str(out)]) == 0
    assert (out / "wordnet_examples.txt").read_text(encoding="utf-8").splitlines() == \
        wordnet.extract_wordnet_examples(dict_dir)
    assert (out / "wordnet_glosses.txt").read_text(encoding="utf-8").endswith("over the board below\n")
    assert wordnet.main([str(tmp_path / "missing"), str(out)]) == 2


# --- the other-domain extractor, on a tiny reStructuredText tree ----------------------------------------

_RST = """\
.. _tut-intro:

***************
A Small Chapter
***************

Python is an easy to learn and powerful programming language.  It has efficient
high-level data structures, e.g. lists and dictionaries, and a simple approach to
programming.  Call :func:`len` on a sequence to get its length.

For example::

   This literal block is code and must never become a sentence.

.. code-block:: python

   Neither is this block of code in a directive body at all.

.. note::

   The interpreter can be extended with new functions written in other languages.

* Tables and headings are skipped by the extractor as well,
  even when a list item wraps onto a second line.
* Short item.

=====  ==========
Name   Meaning here
=====  ==========
"""


def test_rst_paragraphs_and_sentences() -> None:
    paragraphs = otherdomain.rst_paragraphs(_RST)
    assert not any("literal block" in p or "block of code" in p or "Small Chapter" in p for p in paragraphs)
    assert "Tables and headings are skipped by the extractor as well, even when a list item wraps onto a" \
           " second line." in paragraphs
    assert otherdomain.split_sentences(paragraphs[0])[:2] == [
        "Python is an easy to learn and powerful programming language.",
        "It has efficient high-level data structures, e.g. lists and dictionaries, and a simple approach to"
        " programming.",
    ]


def test_extract_sentences_filters_excludes_and_samples(tmp_path: Path) -> None:
    (tmp_path / "tutorial").mkdir()
    (tmp_path / "tutorial" / "intro.rst.txt").write_text(_RST, encoding="utf-8")
    found = otherdomain.doc_sentences(tmp_path)
    assert found == [
        "Python is an easy to learn and powerful programming language.",
        "Tables and headings are skipped by the extractor as well, even when a list item wraps onto a"
        " second line.",
        "The interpreter can be extended with new functions written in other languages.",
    ]  # markup ("len"), dotted words ("e.g.") and short items are left out
    chosen = otherdomain.extract_sentences(tmp_path, exclude=["python is an easy to learn and powerful"
                                                              " programming language"], count=2)
    assert chosen == found[1:]
    with pytest.raises(ValueError):
        otherdomain.extract_sentences(tmp_path, count=4)
