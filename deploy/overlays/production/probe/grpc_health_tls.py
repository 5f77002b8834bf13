"""Exec probe for slimserve serving gRPC over TLS: grpc.health.v1 Check(service="") must answer SERVING.

Why an exec probe: the kubelet's own `grpc` probe speaks plaintext only, and slimserve has one gRPC
port, which is TLS when SLIMSERVE_TLS_CERT is set. A `tcpSocket` probe would only prove the port
accepts connections, not that the server is SERVING (it goes NOT_SERVING while it drains on SIGTERM).
So the kubelet runs this file inside the server container, with the container's environment, through
the image's own Python and grpcio (nothing added to the image): it dials 127.0.0.1:$SLIMSERVE_GRPC_PORT
over TLS, verifies the server's certificate for the name $PROBE_TLS_SERVER_NAME against the CA in
$PROBE_TLS_CA, and exits 0 only on SERVING (1 otherwise, with the reason on stderr, which
`kubectl describe pod` shows).

- PROBE_TLS_CA: the CA bundle that signed the server certificate (ca.crt of the TLS Secret, as
  cert-manager writes it). If that file is absent, gRPC's bundled public roots are used (a certificate
  from a public CA).
- PROBE_TLS_SERVER_NAME: a DNS name the certificate carries (the Service's in-cluster name): the
  probe checks the same name clients check, so a certificate that clients would refuse fails it too.
- PROBE_TLS_CLIENT_CERT / PROBE_TLS_CLIENT_KEY (optional): a client certificate, needed only when the
  server requires one (SLIMSERVE_TLS_CLIENT_CA, mutual TLS).
- PROBE_TIMEOUT_SECONDS (default 3): keep it under the probe's timeoutSeconds.

Cost: one Python start plus the grpc import per probe, about 0.25 s measured here; with the periods
in the Deployment (10 s readiness, 20 s liveness) that is under 4% of one core.
"""

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def _read(variable: str) -> bytes | None:
    path = os.environ.get(variable)
    if not path or not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        return f.read()


def main() -> int:
    target = f"127.0.0.1:{os.environ.get('SLIMSERVE_GRPC_PORT', '8001')}"
    name = os.environ.get("PROBE_TLS_SERVER_NAME", "")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read("PROBE_TLS_CA"),
        private_key=_read("PROBE_TLS_CLIENT_KEY"),
        certificate_chain=_read("PROBE_TLS_CLIENT_CERT"),
    )
    options = [("grpc.ssl_target_name_override", name)] if name else []
    timeout = float(os.environ.get("PROBE_TIMEOUT_SECONDS", "3"))
    with grpc.secure_channel(target, credentials, options=options) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError as error:
            print(f"grpc health check of {target} (TLS name {name or '-'}): {error.code().name}: {error.details()}",
                  file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
