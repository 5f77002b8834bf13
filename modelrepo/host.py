"""Describe the build machine and tool versions, so measured figures can be read in context."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

__all__ = ["INT8_FLAGS", "cpu_flags", "cpu_model", "host_record", "int8_features", "tool_versions"]

# CPU features that decide which int8 kernels ONNX Runtime can use (VNNI/AMX: fast u8×s8 dots).
INT8_FLAGS = ("sse4_1", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
              "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16",
              "asimd", "asimddp", "i8mm", "sve")

CPUINFO = Path("/proc/cpuinfo")


def _cpuinfo_field(*keys: str) -> str | None:
    try:
        text = CPUINFO.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in keys:
            return value.strip()
    return None


def cpu_model() -> str:
    """The CPU's marketing name ("model name" on x86), else what the platform module knows."""
    return _cpuinfo_field("model name", "Model", "Hardware") or platform.processor() or "unknown"


def cpu_flags() -> set[str]:
    flags = _cpuinfo_field("flags", "Features")
    return set(flags.split()) if flags else set()


def int8_features() -> list[str]:
    """The CPU features, among INT8_FLAGS, that this machine has."""
    flags = cpu_flags()
    return [flag for flag in INT8_FLAGS if flag in flags]


def host_record() -> dict[str, object]:
    return {"cpu": cpu_model(), "cores": os.cpu_count() or 1, "int8_features": int8_features()}


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


def tool_versions(*extra: str) -> dict[str, str]:
    """Versions of the tools whose numerics shape the variants (from package metadata), plus the
    distributions named in `extra` (e.g. torch, transformers), keyed with `_` for `-`."""
    versions = {"python": platform.python_version(), "onnx": _version("onnx"),
                "onnxruntime": _version("onnxruntime"), "slimserve": _version("slimserve")}
    return {**versions, **{name.replace("-", "_"): _version(name) for name in extra}}
