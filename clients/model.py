"""What the server tells about models, as plain typed values (no gRPC import, so tests can load it freely)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tritonclient.utils import triton_to_np_dtype

__all__ = ["TensorInfo", "ModelInfo", "Prediction", "VariantStatistics"]


@dataclass(frozen=True)
class TensorInfo:
    """One input or output of a model: KServe datatype and shape (-1 = dynamic)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @property
    def dtype(self) -> np.dtype:
        """The numpy dtype that carries this datatype (object for BYTES)."""
        return np.dtype(triton_to_np_dtype(self.datatype))

    @property
    def batched(self) -> bool:
        """True when the first axis is the dynamic batch axis."""
        return bool(self.shape) and self.shape[0] == -1

    def concrete_shape(self, batch: int = 1) -> tuple[int, ...]:
        """The shape with the batch axis set to `batch` and other dynamic axes to 1."""
        return tuple((batch if i == 0 else 1) if d < 0 else d for i, d in enumerate(self.shape))


@dataclass(frozen=True)
class ModelInfo:
    """Model metadata: the versions are the model's variants."""

    name: str
    platform: str
    variants: tuple[str, ...]
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    task: str = ""  # "classification" or "embedding", from ModelConfig's metric_tags when the server says

    @property
    def text_input(self) -> TensorInfo | None:
        """The BYTES input a text model accepts beside its token inputs (tokenized by the server)."""
        if len(self.inputs) < 2:
            return None
        return next((t for t in self.inputs if t.datatype == "BYTES" and t.name == "text"), None)

    @property
    def request_inputs(self) -> tuple[TensorInfo, ...]:
        """What a request sends by default: strings for a text model, otherwise every input."""
        text = self.text_input
        return (text,) if text is not None else self.inputs

    def is_classifier(self, output: TensorInfo | None = None) -> bool:
        """The server's task tag decides; without it, a float output shaped [-1, C], C > 1, reads as scores."""
        if self.task:
            return self.task == "classification"
        t = output or self.outputs[0]
        return len(t.shape) == 2 and t.batched and t.shape[1] > 1 and t.datatype in ("FP16", "FP32", "FP64")


@dataclass(frozen=True)
class Prediction:
    """The answer to one inference request; `variant` is the `model_version` that served it."""

    model: str
    variant: str
    outputs: dict[str, np.ndarray]


@dataclass(frozen=True)
class VariantStatistics:
    """Triton-style cumulative statistics of one variant (times in nanoseconds)."""

    model: str
    variant: str
    success_count: int
    success_ns: int
    fail_count: int
    queue_ns: int
    compute_count: int
    compute_ns: int
    inference_count: int
    execution_count: int
    memory_bytes: int
