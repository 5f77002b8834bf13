"""Teachers from files and factories: TorchScript, torch.export, `package.module:factory` with
weights, ONNX. Each loader checks what it can when `--teacher` is read (the file parses) and the
rest against the data when the build loads it (shapes, datatypes, a trial run on two rows)."""

from __future__ import annotations

import inspect
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from compression.data import Splits, bind_inputs
from compression.errors import UsageError
from compression.factory import load_callable, make_module
from compression.progress import Progress
from compression.teachers import Teacher, TeacherOptions, TeacherSource
from compression.train import tensors
from modelrepo.files import sha256_file
from modelrepo.measure import run, take
from modelrepo.records import TensorSpec
from modelrepo.session import open_session

__all__ = ["exported", "factory", "onnx_file", "torchscript"]

KSERVE = {torch.float32: "FP32", torch.float16: "FP16", torch.int64: "INT64", torch.int32: "INT32",
          torch.int8: "INT8", torch.uint8: "UINT8", torch.bool: "BOOL"}
ONNX_KSERVE = {onnx.TensorProto.FLOAT: "FP32", onnx.TensorProto.FLOAT16: "FP16",
               onnx.TensorProto.INT64: "INT64", onnx.TensorProto.INT32: "INT32",
               onnx.TensorProto.INT8: "INT8", onnx.TensorProto.UINT8: "UINT8",
               onnx.TensorProto.BOOL: "BOOL"}
NUMPY_KSERVE = {"float32": "FP32", "int64": "INT64", "bool": "BOOL"}


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def _task(options: TeacherOptions, splits: Splits) -> str:
    if options.task != "auto":
        return options.task
    return "classification" if splits.labelled else "embedding"


def _datatype(x: np.ndarray) -> str:
    return NUMPY_KSERVE.get(str(x.dtype), "FP32")


def _check_rows(declared: TensorSpec, x: np.ndarray, teacher: str) -> None:
    """Shapes and datatypes a teacher records must match the data's rows of that input."""
    rows = x.shape[1:]
    want = declared.shape[1:]
    fits = len(rows) == len(want) and all(w in (-1, r) for w, r in zip(want, rows))
    if not fits:
        raise UsageError(f"shape mismatch: teacher {teacher} input {declared.name!r} is "
                         f"{list(declared.shape)}, data rows are {list(rows)} "
                         f"(the array has shape {list(x.shape)})")
    if declared.datatype != _datatype(x) and not (declared.datatype == "FP32" and x.dtype.kind in "iu"):
        raise UsageError(f"datatype mismatch: teacher {teacher} input {declared.name!r} is "
                         f"{declared.datatype}, the data's array is {x.dtype}")


def _shapes(x: dict[str, np.ndarray]) -> str:
    return ", ".join(f"{k} {list(v.shape[1:])}" for k, v in x.items())


def _probe(module: nn.Module, x: dict[str, np.ndarray], teacher: str) -> torch.Tensor:
    """Run the teacher on two rows: a clear error now beats a traceback mid-build."""
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = module.eval()(*tensors(x, slice(0, 2)))
    except Exception as error:
        raise UsageError(f"shape mismatch: teacher {teacher} cannot run on data rows of shape "
                         f"{_shapes(x)} ({_first_line(error)})") from error
    out = out[0] if isinstance(out, (tuple, list)) else out
    if not isinstance(out, torch.Tensor) or out.dim() < 2 or out.shape[0] != 2:
        raise UsageError(f"teacher {teacher} must return a tensor with one row per input row")
    return out


def _check_task(task: str, out_shape: tuple[int, ...], splits: Splits, teacher: str) -> None:
    if task != "classification":
        return
    if len(out_shape) != 2:
        raise UsageError(f"teacher {teacher}: a classifier must output [batch, classes], got "
                         f"{list(out_shape)}; pass --task embedding")
    classes = splits.classes
    if classes is not None and classes > out_shape[1]:
        raise UsageError(f"data {splits.name} has {classes} classes, teacher {teacher} outputs "
                         f"{out_shape[1]} scores per row")


def _input_names(names: list[str], options: TeacherOptions, teacher: str) -> list[str]:
    """The teacher's input names, `--input-name` applied (single-input teachers only)."""
    if options.input_name:
        if len(names) != 1:
            raise UsageError(f"--input-name renames the input of a single-input teacher; {teacher} "
                             f"takes {', '.join(names)}")
        return [options.input_name]
    return names


def _module_teacher(name: str, module: nn.Module, input_names: list[str], splits: Splits,
                    options: TeacherOptions, recipe: dict[str, Any],
                    declared: tuple[TensorSpec, ...] | None = None) -> tuple[Teacher, Splits]:
    """A Teacher around a torch module, its specs taken from `declared` or from the data, and the
    splits bound to its input names."""
    names = _input_names(input_names, options, name)
    splits = bind_inputs(splits, names, name)
    x = splits.x_train
    if declared is not None:
        specs = []
        for spec, served in zip(declared, names, strict=True):
            _check_rows(spec, x[served], name)
            specs.append(replace(spec, name=served))
        inputs = tuple(specs)
    else:
        inputs = tuple(TensorSpec(n, _datatype(a), (-1, *a.shape[1:])) for n, a in x.items())
    out = _probe(module, x, name)
    task = _task(options, splits)
    _check_task(task, tuple(out.shape), splits, name)
    output = TensorSpec(options.output_name or "output", KSERVE.get(out.dtype, "FP32"),
                        (-1, *out.shape[1:]))
    labels = splits.labels if task == "classification" else None
    return Teacher(name=name, module=module.eval(), task=task, inputs=inputs, outputs=(output,),
                   labels=labels, recipe=recipe), splits


