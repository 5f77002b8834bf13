"""Server settings: one typed class; every field is a `--flag` and a `SLIMSERVE_*` environment variable."""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

__all__ = ["Settings", "parse_settings", "SettingsError"]

ENV_PREFIX = "SLIMSERVE_"


class SettingsError(ValueError):
    """A setting has a value that cannot be used (bad environment variable or flag)."""


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass(frozen=True)
class Settings:
    """Everything `python -m server` can be told; defaults follow Triton where users know them."""

    model_repository: Path = field(
        default=Path("model_repository"), metadata={"help": "root folder of the model repository"}
    )
    host: str = field(
        default="127.0.0.1",
        metadata={"help": "address to listen on, gRPC and metrics (0.0.0.0 = every interface, as containers need)"},
    )
    grpc_port: int = field(default=8001, metadata={"help": "gRPC port (0 = pick a free port)"})
    metrics_port: int = field(default=8002, metadata={"help": "Prometheus /metrics port (0 = free port, -1 = off)"})
    workers: int = field(
        default_factory=_cores,
        metadata={"help": "threads that run ONNX Runtime sessions (default: the usable cores)"},
    )
    intra_op_threads: int = field(
        default=1,
        metadata={"help": "ONNX Runtime intra-op threads per session; workers x this should not exceed the cores"},
    )
    lone_run_threads: int = field(
        default_factory=_cores,
        metadata={"help": "intra-op threads of a run that starts while no other run is in progress: each variant "
                          "gets a second session with this many threads for such runs (default: the usable "
                          "cores; 1 = off, which halves the memory the sessions hold)"},
    )
    max_batch_size: int = field(default=64, metadata={"help": "largest batch a request (or a merged batch) may have"})
    max_tokens_per_run: int = field(
        default=1024,
        metadata={"help": "token models: run a batch as slices of at most this many tokens, which keeps a "
                          "transformer's activations in the CPU caches (0 = one run per batch)"},
    )
    inline_compute_us: int = field(
        default=100,
        metadata={"help": "a variant whose runs average under this many microseconds runs on the event loop "
                          "when the server is idle, skipping the hop to a worker thread (0 = never)"},
    )
    batching: bool = field(
        default=True, metadata={"help": "merge queued requests of a variant into one run (dynamic batching)"}
    )
    max_queue_delay_us: int = field(
        default=0,
        metadata={"help": "how long a lone request may wait for others to batch with (0 = never wait)"},
    )
    max_queue_size: int = field(
        default=256, metadata={"help": "requests waiting per variant before RESOURCE_EXHAUSTED is returned"}
    )
    idle_settle_seconds: float = field(
        default=1.0,
        metadata={"help": "after this many idle seconds a variant frees the buffers its largest batches left "
                          "in ONNX Runtime's arena and the heap returns them to the OS (0 = never)"},
    )
    max_elements: int = field(
        default=16 * 1024 * 1024, metadata={"help": "largest element count of one input tensor"}
    )
    max_message_bytes: int = field(
        default=64 * 1024 * 1024, metadata={"help": "largest gRPC message, received or sent"}
    )
    tls_cert: Path | None = field(default=None, metadata={"help": "PEM certificate chain: serve gRPC over TLS"})
    tls_key: Path | None = field(default=None, metadata={"help": "PEM private key of --tls-cert"})
    tls_client_ca: Path | None = field(
        default=None, metadata={"help": "PEM CA bundle: require client certificates signed by it (mutual TLS)"}
    )
    auth_token: str | None = field(
        default=None,
        metadata={"help": "bearer token required on inference calls (metadata 'authorization: Bearer ...')"},
    )
    admin_token: str | None = field(
        default=None,
        metadata={"help": "bearer token required on repository and compression calls (unset: the --auth-token "
                          "guards them too)"},
    )
    job_data_dir: Path | None = field(
        default=None,
        metadata={"help": "CompressionService jobs may read training data (CreateVariantRequest.data) only from "
                          "under this folder (unset: only the model folder's own files)"},
    )
    poll_seconds: float = field(
        default=0.0, metadata={"help": "re-read the repository this often and swap in changed models (0 = off)"}
    )
    verify_sha256: bool = field(default=True, metadata={"help": "check each model file's sha256 against the manifest"})
    shutdown_grace_seconds: float = field(
        default=10.0, metadata={"help": "on SIGTERM, how long in-flight requests may take to finish"}
    )
    event_loop: str = field(
        default="uvloop",
        metadata={"help": "uvloop (faster hand-off to the ONNX Runtime threads) or asyncio"},
    )
    log_level: str = field(default="INFO", metadata={"help": "DEBUG, INFO, WARNING or ERROR"})
    kubernetes_job_template: Path | None = field(
        default=None,
        metadata={"help": "Job template (JSON; the slimserve-job-template ConfigMap of deploy/) for CreateVariant "
                          "runner 'kubernetes' (unset: that runner is refused)"},
    )


