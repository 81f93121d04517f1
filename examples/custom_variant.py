"""A custom variant in a training loop: a layer-normalised peephole LSTM with a coupled input-forget gate,
learning to classify sequences of uneven lengths, with a checkpoint in safetensors that reloads into a fresh model.

    python examples/custom_variant.py [--steps N] [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model
from torch import nn

import gatedrnn


class Classifier(nn.Module):
    def __init__(self, features: int, hidden: int, classes: int) -> None:
        super().__init__()
        # Any combination of the variant keywords; "auto" picks the fastest engine that covers it.
        self.rnn = gatedrnn.LSTM(features, hidden, batch_first=True, bidirectional=True,
                                 coupled=True, layer_norm=True, peephole=True)
        self.head = nn.Linear(2 * hidden, classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x, lengths=lengths)               # (B, T, 2H), zero past each length
        mean = out.sum(dim=1) / lengths.unsqueeze(1)        # average over each sequence's own steps
        return self.head(mean)


def batch(generator: torch.Generator, size: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sequences of 5-30 steps; the class says whether the first feature's mean is positive."""
    lengths = torch.randint(5, 31, (size,), generator=generator)
    x = torch.randn(size, int(lengths.max()), 3, generator=generator) + 0.3 * torch.randn(size, 1, 3,
                                                                                        generator=generator)
    mask = torch.arange(x.shape[1]) < lengths.unsqueeze(1)  # (B, T)
    x = x * mask.unsqueeze(2)
    labels = (x[:, :, 0].sum(dim=1) > 0).long()
    return x, lengths, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps")
    parser.add_argument("--out", type=Path, default=None, help="checkpoint directory (default: a temporary one)")
    args = parser.parse_args()
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)

    model = Classifier(features=3, hidden=24, classes=2)
    print(model.rnn)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(1, args.steps + 1):
        x, lengths, labels = batch(generator)
        loss = nn.functional.cross_entropy(model(x, lengths), labels)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % max(1, args.steps // 5) == 0:
            print(f"step {step}: loss {loss.item():.4f}")

    model.eval()
    x, lengths, labels = batch(torch.Generator().manual_seed(1), size=512)
    with torch.no_grad():
        logits = model(x, lengths)
    print(f"held-out accuracy {(logits.argmax(1) == labels).float().mean().item():.3f}")

    with tempfile.TemporaryDirectory() as temp:
        out = args.out or Path(temp)
        out.mkdir(parents=True, exist_ok=True)
        save_model(model, str(out / "model.safetensors"))  # tensors only, no pickle
        fresh = Classifier(features=3, hidden=24, classes=2).eval()
        load_model(fresh, str(out / "model.safetensors"))
        with torch.no_grad():
            torch.testing.assert_close(fresh(x, lengths), logits)
        print(f"reloaded from {out / 'model.safetensors'}: same predictions")


if __name__ == "__main__":
    main()
