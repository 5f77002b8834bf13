"""gRPC server reflection under both names clients try: `grpc.reflection.v1` (grpcurl, Postman) and v1alpha."""

from __future__ import annotations

from typing import Iterable

import grpc
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha import reflection_pb2 as pb

__all__ = ["enable_reflection", "V1_SERVICE_NAME"]

V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"


def enable_reflection(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Register v1alpha as grpcio-reflection does, and v1 on the same servicer.

    grpcio-reflection ships only v1alpha; v1 has the same messages field for field (only the package
    name differs), so the v1alpha messages parse and write v1's wire format unchanged.
    """
    names = [*service_names, reflection.SERVICE_NAME, V1_SERVICE_NAME]
    servicer = reflection.aio.ReflectionServicer(names)
    reflection.enable_server_reflection(names, server)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=pb.ServerReflectionRequest.FromString,
        response_serializer=pb.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(V1_SERVICE_NAME, {"ServerReflectionInfo": handler}),)
    )
