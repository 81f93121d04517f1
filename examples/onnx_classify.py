"""Classify texts with a classifier exported to ONNX, with onnxruntime and NumPy only (no torch, no gatedrnn).

    gatedrnn classify train --out runs/reviews
    gatedrnn export --model runs/reviews --out reviews.onnx
    python examples/onnx_classify.py reviews.onnx "a gripping, beautifully shot film" "dull and far too long"

The file's metadata holds the labels, the vocabulary and how texts were cut into tokens. All texts run as one
padded batch with their lengths; each line printed is the most probable label, its probability and the text,
as ``gatedrnn classify predict`` prints them.
"""

from __future__ import annotations

import argparse
import json
import re
import sys

import numpy as np
import onnxruntime as ort


def classify(session: ort.InferenceSession, texts: list[str]) -> list[tuple[str, float]]:
    """The most probable label and its probability for each text."""
    meta = session.get_modelmeta().custom_metadata_map
    if "vocab" not in meta:
        raise ValueError("model: this classifier reads series, not texts")
    labels, vocab = json.loads(meta["labels"]), json.loads(meta["vocab"])
    index = {token: i for i, token in enumerate(vocab)}  # 0: padding, 1: unknown token
    pattern = re.compile(meta["token_pattern"])
    tokenized = [pattern.findall(t.lower()) if meta["tokens"] == "word" else list(t) for t in texts]
    if any(not tokens for tokens in tokenized):
        raise ValueError("text: expected texts with at least one token")
    lengths = np.array([len(tokens) for tokens in tokenized], dtype=np.int64)
    x = np.zeros((lengths.max(), len(texts)), dtype=np.int64)  # (T, B), time-major
    for b, tokens in enumerate(tokenized):
        x[: len(tokens), b] = [index.get(token, 1) for token in tokens]
    (logits,) = session.run(None, {"x": x, "lengths": lengths})
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return [(labels[k], float(p[b, k])) for b, k in enumerate(p.argmax(1))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="the .onnx file written by gatedrnn export from a classify run on texts")
    parser.add_argument("texts", nargs="+", help="texts to classify")
    args = parser.parse_args(argv)
    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    try:
        results = classify(session, args.texts)
    except ValueError as error:
        print(f"onnx_classify: error: {error}", file=sys.stderr)
        return 2
    for text, (label, probability) in zip(args.texts, results):
        print(f"{label}\t{probability:.4f}\t{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
