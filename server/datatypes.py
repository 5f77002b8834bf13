"""KServe v2 datatype names and their numpy equivalents."""

from __future__ import annotations

import numpy as np

__all__ = ["KSERVE_TO_NUMPY", "numpy_to_kserve", "itemsize"]

KSERVE_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}

_NUMPY_TO_KSERVE = {dtype: name for name, dtype in KSERVE_TO_NUMPY.items()}
_NUMPY_TO_KSERVE[np.dtype(np.bytes_)] = "BYTES"


def numpy_to_kserve(dtype: np.dtype) -> str:
    """The KServe datatype of a numpy array (strings and bytes are BYTES)."""
    if dtype.kind in ("S", "U", "O"):
        return "BYTES"
    try:
        return _NUMPY_TO_KSERVE[np.dtype(dtype)]
    except KeyError:
        raise ValueError(f"numpy dtype {dtype} has no KServe datatype") from None


def itemsize(datatype: str) -> int:
    """Bytes per element of a fixed-size KServe datatype."""
    return KSERVE_TO_NUMPY[datatype].itemsize
