"""Compression of local Hugging Face BERT-family text encoders (BERT, DistilBERT, RoBERTa, XLM-R, ELECTRA).

A teacher is a local folder (`save_pretrained` output, or a sentence-transformers folder); nothing is
downloaded. Two tasks: sentence embeddings (pooled, optionally L2-normalised) and single-label
sequence classification (logits). Every variant is served as `input_ids`, `attention_mask`
(INT64 [-1, -1]) → one FP32 output [-1, width].

Modules, one job each (this package imports none of them, so `folder` stays torch-free):

    folder      what a folder holds: task, family, pooling, labels, tokenizer, max length (JSON only)
    model       `TextModel` (the served function), offline loading, the per-family table, layer surgery
    run         PyTorch / ONNX Runtime outputs over token arrays in length-sorted batches
    export      ONNX export (opset 17, dynamic axes) and parity against PyTorch
    tokens      the tokenizer as served (truncation, no padding) and padded token arrays
    corpus      the built-in WordNet sentences or a user's txt / jsonl / csv, split (stratified)
    prune       structural head and FFN-neuron pruning with importance measured on the output
    distill     one distillation loop: cosine (embeddings) or Hinton KD (+ CE) (classifiers), + tokens
    family      the glue into compression.build: TeacherSource, text data as token arrays, makers
    wordnet     regenerates the built-in WordNet corpus files
    otherdomain regenerates the other-domain evaluation set (Python documentation sentences)
"""

__all__: list[str] = []
