"""Held-out English from another domain: prose sentences of the Python 3.11 documentation (PSF licence).

Source: the reStructuredText sources that Debian's `python3.11-doc` package ships beside its HTML
(`/usr/share/doc/python3.11/html/_sources/**/*.rst.txt`; version 3.11.2-6+deb12u9 for the shipped file).
`python -m compression.text.otherdomain SOURCES_DIR OUT_DIR` regenerates
`OUT_DIR/python_docs.txt`: prose paragraphs only (no code, tables, directives' code bodies or headings),
cut into sentences; kept are plain-English sentences of 6 to 40 words with no inline markup, code
names or non-ASCII characters, that start with a capital letter and end in `.`, `?` or `!`, and that
are not in the WordNet corpus files beside the output. Of those, the 1,500 with the smallest SHA-256
are kept (a fixed, version-independent sample), sorted. The licence notice is
`compression/corpus/PYTHON_DOCS_LICENSE.txt`.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = ["COUNT", "OUT_FILE", "SECTIONS", "doc_sentences", "extract_sentences", "main", "rst_paragraphs",
           "split_sentences"]

OUT_FILE = "python_docs.txt"
COUNT = 1500
# Top-level folders of `_sources` that are read; left out: the C API and the legacy distutils/install
# manuals (C declarations and build options) and the licence/about/copyright pages.
SECTIONS = ("distributing", "extending", "faq", "glossary.rst.txt", "howto", "installing", "library",
            "reference", "tutorial", "using", "whatsnew")
WORDNET_FILES = ("wordnet_examples.txt", "wordnet_glosses.txt")

# Directives whose indented body is prose; the body of any other directive (code-block, index,
# toctree, productionlist, table, comments, ...) is skipped.
_PROSE_DIRECTIVES = frozenset({
    "abstractmethod", "admonition", "attention", "attribute", "audit-event", "availability", "caution",
    "class", "classmethod", "cmdoption", "coroutinefunction", "coroutinemethod", "danger", "data",
    "decorator", "decoratormethod", "deprecated", "deprecated-removed", "describe", "envvar", "exception",
    "function", "glossary", "hint", "impl-detail", "important", "method", "module", "note", "opcode",
    "option", "rubric", "seealso", "sidebar", "staticmethod", "tip", "topic", "versionadded",
    "versionchanged", "warning"})
_DIRECTIVE = re.compile(r"\.\.\s+([\w:-]+)::")
_BULLET = re.compile(r"(?:[-*+]|#\.|\d+\.|\(\d+\))\s+")
_NOT_PROSE_START = (">>>", "..", "|", "+-", "+=", ":", "$", "%")
_ABBREVIATIONS = frozenset({"e.g.", "i.e.", "etc.", "vs.", "Mr.", "Dr.", "cf.", "approx.", "No.", "St."})
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_MARKUP = frozenset("`*_|<>[]{}=\\@#$%^~/")


def _is_rule(line: str) -> bool:
    """A heading underline/overline or a simple-table border: no letters or digits at all."""
    return not re.search(r"[A-Za-z0-9]", line)


def _blocks(text: str) -> Iterator[tuple[int, list[str]]]:
    """(indent, lines) of each paragraph; a directive or comment line is a block of its own, and the
    indented body of a comment or non-prose directive is skipped."""
    skip_deeper: int | None = None
    para: list[str] = []
    indent = cont_indent = 0
    for raw in text.splitlines():
        if not raw.strip():
            if para:
                yield indent, para
            para = []
            continue
        ind, line = len(raw) - len(raw.lstrip()), raw.strip()
        if skip_deeper is not None:
            if ind > skip_deeper:
                continue
            skip_deeper = None
        new_item = cont_indent != indent and ind == indent and _BULLET.match(line)
        if para and ind in (indent, cont_indent) and not new_item:
            para.append(line)
            continue
        if para:
            yield indent, para
            para = []
        if line.startswith(".."):
            match = _DIRECTIVE.match(line)
            if not match or match.group(1) not in _PROSE_DIRECTIVES:
                skip_deeper = ind
            yield ind, [line]  # a block of its own: it ends any literal block above it
            continue
        bullet = _BULLET.match(line)
        indent, cont_indent, para = ind, ind + (bullet.end() if bullet else 0), [line]
    if para:
        yield indent, para


def rst_paragraphs(text: str) -> list[str]:
    """The prose paragraphs of one reStructuredText file, each joined into one line.

    Left out: literal blocks (the indented text after a paragraph ending in `::`), headings, tables,
    doctests, field lists, comments and the bodies of non-prose directives. List bullets are removed.
    """
    found: list[str] = []
    literal_above: int | None = None
    for indent, lines in _blocks(text):
        if literal_above is not None and indent > literal_above:
            continue
        directive = lines[0].startswith("..")
        literal_above = indent if lines[-1].endswith("::") and not directive else None
        if directive:
            continue
        if _is_rule(lines[0]) or (len(lines) > 1 and _is_rule(lines[1])):
            continue
        if lines[0].startswith(_NOT_PROSE_START):
            continue
        found.append(" ".join([_BULLET.sub("", lines[0], count=1), *lines[1:]]))
    return found


def split_sentences(paragraph: str) -> list[str]:
    """`paragraph` cut after `.`, `!` or `?` followed by a capital, except after e.g., i.e., etc.
    and after a name's initial."""
    parts, start = [], 0
    for match in _SENTENCE_END.finditer(paragraph):
        words = paragraph[start:match.start()].split()
        initial = (len(words) > 1 and re.fullmatch(r"[A-Z]\.", words[-1]) is not None
                   and words[-2][0].isupper())
        if words and (words[-1] in _ABBREVIATIONS or initial):
            continue  # "e.g. Foo", "Fred L. Drake" (but "written in C. The" is cut)
        parts.append(paragraph[start:match.start()].strip())
        start = match.end()
    parts.append(paragraph[start:].strip())
    return [part for part in parts if part]


