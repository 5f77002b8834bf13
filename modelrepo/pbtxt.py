"""A small reader of protobuf text format (Triton's `config.pbtxt`) into dicts of lists, with no proto schema."""

from __future__ import annotations

import re
from typing import Any

from modelrepo import ManifestError

__all__ = ["parse_pbtxt"]

# Strings (either quote, with escapes), numbers, identifiers (enum values, true/false), punctuation.
TOKEN = re.compile(r"""\s+|\#[^\n]*|"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*'|[-+]?[0-9][0-9a-zA-Z_.+-]*|[-+]?\.[0-9]+"""
                   r"""|[A-Za-z_][A-Za-z0-9_.]*|[{}\[\]<>:,;]""")
CLOSE = {"{": "}", "<": ">"}
MAX_DEPTH = 64  # a config nests a few levels; deeper input is hostile, refused before recursion runs out


def _tokens(text: str, where: str) -> list[str]:
    out, pos = [], 0
    while pos < len(text):
        match = TOKEN.match(text, pos)
        if match is None:
            line = text.count("\n", 0, pos) + 1
            raise ManifestError(f"{where}: line {line}: unexpected {text[pos:pos + 20]!r}; expected protobuf text format")
        token = match.group()
        if not token.isspace() and not token.startswith("#"):
            out.append(token)
        pos = match.end()
    return out


ESCAPE = re.compile(r"\\([0-7]{1,3}|x[0-9a-fA-F]{1,2}|.)")
SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v"}


def _unescape(match: re.Match[str]) -> str:
    code = match.group(1)
    if code[0] in "01234567":
        return chr(int(code, 8) & 0xFF)
    if code[0] == "x" and len(code) > 1:
        return chr(int(code[1:], 16))
    return SIMPLE_ESCAPES.get(code, code)  # \\ \" \' and any other character stand for themselves


def _scalar(token: str, where: str) -> Any:
    if token[0] in "\"'":
        try:  # protobuf's C-style escapes (\", \n, \101, \x41) on the UTF-8 bytes of the text
            raw = ESCAPE.sub(_unescape, token[1:-1].encode("utf-8").decode("latin-1"))
            return raw.encode("latin-1").decode("utf-8")
        except (UnicodeError, ValueError):
            raise ManifestError(f"{where}: string {token[:30]!r} is not valid UTF-8 with C-style escapes") from None
    if re.fullmatch(r"[-+]?[0-9]+", token):
        return int(token)
    if re.fullmatch(r"[-+]?([0-9]*\.[0-9]*|[0-9]+)([eE][-+]?[0-9]+)?f?", token):
        return float(token.rstrip("f"))
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", token):
        return {"true": True, "false": False}.get(token, token)  # enum values stay names: TYPE_FP32
    raise ManifestError(f"{where}: {token!r:.30} is not a value")


class _Reader:
    def __init__(self, tokens: list[str], where: str) -> None:
        self.tokens, self.pos, self.where = tokens, 0, where

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise ManifestError(f"{self.where}: ends in the middle of a message; a '}}' or value is missing")
        self.pos += 1
        return token

    def message(self, close: str | None, depth: int) -> dict[str, list[Any]]:
        """Fields until `close` (None: end of text); every field is a list, as repeated fields need."""
        if depth > MAX_DEPTH:
            raise ManifestError(f"{self.where}: messages nested deeper than {MAX_DEPTH} levels")
        fields: dict[str, list[Any]] = {}
        while (token := self.peek()) != close:
            name = self.take()
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ManifestError(f"{self.where}: expected a field name, got {name!r:.30}")
            separated = self.peek() == ":"
            if separated:
                self.take()
            values = fields.setdefault(name, [])
            if self.peek() == "[":
                self.take()
                while self.peek() != "]":
                    values.append(self.value(name, True, depth))  # `dims [1, 2]`: lenient, as Triton's readers are
                    if self.peek() == ",":
                        self.take()
                self.take()
            else:
                values.append(self.value(name, separated, depth))
            if self.peek() in (",", ";"):
                self.take()
        if token is not None:
            self.take()
        return fields

    def value(self, name: str, separated: bool, depth: int) -> Any:
        token = self.take()
        if token in CLOSE:
            return self.message(CLOSE[token], depth + 1)
        if not separated:
            raise ManifestError(f"{self.where}: field '{name}' needs ':' before its value {token!r:.30}")
        return _scalar(token, self.where)


def parse_pbtxt(text: str, where: str) -> dict[str, list[Any]]:
    """The messages of `text` as {field: [values]}; nested messages are dicts of the same shape.
    ManifestError names the line or field that is not text format."""
    reader = _Reader(_tokens(text, where), where)
    return reader.message(None, 0)