def _convert(raw: str, kind: Any, name: str) -> Any:
    try:
        if kind is bool or kind == "bool":
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind in (int, "int"):
            return int(raw)
        if kind in (float, "float"):
            return float(raw)
        if kind in (Path, "Path", "Path | None"):
            return Path(raw)
        return raw
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a valid {getattr(kind, '__name__', kind)}") from None


def parse_settings(argv: Sequence[str] | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Defaults < environment (`SLIMSERVE_GRPC_PORT=...`) < command-line flags (`--grpc-port ...`)."""
    environ = dict(os.environ if environ is None else environ)
    defaults: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        env_name = ENV_PREFIX + f.name.upper()
        if env_name in environ:
            defaults[f.name] = _convert(environ[env_name], f.type, env_name) if environ[env_name] != "" else None
    base = Settings(**defaults)

    parser = argparse.ArgumentParser(
        prog="python -m server",
        description="Serve a slimserve model repository: KServe v2 gRPC, health, reflection, Prometheus metrics.",
    )
    for f in dataclasses.fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata.get('help', '')} (env {ENV_PREFIX}{f.name.upper()}, default %(default)s)"
        current = getattr(base, f.name)
        if f.type in (bool, "bool"):
            parser.add_argument(flag, default=current, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            kind = {"int": int, "float": float, "Path": Path, "Path | None": Path}.get(str(f.type), str)
            parser.add_argument(flag, default=current, type=kind, help=help_text)
    args = parser.parse_args(argv)
    settings = Settings(**vars(args))
    _validate(settings)
    return settings


def _validate(s: Settings) -> None:
    # Checked here: gRPC takes any integer and wraps it silently (-5 binds 65531, 70000 binds 4464).
    if not 0 <= s.grpc_port <= 65535:
        raise SettingsError(f"--grpc-port {s.grpc_port}: use 0 (a free port) to 65535")
    if not -1 <= s.metrics_port <= 65535:
        raise SettingsError(f"--metrics-port {s.metrics_port}: use -1 (off), 0 (a free port) or up to 65535")
    if not (s.host or "").strip():
        raise SettingsError("--host is empty: give an address such as 127.0.0.1 or 0.0.0.0")
    if s.workers < 1:
        raise SettingsError("--workers must be at least 1")
    if s.intra_op_threads < 0:
        raise SettingsError("--intra-op-threads must be 0 (ONNX Runtime decides) or more")
    if s.lone_run_threads < 1:
        raise SettingsError("--lone-run-threads must be at least 1 (1 = no second session)")
    if s.inline_compute_us < 0:
        raise SettingsError("--inline-compute-us must be 0 (off) or more")
    if s.max_tokens_per_run < 0:
        raise SettingsError("--max-tokens-per-run must be 0 (off) or more")
    if s.max_batch_size < 1 or s.max_queue_size < 1 or s.max_elements < 1:
        raise SettingsError("--max-batch-size, --max-queue-size and --max-elements must be at least 1")
    if (s.tls_cert is None) != (s.tls_key is None):
        raise SettingsError("--tls-cert and --tls-key go together; give both or neither")
    if s.tls_client_ca is not None and s.tls_cert is None:
        raise SettingsError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
    for name in ("tls_cert", "tls_key", "tls_client_ca", "kubernetes_job_template"):
        path = getattr(s, name)
        if path is not None and not Path(path).is_file():
            raise SettingsError(f"--{name.replace('_', '-')} {path}: no such file")
    if s.idle_settle_seconds < 0:
        raise SettingsError("--idle-settle-seconds must be 0 (never) or more")
    if s.max_queue_delay_us < 0 or s.poll_seconds < 0:
        raise SettingsError("--max-queue-delay-us and --poll-seconds must be 0 or more")
    if s.event_loop not in ("uvloop", "asyncio"):
        raise SettingsError(f"--event-loop {s.event_loop!r}: use uvloop or asyncio")
    if s.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise SettingsError(f"--log-level {s.log_level!r}: use DEBUG, INFO, WARNING or ERROR")
