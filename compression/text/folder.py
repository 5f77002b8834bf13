"""What a local Hugging Face folder of a BERT-family encoder holds: task, family, pooling, labels, tokenizer.

`describe(folder)` reads only JSON files (no torch, no weights) and answers every question the build
asks before it loads the model:

- **task**: `classification` when `config.json`'s `architectures` names a `*ForSequenceClassification`
  (single-label; labels from `id2label` in id order); `embedding` for a sentence-transformers folder
  (`modules.json`: Transformer → Pooling (mean or CLS) → optional Normalize) or for a plain encoder
  (`BertModel`, `RobertaModel`, ...), which is then mean-pooled and L2-normalised (said in `notes`).
- **family**: `config.json`'s `model_type`, one of `SUPPORTED`.
- **max_length**: sentence-transformers' `max_seq_length` when given, else the smallest of the
  tokenizer's `model_max_length`, the positions the model has, and 512; never more positions than
  the model has (RoBERTa's positions start at pad + 1, so it has `max_position_embeddings - pad - 1`).
- **tokenizer_file**: the folder's `tokenizer.json`. Without one, the slow-tokenizer files
  (`vocab.txt`, or `vocab.json` + `merges.txt`) are converted once by `transformers.AutoTokenizer`
  (offline) and the result is cached under the temp directory (said in `notes`).
- **pad_id**: `config.json`'s `pad_token_id`, else the tokenizer's pad token, else 0 (RoBERTa: 1).

Anything missing or unreadable raises `UsageError` with one line naming the file and the fix.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from compression.errors import UsageError

__all__ = ["SUPPORTED", "TextTeacherInfo", "describe", "is_hf_folder"]

# model_type → config keys for (hidden, layers, heads, ffn), and whether position ids start at pad + 1.
_CONFIG_KEYS: dict[str, tuple[tuple[str, str, str, str], bool]] = {
    "bert": (("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"), False),
    "distilbert": (("dim", "n_layers", "n_heads", "hidden_dim"), False),
    "roberta": (("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"), True),
    "xlm-roberta": (("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"), True),
    "electra": (("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"), False),
}
SUPPORTED: tuple[str, ...] = tuple(_CONFIG_KEYS)
_ENCODERS = {"BertModel", "DistilBertModel", "RobertaModel", "XLMRobertaModel", "ElectraModel"}
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
            "pytorch_model.bin.index.json")
_ST = "sentence_transformers.models."
_POOLING_MODES = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls",
                  "pooling_mode_max_tokens": "max", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
                  "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}
_LIMIT = 512


@dataclass(frozen=True)
class TextTeacherInfo:
    """Everything the build needs to know about a local HF text folder, read from its JSON files."""

    folder: Path
    """The folder the user named."""
    model_dir: Path
    """Where `config.json` and the weights are (the folder itself, or a sentence-transformers
    module path such as `0_Transformer/`)."""
    task: Literal["embedding", "classification"]
    family: str
    """`model_type` from config.json: one of SUPPORTED."""
    architecture: str
    pooling: Literal["mean", "cls"] | None
    """Embeddings only: how token vectors become the sentence vector."""
    normalize: bool
    """Embeddings only: whether the sentence vector is L2-normalised."""
    labels: list[str] | None
    """Classifiers only: label names in the order of the logits."""
    max_length: int
    tokenizer_file: Path
    pad_id: int
    lowercase: bool
    """Whether the tokenizer lower-cases its input (its normalizer), for the manifest."""
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab_size: int
    output_width: int
    """`hidden` for embeddings, the number of labels for classifiers."""
    checkpoint: str
    """One line describing the checkpoint, for the manifest."""
    notes: tuple[str, ...] = field(default=())
    """Assumptions made and conversions done (e.g. pooling assumed for a plain encoder)."""


def is_hf_folder(path: str | Path) -> bool:
    """A directory with `config.json` (or a sentence-transformers `modules.json`)."""
    path = Path(path)
    return path.is_dir() and ((path / "config.json").is_file() or (path / "modules.json").is_file())


def _read_json(path: Path, fix: str) -> Any:
    if not path.is_file():
        raise UsageError(f"{path}: missing; {fix}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not UTF-8 ({exc.reason}); {fix}") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); {fix}") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot be read ({exc.strerror}); {fix}") from None


def _int(config: dict[str, Any], key: str, path: Path) -> int:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise UsageError(f"{path}: '{key}' is {value!r}, expected a positive integer; "
                         "re-save the model with save_pretrained")
    return value


def _sentence_transformers(folder: Path) -> tuple[Path, str | None, bool, list[str]]:
    """(model dir, pooling, normalize, notes) from a sentence-transformers `modules.json`."""
    path = folder / "modules.json"
    modules = _read_json(path, "save the model with sentence-transformers' save()")
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise UsageError(f"{path}: expected a list of modules; save the model with sentence-transformers' save()")
    model_dir, pooling, normalize = None, None, False
    for module in sorted(modules, key=lambda m: m.get("idx", 0)):
        kind = str(module.get("type", ""))
        sub = folder / str(module.get("path", ""))
        if kind == _ST + "Transformer":
            model_dir = sub
        elif kind == _ST + "Pooling":
            pooling_file = sub / "config.json"
            config = _read_json(pooling_file, "save the model with sentence-transformers' save()")
            modes = [name for key, name in _POOLING_MODES.items() if config.get(key)]
            if modes not in (["mean"], ["cls"]):
                raise UsageError(f"{pooling_file}: pooling {'+'.join(modes) or 'none'} is not supported; "
                                 "use mean (pooling_mode_mean_tokens) or CLS (pooling_mode_cls_token) pooling")
            pooling = modes[0]
        elif kind == _ST + "Normalize":
            normalize = True
        else:
            raise UsageError(f"{path}: module {kind or '(no type)'} is not supported; a sentence encoder "
                             "here is Transformer, Pooling (mean or CLS) and optionally Normalize")
    if model_dir is None:
        raise UsageError(f"{path}: no sentence_transformers.models.Transformer module; "
                         "save the model with sentence-transformers' save()")
    if pooling is None:
        raise UsageError(f"{path}: no sentence_transformers.models.Pooling module; add one "
                         "(mean or CLS) or save the model with sentence-transformers' save()")
    return model_dir, pooling, normalize, [f"pooling from {path.name}: {pooling}"
                                           f"{', L2-normalised' if normalize else ''}"]


def _converted_tokenizer(model_dir: Path) -> Path:
    """Convert slow-tokenizer files to a `tokenizer.json`, cached by folder and file times."""
    sources = [p for p in ("vocab.txt", "vocab.json", "merges.txt", "sentencepiece.bpe.model", "spm.model",
                           "tokenizer_config.json", "special_tokens_map.json") if (model_dir / p).is_file()]
    if not any(p in sources for p in ("vocab.txt", "vocab.json", "sentencepiece.bpe.model", "spm.model")):
        raise UsageError(f"{model_dir / 'tokenizer.json'}: missing, and no vocab.txt / vocab.json to build "
                         "it from; save the tokenizer into the folder (tokenizer.save_pretrained)")
    key = hashlib.sha256(str(model_dir.resolve()).encode())
    for name in sources:
        stat = (model_dir / name).stat()
        key.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    target = Path(tempfile.gettempdir()) / "slimserve-tokenizers" / key.hexdigest()[:16] / "tokenizer.json"
    if target.is_file():
        return target
    import os

    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        backend = tokenizer.backend_tokenizer
    except Exception as exc:  # any failure of the conversion is the folder's problem, said in one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{model_dir / 'tokenizer.json'}: missing, and converting the slow tokenizer "
                         f"failed ({first}); save a fast tokenizer into the folder") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.part")
    backend.save(str(partial))
    partial.replace(target)
    return target


def _tokenizer_facts(path: Path) -> tuple[int | None, bool]:
    """(pad id if the tokenizer names one, whether it lower-cases)."""
    spec = _read_json(path, "save the tokenizer again (tokenizer.save_pretrained)")
    pad = None
    if isinstance(spec.get("padding"), dict) and isinstance(spec["padding"].get("pad_id"), int):
        pad = spec["padding"]["pad_id"]
    for token in spec.get("added_tokens") or []:
        if pad is None and token.get("content") in ("[PAD]", "<pad>"):
            pad = token.get("id")

    def lowercases(normalizer: Any) -> bool:
        if not isinstance(normalizer, dict):
            return False
        kind = normalizer.get("type")
        if kind == "Lowercase":
            return True
        if kind == "BertNormalizer":
            return bool(normalizer.get("lowercase", True))
        if kind == "Sequence":
            return any(lowercases(n) for n in normalizer.get("normalizers", []))
        return False

    return pad, lowercases(spec.get("normalizer"))


def describe(path: str | Path) -> TextTeacherInfo:
    """Read a local HF folder (see the module docstring); UsageError when it cannot be served."""
    folder = Path(path)
    if not folder.is_dir():
        raise UsageError(f"{folder}: not a directory; give a local Hugging Face model folder")
    notes: list[str] = []
    pooling: str | None = None
    normalize = False
    st_modules = (folder / "modules.json").is_file()
    model_dir = folder
    if st_modules:
        model_dir, pooling, normalize, st_notes = _sentence_transformers(folder)
    config_path = model_dir / "config.json"
    config = _read_json(config_path, "save the model with save_pretrained into this folder")
    if not isinstance(config, dict):
        raise UsageError(f"{config_path}: expected a JSON object; save the model with save_pretrained")
    family = str(config.get("model_type", ""))
    if family not in _CONFIG_KEYS:
        raise UsageError(f"{config_path}: model_type {family or '(none)'!r} is not supported; "
                         f"supported: {', '.join(SUPPORTED)}")
    architectures = [str(a) for a in config.get("architectures") or []]
    classifier = next((a for a in architectures if a.endswith("ForSequenceClassification")), None)
    labels: list[str] | None = None
    if classifier:
        task = "classification"
        architecture = classifier
        id2label = config.get("id2label") or {}
        try:
            ordered = sorted((int(k), str(v)) for k, v in id2label.items())
        except (TypeError, ValueError, AttributeError):
            raise UsageError(f"{config_path}: id2label must map integer ids to names") from None
        if len(ordered) < 2 or [i for i, _ in ordered] != list(range(len(ordered))):
            raise UsageError(f"{config_path}: id2label must name labels 0..n-1 (n >= 2) of a single-label "
                             "classifier; regression heads (num_labels 1) are not supported")
        problem = config.get("problem_type")
        if problem not in (None, "single_label_classification"):
            raise UsageError(f"{config_path}: problem_type {problem!r} is not supported; "
                             "single-label classifiers only")
        labels = [name for _, name in ordered]
        pooling, normalize = None, False
        if st_modules:
            notes.append("modules.json ignored: the model is a sequence classifier")
    elif st_modules:
        task = "embedding"
        architecture = architectures[0] if architectures else family
        notes.extend(st_notes)
    elif not architectures or any(a in _ENCODERS for a in architectures):
        task = "embedding"
        architecture = architectures[0] if architectures else family
        pooling, normalize = "mean", True
        notes.append("plain encoder without sentence-transformers files: mean pooling over "
                     "attention_mask, L2-normalised")
    else:
        raise UsageError(f"{config_path}: architecture {', '.join(architectures)} is neither a "
                         "*ForSequenceClassification nor a sentence encoder (sentence-transformers folder "
                         "or plain encoder such as BertModel)")
    if not any((model_dir / w).is_file() for w in _WEIGHTS):
        raise UsageError(f"{model_dir}: no model.safetensors or pytorch_model.bin; save the model "
                         "with save_pretrained into this folder")
    (k_hidden, k_layers, k_heads, k_ffn), offset_positions = _CONFIG_KEYS[family]
    hidden, layers = _int(config, k_hidden, config_path), _int(config, k_layers, config_path)
    heads, ffn = _int(config, k_heads, config_path), _int(config, k_ffn, config_path)
    vocab_size = _int(config, "vocab_size", config_path)
    positions = _int(config, "max_position_embeddings", config_path)

    tokenizer_file = model_dir / "tokenizer.json"
    if not tokenizer_file.is_file():
        tokenizer_file = _converted_tokenizer(model_dir)
        notes.append("tokenizer.json converted from the slow-tokenizer files by transformers.AutoTokenizer")
    tokenizer_pad, lowercase = _tokenizer_facts(tokenizer_file)
    pad = config.get("pad_token_id")
    pad_id = pad if isinstance(pad, int) and not isinstance(pad, bool) else tokenizer_pad
    pad_id = int(pad_id) if pad_id is not None else 0
    if not 0 <= pad_id < vocab_size:
        raise UsageError(f"{config_path}: pad_token_id {pad_id} is outside the vocabulary ({vocab_size})")

    usable = positions - (pad_id + 1 if offset_positions else 0)
    max_length = min(usable, _LIMIT)
    st_config = model_dir / "sentence_bert_config.json"
    tok_config = model_dir / "tokenizer_config.json"
    if task == "embedding" and st_config.is_file():
        seq = _read_json(st_config, "save the model with sentence-transformers' save()").get("max_seq_length")
        if isinstance(seq, int) and seq > 0:
            max_length = min(seq, usable)
    elif tok_config.is_file():
        limit = _read_json(tok_config, "save the tokenizer again (tokenizer.save_pretrained)").get(
            "model_max_length")
        if isinstance(limit, (int, float)) and 0 < limit < 1e6:
            max_length = min(max_length, int(limit))
    if max_length < 4:
        raise UsageError(f"{config_path}: at most {max_length} tokens per input; the model is unusable")

    output_width = hidden if task == "embedding" else len(labels or [])
    origin = config.get("_name_or_path")
    where = folder.resolve()
    label = f"{where.parent.name}/{where.name}" if where.name in ("model", "models", "checkpoint") else where.name
    checkpoint = (f"local Hugging Face folder {label} ({architecture}, {layers} layers, "
                  f"hidden {hidden}" + (f", from {origin}" if origin else "") + ")")
    return TextTeacherInfo(
        folder=folder, model_dir=model_dir, task=task, family=family, architecture=architecture,
        pooling=pooling, normalize=normalize, labels=labels, max_length=max_length,
        tokenizer_file=tokenizer_file, pad_id=pad_id, lowercase=lowercase, hidden=hidden, layers=layers,
        heads=heads, ffn=ffn, vocab_size=vocab_size, output_width=output_width, checkpoint=checkpoint,
        notes=tuple(notes))