def _file_recipe(kind: str, path: Path, **extra: Any) -> dict[str, Any]:
    return {"name": "load", "params": {"format": kind, "file": path.name,
                                       "sha256": sha256_file(path), **extra}}


def torchscript(path: Path) -> TeacherSource:
    try:
        script = torch.jit.load(str(path), map_location="cpu")
    except Exception as error:
        raise UsageError(f"teacher {path}: not a TorchScript file ({_first_line(error)})") from error

    def load(splits: Splits, options: TeacherOptions, progress: Progress) -> tuple[Teacher, Splits]:
        from compression.lift import from_torchscript

        names = [i.debugName().split(".")[0] or f"input{k}"
                 for k, i in enumerate(list(script.graph.inputs())[1:])]
        bound = bind_inputs(splits, names, str(path))
        _probe(script, bound.x_train, str(path))
        with progress.step(f"teacher: TorchScript {path.name} to an editable graph"):
            try:
                module = from_torchscript(script, tensors(bound.x_train, slice(0, 2)))
            except Exception as error:
                raise UsageError(f"teacher {path}: TorchScript could not be converted to a "
                                 f"torch.export graph ({_first_line(error)})") from error
        return _module_teacher(path.name, module, names, bound, options,
                               _file_recipe("torchscript", path, converted="TS2EPConverter + lift"))

    return TeacherSource(path.stem, None, load)


def exported(path: Path) -> TeacherSource:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.load(str(path))
    except Exception as error:
        raise UsageError(f"teacher {path}: not a torch.export program ({_first_line(error)})") from error
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    user = [placeholders[n] for n in program.graph_signature.user_inputs if n in placeholders]
    if not user:
        raise UsageError(f"teacher {path}: the program takes no inputs")
    vals = [u.meta.get("val") for u in user]
    declared = None
    if all(v is not None for v in vals):
        declared = tuple(TensorSpec(u.name, KSERVE.get(v.dtype, "FP32"),
                                    (-1, *(d if isinstance(d, int) else -1 for d in v.shape[1:])))
                         for u, v in zip(user, vals, strict=True))

    def load(splits: Splits, options: TeacherOptions, progress: Progress) -> tuple[Teacher, Splits]:
        from compression.lift import from_exported

        module = from_exported(program)
        return _module_teacher(path.name, module, [u.name for u in user], splits, options,
                               _file_recipe("torch.export", path), declared)

    return TeacherSource(path.stem, None, load)


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UsageError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:
        raise UsageError(f"weights {path}: cannot be read as safetensors or a tensor-only state "
                         f"dict ({_first_line(error)})") from error
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"weights {path}: expected a state dict of tensors")
    return state


def factory(ref: str, weights: Path | None) -> TeacherSource:
    make = load_callable(ref, "teacher factory")
    state = _read_weights(weights) if weights is not None else None

    def load(splits: Splits, options: TeacherOptions, progress: Progress) -> tuple[Teacher, Splits]:
        module = make_module(make, ref, "teacher factory")
        if state is not None:
            try:
                result = module.load_state_dict(state, strict=False)
            except RuntimeError as error:  # shapes that do not fit
                raise UsageError(f"weights {weights} do not fit {ref}: "
                                 f"{' '.join(str(error).split())[:300]}") from error
            if result.missing_keys or result.unexpected_keys:
                raise UsageError(f"weights {weights} do not fit {ref}: missing "
                                 f"{list(result.missing_keys)[:5]}, unexpected "
                                 f"{list(result.unexpected_keys)[:5]}")
        params = [p.name for p in inspect.signature(module.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
        extra = {"weights": weights.name, "weights_sha256": sha256_file(weights)} if weights else {}
        recipe = {"name": "load", "params": {"format": "factory", "factory": ref, **extra}}
        return _module_teacher(ref.rpartition(":")[2], module, params or ["input"], splits, options,
                               recipe)

    return TeacherSource(ref.rpartition(":")[2], None, load)


def _onnx_spec(value: onnx.ValueInfoProto) -> TensorSpec:
    tensor = value.type.tensor_type
    shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
    return TensorSpec(value.name, ONNX_KSERVE.get(tensor.elem_type, "FP32"), shape)


def onnx_file(path: Path) -> TeacherSource:
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as error:
        raise UsageError(f"teacher {path}: not a valid ONNX file ({_first_line(error)})") from error
    inits = {t.name for t in model.graph.initializer}
    inputs = tuple(_onnx_spec(v) for v in model.graph.input if v.name not in inits)
    outputs = tuple(_onnx_spec(v) for v in model.graph.output)

    def load(splits: Splits, options: TeacherOptions, progress: Progress) -> tuple[Teacher, Splits]:
        for flag, given, actual in (("--input-name", options.input_name, inputs[0].name),
                                    ("--output-name", options.output_name, outputs[0].name)):
            if given and given != actual:
                raise UsageError(f"{flag} {given}: an ONNX teacher keeps its own names ({actual!r})")
        splits = bind_inputs(splits, [i.name for i in inputs], str(path))
        for spec in inputs:
            _check_rows(spec, splits.x_train[spec.name], str(path))
        probe = {spec.name: a.astype(np.float32) if spec.datatype == "FP32" else a
                 for spec, a in zip(inputs, take(splits.x_train, slice(0, 2)).values(), strict=True)}
        try:
            out = run(open_session(path), probe)
        except Exception as error:
            raise UsageError(f"teacher {path} cannot run on the data ({_first_line(error)})") from error
        task = _task(options, splits)
        _check_task(task, out.shape, splits, str(path))
        return Teacher(name=path.stem, module=None, task=task, inputs=inputs, outputs=outputs,
                       labels=splits.labels if task == "classification" else None,
                       recipe=_file_recipe("onnx", path), onnx_file=path), splits

    return TeacherSource(path.stem, None, load, trainable=False)
