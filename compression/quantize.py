"""Static int8 quantization of an ONNX file with ONNX Runtime (QDQ format), path in, path out."""

from __future__ import annotations

import contextlib
import io
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                      QuantType, quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process

__all__ = ["ACTIVATION_TYPES", "CALIBRATION_METHODS", "ArrayDataReader", "QuantizeOptions",
           "quantize_int8"]

CALIBRATION_METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                       "percentile": CalibrationMethod.Percentile}
ACTIVATION_TYPES = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}


@dataclass(frozen=True)
class QuantizeOptions:
    calibration_samples: int = 256
    calibration_method: str = "minmax"
    per_channel: bool = True
    """One scale per output channel of each weight: better fidelity for a few extra floats."""
    activation_type: str = "uint8"
    """u8 activations × s8 weights is the pairing ORT's x86 kernels (VNNI) are built for."""
    preprocess: bool = True
    """Run ORT's quant_pre_process (graph optimisation + shape inference) first."""
    batch_size: int = 32

    def as_params(self) -> dict[str, object]:
        return {"tool": "onnxruntime.quantization.quantize_static", "format": "QDQ",
                "weight_type": "int8", "activation_type": self.activation_type,
                "per_channel": self.per_channel, "calibration_method": self.calibration_method,
                "calibration_samples": self.calibration_samples, "calibration_split": "train",
                "preprocess": self.preprocess}


class ArrayDataReader(CalibrationDataReader):
    """Feeds calibration rows to the quantizer in batches under one input name."""

    def __init__(self, input_name: str, x: np.ndarray, batch_size: int) -> None:
        self._batches = iter([{input_name: x[i:i + batch_size]}
                              for i in range(0, len(x), batch_size)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantize_int8(source: Path, target: Path, input_name: str, calibration: np.ndarray,
                  options: QuantizeOptions) -> Path:
    """Quantize `source` into `target`: int8 weights, activations calibrated on `calibration`."""
    if options.calibration_method not in CALIBRATION_METHODS:
        raise ValueError(f"unknown calibration method {options.calibration_method!r}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="slimserve-quant-") as scratch:
        # The pre-processed copy is scratch: only the quantized file belongs in the repository.
        model_in = source
        if options.preprocess:
            model_in = Path(scratch) / "preprocessed.onnx"
            quant_pre_process(str(source), str(model_in), skip_symbolic_shape=False)
        # The histogram calibrators print to stdout, which belongs to the build's final table.
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(
                str(model_in), str(target),
                ArrayDataReader(input_name, calibration.astype(np.float32), options.batch_size),
                quant_format=QuantFormat.QDQ, per_channel=options.per_channel,
                weight_type=QuantType.QInt8,
                activation_type=ACTIVATION_TYPES[options.activation_type],
                calibrate_method=CALIBRATION_METHODS[options.calibration_method])
    return target
