"""The command line of `python -m compression.build`: flags, checks and the options they make."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from compression.distill import DISTILL_LOSSES, DistillOptions
from compression.errors import UsageError
from compression.prune import IMPORTANCES, PruneOptions
from compression.share import ShareOptions
from compression.teachers import TASKS, TeacherOptions, TeacherSource, resolve_teacher
from compression.text.family import TextOptions
from compression.train import TrainOptions
from compression.variants import VARIANTS, VariantOptions, plan
from modelrepo.int8 import ACTIVATION_TYPES, CALIBRATION_METHODS, MODES, QuantizeOptions

__all__ = ["DEFAULT_VARIANTS", "BuildRequest", "make_parser", "options", "parse_args"]

DEFAULT_VARIANTS = "distilled,pruned,int8,distilled+int8,pruned+int8,shared"
ONNX_VARIANTS = "int8,shared"  # no torch model: nothing that trains


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad usage as a UsageError (one line, exit 2) instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _positive_ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"widths must be positive, got {text!r}")
    return values


def _indices(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer indices, got {text!r}") from None
    if not values or min(values) < 0 or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"expected distinct indices >= 0, got {text!r}")
    return values


def _ranged(kind: type, low: float, high: float | None = None, low_open: bool = False,
            high_open: bool = False) -> Callable[[str], Any]:
    """An argparse type that checks the bounds, so mistakes surface as usage errors up front."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        below = value < low or (low_open and value == low)
        above = high is not None and (value > high or (high_open and value == high))
        if below or above:
            bound = f"{'>' if low_open else '>='} {low}"
            if high is not None:
                bound += f" and {'<' if high_open else '<='} {high}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value
    return parse


