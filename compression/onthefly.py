"""`python -m compression.onthefly`: a CompressionService job that needs the compression extra (distilled, pruned, shared, chains).

Same flags and stdout contract as `python -m server.onthefly` (`step:`, `progress:`, `result:`, `error:`
lines), plus `--data` (an `.npz` the server allowed; default: the model folder's calibration and
held-out files). The parent is a served ONNX file: training steps turn it back into a module with real layers
(`compression.onnx_module`) and run the build's own makers (`compression.variants`) on it, in chain
order; only the final `model.onnx` stays in `--out`, intermediates live in `--out/.steps` and are
removed before the result is printed. The result is measured as the build measures (held-out quality
against the teacher with ONNX Runtime, `modelrepo.latency`).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from compression.errors import UsageError
from modelrepo.arrays import read_feeds
from modelrepo.entry import variant_entry
from modelrepo.host import host_record
from modelrepo.measure import count, take
from modelrepo.onnxinfo import onnx_parameters
from modelrepo.onthefly import (
    PARAMS,
    RECIPES,
    TRAINING,
    child_parser,
    measure_result,
    param_values,
    parse_recipe,
    quantize_options,
    read_job_folder,
    run_child,
)
from modelrepo.onthefly import step as _step
from modelrepo.records import TensorSpec

__all__ = ["EXTRA", "main", "make_variant"]

EXTRA = "pip install -e '.[compression]'"
TRAIN_SHARE = 90.0  # percent of the job given to training epochs when the recipe trains
KINDS = {"int8_static": "int8", "int8_dynamic": "int8"}  # a step's manifest kind, where it differs from its name
SEED = 0  # data splits, as the build's default


def _progress(step: str, percent: float, quality: dict[str, float] | None = None) -> None:
    """A `progress:` line; without `quality` the job keeps the last one reported (e.g. the best epoch's)."""
    line = {"step": step, "percent": round(percent, 2), **({"quality": quality} if quality else {})}
    print("progress: " + json.dumps(line), flush=True)


def _options(steps: list[str], params: dict[str, str], token_model: bool) -> Any:
    """The build's VariantOptions from the job's parameters (modelrepo.onthefly.PARAMS: types, defaults)."""
    from compression.distill import DistillOptions
    from compression.prune import PruneOptions
    from compression.share import ShareOptions
    from compression.train import TrainOptions
    from compression.variants import VariantOptions

    try:
        v = {key: p.default for step in PARAMS.values() for key, p in step.items()} | param_values(steps, params)
        int8 = [s for s in steps if s in RECIPES]
        quantize = quantize_options(int8[0], params, token_model) if int8 else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    train = TrainOptions(epochs=v["epochs"], lr=v["lr"], batch_size=v["batch_size"], patience=v["patience"],
                         seed=v["seed"])
    options = VariantOptions(
        student_width=v["width"], prune_finetune_lr=v["finetune_lr"],
        distill=DistillOptions(temperature=v["temperature"], alpha=v["alpha"], loss=v["loss"], train=train),
        prune=PruneOptions(ratio=v["amount"], steps=v["prune_steps"], importance=v["importance"],
                           finetune_epochs=v["finetune_epochs"]),
        share=ShareOptions(bits=v["bits"], min_elements=v["min_elements"]))
    return replace(options, quantize=quantize) if quantize is not None else options


def _planned_epochs(steps: list[str], options: Any, labelled: bool, task: str) -> int:
    """Epochs the training steps will run at most (the distilled maker also trains its no-teacher
    baseline when the data has labels), so progress can be a percent of the whole job."""
    total = 0
    for step in steps:
        if step == "distilled":
            baseline = labelled and task == "classification" and options.distill.loss in ("kd", "auto")
            total += options.distill.train.epochs * (2 if baseline else 1)
        elif step == "pruned":
            total += options.prune.finetune_epochs
    return total


def _job_progress(planned: int, metric: str) -> Any:
    """A build Progress whose epoch bars print `progress:` lines (percent of the job, validation score)."""
    from compression.progress import Progress

    class Bar:
        def __init__(self, owner: JobProgress, total: int, desc: str) -> None:
            self.owner, self.total, self.desc, self.n, self.score = owner, total, desc, 0, None

        def __enter__(self) -> Bar:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def set_postfix(self, **values: str) -> None:
            self.score = values.get("val")

        def update(self, n: int = 1) -> None:
            self.n += n
            self.owner.epochs += n
            quality = {} if self.score is None else {f"validation_{metric}": float(self.score)}
            _progress(f"{self.desc}: epoch {self.n}/{self.total}",
                      TRAIN_SHARE * min(1.0, self.owner.epochs / max(planned, 1)), quality)

    class JobProgress(Progress):
        def __init__(self) -> None:
            super().__init__(stream=sys.stderr, quiet=True)  # the server reads stdout only
            self.epochs = 0

        def bar(self, total: int, desc: str) -> Any:
            return Bar(self, total, desc)

    return JobProgress()


def _data(folder: Path, manifest: dict[str, Any], data: str, input_names: list[str], heldout: dict[str, np.ndarray],
          labels: np.ndarray | None, samples: int) -> tuple[Any, dict[str, np.ndarray]]:
    """(splits, calibration rows). The test split is always the model folder's held-out file, so the
    figures compare with every other variant's."""
    from compression.data import Splits, bind_inputs, calibration_sample, load_data

    floats = {t["name"] for t in manifest["inputs"] if t.get("datatype") == "FP32"}

    def typed(x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: v.astype(np.float32) if k in floats else v for k, v in x.items()}

    names = manifest.get("labels")
    if data:
        splits = bind_inputs(load_data(data, SEED), input_names, manifest.get("name", folder.name))
        splits = replace(splits, x_train=typed(splits.x_train), x_val=typed(splits.x_val), x_test=heldout,
                         y_test=labels)
        return splits, calibration_sample(splits, samples, SEED)
    record = manifest.get("data") or {}
    rows, _ = read_feeds(folder / record.get("calibration_file", "calibration.npz"), input_names)
    rows = typed(rows)
    total = count(rows)
    if total < 10:
        raise UsageError(f"data: the model folder's calibration file has {total} rows; give data with more rows")
    # Unlabelled training rows: the teacher's outputs are the targets. A fifth is kept aside to pick
    # the best epoch (agreement with the teacher), so the held-out file stays unseen until measured.
    order = np.random.default_rng(SEED).permutation(total)
    val = order[:max(2, total // 5)]
    train = np.sort(order[len(val):])
    splits = Splits("model folder calibration file", SEED, take(rows, train), None, take(rows, np.sort(val)), None,
                    heldout, labels, names)
    return splits, take(rows, slice(0, samples))


def _teacher(manifest: dict[str, Any], folder: Path, source: Path, module: Any) -> Any:
    """The build's Teacher record for a served parent (module None when no step trains)."""
    from compression.teachers import Teacher

    def spec(t: dict[str, Any]) -> TensorSpec:
        return TensorSpec(t["name"], t["datatype"], tuple(t["shape"]))

    return Teacher(name=manifest.get("name", folder.name), module=module, task=manifest.get("task", "classification"),
                   inputs=tuple(spec(t) for t in manifest["inputs"]),
                   outputs=tuple(spec(t) for t in manifest["outputs"]), labels=_labels(manifest), recipe={},
                   onnx_file=source)


def _run_chain(ctx: Any, steps: list[str], parent: str, name: str, out: Path, int8_check: Any) -> list[tuple[str, Any]]:
    """Run the build's maker of every step in order, each on the previous one's result; the last writes
    `out/model.onnx`, the others `out/.steps/`, removed at the end. Returns (step, recipe) pairs."""
    from compression.variants import VariantMaker, make_distilled, make_int8, make_pruned, make_shared

    makers = {"distilled": make_distilled, "pruned": make_pruned, "shared": make_shared,
              "int8_static": make_int8, "int8_dynamic": make_int8}
    scratch = out / ".steps"  # inside the staging folder: whatever kills this job, the server removes it
    trains = any(s in TRAINING for s in steps)
    splits, previous, made = ctx.splits, parent, []
    for i, step in enumerate(steps):
        last = i == len(steps) - 1
        key = name if last else (step if step != parent else f"{step}-of-{parent}")
        ctx.splits = int8_check if step.startswith("int8_") and int8_check is not None else splits
        _step(f"{step} from {previous}")
        if not trains or step not in TRAINING:  # training steps report their epochs instead
            _progress(f"{step} from {previous}", TRAIN_SHARE if trains else 100.0 * i / (len(steps) + 1))
        path = out / "model.onnx" if last else scratch / key / "model.onnx"
        ctx.made[key] = makers[step](ctx, VariantMaker(key, KINDS.get(step, step), previous, makers[step]), path)
        ctx.files[key] = path
        made.append((step, ctx.made[key].recipe))
        previous = key
    ctx.splits = splits
    shutil.rmtree(scratch, ignore_errors=True)
    return made


def _recipe_record(parent: str, recipe: str, made: list[tuple[str, Any]]) -> dict[str, Any]:
    """One step: the build's own recipe record; a chain: every step's, in order."""
    if len(made) == 1:
        return {**made[0][1], "made": "on the fly by the server"}
    return {"name": "chain", "params": {"source": parent, "recipe": recipe, "steps": [{"step": s, **r} for s, r in made]},
            "made": "on the fly by the server"}


def make_variant(folder: Path, parent: str, name: str, recipe: str, params: dict[str, str], out: Path,
                 data: str = "") -> dict[str, Any]:
    """Write `out/model.onnx` and return its manifest entry (file relative to the model folder as `name/`)."""
    try:
        steps = parse_recipe(recipe, params)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    from compression.onnx_module import from_onnx
    from compression.variants import BuildContext, Made

    job = read_job_folder(folder, parent)
    manifest, variants, task, heldout, labels = job.manifest, job.variants, job.task, job.heldout, job.labels
    options = _options(steps, params, job.token_model)
    splits, calibration = _data(folder, manifest, data, job.input_names, heldout, labels,
                                options.quantize.calibration_samples)
    metric = ("accuracy" if splits.labelled else "agreement") if task == "classification" else "cosine_mean"
    progress = _job_progress(_planned_epochs(steps, options, splits.labelled, task), metric)
    source = job.source
    module = None
    if any(s in TRAINING for s in steps):
        _step(f"reading {parent} as a torch module")
        module = from_onnx(source)
    ctx = BuildContext(_teacher(manifest, folder, source, module), splits, calibration, options, progress,
                       host_record())
    ctx.made[parent] = Made({}, int(variants[parent].get("macs") or 0), module)
    ctx.files[parent] = source
    # As server.onthefly: no validation split travels with the repository, so without `data` int8's
    # budget is checked on the first half of the held-out rows (with their labels).
    half = slice(0, max(1, count(heldout) // 2))
    int8_check = None if data else replace(splits, x_val=take(heldout, half),
                                           y_val=None if labels is None else labels[half])
    started = time.perf_counter()
    made = _run_chain(ctx, steps, parent, name, out, int8_check)
    target = out / "model.onnx"

    def report(stage: str, percent: float) -> None:
        _step(stage)
        _progress(stage, percent)

    measured, latency = measure_result(folder, job, target, name, report)
    kind = "+".join(KINDS.get(s, s) for s in steps)
    if parent != "teacher":
        kind = f"{variants[parent].get('kind', parent)}+{kind}"
    entry = variant_entry(out.parent, target, kind, parent, _recipe_record(parent, recipe, made),
                          onnx_parameters(target), ctx.made[name].macs, measured, latency,
                          time.perf_counter() - started)
    entry["file"] = f"{name}/model.onnx"  # where the server moves the staging folder
    return entry


def _labels(manifest: dict[str, Any]) -> list[str] | None:
    labels = manifest.get("labels")
    return [str(x) for x in labels] if isinstance(labels, list) else None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:900] or type(exc).__name__


def _describe(exc: Exception) -> str:
    if isinstance(exc, ImportError):  # torch & co. absent or broken where the job runs
        return f"{_one_line(exc)}; the compression extra is needed where the job runs: {EXTRA}"
    return _one_line(exc)


def main(argv: list[str] | None = None) -> int:
    parser = child_parser("python -m compression.onthefly", __doc__, "distilled, pruned, shared, int8_static, "
                          "int8_dynamic or a chain such as distilled+int8_dynamic")
    parser.add_argument("--data", default="", help=".npz of training rows (default: the model folder's files)")
    args = parser.parse_args(argv)
    # `run_child` says "started" before make_variant imports torch or writes anything.
    return run_child(args, lambda params: make_variant(args.model_folder, args.parent, args.name, args.recipe,
                                                       params, args.out, args.data), _describe)


if __name__ == "__main__":
    sys.exit(main())
