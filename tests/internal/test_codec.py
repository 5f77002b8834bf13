"""Wire decoding: shapes, byte counts and BYTES framing are checked before any allocation."""

from __future__ import annotations

import numpy as np
import pytest

from protos import inference_pb2 as pb
from server.codec import decode_request, deserialize_bytes, encode_response, serialize_bytes
from server.errors import InvalidInput
from server.messages import InferenceResponse, Output


def _request(shape: list[int], raw: bytes, datatype: str = "FP32") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="input", datatype=datatype, shape=shape)
    request.raw_input_contents.append(raw)
    return request


def test_raw_fp32_round_trip() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    decoded = decode_request(_request([2, 3], x.tobytes()), max_elements=100)
    np.testing.assert_array_equal(decoded.inputs["input"], x)


def test_typed_contents_are_accepted() -> None:
    request = pb.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="input", datatype="INT64", shape=[3])
    tensor.contents.int64_contents.extend([1, 2, 3])
    decoded = decode_request(request, max_elements=100)
    assert decoded.inputs["input"].dtype == np.int64
    assert decoded.inputs["input"].tolist() == [1, 2, 3]


@pytest.mark.parametrize(
    ("shape", "raw", "fragment"),
    [
        ([2, 3], b"\0" * 20, "needs 24 bytes, but 20 were sent"),
        ([2, -3], b"", "negative dimension"),
        ([1 << 40, 1 << 40], b"", "more than 100 elements"),
    ],
)
def test_bad_shapes_name_the_input_and_the_fix(shape: list[int], raw: bytes, fragment: str) -> None:
    with pytest.raises(InvalidInput) as err:
        decode_request(_request(shape, raw), max_elements=100)
    assert "input 'input'" in err.value.message and fragment in err.value.message


def test_unknown_datatype_lists_the_valid_ones() -> None:
    with pytest.raises(InvalidInput, match="not a KServe v2 datatype; use one of BOOL"):
        decode_request(_request([1], b"\0" * 4, datatype="FLOAT"), max_elements=100)


def test_raw_count_must_match_inputs() -> None:
    request = _request([1], b"\0" * 4)
    request.inputs.add(name="other", datatype="FP32", shape=[1])
    with pytest.raises(InvalidInput, match="one raw buffer per input"):
        decode_request(request, max_elements=100)


def test_bytes_framing_round_trip_and_truncation() -> None:
    strings = np.array([b"hello", b"", "w\u00f6rld".encode()], dtype=np.object_)
    raw = serialize_bytes(strings)
    assert deserialize_bytes(raw, 3, "text").tolist() == strings.tolist()
    with pytest.raises(InvalidInput, match="end early"):
        deserialize_bytes(raw[:-8], 3, "text")
    with pytest.raises(InvalidInput, match="left over"):
        deserialize_bytes(raw + b"x", 3, "text")


def test_response_outputs_are_raw_and_in_order() -> None:
    a = np.ones((2, 2), dtype=np.float32)
    b = np.arange(2, dtype=np.int64)
    message = encode_response(InferenceResponse("m", "int8", [Output("b", "INT64", b), Output("a", "FP32", a)]))
    assert message.model_version == "int8"
    assert [o.name for o in message.outputs] == ["b", "a"]
    assert np.frombuffer(message.raw_output_contents[0], dtype=np.int64).tolist() == [0, 1]
    assert list(message.outputs[1].shape) == [2, 2]
