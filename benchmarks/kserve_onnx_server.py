"""The KServe side of benchmarks/peer_kserve.py: KServe's Python model server answering v2 gRPC with ONNX Runtime.

Run with the KServe venv's python (benchmarks/peer_kserve.py creates it), never slimserve's:

    /tmp/slimserve-kserve-venv/bin/python benchmarks/kserve_onnx_server.py \\
        --onnx mlp=/path/mlp/1/model.onnx --onnx minilm_int8=/path/int8/model.onnx \\
        --grpc_port 8081 --http_port 8080 --intra-op-threads 1

One `kserve.Model` per ONNX file, named as given; inputs are fed to the session by name as the request
carries them, every graph output is returned as raw (binary) contents. The sessions are opened with
slimserve's own recipe, `modelrepo.session.open_session` (it needs only onnxruntime, which this venv has;
imported from this checkout, so both sides cannot drift apart): the given intra-op threads, one inter-op
thread, sequential, every graph optimization, intra-op spinning off, denormals as zero,
SkipLayerNormFusion disabled.

`--predict-mode sync` (default) is how KServe's own servers (sklearnserver, xgbserver) predict: a plain method,
which KServe calls on its event loop, so one ONNX Runtime run at a time. `--predict-mode thread` makes predict a
coroutine that hands the run to the event loop's default executor (KServe sets it to
`--max_asyncio_workers` threads, default cores + 4), so runs can overlap.

KServe's flags (`--grpc_port`, `--http_port`, `--workers`, `--max_threads`, `--enable_latency_logging`, ...)
are read by KServe itself (kserve.model_server parses sys.argv on import, allowing abbreviations: this
file's own flags are named so that none is a prefix of one of KServe's, e.g. not `--model` or `--predict`).
Two things are patched, neither on the request path: KServe binds gRPC to `[::]` and HTTP to `0.0.0.0`
with no flag to change it, so both are bound to `--host` (default 127.0.0.1) instead.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from importlib import metadata
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import uvicorn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from modelrepo.session import DISABLED_OPTIMIZERS, open_session  # noqa: E402  (the checkout, not installed)


def ort_settings(intra_op_threads: int) -> str:
    return (f"onnxruntime {ort.__version__}: intra_op_num_threads={intra_op_threads}, inter_op_num_threads=1, "
            f"ORT_SEQUENTIAL, ORT_ENABLE_ALL, intra-op spinning off, denormals as zero, disabled "
            f"{','.join(DISABLED_OPTIMIZERS)}")


def bind_to(host: str) -> None:
    """Make KServe's gRPC (`[::]:port`) and HTTP (`0.0.0.0`) listeners bind to `host` instead."""
    from kserve.protocol.grpc import server as grpc_server_module

    class _Aio:
        def __getattr__(self, name: str) -> Any:
            return getattr(grpc.aio, name)

        @staticmethod
        def server(*args: Any, **kwargs: Any) -> Any:
            server = grpc.aio.server(*args, **kwargs)
            add = server.add_insecure_port

            def add_insecure_port(address: str) -> int:
                return add(f"{host}:{address.rsplit(':', 1)[1]}")

            server.add_insecure_port = add_insecure_port
            return server

    grpc_server_module.aio = _Aio()

    base = uvicorn.Config

    class _Config(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["host"] = host
            super().__init__(*args, **kwargs)

    uvicorn.Config = _Config  # kserve.protocol.rest.server calls uvicorn.Config(...)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", action="append", required=True, metavar="NAME=PATH",
                        help="a model name and its ONNX file (repeat for more)")
    parser.add_argument("--intra-op-threads", type=int, default=1, help="ONNX Runtime intra-op threads per session")
    parser.add_argument("--predict-mode", choices=("sync", "thread"), default="sync",
                        help="sync: run on KServe's event loop (as KServe's own servers); thread: in its executor")
    parser.add_argument("--host", default="127.0.0.1", help="address for KServe's gRPC and HTTP listeners")
    args, _kserve_flags = parser.parse_known_args()  # the rest is KServe's, parsed by kserve.model_server

    bind_to(args.host)
    import kserve
    from kserve.model_server import args as kserve_args
    from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
    from kserve.utils.numpy_codec import from_np_dtype

    class OnnxModel(kserve.Model):  # type: ignore[misc]
        def __init__(self, name: str, path: str) -> None:
            super().__init__(name)
            self.path = path
            self.session: ort.InferenceSession | None = None
            self.output_names: list[str] = []

        def load(self) -> bool:
            self.session = open_session(self.path, args.intra_op_threads)
            self.output_names = [o.name for o in self.session.get_outputs()]
            self.ready = True
            return True

        def _run(self, payload: InferRequest) -> InferResponse:
            assert self.session is not None
            feeds = {tensor.name: tensor.as_numpy() for tensor in payload.inputs}
            outputs = []
            for name, array in zip(self.output_names, self.session.run(None, feeds)):
                array = np.ascontiguousarray(array)
                output = InferOutput(name=name, shape=list(array.shape), datatype=from_np_dtype(array.dtype))
                output.set_data_from_numpy(array, binary_data=True)
                outputs.append(output)
            return InferResponse(response_id=payload.id, model_name=self.name, infer_outputs=outputs,
                                 use_binary_outputs=True)

    class SyncModel(OnnxModel):
        def predict(self, payload: InferRequest, headers: dict[str, str] | None = None) -> InferResponse:
            return self._run(payload)

    class ThreadModel(OnnxModel):
        async def predict(self, payload: InferRequest, headers: dict[str, str] | None = None) -> InferResponse:
            return await asyncio.get_running_loop().run_in_executor(None, self._run, payload)

    kind = SyncModel if args.predict_mode == "sync" else ThreadModel
    models = []
    for spec in args.onnx:
        name, sep, path = spec.partition("=")
        if not sep or not name or not os.path.isfile(path):
            parser.error(f"--onnx {spec!r}: expected NAME=PATH of an existing ONNX file")
        model = kind(name, path)
        model.load()
        models.append(model)
    print(f"kserve {metadata.version('kserve')} on Python {sys.version.split()[0]}; grpcio {grpc.__version__}; "
          f"gRPC port {kserve_args.grpc_port}, HTTP port {kserve_args.http_port} on {args.host}; "
          f"--workers {kserve_args.workers} (uvicorn HTTP processes; gRPC is one grpc.aio server in the main process, "
          f"--max_threads {kserve_args.max_threads}); predict {args.predict_mode}", flush=True)
    print(f"sessions: {ort_settings(args.intra_op_threads)}", flush=True)
    print(f"models: {', '.join(m.name for m in models)}", flush=True)
    kserve.ModelServer().start(models)
    return 0


if __name__ == "__main__":
    sys.exit(main())
