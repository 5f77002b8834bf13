"""Structured pruning of a BERT-family encoder: whole attention heads and FFN neurons removed, tensors shrunk.

Nothing is masked: the kept rows of the Q, K and V projections and the matching columns of the
attention output projection are copied into smaller `nn.Linear` layers, and likewise the kept rows
of the FFN's first linear and columns of its second. The exported graph is smaller and faster for
real. The attention code of transformers 5.23 (BERT, RoBERTa, XLM-R, ELECTRA, DistilBERT) reshapes
with `view(batch, tokens, -1, head_size)`, so it infers the head count from the projection width and
the scaling 1/sqrt(head_size) is unchanged; the head-count attributes (`num_attention_heads` and
`all_head_size`, or DistilBERT's `n_heads`) are updated anyway. `config` keeps the original head
count and FFN width (it describes the unpruned architecture; the model is not meant to be re-loaded
with `from_pretrained`).

Importance, measured on probe sentences with the model's own served output as the reference
(Michel et al. 2019, "Are Sixteen Heads Really Better than One?", arXiv:1905.10650, ablate heads
one at a time; here the cost is measured on the output rather than a task loss, so no labels are needed):

- a head's importance is what the output loses without it (its output zeroed):
  embeddings: 1 - mean cos(ablated, intact); classifiers: mean KL(softmax(intact) ‖ softmax(ablated));
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

from compression.text.model import TextModel, encoder_shape, family_of, get_module, head_size, layer_list, set_module
from compression.text.run import torch_outputs

__all__ = ["PruneOptions", "ffn_importance", "head_importance", "output_change", "prune", "slice_layer"]


@dataclass(frozen=True)
class PruneOptions:
    heads: int | None = None
    """Heads kept per layer (None: half of the smallest layer's, at least 1)."""
    ffn: int | None = None
    """FFN neurons kept per layer (None: half of the smallest layer's, at least 1)."""
    probe_sentences: int = 96
    """Sentences on which importance is measured."""

    def resolve(self, shape: list[tuple[int, int]]) -> tuple[int, int]:
        """(heads, ffn) kept per layer for a model of this shape; ValueError when out of range."""
        most_heads, most_ffn = min(h for h, _ in shape), min(f for _, f in shape)
        heads = self.heads if self.heads is not None else max(1, most_heads // 2)
        ffn = self.ffn if self.ffn is not None else max(1, most_ffn // 2)
        if not 0 < heads <= most_heads:
            raise ValueError(f"heads={heads}: keep between 1 and {most_heads} per layer")
        if not 0 < ffn <= most_ffn:
            raise ValueError(f"ffn={ffn}: keep between 1 and {most_ffn} per layer")
        return heads, ffn

    def as_params(self, task: str = "embedding") -> dict[str, object]:
        change = ("embedding cosine drop" if task == "embedding"
                  else "KL(softmax(intact) || softmax(ablated)) of the logits")
        return {"heads_per_layer": self.heads if self.heads is not None else "half",
                "ffn_per_layer": self.ffn if self.ffn is not None else "half",
                "head_importance": f"{change} when the head is ablated",
                "ffn_importance": "mean |activation| x ||output weights||",
                "probe_sentences": self.probe_sentences, "structural": True}


def output_change(task: str, changed: np.ndarray, reference: np.ndarray) -> float:
    """How far `changed` outputs are from `reference`: 1 - mean cosine (embeddings) or mean
    KL(softmax(reference) ‖ softmax(changed)) (classifier logits)."""
    if task == "embedding":
        a = changed / np.maximum(np.linalg.norm(changed, axis=1, keepdims=True), 1e-12)
        b = reference / np.maximum(np.linalg.norm(reference, axis=1, keepdims=True), 1e-12)
        return 1.0 - float((a * b).sum(axis=1).mean())
    log_p = torch.log_softmax(torch.from_numpy(reference).double(), dim=1)
    log_q = torch.log_softmax(torch.from_numpy(changed).double(), dim=1)
    return float((log_p.exp() * (log_p - log_q)).sum(dim=1).mean())


@torch.no_grad()
def head_importance(model: TextModel, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """[layers, heads]: output change (`output_change`) when each head alone is removed."""
    reference = torch_outputs(model, ids, mask)
    size, fam = head_size(model), family_of(model)
    shape = encoder_shape(model)
    scores = np.zeros((len(shape), max(h for h, _ in shape)))
    for li, layer in enumerate(layer_list(model)):
        out = get_module(layer, fam.attention_out)
        for h in range(shape[li][0]):
            saved = out.weight[:, h * size:(h + 1) * size].clone()
            out.weight[:, h * size:(h + 1) * size] = 0
            try:
                changed = torch_outputs(model, ids, mask)
            finally:
                out.weight[:, h * size:(h + 1) * size] = saved
            scores[li, h] = output_change(model.task, changed, reference)
    return scores


@torch.no_grad()
def ffn_importance(model: TextModel, ids: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
    """Per layer, [ffn]: mean |activation| over real tokens × ||column of the FFN output linear||.

    The activation is read as the input of the FFN's output linear (a forward pre-hook), which is the
    same place in every family (BERT's `output.dense`, DistilBERT's `ffn.lin2`).
    """
    fam = family_of(model)
    outs = [get_module(layer, fam.ffn_out) for layer in layer_list(model)]
    sums = [torch.zeros(out.in_features, dtype=torch.float64) for out in outs]
    current: dict[str, torch.Tensor] = {}  # the real-token mask of the batch being run

    def hook(li: int):
        def record(_module: nn.Module, inputs: tuple) -> None:
            sums[li] += inputs[0][current["keep"]].abs().sum(dim=0).double()
        return record

    handles = [out.register_forward_pre_hook(hook(li)) for li, out in enumerate(outs)]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(ids), 64):
            m = torch.from_numpy(mask[start:start + 64])
            width = max(int(m.sum(dim=1).max()), 1)
            current["keep"] = m[:, :width].bool()
            model(torch.from_numpy(ids[start:start + 64, :width]), m[:, :width])
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    tokens = max(float(mask.sum()), 1.0)
    return [(s / tokens).float().mul(out.weight.norm(dim=0)).numpy() for s, out in zip(sums, outs)]


def _linear(source: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    weight = source.weight.detach()
    if rows is not None:
        weight = weight[rows]
    if cols is not None:
        weight = weight[:, cols]
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=source.bias is not None,
                      dtype=weight.dtype, device=weight.device)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if source.bias is not None:
            bias = source.bias.detach()
            layer.bias.copy_(bias[rows] if rows is not None else bias)
    return layer


def slice_layer(model: TextModel, layer: nn.Module, heads: list[int], neurons: list[int]) -> None:
    """Shrink one encoder layer of `model` in place to the given heads and FFN neurons (original order)."""
    fam, size = family_of(model), head_size(model)
    cols = torch.tensor([h * size + i for h in sorted(heads) for i in range(size)])
    for path in (fam.query, fam.key, fam.value):
        set_module(layer, path, _linear(get_module(layer, path), rows=cols))
    set_module(layer, fam.attention_out, _linear(get_module(layer, fam.attention_out), cols=cols))
    attention = get_module(layer, fam.attention)
    for attr in fam.head_attrs:
        setattr(attention, attr, len(heads))
    for attr in fam.width_attrs:
        setattr(attention, attr, len(heads) * size)
    keep = torch.tensor(sorted(neurons))
    set_module(layer, fam.ffn_in, _linear(get_module(layer, fam.ffn_in), rows=keep))
    set_module(layer, fam.ffn_out, _linear(get_module(layer, fam.ffn_out), cols=keep))


def prune(model: TextModel, ids: np.ndarray, mask: np.ndarray, options: PruneOptions
          ) -> tuple[TextModel, dict[str, object]]:
    """A pruned copy of `model` (eval mode) and what was kept, importance measured on the first
    `options.probe_sentences` rows of (ids, mask). `model` itself is left as it was.

    `kept` holds `heads_per_layer`, `ffn_per_layer`, `kept_heads` (indices per layer) and
    `head_importance` ([layers][heads], rounded).
    """
    shape = encoder_shape(model)
    n_heads, n_ffn = options.resolve(shape)
    ids, mask = ids[:options.probe_sentences], mask[:options.probe_sentences]
    heads = head_importance(model, ids, mask)
    ffn = ffn_importance(model, ids, mask)
    pruned = copy.deepcopy(model)
    kept_heads = []
    for li, layer in enumerate(layer_list(pruned)):
        top_heads = sorted(np.argsort(-heads[li, :shape[li][0]], kind="stable")[:n_heads].tolist())
        top_neurons = sorted(np.argsort(-ffn[li], kind="stable")[:n_ffn].tolist())
        slice_layer(pruned, layer, top_heads, top_neurons)
        kept_heads.append(top_heads)
    return pruned.eval(), {"heads_per_layer": n_heads, "ffn_per_layer": n_ffn, "kept_heads": kept_heads,
                           "head_importance": np.round(heads, 6).tolist()}
