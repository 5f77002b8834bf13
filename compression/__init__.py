"""Offline half of slimserve: build compressed ONNX variants of a teacher into a model repository.

`python -m compression.build --help` lists the flags. What both halves share (manifest schema and
validation, atomic writes, the session recipe, quality, latency, the int8 step) is `modelrepo`.
Modules, one job each:

    cli          the command line: flags, checks, options
    build        the build: data, teacher, variants, measurement, manifest, report; torchrun-aware
    teachers     the teacher registry (built-ins, `register_teacher`) and `--teacher` resolution
    loaders      TorchScript, torch.export, factory + weights, and ONNX teachers
    text/        Hugging Face encoder folders (and the `minilm` preset): data, makers, export
    lift         loaded graphs turned into modules with real layers (prunable, trainable)
    data         `--data`: built-in, .npz, Dataset factories; named input arrays, seeded splits
    factory      `package.module:factory` references
    variants     the variant registry and makers (distilled, pruned, int8, chains, shared)
    train        the training loop (best epoch, early stopping, DDP)
    distributed  torchrun process group (gloo)
    distill      Hinton KD and output (feature) distillation
    prune        Torch-Pruning structural pruning and narrowed students
    share        Deep Compression weight sharing (k-means codebooks, packed indices)
    export       torch → ONNX
    reshape_fold constant Reshape targets in exported transformers
    report       the final table, report.md and chart.png
    progress     progress lines and bars
    errors       BuildError (exit 1) and UsageError (exit 2)
"""

__all__ = ["__version__"]

# Recorded as tools.slimserve in every manifest; kept in step with pyproject.toml.
__version__ = "0.1.0"
