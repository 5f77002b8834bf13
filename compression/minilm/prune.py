"""Structured pruning of the encoder: whole attention heads and FFN neurons removed, tensors shrunk.

Nothing is masked: the kept rows of the Q, K and V projections and the matching columns of the
attention output projection are copied into smaller `nn.Linear` layers, and likewise the kept rows
of the FFN's first layer and columns of its second. The exported graph is smaller and faster for
real; the attention code infers the head count from the projection width (head size stays 32).

Importance, measured on training sentences:

- a head's importance is what the sentence embedding loses without it: 1 - mean cos(embedding with
  that head's output zeroed, embedding of the intact model), one ablation per head;
- an FFN neuron's is the mean |activation| over real tokens times the L2 norm of its output weights
  (its expected contribution to the layer's output, a first-order proxy).

Every layer keeps the same number of heads and of neurons (the most important ones), so the model's
shape stays regular.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from compression.minilm.teacher import MeanPooled, torch_embed

__all__ = ["PruneOptions", "encoder_shape", "ffn_importance", "head_importance", "prune", "slice_layer"]


@dataclass(frozen=True)
class PruneOptions:
    heads: int = 6
    """Heads kept per layer (of 12)."""
    ffn: int = 768
    """FFN neurons kept per layer (of 1536)."""
    probe_sentences: int = 96

    def as_params(self) -> dict[str, object]:
        return {"heads_per_layer": self.heads, "ffn_per_layer": self.ffn,
                "head_importance": "embedding cosine drop when the head is ablated",
                "ffn_importance": "mean |activation| x ||output weights||",
                "probe_sentences": self.probe_sentences, "structural": True}


def _layers(model: MeanPooled) -> nn.ModuleList:
    return model.encoder.encoder.layer


def _head_size(model: MeanPooled) -> int:
    return int(_layers(model)[0].attention.self.attention_head_size)


def encoder_shape(model: MeanPooled) -> list[tuple[int, int]]:
    """(heads, FFN width) per layer, read off the tensors themselves."""
    size = _head_size(model)
    return [(layer.attention.self.query.out_features // size, layer.intermediate.dense.out_features)
            for layer in _layers(model)]


@torch.no_grad()
def head_importance(model: MeanPooled, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """[layers, heads]: embedding cosine lost when each head alone is removed."""
    reference = torch_embed(model, ids, mask)
    size = _head_size(model)
    shape = encoder_shape(model)
    scores = np.zeros((len(shape), max(h for h, _ in shape)))
    for li, layer in enumerate(_layers(model)):
        out = layer.attention.output.dense
        for h in range(shape[li][0]):
            saved = out.weight[:, h * size:(h + 1) * size].clone()
            out.weight[:, h * size:(h + 1) * size] = 0
            emb = torch_embed(model, ids, mask)
            out.weight[:, h * size:(h + 1) * size] = saved
            scores[li, h] = 1.0 - float((emb * reference).sum(axis=1).mean())
    return scores


@torch.no_grad()
def ffn_importance(model: MeanPooled, ids: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
    """Per layer, [ffn]: mean |GELU output| over real tokens × ||column of the output projection||."""
    sums = [torch.zeros(layer.intermediate.dense.out_features) for layer in _layers(model)]
    current: dict[str, torch.Tensor] = {}  # the real-token mask of the batch being run

    def hook(li: int):
        def record(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            sums[li] += output[current["keep"]].abs().sum(dim=0)
        return record

    hooks = [layer.intermediate.register_forward_hook(hook(li)) for li, layer in enumerate(_layers(model))]
    try:
        for start in range(0, len(ids), 64):
            m = torch.from_numpy(mask[start:start + 64])
            width = max(int(m.sum(dim=1).max()), 1)
            current["keep"] = m[:, :width].bool()
            model(torch.from_numpy(ids[start:start + 64, :width]), m[:, :width])
    finally:
        for h in hooks:
            h.remove()
    tokens = float(mask.sum())
    return [(s / tokens * layer.output.dense.weight.norm(dim=0)).numpy()
            for s, layer in zip(sums, _layers(model))]


def _linear(source: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    weight = source.weight.detach()
    if rows is not None:
        weight = weight[rows]
    if cols is not None:
        weight = weight[:, cols]
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=source.bias is not None)
    layer.weight.data.copy_(weight)
    if source.bias is not None:
        bias = source.bias.detach()
        layer.bias.data.copy_(bias[rows] if rows is not None else bias)
    return layer


def slice_layer(layer: nn.Module, heads: list[int], neurons: list[int], head_size: int) -> None:
    """Shrink one BertLayer in place to the given heads and FFN neurons (sorted, original order)."""
    attn = layer.attention.self
    cols = torch.tensor([h * head_size + i for h in sorted(heads) for i in range(head_size)])
    attn.query = _linear(attn.query, rows=cols)
    attn.key = _linear(attn.key, rows=cols)
    attn.value = _linear(attn.value, rows=cols)
    attn.num_attention_heads = len(heads)
    attn.all_head_size = len(heads) * head_size
    layer.attention.output.dense = _linear(layer.attention.output.dense, cols=cols)
    keep = torch.tensor(sorted(neurons))
    layer.intermediate.dense = _linear(layer.intermediate.dense, rows=keep)
    layer.output.dense = _linear(layer.output.dense, cols=keep)


def prune(model: MeanPooled, ids: np.ndarray, mask: np.ndarray, options: PruneOptions
          ) -> tuple[MeanPooled, dict[str, object]]:
    """A pruned copy of `model` and what was kept, importance measured on (ids, mask)."""
    shape = encoder_shape(model)
    if not 0 < options.heads <= min(h for h, _ in shape):
        raise ValueError(f"heads={options.heads}: keep between 1 and {min(h for h, _ in shape)} per layer")
    if not 0 < options.ffn <= min(f for _, f in shape):
        raise ValueError(f"ffn={options.ffn}: keep between 1 and {min(f for _, f in shape)} per layer")
    ids, mask = ids[:options.probe_sentences], mask[:options.probe_sentences]
    heads = head_importance(model, ids, mask)
    ffn = ffn_importance(model, ids, mask)
    pruned = copy.deepcopy(model)
    kept_heads = []
    for li, layer in enumerate(_layers(pruned)):
        top_heads = sorted(np.argsort(-heads[li, :shape[li][0]])[:options.heads].tolist())
        top_neurons = sorted(np.argsort(-ffn[li])[:options.ffn].tolist())
        slice_layer(layer, top_heads, top_neurons, _head_size(model))
        kept_heads.append(top_heads)
    return pruned.eval(), {"kept_heads": kept_heads,
                           "head_importance": np.round(heads, 5).tolist()}
