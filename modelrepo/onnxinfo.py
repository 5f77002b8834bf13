"""Counts read off an ONNX file: learned parameters, int8 weight elements, multiply-accumulates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from modelrepo.measure import Feeds

__all__ = ["SHARED_SUFFIXES", "int8_weights", "onnx_macs", "onnx_parameters"]

QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}
# Initializers of a weight-shared matrix (compression.share): indices, codebook, logical shape.
SHARED_SUFFIXES = ("__shared_indices", "__shared_codebook", "__shared_shape")
FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
               onnx.TensorProto.BFLOAT16)


def onnx_parameters(path: Path) -> int:
    """Learned parameters stored in the file, counted as elements of weight initializers.

    fp32 files: every floating-point initializer. QDQ-quantized files: the quantized tensors that
    DequantizeLinear expands back (int8 weights, int32 biases), plus any float initializer that is
    not a quantization scale, i.e. the same logical parameters as the fp32 parent; scales and
    zero points are bookkeeping of the encoding, not parameters. Dynamic (QOperator) files: int8
    weights of MatMulInteger / ConvInteger. Weight-shared files: the logical elements of each
    shared matrix (its recorded shape); codebooks and packed indices are its encoding.
    """
    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    quantized, encoding = set(), set()
    # Dynamic files multiply the run-time activation scale by the stored weight scale.
    run_scales = {n.output[1] for n in model.graph.node
                  if n.op_type == "DynamicQuantizeLinear" and len(n.output) > 1}
    for node in model.graph.node:
        if node.op_type in QDQ_OPS:
            if node.op_type == "DequantizeLinear" and node.input[0] in inits:
                quantized.add(node.input[0])
            encoding.update(node.input[1:])
        elif node.op_type in ("MatMulInteger", "ConvInteger"):
            if node.input[1] in inits:
                quantized.add(node.input[1])
            encoding.update(node.input[2:])
        elif node.op_type == "Mul" and run_scales & set(node.input):
            encoding.update(node.input)
    count = 0
    for name, tensor in inits.items():
        if name.endswith(SHARED_SUFFIXES):
            if name.endswith("__shared_shape"):
                count += int(np.prod(numpy_helper.to_array(tensor), dtype=np.int64))
            continue
        is_float = tensor.data_type in FLOAT_TYPES
        # An int8 table read by Gather (dynamic int8 of embeddings) is dequantized after the lookup.
        is_int8 = tensor.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8) and len(tensor.dims) > 1
        if name in quantized or ((is_float or is_int8) and name not in encoding):
            count += int(np.prod(tensor.dims, dtype=np.int64))
    return count


def int8_weights(path: Path) -> int:
    """Elements of weights stored as 8-bit integers: DequantizeLinear's stored inputs (static
    QDQ) and MatMulInteger / ConvInteger's stored weights (dynamic); zero points not counted."""
    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    small = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    names = set()
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear":
            names.add(node.input[0])
        elif node.op_type in ("MatMulInteger", "ConvInteger") and len(node.input) > 1:
            names.add(node.input[1])
    return sum(int(np.prod(inits[n].dims, dtype=np.int64)) for n in names
               if n in inits and inits[n].data_type in small)


def onnx_macs(path: Path, example: Feeds) -> int:
    """Multiply-accumulates per sample of the MatMul / Gemm / Conv nodes, from ONNX shape
    inference with the example's shapes (batch of one). Used where no torch model exists."""
    model = onnx.load(str(path))
    for graph_input in model.graph.input:
        if graph_input.name not in example:
            continue
        dims = graph_input.type.tensor_type.shape.dim
        for i, dim in enumerate(dims):
            dim.ClearField("dim_param")
            dim.dim_value = 1 if i == 0 else int(example[graph_input.name].shape[i])
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes: dict[str, list[int]] = {}
    for value in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        shapes[value.name] = [d.dim_value for d in value.type.tensor_type.shape.dim]
    for tensor in model.graph.initializer:
        shapes[tensor.name] = list(tensor.dims)
    macs = 0
    for node in inferred.graph.node:
        out = shapes.get(node.output[0]) if node.output else None
        if not out or 0 in out:
            continue
        if node.op_type in ("MatMul", "Gemm"):
            a = shapes.get(node.input[0])
            if not a:
                continue
            transposed = any(attr.name == "transA" and attr.i for attr in node.attribute)
            k = a[0] if node.op_type == "Gemm" and transposed else a[-1]
            macs += int(np.prod(out)) * k
        elif node.op_type == "Conv":
            w = shapes.get(node.input[1])
            if w:
                macs += int(np.prod(out)) * int(np.prod(w[1:]))
    return macs
