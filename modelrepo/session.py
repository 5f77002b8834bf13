"""The ONNX Runtime session recipe every slimserve session uses: the server's and every measurement's."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

__all__ = ["DISABLED_OPTIMIZERS", "open_session", "session_options"]

# ONNX Runtime fuses Add + LayerNormalization into SkipLayerNormalization in int8 transformer graphs;
# on this CPU (x86-64, AVX-512) the fused kernel is slower than the two ops it replaces: MiniLM int8
# at batch 32 x 128 tokens took 330-345 ms without it against 360-380 ms with it (interleaved runs),
# with the same outputs.
DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)


def session_options(intra_op_threads: int = 1) -> ort.SessionOptions:
    """Options for one session: `intra_op_threads` threads (0 = ONNX Runtime decides), one inter-op
    thread, sequential, every graph optimization, no spinning, denormals flushed to zero."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # Workers already run sessions in parallel; spinning threads would steal their cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # The additive attention mask of padded rows drives softmax into denormal floats, which x86
    # handles ~10x slower: a half-padded MiniLM batch of 32 x 128 ran 24% (int8) and 11% (fp32)
    # faster with them flushed to zero. Results change only where a value would be below 1.2e-38.
    options.add_session_config_entry("session.set_denormal_as_zero", "1")
    return options


def open_session(path: Path | str, intra_op_threads: int = 1) -> ort.InferenceSession:
    """A CPU session for the ONNX file at `path` with `session_options(intra_op_threads)`."""
    return ort.InferenceSession(str(path), sess_options=session_options(intra_op_threads),
                                providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(DISABLED_OPTIMIZERS))