def make_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m compression.build", description=(
        "Build a teacher and its compressed variants (ONNX) into a model repository folder "
        "<out>/<name>/ with manifest.json (docs/manifest.md), report.md and chart.png. With no "
        "arguments: the built-in 'digits' teacher into ./model_repository/digits/. Training steps "
        "run on several processes under torchrun (e.g. torchrun --nproc-per-node 2 -m "
        "compression.build ...): rank 0 writes the repository."))
    p.add_argument("--teacher", default="digits",
                   help="built-in name (digits; minilm: the sentence encoder all-MiniLM-L6-v2), a "
                        "local Hugging Face folder with config.json (BERT, DistilBERT, RoBERTa, "
                        "MiniLM ...: a sentence-transformers encoder or a *ForSequenceClassification "
                        "model), a TorchScript file (.pt/.ts), a torch.export program (.pt2), "
                        "package.module:factory (with --weights), or an ONNX file (int8 and shared "
                        "only) (default: %(default)s)")
    p.add_argument("--weights", type=Path, default=None,
                   help="weights of a factory teacher: .safetensors, or a state dict of tensors "
                        "(read with torch.load(weights_only=True))")
    p.add_argument("--data", default=None,
                   help="built-in name (digits), an .npz with one array per teacher input (x, or x1, x2, "
                        "...; optional y, labels), or "
                        "package.module:factory returning a torch Dataset of x or (x, y); for "
                        "Hugging Face teachers: FILE.txt (one sentence a line), FILE.jsonl "
                        "({\"text\", \"label\"}) or FILE.csv (text,label), or 'wordnet' (the built-in "
                        "English corpus) (default: the built-in teacher's own; wordnet for sentence "
                        "encoders; required for other teachers)")
    p.add_argument("--task", choices=("auto", *TASKS), default="auto",
                   help="what the teacher's output is; auto: classification when the data has "
                        "labels, else embedding (quality = cosine fidelity) (default: %(default)s)")
    p.add_argument("--input-name", default=None, help="name of the model input (default: the teacher's)")
    p.add_argument("--output-name", default=None,
                   help="name of the model output (default: the teacher's, else 'output')")
    p.add_argument("--name", default=None, help="model name in the repository (default: the teacher name)")
    p.add_argument("--variants", default=None,
                   help=f"comma list from {', '.join(VARIANTS)}; the teacher is always built "
                        f"(default: {DEFAULT_VARIANTS}; for ONNX teachers {ONNX_VARIANTS})")
    p.add_argument("--out", type=Path, default=Path("model_repository"),
                   help="repository root (default: ./%(default)s)")
    p.add_argument("--seed", type=_ranged(int, 0), default=0,
                   help="seed for the split, training and calibration sample (default: %(default)s)")
    p.add_argument("--threads", type=_ranged(int, 1), default=1,
                   help="ONNX Runtime intra-op threads for latency measurement (default: %(default)s)")
    p.add_argument("--latency-runs", type=_positive_ints, default=None,
                   help="timed runs per latency case, comma list in the order batch_1,batch_32 "
                        "(token models: batch_1,batch_1_long,batch_32,batch_32_short) "
                        "(default: 200,100; token models 200,60,12,60)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")

    g = p.add_argument_group("teacher (built-in teachers are trained by the build)")
    g.add_argument("--teacher-epochs", type=_ranged(int, 1), default=60,
                   help="training epochs, best on validation kept (default: %(default)s)")

    g = p.add_argument_group("distilled (Hinton KD for classifiers, output distillation otherwise)")
    g.add_argument("--distill-loss", choices=("auto", *DISTILL_LOSSES), default="auto",
                   help="kd (Hinton), mse or cosine on the output; auto: kd for classifiers, "
                        "cosine otherwise (default: %(default)s)")
    g.add_argument("--kd-temperature", type=_ranged(float, 0, low_open=True), default=4.0,
                   help="softmax temperature T (default: %(default)s)")
    g.add_argument("--kd-alpha", type=_ranged(float, 0, 1), default=0.9,
                   help="weight of the soft-target loss; 1-alpha weighs the labels (default: %(default)s)")
    g.add_argument("--student", default=None,
                   help="package.module:factory returning the student (default: derived from the "
                        "teacher, see --student-width)")
    g.add_argument("--student-width", type=_ranged(float, 0, 1, low_open=True), default=0.25,
                   help="derived student: the teacher's architecture with every hidden width "
                        "scaled by this (default: %(default)s)")
    g.add_argument("--student-hidden", type=_positive_ints, default=None,
                   help="explicit student hidden widths, comma list, for teachers with a student "
                        "family (the built-in MLP); overrides --student-width")
    g.add_argument("--distill-epochs", type=_ranged(int, 1), default=150,
                   help="student epochs, also used for the no-teacher baseline (default: %(default)s)")
    g.add_argument("--distill-patience", type=_ranged(int, 1), default=30,
                   help="early stopping: end after this many epochs without a better validation "
                        "score; the best epoch is kept either way (default: %(default)s)")

    g = p.add_argument_group("pruned (Torch-Pruning structural pruning + distillation recovery)")
    g.add_argument("--prune-ratio", type=_ranged(float, 0, 1, low_open=True, high_open=True),
                   default=0.5,
                   help="fraction of each hidden layer's neurons / channels removed (default: "
                        "%(default)s, which removes ~74%% of the digits teacher's parameters)")
    g.add_argument("--prune-steps", type=_ranged(int, 1), default=1,
                   help="prune in this many steps, recovering after each (default: %(default)s)")
    g.add_argument("--prune-importance", choices=sorted(IMPORTANCES), default="magnitude-l2",
                   help="neuron / channel importance criterion (default: %(default)s)")
    g.add_argument("--prune-finetune-epochs", type=_ranged(int, 0), default=40,
                   help="recovery epochs of distillation from the parent, in total (default: %(default)s)")

    g = p.add_argument_group("int8 (ONNX Runtime; accuracy-aware)")
    g.add_argument("--int8-mode", choices=MODES, default="static",
                   help="static: QDQ with calibrated activations; dynamic: activations quantized "
                        "per batch at run time (default: %(default)s)")
    g.add_argument("--int8-calibration-samples", type=_ranged(int, 1), default=256,
                   help="training rows used for calibration (default: %(default)s)")
    g.add_argument("--int8-calibration-method", choices=list(CALIBRATION_METHODS), default="minmax",
                   help="activation range calibration (default: %(default)s)")
    g.add_argument("--int8-per-channel", action=argparse.BooleanOptionalAction, default=True,
                   help="one weight scale per output channel (default: on)")
    g.add_argument("--int8-activation-type", choices=list(ACTIVATION_TYPES), default="uint8",
                   help="activation integer type (static mode) (default: %(default)s)")
    g.add_argument("--int8-reduce-range", action=argparse.BooleanOptionalAction, default=None,
                   help="7-bit weights (default: on only for x86 CPUs without VNNI/AMX)")
    g.add_argument("--int8-max-drop", type=_ranged(float, 0), default=1.0,
                   help="budget with labels: accuracy points the int8 file may lose against its "
                        "parent on validation (default: %(default)s)")
    g.add_argument("--int8-min-fidelity", type=_ranged(float, 0, 1), default=0.99,
                   help="budget without labels: top-1 agreement (classifiers) or mean cosine "
                        "(others) with the parent (default: %(default)s)")
    g.add_argument("--int8-accuracy-aware", action=argparse.BooleanOptionalAction, default=True,
                   help="keep the most sensitive nodes in fp32 until the budget holds (default: on)")

    g = p.add_argument_group("transformers (Hugging Face folders and minilm: distilled = fewer layers, "
                             "pruned = fewer heads and FFN neurons; int8 is dynamic per-channel)")
    g.add_argument("--text-layers", type=_indices, default=None,
                   help="teacher layers the distilled student keeps, comma list (default: first, "
                        "middle and last)")
    g.add_argument("--text-epochs", type=_ranged(int, 1), default=TextOptions.epochs,
                   help="distillation epochs over the training sentences, best on validation kept "
                        "(default: %(default)s)")
    g.add_argument("--text-lr", type=_ranged(float, 0, low_open=True), default=TextOptions.lr,
                   help="AdamW learning rate (default: %(default)s)")
    g.add_argument("--text-batch-size", type=_ranged(int, 1), default=TextOptions.batch_size,
                   help="sentences per step (default: %(default)s)")
    g.add_argument("--text-max-train", type=_ranged(int, 0), default=TextOptions.max_train,
                   help="train on at most this many training sentences, a random sample; 0: all "
                        "(default: %(default)s)")
    g.add_argument("--text-token-weight", type=_ranged(float, 0), default=TextOptions.token_weight,
                   help="weight of the last-layer token-vector loss (0: outputs only) (default: %(default)s)")
    g.add_argument("--prune-heads", type=_ranged(int, 1), default=None,
                   help="attention heads kept per layer (default: half)")
    g.add_argument("--prune-ffn", type=_ranged(int, 1), default=None,
                   help="FFN neurons kept per layer (default: half)")
    g.add_argument("--prune-text-epochs", type=_ranged(int, 1), default=TextOptions.prune_epochs,
                   help="recovery epochs after pruning (default: %(default)s)")
    g.add_argument("--max-length", type=_ranged(int, 2), default=None,
                   help="truncate sentences at this many tokens (default: the folder's maximum)")

    g = p.add_argument_group("shared (Deep Compression weight sharing: saves storage, not compute)")
    g.add_argument("--shared-bits", type=_ranged(int, 1, 8), default=4,
                   help="index bits: 2^bits shared values per weight matrix (default: %(default)s)")
    g.add_argument("--shared-min-elements", type=_ranged(int, 1), default=1024,
                   help="smaller weight tensors are stored as they are (default: %(default)s)")
    return p


