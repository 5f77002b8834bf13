"""All conversion between KServe v2 protobuf messages and the data plane's numpy types lives here."""

from __future__ import annotations

import struct
from typing import Any, Iterable

import numpy as np

from protos import inference_pb2 as pb
from server.datatypes import KSERVE_TO_NUMPY, numpy_to_kserve
from server.errors import InvalidInput
from server.messages import InferenceRequest, InferenceResponse

__all__ = ["decode_request", "encode_response", "deserialize_bytes", "serialize_bytes", "parameters_to_dict"]

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


def _element_count(name: str, shape: Iterable[int], max_elements: int) -> int:
    """Product of the shape, refusing negative dims and oversize tensors before anything is allocated."""
    count = 1
    for dim in shape:
        if dim < 0:
            raise InvalidInput(f"input '{name}': shape {list(shape)} has a negative dimension; send concrete sizes")
        count *= dim
        if count > max_elements:
            raise InvalidInput(
                f"input '{name}': shape {list(shape)} has more than {max_elements} elements, the server's limit "
                f"(--max-elements); split the request"
            )
    return count


def deserialize_bytes(raw: bytes, count: int, name: str) -> np.ndarray:
    """KServe BYTES wire format: each element is a 4-byte little-endian length, then that many bytes."""
    items: list[bytes] = []
    offset = 0
    view = memoryview(raw)
    for _ in range(count):
        if offset + 4 > len(raw):
            raise InvalidInput(f"input '{name}': BYTES contents end early; expected {count} length-prefixed elements")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidInput(f"input '{name}': BYTES element is longer than the data sent")
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if offset != len(raw):
        raise InvalidInput(f"input '{name}': {len(raw) - offset} bytes left over after {count} BYTES elements")
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
        if datatype == "BYTES":
            return deserialize_bytes(raw, count, name).reshape(shape)
        expected = count * dtype.itemsize
        if len(raw) != expected:
            raise InvalidInput(
                f"input '{name}': shape {shape} of {datatype} needs {expected} bytes, but {len(raw)} were sent; "
                f"make the shape match the data"
            )
        return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).reshape(shape)
    if datatype == "FP16":
        raise InvalidInput(f"input '{name}': FP16 can only be sent as raw_input_contents")
    values = getattr(tensor.contents, _CONTENTS_FIELD[datatype])
    if len(values) != count:
        raise InvalidInput(
            f"input '{name}': shape {shape} needs {count} values, but contents hold {len(values)}; "
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
