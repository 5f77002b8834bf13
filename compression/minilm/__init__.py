"""The built-in `minilm` teacher: all-MiniLM-L6-v2 sentence embeddings, compressed for serving.

`python -m compression.minilm.build --out DIR` writes `DIR/minilm/` (see docs/manifest.md): the teacher
exported to ONNX (mean-pooled, L2-normalised 384-d `embedding` from `input_ids` and `attention_mask`),
its tokenizer, the held-out and calibration sets, and the variants `int8`, `distilled`, `pruned` and
`distilled+int8`, each measured against the teacher on held-out sentences.

Modules, one job each:

    corpus      the built-in English sentences (WordNet 3.0 examples) or `--data FILE.txt`, split
    tokens      the teacher's WordPiece tokenizer, as shipped beside the model
    teacher     loading the checkpoint offline, the pooled wrapper, ONNX export and parity
    distill     a 3-layer student taken from the teacher's layers, trained on its embeddings
    prune       structural removal of attention heads and FFN neurons, with measured importance
    quantize    ONNX Runtime int8, with accuracy-aware fp32 fallback of sensitive nodes
    measure     quality (cosine, neighbour agreement), latency, parameters and MACs
    writer      the staged model folder and its manifest, swapped in atomically
    build       the command line
"""

__all__ = ["MODEL_NAME"]

MODEL_NAME = "minilm"
