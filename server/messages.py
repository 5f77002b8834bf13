"""Transport-free request and response types that flow through the data plane."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["InferenceRequest", "InferenceResponse", "Output"]


@dataclass
class InferenceRequest:
    """A decoded inference call: which model (and optionally which variant), and its input arrays."""

    model: str
    variant: str
    inputs: dict[str, np.ndarray]
    outputs: list[str] = field(default_factory=list)  # empty = every output of the model
    id: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    deadline: float | None = None  # absolute time.monotonic() after which the caller no longer waits


@dataclass
class Output:
    name: str
    datatype: str
    data: np.ndarray


@dataclass
class InferenceResponse:
    """The result: the variant that ran (returned as `model_version`) and the outputs in requested order."""

    model: str
    variant: str
    outputs: list[Output]
    id: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
