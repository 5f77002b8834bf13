"""All conversion between KServe v2 protobuf messages and the data plane's numpy types lives here."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from protos import inference_pb2 as pb
from server.datatypes import KSERVE_TO_NUMPY, numpy_to_kserve
from server.errors import InvalidInput
from server.messages import InferenceRequest, InferenceResponse

__all__ = ["decode_request", "encode_response", "deserialize_bytes", "serialize_bytes", "parameters_to_dict"]

MAX_RANK = 64  # numpy's and ONNX Runtime's limit on dimensions
_SLICE = 1 << 16  # elements per numpy call when building object arrays (a few ms each)
_LENGTH = struct.Struct("<I")

# Which InferTensorContents field carries each datatype when raw contents are not used.
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def parameters_to_dict(params: Any) -> dict[str, Any]:
    """InferParameter map -> plain Python values."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        which = value.WhichOneof("parameter_choice")
        out[key] = getattr(value, which) if which else None
    return out


def _show(shape: list[int]) -> str:
    """A shape for an error message: 64 dims of 19 digits would crowd out the message's point."""
    text = str(shape)
    return text if len(text) <= 100 else text[:100] + "…]"


def _element_count(name: str, shape: list[int], max_elements: int) -> int:
    """Product of the shape, refusing negative dims and oversize tensors before anything is allocated."""
    if len(shape) > MAX_RANK:
        raise InvalidInput(f"input '{name}': shape has {len(shape)} dimensions, more than {MAX_RANK}; send at most {MAX_RANK}")
    count = 1
    nonzero = 1  # the product without its zero dims: [0, 2**62, 2**62] is empty, yet no array can have that shape
    for dim in shape:
        if dim < 0:
            raise InvalidInput(f"input '{name}': shape {_show(shape)} has a negative dimension; send concrete sizes")
        count *= dim
        nonzero *= max(dim, 1)
        if nonzero > max_elements:  # checked per dim, so the Python ints stay small
            empty = " (even though a zero dimension makes it empty)" if 0 in shape else ""
            raise InvalidInput(
                f"input '{name}': shape {_show(shape)} has more than {max_elements} elements{empty}, the server's limit "
                f"(--max-elements); send the real sizes or split the request"
            )
    return count


def deserialize_bytes(raw: bytes, count: int, name: str) -> np.ndarray:
    """KServe BYTES wire format: each element is a 4-byte little-endian length, then that many bytes."""
    if count and len(raw) >= 4:
        size = int.from_bytes(raw[:4], "little")
        if len(raw) == count * (4 + size):  # maybe a fixed stride: check every length at once
            if size == 0:
                if not np.frombuffer(raw, dtype="<u4").any():
                    return np.full(count, b"", dtype=np.object_)
            else:
                frames = np.frombuffer(raw, dtype=np.dtype([("n", "<u4"), ("v", f"V{size}")]))
                if (frames["n"] == size).all():
                    return _objects(frames["v"])
    return _deserialize_varying(raw, count, name)


def _objects(values: np.ndarray) -> np.ndarray:
    """Fixed-size void elements -> object array of bytes (void keeps trailing NULs, which 'S' would strip).

    In slices: one numpy call holds the GIL throughout, and the event loop must get it back between slices.
    """
    out = np.empty(len(values), dtype=np.object_)
    for start in range(0, len(values), _SLICE):
        out[start : start + _SLICE] = values[start : start + _SLICE].astype(np.object_)
    return out


def _deserialize_varying(raw: bytes, count: int, name: str) -> np.ndarray:
    """Element by element; large requests run this off the event loop (see server/wire.py)."""
    items: list[bytes] = []
    append = items.append
    unpack = _LENGTH.unpack_from
    end = len(raw)
    offset = 0
    for _ in range(count):
        if offset + 4 > end:
            raise InvalidInput(f"input '{name}': BYTES contents end early; expected {count} length-prefixed elements")
        (length,) = unpack(raw, offset)
        start = offset + 4
        offset = start + length
        if offset > end:
            raise InvalidInput(f"input '{name}': BYTES element is longer than the data sent")
        append(raw[start:offset])
    if offset != end:
        raise InvalidInput(f"input '{name}': {end - offset} bytes left over after {count} BYTES elements")
    out = np.empty(count, dtype=np.object_)
    out[:] = items
    return out


