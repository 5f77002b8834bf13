"""The teacher's WordPiece tokenizer, as the server will use it, and token arrays for ONNX Runtime.

The checkpoint's `tokenizer.json` truncates at 128 and pads every input to a fixed 128 tokens, but the
model is used with `max_seq_length` 256 (its `sentence_bert_config.json`, which sentence-transformers
applies). The copy written beside the served model says what the teacher was measured with:
truncation at `MAX_LENGTH` and no padding (batches are padded to their longest row, with
`attention_mask` 0 on the padding).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

__all__ = ["MAX_LENGTH", "PAD_ID", "encode", "load_tokenizer", "serving_tokenizer_json"]

MAX_LENGTH = 256
PAD_ID = 0


def serving_tokenizer_json(source: Path, max_length: int = MAX_LENGTH) -> str:
    """`source` (a tokenizer.json) with truncation at `max_length` and padding turned off."""
    spec = json.loads(source.read_text(encoding="utf-8"))
    spec["truncation"] = {"direction": "Right", "max_length": max_length,
                          "strategy": "LongestFirst", "stride": 0}
    spec["padding"] = None
    return json.dumps(spec, ensure_ascii=False)


def load_tokenizer(source: Path, max_length: int = MAX_LENGTH) -> Tokenizer:
    """The tokenizer as served: truncation at `max_length`, no padding."""
    return Tokenizer.from_str(serving_tokenizer_json(source, max_length))


def encode(tokenizer: Tokenizer, sentences: list[str], length: int | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    """`input_ids`, `attention_mask` (int64, [n, length]), right-padded with `PAD_ID`.

    `length` defaults to the longest row; rows longer than `length` are cut (losing their [SEP]).
    """
    encodings = tokenizer.encode_batch(sentences)
    longest = max((len(e.ids) for e in encodings), default=1)
    length = length or longest
    ids = np.full((len(sentences), length), PAD_ID, dtype=np.int64)
    mask = np.zeros((len(sentences), length), dtype=np.int64)
    for row, enc in enumerate(encodings):
        n = min(len(enc.ids), length)
        ids[row, :n] = enc.ids[:n]
        mask[row, :n] = 1
    return ids, mask
