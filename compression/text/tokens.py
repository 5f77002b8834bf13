"""The teacher's tokenizer as served (truncation at the model's length, no padding) and token arrays.

A checkpoint's `tokenizer.json` may pad every input to a fixed length or truncate at another limit
than the model is used with (all-MiniLM-L6-v2's pads to 128 while sentence-transformers runs it at
256). The copy written beside the served model says what the teacher was measured with: truncation
at `max_length` (special tokens included) and no padding; batches are padded to their longest row
with the folder's pad id (0 for BERT, 1 for RoBERTa) and `attention_mask` 0 on the padding.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from compression.errors import UsageError

__all__ = ["encode", "load_tokenizer", "serving_tokenizer_json"]


def serving_tokenizer_json(source: Path, max_length: int) -> str:
    """`source` (a tokenizer.json) with truncation at `max_length` and padding turned off."""
    try:
        spec = json.loads(Path(source).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{source}: not a readable tokenizer.json ({exc}); save the tokenizer again") from None
    spec["truncation"] = {"direction": "Right", "max_length": int(max_length),
                          "strategy": "LongestFirst", "stride": 0}
    spec["padding"] = None
    return json.dumps(spec, ensure_ascii=False)


def load_tokenizer(source: Path, max_length: int) -> Tokenizer:
    """The tokenizer as served: truncation at `max_length`, no padding."""
    try:
        return Tokenizer.from_str(serving_tokenizer_json(source, max_length))
    except Exception as exc:  # the tokenizers library raises plain Exceptions for bad specs
        if isinstance(exc, UsageError):
            raise
        raise UsageError(f"{source}: the tokenizers library cannot load it ({exc}); "
                         "save the tokenizer again") from None


def encode(tokenizer: Tokenizer, sentences: list[str], pad_id: int, length: int | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    """`input_ids`, `attention_mask` (int64, [n, length]), right-padded with `pad_id`.

    `length` defaults to the longest row; rows longer than `length` are cut (losing their end token).
    """
    encodings = tokenizer.encode_batch(sentences)
    longest = max((len(e.ids) for e in encodings), default=1)
    length = length or longest
    ids = np.full((len(sentences), length), pad_id, dtype=np.int64)
    mask = np.zeros((len(sentences), length), dtype=np.int64)
    for row, enc in enumerate(encodings):
        n = min(len(enc.ids), length)
        ids[row, :n] = enc.ids[:n]
        mask[row, :n] = 1
    return ids, mask
