"""BERT-family encoders as one served module (`TextModel`), loaded offline, with a small per-family table.

`TextModel(input_ids, attention_mask)` is exactly what is exported and served:

- embeddings: the encoder's last hidden state, pooled (mean over `attention_mask`, or the first
  token) and L2-normalised when the folder says so, [batch, hidden];
- classifiers: the `*ForSequenceClassification` logits, [batch, labels].

token_type_ids are zeros inside the module where the family has them, so every variant takes exactly
`input_ids` and `attention_mask` (INT64 [-1, -1]).

Structural edits (keeping layers, pruning heads and FFN neurons) go through `FAMILIES`, one row per
`model_type` saying where the layer list lives and, inside a layer, where the Q/K/V projections,
attention output, FFN input and output linears and the head count are (the approach of Optimum's
normalized configs and Torch-Pruning's per-architecture hooks, written here as data). In transformers
5.23 the attention code reshapes with `view(*shape, -1, head_size)`, so it infers the head count from
the projection width; the head-count attributes are still updated so the module describes itself.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from compression.errors import BuildError

if TYPE_CHECKING:
    from compression.text.folder import TextTeacherInfo

__all__ = ["FAMILIES", "Family", "TextModel", "encoder_macs", "encoder_shape", "family_of", "get_module",
           "head_size", "keep_layers", "layer_list", "load_teacher", "parameters", "set_module",
           "without_dropout"]


@dataclass(frozen=True)
class Family:
    """Where things are in one `model_type` (dotted paths; `layers` from the base model, the rest from a layer)."""

    model_type: str
    layers: str
    attention: str
    """The module holding `attention_head_size` and the head-count attributes."""
    query: str
    key: str
    value: str
    attention_out: str
    ffn_in: str
    ffn_out: str
    head_attrs: tuple[str, ...]
    """Head-count attributes on `attention` (updated when heads are pruned)."""
    width_attrs: tuple[str, ...]
    """Attributes on `attention` equal to heads × head size (updated when heads are pruned)."""
    config_layers: str
    """The config key of the layer count (updated by keep_layers)."""
    layer_counters: tuple[str, ...]
    """Module attributes (dotted, from the base model) that also count layers."""
    token_types: bool
    """Whether the embeddings take token_type_ids (then given as zeros)."""


_BERT_LIKE = dict(layers="encoder.layer", attention="attention.self", query="attention.self.query",
                  key="attention.self.key", value="attention.self.value",
                  attention_out="attention.output.dense", ffn_in="intermediate.dense", ffn_out="output.dense",
                  head_attrs=("num_attention_heads",), width_attrs=("all_head_size",),
                  config_layers="num_hidden_layers", layer_counters=(), token_types=True)
FAMILIES: dict[str, Family] = {
    "bert": Family("bert", **_BERT_LIKE),
    "roberta": Family("roberta", **_BERT_LIKE),
    "xlm-roberta": Family("xlm-roberta", **_BERT_LIKE),
    "electra": Family("electra", **_BERT_LIKE),
    "distilbert": Family("distilbert", layers="transformer.layer", attention="attention", query="attention.q_lin",
                         key="attention.k_lin", value="attention.v_lin", attention_out="attention.out_lin",
                         ffn_in="ffn.lin1", ffn_out="ffn.lin2", head_attrs=("n_heads",), width_attrs=(),
                         config_layers="n_layers", layer_counters=("transformer.n_layers",), token_types=False),
}


def get_module(root: nn.Module, path: str) -> nn.Module:
    """`root.a.b.c` for path "a.b.c"."""
    for part in path.split("."):
        root = getattr(root, part)
    return root


def set_module(root: nn.Module, path: str, value: object) -> None:
    """Set `root.a.b.c = value` for path "a.b.c"."""
    *parents, last = path.split(".")
    for part in parents:
        root = getattr(root, part)
    setattr(root, last, value)


class TextModel(nn.Module):
    """A Hugging Face encoder as the served function `(input_ids, attention_mask) → output`."""

    def __init__(self, hf: nn.Module, family: str, task: str, pooling: str | None = None,
                 normalize: bool = False, pad_id: int = 0) -> None:
        super().__init__()
        if family not in FAMILIES:
            raise ValueError(f"family {family!r}: supported {', '.join(FAMILIES)}")
        if task not in ("embedding", "classification"):
            raise ValueError(f"task {task!r}: embedding or classification")
        if task == "embedding" and pooling not in ("mean", "cls"):
            raise ValueError(f"pooling {pooling!r}: mean or cls")
        self.hf = hf
        self.family = family
        self.task = task
        self.pooling = pooling if task == "embedding" else None
        self.normalize = bool(normalize) and task == "embedding"
        self.pad_id = int(pad_id)

    @property
    def encoder(self) -> nn.Module:
        """The base model (embeddings + layers), e.g. `BertModel`."""
        return self.hf.base_model

    @property
    def config(self):  # noqa: ANN201 - a transformers PretrainedConfig
        return self.hf.config

    @property
    def output_width(self) -> int:
        """Width of the served output: hidden size for embeddings, labels for classifiers."""
        if self.task == "classification":
            return int(self.config.num_labels)
        return int(getattr(self.config, "hidden_size", None) or self.config.dim)

    def _inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if FAMILIES[self.family].token_types:
            inputs["token_type_ids"] = torch.zeros_like(input_ids)
        return inputs

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Sentence vector from token vectors: mask-weighted mean or the first token, then L2 norm.

            mean: e = Σ_t m_t h_t / max(Σ_t m_t, 1e-9)        cls: e = h_0
        """
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return F.normalize(pooled, p=2.0, dim=1) if self.normalize else pooled

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.task == "classification":
            return self.hf(**self._inputs(input_ids, attention_mask)).logits
        hidden = self.hf(**self._inputs(input_ids, attention_mask)).last_hidden_state
        return self.pool(hidden, attention_mask)

    def states_and_output(self, input_ids: torch.Tensor, attention_mask: torch.Tensor
                          ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """Every hidden state (index 0 the embeddings, k the output of layer k; each [batch, tokens,
        hidden]) and the served output."""
        out = self.hf(**self._inputs(input_ids, attention_mask), output_hidden_states=True)
        if self.task == "classification":
            return tuple(out.hidden_states), out.logits
        return tuple(out.hidden_states), self.pool(out.last_hidden_state, attention_mask)

    def hidden_and_output(self, input_ids: torch.Tensor, attention_mask: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """The last layer's token vectors [batch, tokens, hidden] and the served output."""
        if self.task == "classification":
            out = self.hf(**self._inputs(input_ids, attention_mask), output_hidden_states=True)
            return out.hidden_states[-1], out.logits
        hidden = self.hf(**self._inputs(input_ids, attention_mask)).last_hidden_state
        return hidden, self.pool(hidden, attention_mask)


def family_of(model: TextModel) -> Family:
    return FAMILIES[model.family]


def load_teacher(info: TextTeacherInfo) -> TextModel:
    """The folder's model as a `TextModel`, eval mode, fp32, eager attention, local files only.

    Embedding models drop BERT's [CLS] pooler (not part of a pooled sentence embedding). A checkpoint
    whose weights leave a module of the model uninitialised (other than that pooler) is refused.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import AutoModel, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    auto = AutoModelForSequenceClassification if info.task == "classification" else AutoModel
    try:
        # Eager attention exports to plain MatMul/Softmax, which ONNX Runtime fuses and quantizes.
        hf, loading = auto.from_pretrained(str(info.model_dir), attn_implementation="eager",
                                           local_files_only=True, dtype=torch.float32,
                                           output_loading_info=True)
    except Exception as exc:  # one line for the user; the folder passed describe() but does not load
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BuildError(f"{info.model_dir}: transformers could not load the model ({first})") from None
    missing = [k for k in loading.get("missing_keys", []) if ".pooler." not in f".{k}"]
    if missing:
        raise BuildError(f"{info.model_dir}: the weights lack {len(missing)} tensors the model needs "
                         f"(e.g. {sorted(missing)[0]}); save the trained model with save_pretrained")
    if info.task == "embedding" and getattr(hf, "pooler", None) is not None:
        hf.pooler = None
    return TextModel(hf, info.family, info.task, info.pooling, info.normalize, info.pad_id).eval()


def layer_list(model: TextModel) -> nn.ModuleList:
    """The encoder's layers (`encoder.layer` for BERT/RoBERTa, `transformer.layer` for DistilBERT)."""
    return get_module(model.encoder, family_of(model).layers)


def head_size(model: TextModel) -> int:
    """Width of one attention head (unchanged by pruning)."""
    fam = family_of(model)
    return int(get_module(layer_list(model)[0], fam.attention).attention_head_size)


def keep_layers(model: TextModel, indices: list[int] | tuple[int, ...]) -> TextModel:
    """A deep copy of `model` keeping only the layers at `indices`, in that order (config updated).

    DistilBERT's student initialisation (Sanh et al. 2019) takes every other teacher layer; keeping
    the first and the last layer starts a sentence-embedding student closest to its teacher.
    """
    indices = [int(i) for i in indices]
    total = len(layer_list(model))
    if not indices or any(i < 0 or i >= total for i in indices) or len(set(indices)) != len(indices):
        raise ValueError(f"layers {indices} must be distinct indices into the model's {total} layers")
    student = copy.deepcopy(model)
    fam = family_of(student)
    layers = layer_list(student)
    set_module(student.encoder, fam.layers, nn.ModuleList([layers[i] for i in indices]))
    setattr(student.config, fam.config_layers, len(indices))
    for counter in fam.layer_counters:
        set_module(student.encoder, counter, len(indices))
    return student


def encoder_shape(model: TextModel) -> list[tuple[int, int]]:
    """(heads, FFN width) per layer, read off the tensors themselves."""
    fam, size = family_of(model), head_size(model)
    return [(get_module(layer, fam.query).out_features // size, get_module(layer, fam.ffn_in).out_features)
            for layer in layer_list(model)]


def without_dropout(model: nn.Module) -> nn.Module:
    """Set every dropout to 0 (attention code reads `dropout.p` too): targets are deterministic and
    few epochs leave little to regularise."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model


def parameters(model: nn.Module) -> int:
    """Number of parameters (tied weights counted once)."""
    return int(sum(p.numel() for p in model.parameters()))


def encoder_macs(shape: list[tuple[int, int]], hidden: int, head_dim: int, tokens: int = 128) -> int:
    """Multiply-accumulates per sentence of `tokens` tokens through the encoder layers.

    `shape` holds (heads, ffn width) per layer. Per layer, with a = heads·head_dim, H = hidden,
    T = tokens, F = ffn: projections T·4·H·a, attention scores and mixing 2·T²·a, FFN 2·T·H·F.
    Embedding lookups, layer norms, pooling and the classifier head are not counted.
    """
    total = 0
    for heads, ffn in shape:
        attn = heads * head_dim
        total += tokens * 4 * hidden * attn + 2 * tokens * tokens * attn + 2 * tokens * hidden * ffn
    return total
