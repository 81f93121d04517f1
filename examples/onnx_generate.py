"""Generate text from a character model exported to ONNX, with onnxruntime and NumPy only (no torch, no gatedrnn).

    gatedrnn charlm train --out runs/macbeth
    gatedrnn export --model runs/macbeth --out macbeth.onnx
    python examples/onnx_generate.py macbeth.onnx --prime "MACBETH." --length 300

The file holds the model and, in its metadata, the vocabulary. Its inputs are ``ids`` (B, T) and the recurrent
state ``h0`` (and ``c0`` for an LSTM), each (layers, B, hidden); its outputs the logits (B, T, V) and the state after
the last step. The prime text runs in one call; then each sampled character is fed back in with the state.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import onnxruntime as ort


def generate(session: ort.InferenceSession, prime: str, length: int, temperature: float,
             rng: np.random.Generator) -> str:
    """``prime`` followed by ``length`` sampled characters."""
    vocab = json.loads(session.get_modelmeta().custom_metadata_map["vocab"])
    index = {c: i for i, c in enumerate(vocab)}
    unknown = sorted(set(prime) - set(index))
    if unknown:
        raise ValueError(f"prime: the characters {unknown} are not in the model's vocabulary")
    # Zero initial states (layers, 1, width): the file's state inputs with a batch of one.
    dtypes = {"tensor(float)": np.float32, "tensor(double)": np.float64}
    state = {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], dtypes[i.type])
             for i in session.get_inputs() if i.name != "ids"}
    ids = np.array([[index[c] for c in prime]], dtype=np.int64)  # (1, T)
    text = list(prime)
    for _ in range(length):
        logits, *final = session.run(None, {"ids": ids, **state})
        state = dict(zip(state, final))
        z = logits[0, -1].astype(np.float64) / temperature
        p = np.exp(z - z.max())
        k = int(rng.choice(len(vocab), p=p / p.sum()))
        text.append(vocab[k])
        ids = np.array([[k]], dtype=np.int64)
    return "".join(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="the .onnx file written by gatedrnn export from a charlm run")
    parser.add_argument("--prime", default="\n", help="text to start from")
    parser.add_argument("--length", type=int, default=200, help="characters to generate")
    parser.add_argument("--temperature", type=float, default=0.8, help="softmax temperature (> 0)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    args = parser.parse_args(argv)
    if args.temperature <= 0 or args.length < 0 or not args.prime:
        parser.error("expected --temperature > 0, --length >= 0 and a non-empty --prime")
    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    try:
        print(generate(session, args.prime, args.length, args.temperature, np.random.default_rng(args.seed)))
    except ValueError as error:
        print(f"onnx_generate: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
