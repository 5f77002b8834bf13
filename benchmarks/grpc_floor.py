"""The floor under any Python gRPC model server on this machine: the same call against a server that does nothing.

    python benchmarks/grpc_floor.py [--requests 3000]

Starts a bare `grpc.aio` server (uvloop, like `python -m server`) whose ModelInfer returns a fixed
response without looking at the request, and calls it the way benchmarks/server_overhead.py calls
slimserve: tritonclient.grpc, batch 1, concurrency 1, on loopback. Prints p50/p95, the client's and the
server's CPU time per request, and a TCP ping-pong between two processes for scale. Whatever slimserve's
overhead is, it cannot go below this bare round trip.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def serve(port_file: Path) -> None:
    """Child process: a grpc.aio server that answers every ModelInfer with the same tiny response."""
    sys.path.insert(0, str(ROOT))
    import grpc
    import uvloop

    from protos import inference_pb2 as pb
    from protos import inference_pb2_grpc as pbg

    class Bare(pbg.GRPCInferenceServiceServicer):
        async def ModelInfer(self, request, context):  # noqa: N802 (gRPC's name)
            return pb.ModelInferResponse(model_name="digits", model_version="teacher")

    async def main() -> None:
        server = grpc.aio.server()
        pbg.add_GRPCInferenceServiceServicer_to_server(Bare(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        port_file.write_text(str(port))
        await server.wait_for_termination()

    uvloop.install()
    asyncio.run(main())


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tcp_ping_pong(rounds: int = 5000) -> float:
    """p50 µs of a one-byte TCP round trip between two processes on loopback."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    child = os.fork()
    if child == 0:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while data := conn.recv(64):
            conn.sendall(data)
        os._exit(0)
    client = socket.create_connection(("127.0.0.1", port))
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    times = []
    for _ in range(rounds):
        began = time.perf_counter()
        client.sendall(b"x")
        client.recv(64)
        times.append(time.perf_counter() - began)
    client.close()
    os.waitpid(child, 0)
    listener.close()
    return float(np.median(times) * 1e6)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0

    import tritonclient.grpc as triton

    port_file = Path(f"/tmp/slimserve-grpc-floor-{os.getpid()}")
    child = subprocess.Popen([sys.executable, __file__, "--serve", str(port_file)])
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text():
            if child.poll() is not None or time.monotonic() > deadline:
                print("error: the bare server did not start", file=sys.stderr)
                return 1
            time.sleep(0.05)
        client = triton.InferenceServerClient(f"127.0.0.1:{port_file.read_text()}")
        tensor = triton.InferInput("input", [1, 64], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 64), np.float32))
        for _ in range(300):
            client.infer("digits", [tensor])
        times = []
        cpu0, server0 = time.process_time(), _cpu_seconds(child.pid)
        for _ in range(args.requests):
            began = time.perf_counter()
            client.infer("digits", [tensor])
            times.append(time.perf_counter() - began)
        client_cpu = (time.process_time() - cpu0) / args.requests * 1e3
        server_cpu = (_cpu_seconds(child.pid) - server0) / args.requests * 1e3
    finally:
        child.terminate()
        child.wait(10)
        port_file.unlink(missing_ok=True)
    p50, p95 = np.percentile(np.array(times) * 1e3, [50, 95])
    print(f"# bare grpc.aio + uvloop server, tritonclient.grpc, batch 1, concurrency 1, {args.requests} requests")
    print("| round trip p50 ms | p95 ms | client CPU ms/req | server CPU ms/req | TCP ping-pong p50 µs |")
    print("|---|---|---|---|---|")
    print(f"| {p50:.3f} | {p95:.3f} | {client_cpu:.3f} | {server_cpu:.3f} | {tcp_ping_pong():.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
