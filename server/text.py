"""Server-side tokenization: a BYTES `text` input becomes the model's token-id inputs."""

from __future__ import annotations

import os

# The tokenizers library encodes batches on its own Rust thread pool, whose spinning threads compete
# with ONNX Runtime for the same cores; the server's batches are small, so encode them in the caller.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from tokenizers import Tokenizer  # noqa: E402  (after the environment is set)

from server.errors import InvalidInput, RepositoryError

__all__ = ["TextEncoder", "TextConfig"]


@dataclass(frozen=True)
class TextConfig:
    """The manifest's `tokenizer` entry."""

    path: Path
    max_length: int
    text_input: str = "text"
    pad_id: int | None = None
    """The id padding gets (RoBERTa: 1); None: the tokenizer's [PAD] token, else 0."""


class TextEncoder:
    """Tokenizes a batch of strings: pads to the longest row, truncates at the model's maximum length."""

    def __init__(self, config: TextConfig, token_inputs: list[str]) -> None:
        try:
            tokenizer = Tokenizer.from_file(str(config.path))
        except Exception as exc:  # the tokenizers library raises its own Exception type
            raise RepositoryError(f"{config.path}: cannot read the tokenizer: {exc}") from None
        tokenizer.enable_truncation(max_length=config.max_length)
        pad_id = config.pad_id if config.pad_id is not None else tokenizer.token_to_id("[PAD]")
        pad_id = 0 if pad_id is None else pad_id
        pad_token = tokenizer.id_to_token(pad_id) or "[PAD]"
        tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token)
        self._tokenizer = tokenizer
        self.config = config
        self.token_inputs = token_inputs

    @staticmethod
    def from_manifest(folder: Path, entry: Mapping[str, Any], token_inputs: list[str]) -> "TextEncoder":
        file = str(entry.get("file", "tokenizer.json"))
        path = (folder / file).resolve()
        if not path.is_relative_to(folder.resolve()):
            raise RepositoryError(f"tokenizer file {file!r} leaves the model folder; refusing to load it")
        pad_id = entry.get("pad_id")
        return TextEncoder(TextConfig(path, int(entry.get("max_length", 256)), str(entry.get("text_input", "text")),
                                      None if pad_id is None else int(pad_id)), token_inputs)

    def encode(self, texts: np.ndarray) -> dict[str, np.ndarray]:
        """BYTES array of shape [n] or [n, 1] -> {input_ids, attention_mask, token_type_ids} as int64 [n, seq]."""
        name = self.config.text_input
        if texts.ndim == 2 and texts.shape[1] == 1:
            texts = texts[:, 0]
        if texts.ndim != 1:
            raise InvalidInput(f"input '{name}': send shape [batch] or [batch, 1] (one string per row), got {list(texts.shape)}")
        strings = []
        for i, item in enumerate(texts):
            try:
                strings.append(item.decode("utf-8") if isinstance(item, (bytes, bytearray)) else str(item))
            except UnicodeDecodeError:
                raise InvalidInput(f"input '{name}': row {i} is not valid UTF-8 text") from None
        encodings = self._tokenizer.encode_batch(strings)
        columns = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        missing = [n for n in self.token_inputs if n not in columns]
        if missing:
            raise RepositoryError(f"the model's inputs {missing} cannot be made from text")
        return {n: columns[n] for n in self.token_inputs}