@dataclass(frozen=True)
class BuildRequest:
    """A validated command line."""

    teacher: str
    source: TeacherSource
    data: str
    name: str
    variants: list[str]
    out: Path
    seed: int
    threads: int
    args: argparse.Namespace


def parse_args(argv: list[str] | None) -> BuildRequest:
    """Parse and check everything that can be checked without training (exit 2 material)."""
    args = make_parser().parse_args(argv)
    source = resolve_teacher(args.teacher, args.weights)
    data = args.data or source.default_data
    if not data:
        raise UsageError(f"--data is required with teacher {args.teacher} (built-in name, .npz "
                         "or package.module:factory)")
    name = args.name or source.name
    if not name or name.startswith(".") or any(c in name for c in "/\\\0:") or name.strip() != name:
        raise UsageError(f"invalid model name {name!r}: use a plain folder name (--name)")
    chosen = args.variants or source.default_variants or (DEFAULT_VARIANTS if source.trainable
                                                          else ONNX_VARIANTS)
    requested = [v.strip() for v in chosen.split(",") if v.strip()]
    variants = plan(requested, trainable=source.trainable)
    if args.student and args.student_hidden:
        raise UsageError("--student and --student-hidden exclude each other")
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out} exists and is not a directory")
    return BuildRequest(args.teacher, source, data, name, variants, args.out, args.seed,
                        args.threads, args)


def options(request: BuildRequest) -> tuple[TeacherOptions, VariantOptions]:
    """Teacher and variant options from the command line."""
    a, seed = request.args, request.seed
    teacher = TeacherOptions(train=TrainOptions(epochs=a.teacher_epochs, lr=1e-3,
                                                weight_decay=1e-4, seed=seed),
                             task=a.task, input_name=a.input_name, output_name=a.output_name,
                             weights=a.weights)
    variants = VariantOptions(
        student_width=a.student_width, student_hidden=a.student_hidden, student=a.student,
        distill=DistillOptions(a.kd_temperature, a.kd_alpha, a.distill_loss,
                               TrainOptions(epochs=a.distill_epochs, patience=a.distill_patience,
                                            seed=seed)),
        prune=PruneOptions(ratio=a.prune_ratio, steps=a.prune_steps, importance=a.prune_importance,
                           finetune_epochs=a.prune_finetune_epochs),
        quantize=QuantizeOptions(mode=a.int8_mode, calibration_samples=a.int8_calibration_samples,
                                 calibration_method=a.int8_calibration_method,
                                 per_channel=a.int8_per_channel,
                                 activation_type=a.int8_activation_type,
                                 reduce_range=a.int8_reduce_range, max_drop=a.int8_max_drop,
                                 min_fidelity=a.int8_min_fidelity,
                                 accuracy_aware=a.int8_accuracy_aware),
        share=ShareOptions(bits=a.shared_bits, min_elements=a.shared_min_elements))
    if request.source.configure is not None:
        request.source.configure(TextOptions(
            layers=a.text_layers, epochs=a.text_epochs, lr=a.text_lr, batch_size=a.text_batch_size,
            max_train=a.text_max_train or None, token_weight=a.text_token_weight, prune_heads=a.prune_heads,
            prune_ffn=a.prune_ffn, prune_epochs=a.prune_text_epochs, max_length=a.max_length))
    return teacher, variants
