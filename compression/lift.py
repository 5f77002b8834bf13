"""Turn a loaded graph (TorchScript, `torch.export`) into an editable module with real layers.

A program loaded with `torch.export.load` (or converted from TorchScript) is an fx graph whose
weights are bare attributes fed to `aten.linear` / `aten.conv2d` calls. Training works on that, but
structural pruning needs layers it can shrink (Torch-Pruning finds `nn.Linear`, `nn.Conv2d`, batch
norms through autograd). `lift` rewrites each such call into a call of a real layer that holds the
very same parameters, so the graph computes exactly what it did, and the layers can be pruned,
narrowed for a student, trained and exported again.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import fx, nn

__all__ = ["AnyBatchNorm", "from_exported", "from_torchscript", "lift"]

aten = torch.ops.aten


class AnyBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm over dimension 1 for inputs of any rank (what `aten.batch_norm` does)."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {input.dim()}-D")


def _make_conv(weight: torch.Tensor, bias: torch.Tensor | None, stride: Any, padding: Any,
               dilation: Any, groups: int) -> nn.Module | None:
    kinds = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
    spatial = weight.dim() - 2
    if spatial not in kinds:
        return None
    return kinds[spatial](weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]),
                          stride=stride, padding=padding, dilation=dilation, groups=groups,
                          bias=bias is not None)


def _conv(node: fx.Node, params: list[torch.Tensor | None]) -> nn.Module | None:
    """aten.conv{1,2,3}d(input, weight, bias, stride, padding, dilation, groups)."""
    if node.kwargs:
        return None
    args = list(node.args) + [None] * 7
    return _make_conv(params[0], params[1], args[3] or 1, args[4] or 0, args[5] or 1, args[6] or 1)


def _convolution(node: fx.Node, params: list[torch.Tensor | None]) -> nn.Module | None:
    """aten.convolution / aten._convolution(input, weight, bias, stride, padding, dilation,
    transposed, output_padding, groups, ...), what traced TorchScript records."""
    args = list(node.args)
    if node.kwargs or len(args) < 9 or args[6]:
        return None  # transposed convolutions stay functional
    return _make_conv(params[0], params[1], args[3], args[4], args[5], args[8])


def _linear(node: fx.Node, params: list[torch.Tensor | None]) -> nn.Module | None:
    weight, bias = params[0], params[1]
    return nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)


def _batch_norm(node: fx.Node, params: list[torch.Tensor | None]) -> nn.Module | None:
    weight, bias, mean, var = params[:4]
    if mean is None or var is None:
        return None
    momentum, eps = node.args[6], node.args[7]
    # The standard class for the input's rank when the graph records it (tools know those);
    # AnyBatchNorm otherwise.
    value = getattr(node.args[0], "meta", {}).get("val")
    kind = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}.get(
        getattr(value, "ndim", 0), AnyBatchNorm)
    return kind(mean.shape[0], eps=eps, momentum=momentum, affine=weight is not None)


def _layer_norm(node: fx.Node, params: list[torch.Tensor | None]) -> nn.Module | None:
    weight, bias = params[0], params[1]
    shape = node.args[1]
    eps = node.args[4] if len(node.args) > 4 else 1e-5
    return nn.LayerNorm(shape, eps=eps, elementwise_affine=weight is not None,
                        bias=bias is not None)


def _embedding(node: fx.Node, params: list[torch.Tensor | None]) -> nn.Module | None:
    weight = params[0]
    return nn.Embedding(weight.shape[0], weight.shape[1])


# op -> (argument positions of the tensors the layer owns, layer names of those tensors,
#         position of the data input, constructor)
_LIFTERS: dict[Any, tuple[tuple[int, ...], tuple[str, ...], int, Callable[..., nn.Module | None]]] = {
    aten.linear.default: ((1, 2), ("weight", "bias"), 0, _linear),
    aten.conv1d.default: ((1, 2), ("weight", "bias"), 0, _conv),
    aten.conv2d.default: ((1, 2), ("weight", "bias"), 0, _conv),
    aten.conv3d.default: ((1, 2), ("weight", "bias"), 0, _conv),
    aten.convolution.default: ((1, 2), ("weight", "bias"), 0, _convolution),
    aten._convolution.default: ((1, 2), ("weight", "bias"), 0, _convolution),
    aten.batch_norm.default: ((1, 2, 3, 4), ("weight", "bias", "running_mean", "running_var"), 0,
                              _batch_norm),
    aten.layer_norm.default: ((2, 3), ("weight", "bias"), 0, _layer_norm),
    aten.embedding.default: ((0,), ("weight",), 1, _embedding),
}


def _fetch(gm: fx.GraphModule, node: Any) -> torch.Tensor | None:
    if node is None:
        return None
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        raise LookupError
    value = gm
    for part in str(node.target).split("."):
        value = getattr(value, part)
    return value


def _unique(gm: fx.GraphModule, base: str) -> str:
    base = base.replace(".", "_") or "layer"
    name, i = base, 1
    while hasattr(gm, name):
        name, i = f"{base}_{i}", i + 1
    return name


def _place(gm: fx.GraphModule, owner: str, params: list[torch.Tensor | None]) -> str:
    """Where the new layer goes: in place of the bare container that held exactly its tensors
    (so `fc.weight` stays `fc.weight`), else under a fresh name."""
    try:
        container = gm.get_submodule(owner) if owner else None
    except AttributeError:
        container = None
    if container is not None and type(container) is nn.Module and not list(container.children()):
        taken = {id(t) for t in params if t is not None}
        own = [t for n, t in [*container.named_parameters(recurse=False),
                              *container.named_buffers(recurse=False)] if n != "num_batches_tracked"]
        if all(id(t) in taken for t in own):
            return owner
    return _unique(gm, owner)


def lift(gm: fx.GraphModule) -> fx.GraphModule:
    """Rewrite `gm` in place: every lifted op becomes a call of a real layer holding the same
    tensors; shape guards (`_guards_fn`) are dropped, since batch sizes vary by design."""
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op == "call_module" and str(node.target).startswith("_guards_fn"):
            graph.erase_node(node)
            continue
        spec = _LIFTERS.get(node.target) if node.op == "call_function" else None
        if spec is None:
            continue
        positions, names, data_pos, make = spec
        args = list(node.args)
        try:
            params = [_fetch(gm, args[p] if p < len(args) else None) for p in positions]
        except LookupError:
            continue  # weights computed in the graph, not stored: leave the op as it is
        layer = make(node, params)
        if layer is None:
            continue
        for attr, tensor in zip(names, params):
            if tensor is None:
                continue
            if isinstance(tensor, nn.Parameter) or attr in ("weight", "bias"):
                setattr(layer, attr, tensor if isinstance(tensor, nn.Parameter)
                        else nn.Parameter(tensor.detach().clone()))
            else:
                layer.register_buffer(attr, tensor)
        name = _place(gm, str(args[positions[0]].target).rpartition(".")[0], params)
        gm.add_submodule(name, layer)
        with graph.inserting_before(node):
            lifted = graph.call_module(name, (args[data_pos],))
        lifted.meta = dict(node.meta)
        node.replace_all_uses_with(lifted)
        graph.erase_node(node)
    graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm.eval()


@contextlib.contextmanager
def _quiet_logs(*names: str) -> Iterator[None]:
    """Converter notes (specialised dimensions and the like) are not the user's business."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def from_exported(program: torch.export.ExportedProgram) -> fx.GraphModule:
    """The program's module with real layers (see `lift`), in eval mode."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = program.module()
    # A plain GraphModule over the same graph and layers: the unlifted module refuses train()/eval().
    return lift(fx.GraphModule(module, module.graph))


def from_torchscript(module: torch.jit.ScriptModule, example: tuple[torch.Tensor, ...]) -> fx.GraphModule:
    """A TorchScript module converted to a `torch.export` program (PyTorch's TS2EPConverter,
    which is what `torch.export` itself points to for ScriptModules), then lifted."""
    from torch._export.converter import TS2EPConverter

    with warnings.catch_warnings(), _quiet_logs("torch._export", "torch.export"):
        warnings.simplefilter("ignore")
        program = TS2EPConverter(module, example).convert()
    return from_exported(program)
