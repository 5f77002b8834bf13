"""ModelInfer's wire edge: the body is parsed in the handler (large ones off the event loop); error text is bounded."""

from __future__ import annotations

import asyncio
import math
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

import grpc
from google.protobuf.message import DecodeError

from protos import inference_pb2 as pb
from server.codec import decode_request
from server.errors import InvalidInput
from server.messages import InferenceRequest

__all__ = ["RawBody", "add_inference_service", "bounded_message", "decode", "parse_infer_request"]

# Up to this size a body is parsed and decoded on the event loop: below it the thread hop costs more than the work.
INLINE_BYTES = 1 << 20
# ... unless it carries more BYTES elements than this: each one becomes a Python object (~0.1-0.5 µs apiece).
INLINE_STRINGS = 1 << 14
MESSAGE_BYTES = 1024  # status messages travel in a trailer; clients drop trailers over 8 KiB (after %-encoding)

_SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
# Its own threads, not ONNX Runtime's executor: a 50 MB decode must not delay inference, nor wait behind it.
_DECODE_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="decode")
_LONG_WORD = re.compile(r"\S{101,}")
_T = TypeVar("_T")


class RawBody:
    """ModelInfer's body as received; parsing it in the handler lets a corrupt one get INVALID_ARGUMENT."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data: bytes | None = data

    def take(self) -> bytes:
        """The body, once: grpc holds this object for the whole call, so it must not hold the bytes too."""
        data, self.data = self.data, None
        return data or b""


def add_inference_service(servicer: Any, server: grpc.aio.Server) -> None:
    """`add_GRPCInferenceServiceServicer_to_server`, except that ModelInfer receives a `RawBody`."""
    handlers = {}
    for method in _SERVICE.methods:  # every method of the service is unary-unary
        request_type, response_type = getattr(pb, method.input_type.name), getattr(pb, method.output_type.name)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name),
            request_deserializer=RawBody if method.name == "ModelInfer" else request_type.FromString,
            response_serializer=response_type.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SERVICE.full_name, handlers),))
    server.add_registered_method_handlers(_SERVICE.full_name, handlers)


def parse_infer_request(data: bytes) -> Any:
    """Bytes -> ModelInferRequest; a corrupt body is the caller's mistake."""
    try:
        return pb.ModelInferRequest.FromString(data)
    except DecodeError:
        raise InvalidInput(
            f"the request body ({len(data)} bytes) is not a valid inference.ModelInferRequest protobuf; "
            f"send a serialized ModelInferRequest"
        ) from None


async def decode(request: RawBody | Any, max_elements: int, deadline: float | None = None) -> InferenceRequest:
    """A ModelInfer body (or an already parsed message) -> InferenceRequest; small ones inline, large ones pooled."""
    if isinstance(request, RawBody):
        if request.data is not None and len(request.data) > INLINE_BYTES:
            return await _off_loop(_parse_and_decode, request, max_elements, deadline)
        request = parse_infer_request(request.take())
    if _strings(request) > INLINE_STRINGS:
        return await _off_loop(decode_request, request, max_elements, deadline)
    return decode_request(request, max_elements, deadline)


def _parse_and_decode(body: RawBody, max_elements: int, deadline: float | None) -> InferenceRequest:
    # The bytes die once parsed; the message dies on return: only the decoded arrays outlive this call.
    return decode_request(parse_infer_request(body.take()), max_elements, deadline)


def _strings(request: Any) -> int:
    """How many BYTES elements the request claims (shapes are checked later, in the decoder)."""
    return sum(math.prod(t.shape) for t in request.inputs if t.datatype.upper() == "BYTES")


async def _off_loop(function: Callable[..., _T], *args: Any) -> _T:
    return await asyncio.get_running_loop().run_in_executor(_DECODE_POOL, function, *args)


def bounded_message(message: str) -> str:
    """One line of at most MESSAGE_BYTES, long names and paths cut to their ends: the error itself must get through."""
    message = _LONG_WORD.sub(lambda m: m.group()[:90] + "…" + m.group()[-10:], " ".join(message.splitlines()))
    data = message.encode()
    return message if len(data) <= MESSAGE_BYTES else data[: MESSAGE_BYTES - 3].decode(errors="ignore") + "…"
