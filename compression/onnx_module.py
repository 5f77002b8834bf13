"""A served ONNX graph turned back into a torch module with real layers, so it can be distilled from, narrowed and pruned."""

from __future__ import annotations

import operator
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import fx, nn

from compression.errors import UsageError

__all__ = ["SUPPORTED_OPS", "from_onnx"]

# What an exported MLP (the built-in digits teacher and its students) is made of. A Gemm, or a MatMul
# followed by the Add of its bias, becomes an nn.Linear: Torch-Pruning only shrinks real layers.
_UNARY: dict[str, Callable[..., torch.Tensor]] = {"Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh}
_BINARY: dict[str, Callable[..., Any]] = {"Add": operator.add, "Sub": operator.sub, "Mul": operator.mul,
                                          "Div": operator.truediv}
SUPPORTED_OPS = ("Gemm", "MatMul", *_UNARY, *_BINARY, "Softmax", "LogSoftmax", "Flatten", "Reshape", "Identity",
                 "Dropout")


def onnx_reshape(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """ONNX Reshape: a 0 copies the input's dimension (allowzero=0), -1 is inferred."""
    return x.reshape([x.shape[i] if d == 0 else d for i, d in enumerate(shape)])


class _Converter:
    def __init__(self, model: onnx.ModelProto, name: str) -> None:
        self.name = name
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
        self.consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        self.root = nn.Module()
        self.graph = fx.Graph()
        self.env: dict[str, fx.Node] = {}
        self.users: dict[str, int] = {}
        for node in model.graph.node:
            for value in node.input:
                self.users[value] = self.users.get(value, 0) + 1
        for value in model.graph.output:
            self.users[value.name] = self.users.get(value.name, 0) + 1
        self.layers = 0

    def fail(self, node: onnx.NodeProto, why: str) -> UsageError:
        return UsageError(f"{self.name}: ONNX node {node.name or node.output[0]!r} ({node.op_type}) {why}; "
                          f"training recipes take graphs of {', '.join(SUPPORTED_OPS)} (use an int8 or shared recipe)")

    def value(self, name: str) -> fx.Node:
        """A tensor of the graph: a computed value, or a constant registered as a buffer."""
        if name in self.env:
            return self.env[name]
        if name not in self.consts:
            raise UsageError(f"{self.name}: value {name!r} is neither an input, a constant nor computed")
        buffer = f"const_{len(self.root._buffers)}"
        self.root.register_buffer(buffer, torch.from_numpy(np.array(self.consts[name])))
        self.env[name] = self.graph.get_attr(buffer)
        return self.env[name]

    def linear(self, node: onnx.NodeProto, x: str, weight: np.ndarray, bias: np.ndarray | None) -> fx.Node:
        """nn.Linear with `weight` as [out, in]."""
        if weight.ndim != 2 or weight.dtype != np.float32:
            raise self.fail(node, f"has a {weight.dtype} weight of shape {list(weight.shape)} (want float32, 2-D)")
        layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        with torch.no_grad():
            layer.weight.copy_(torch.tensor(weight))
            if bias is not None:
                layer.bias.copy_(torch.tensor(np.broadcast_to(bias, (weight.shape[0],)), dtype=torch.float32))
        self.layers += 1
        name = f"fc{self.layers}"
        self.root.add_module(name, layer)
        return self.graph.call_module(name, (self.value(x),))

    def gemm(self, node: onnx.NodeProto, attrs: dict[str, Any]) -> fx.Node:
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            raise self.fail(node, "uses transA, alpha or beta")
        if node.input[1] not in self.consts or (len(node.input) > 2 and node.input[2] and node.input[2] not in self.consts):
            raise self.fail(node, "has a weight or bias computed in the graph")
        weight = self.consts[node.input[1]]
        weight = weight if attrs.get("transB", 0) else weight.T
        bias = self.consts[node.input[2]] if len(node.input) > 2 and node.input[2] else None
        return self.linear(node, node.input[0], weight, bias)

    def matmul(self, node: onnx.NodeProto, nodes: list[onnx.NodeProto], index: int) -> tuple[fx.Node, str]:
        """MatMul by a constant, with the next node's Add of a constant bias folded in (one Linear)."""
        if node.input[1] not in self.consts:
            raise self.fail(node, "multiplies two computed tensors")
        weight = self.consts[node.input[1]].T
        out = node.output[0]
        after = nodes[index + 1] if index + 1 < len(nodes) else None
        if (after is not None and after.op_type == "Add" and self.users.get(out) == 1 and out in after.input):
            other = after.input[1] if after.input[0] == out else after.input[0]
            bias = self.consts.get(other)
            if bias is not None and bias.size == weight.shape[0]:
                return self.linear(node, node.input[0], weight, bias.reshape(-1)), after.output[0]
        return self.linear(node, node.input[0], weight, None), out

    def convert(self, model: onnx.ModelProto) -> fx.GraphModule:
        for value in model.graph.input:
            if value.name not in self.consts:
                self.env[value.name] = self.graph.placeholder(value.name.replace(".", "_"))
        nodes = list(model.graph.node)
        folded: set[int] = set()
        for index, node in enumerate(nodes):
            if index in folded:
                continue
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            op = node.op_type
            if node.domain not in ("", "ai.onnx"):
                raise self.fail(node, f"is in domain {node.domain!r}")
            if op == "Constant":
                self.consts[node.output[0]] = numpy_helper.to_array(attrs["value"])
                continue
            if op == "Gemm":
                self.env[node.output[0]] = self.gemm(node, attrs)
            elif op == "MatMul":
                result, name = self.matmul(node, nodes, index)
                self.env[name] = result
                if name != node.output[0]:
                    folded.add(index + 1)
            elif op in _UNARY:
                self.env[node.output[0]] = self.graph.call_function(_UNARY[op], (self.value(node.input[0]),))
            elif op in _BINARY:
                args = (self.value(node.input[0]), self.value(node.input[1]))
                self.env[node.output[0]] = self.graph.call_function(_BINARY[op], args)
            elif op in ("Softmax", "LogSoftmax"):
                axis = attrs.get("axis", -1 if self.opset >= 13 else 1)
                if self.opset < 13 and axis != -1:
                    raise self.fail(node, "flattens before normalising (opset < 13 with an axis); re-export at opset 13+")
                function = torch.softmax if op == "Softmax" else torch.log_softmax
                self.env[node.output[0]] = self.graph.call_function(function, (self.value(node.input[0]), axis))
            elif op == "Flatten":
                if attrs.get("axis", 1) != 1:
                    raise self.fail(node, "flattens from an axis other than 1")
                self.env[node.output[0]] = self.graph.call_function(torch.flatten, (self.value(node.input[0]), 1))
            elif op == "Reshape":
                if node.input[1] not in self.consts or attrs.get("allowzero", 0):
                    raise self.fail(node, "has a computed shape or allowzero=1")
                shape = tuple(int(d) for d in self.consts[node.input[1]].reshape(-1))
                self.env[node.output[0]] = self.graph.call_function(onnx_reshape, (self.value(node.input[0]), shape))
            elif op in ("Identity", "Dropout"):  # Dropout is the identity at inference
                self.env[node.output[0]] = self.value(node.input[0])
            else:
                raise self.fail(node, "has no torch equivalent here")
        outputs = [self.value(v.name) for v in model.graph.output]
        self.graph.output(outputs[0] if len(outputs) == 1 else tuple(outputs))
        if not self.layers:
            raise UsageError(f"{self.name}: the graph has no Gemm or MatMul by a constant weight: nothing to train")
        module = fx.GraphModule(self.root, self.graph)
        return module.eval()


def from_onnx(path: Path) -> fx.GraphModule:
    """The ONNX file at `path` as an fx module computing the same outputs (float rounding aside),
    every weight matrix an nn.Linear; a one-line UsageError names the first op it cannot convert."""
    model = onnx.load(str(path))
    return _Converter(model, path.parent.name or path.name).convert(model)