def serialize_bytes(array: np.ndarray) -> bytes:
    """Inverse of `deserialize_bytes`."""
    parts = []
    for item in array.reshape(-1):
        data = item.encode("utf-8") if isinstance(item, str) else bytes(item)
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)


def _decode_tensor(tensor: Any, raw: bytes | None, max_elements: int) -> np.ndarray:
    name = tensor.name
    datatype = tensor.datatype.upper()
    if datatype not in KSERVE_TO_NUMPY:
        raise InvalidInput(
            f"input '{name}': datatype '{tensor.datatype}' is not a KServe v2 datatype; use one of "
            f"{', '.join(KSERVE_TO_NUMPY)}"
        )
    shape = list(tensor.shape)
    count = _element_count(name, shape, max_elements)
    dtype = KSERVE_TO_NUMPY[datatype]
    if raw is not None:
        if tensor.HasField("contents"):
            raise InvalidInput(
                f"input '{name}': both contents and raw_input_contents are set; send the data in one of them"
            )
        if datatype == "BYTES":
            return deserialize_bytes(raw, count, name).reshape(shape)
        expected = count * dtype.itemsize
        if len(raw) != expected:
            raise InvalidInput(
                f"input '{name}': shape {_show(shape)} of {datatype} needs {expected} bytes, but {len(raw)} were sent; "
                f"make the shape match the data"
            )
        return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).reshape(shape)
    if datatype == "FP16":
        raise InvalidInput(f"input '{name}': FP16 can only be sent as raw_input_contents")
    values = getattr(tensor.contents, _CONTENTS_FIELD[datatype])
    if len(values) != count:
        raise InvalidInput(
            f"input '{name}': shape {_show(shape)} needs {count} values, but contents hold {len(values)}; "
            f"make the shape match the data"
        )
    if datatype == "BYTES":
        out = np.empty(count, dtype=np.object_)
        out[:] = list(values)
        return out.reshape(shape)
    return np.asarray(values, dtype=dtype).reshape(shape)


def decode_request(request: Any, max_elements: int, deadline: float | None = None) -> InferenceRequest:
    """ModelInferRequest -> InferenceRequest, checking the wire-level invariants (counts, byte sizes)."""
    if not request.model_name:
        raise InvalidInput("model_name is empty; name the model to run (see RepositoryIndex)")
    if not request.inputs:
        raise InvalidInput(f"model '{request.model_name}': the request has no inputs")
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(
            f"{len(request.inputs)} inputs but {len(raw)} raw_input_contents; send one raw buffer per input"
        )
    inputs: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        if tensor.name in inputs:
            raise InvalidInput(f"input '{tensor.name}' is given twice")
        inputs[tensor.name] = _decode_tensor(tensor, raw[i] if raw else None, max_elements)
    return InferenceRequest(
        model=request.model_name,
        variant=request.model_version,
        inputs=inputs,
        outputs=[o.name for o in request.outputs],
        id=request.id,
        parameters=parameters_to_dict(request.parameters) if request.parameters else {},
        deadline=deadline,
    )


def _set_parameter(target: Any, value: Any) -> None:
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    else:
        target.string_param = str(value)


def encode_response(response: InferenceResponse) -> Any:
    """InferenceResponse -> ModelInferResponse with outputs as raw_output_contents, in request order."""
    message = pb.ModelInferResponse(model_name=response.model, model_version=response.variant, id=response.id)
    for key, value in response.parameters.items():
        _set_parameter(message.parameters[key], value)
    for output in response.outputs:
        data = output.data
        tensor = message.outputs.add(name=output.name, datatype=output.datatype or numpy_to_kserve(data.dtype))
        tensor.shape.extend(data.shape)
        if tensor.datatype == "BYTES":
            message.raw_output_contents.append(serialize_bytes(data))
        else:
            message.raw_output_contents.append(np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("<")).tobytes())
    return message