def _plain_sentence(sentence: str) -> bool:
    """Plain English: 6-40 words, capital first, final `.?!`, ASCII, no markup or code-like words."""
    if not sentence.isascii() or any(ch in _MARKUP for ch in sentence):
        return False
    if not sentence[0].isupper() or sentence[-1] not in ".?!" or sentence.endswith(".."):
        return False
    if re.search(r"\b[A-Z]\.$", sentence):  # maybe cut at an initial: "by John W. Ratcliff and D."
        return False
    words = sentence.split()
    if not 6 <= len(words) <= 40:
        return False
    if sentence.count("(") != sentence.count(")") or sentence.count('"') % 2:
        return False
    for word in words:
        core = word.strip("()\"',;:.!?")
        if "." in core or re.search(r"[a-z][A-Z]", core) or re.search(r"\w\(", word):
            return False  # dotted names, camelCase, calls
    return True


def doc_sentences(sources_dir: Path, sections: Iterable[str] = SECTIONS) -> list[str]:
    """Every distinct plain sentence (spaces collapsed) of the `.rst.txt` files under `sources_dir`'s
    `sections`, sorted."""
    found: set[str] = set()
    for section in sections:
        root = Path(sources_dir) / section
        files = [root] if root.is_file() else sorted(root.rglob("*.rst.txt"))
        for path in files:
            for paragraph in rst_paragraphs(path.read_text(encoding="utf-8")):
                found.update(" ".join(s.split()) for s in split_sentences(paragraph) if _plain_sentence(s))
    return sorted(found)


def _normal(sentence: str) -> str:
    return " ".join(sentence.lower().rstrip(".?!").split())


def extract_sentences(sources_dir: Path, exclude: Iterable[str] = (), count: int = COUNT) -> list[str]:
    """`count` plain sentences of the Python docs, none equal (case and final stop aside) to an
    `exclude` line: those with the smallest SHA-256 of their text, sorted."""
    excluded = {_normal(line) for line in exclude}
    pool = [s for s in doc_sentences(sources_dir) if _normal(s) not in excluded]
    if len(pool) < count:
        raise ValueError(f"{sources_dir}: only {len(pool)} plain sentences, {count} wanted")
    chosen = sorted(pool, key=lambda s: hashlib.sha256(s.encode("utf-8")).hexdigest())[:count]
    return sorted(chosen)


def main(argv: list[str] | None = None) -> int:
    """`python -m compression.text.otherdomain SOURCES_DIR OUT_DIR`: write OUT_DIR/python_docs.txt."""
    parser = argparse.ArgumentParser(prog="python -m compression.text.otherdomain", description=(
        "Regenerate python_docs.txt from the _sources folder of Debian's python3.11-doc "
        "(usr/share/doc/python3.11/html/_sources); WordNet lines in OUT_DIR are left out."))
    parser.add_argument("sources_dir", type=Path, help="the html/_sources folder (*.rst.txt)")
    parser.add_argument("out_dir", type=Path, help="folder to write python_docs.txt into (the corpus folder)")
    parser.add_argument("--count", type=int, default=COUNT)
    args = parser.parse_args(argv)
    if not (args.sources_dir / "tutorial").is_dir():
        print(f"{args.sources_dir}: not a Python documentation _sources folder", file=sys.stderr)
        return 2
    exclude: list[str] = []
    for name in WORDNET_FILES:
        if (args.out_dir / name).is_file():
            exclude += (args.out_dir / name).read_text(encoding="utf-8").splitlines()
    lines = extract_sentences(args.sources_dir, exclude, args.count)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / OUT_FILE).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    print(f"{args.out_dir / OUT_FILE}: {len(lines)} lines (excluding {len(exclude)} WordNet lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
