"""Record the gates of your own model with gatedrnn.inspect.record, find its most saturated units, and measure
how far back the gradient reaches; with matplotlib installed, also draw the gates.

    python examples/record_gates.py [--steps N] [--out gates.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

import gatedrnn


class Tagger(nn.Module):
    """Your model: an embedding, a GRU encoder and a linear head per step."""

    def __init__(self, vocab: int = 20, hidden: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 16)
        self.encoder = gatedrnn.GRU(16, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens))[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="training steps (the task: repeat the token "
                        "seen 3 steps back)")
    parser.add_argument("--out", type=Path, default=None, help="draw the gates into this .png (needs matplotlib)")
    args = parser.parse_args()
    torch.manual_seed(0)

    model = Tagger()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(args.steps):
        tokens = torch.randint(0, 20, (32, 24))
        loss = nn.functional.cross_entropy(model(tokens)[:, 3:].reshape(-1, 20), tokens[:, :-3].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(f"training loss after {args.steps} steps: {loss.item():.3f}")

    tokens = torch.randint(0, 20, (8, 24))
    with torch.no_grad(), gatedrnn.inspect.record(model, pre_activations=True) as rec:
        model(tokens)
    for trace in rec:                                        # one per layer (and direction)
        z = trace["z"]                                       # (batch, time, unit): the GRU's keep gate
        saturated = ((z < 0.1) | (z > 0.9)).float().mean(dim=(0, 1))   # per unit
        top = saturated.argsort(descending=True)[:3].tolist()
        print(f"{trace.key}: gates {sorted(trace.gates)}, units with z most often saturated {top} "
              f"({', '.join(f'{saturated[u]:.0%}' for u in top)} of steps)")

    flow = gatedrnn.inspect.gradient_flow(model, tokens, lambda logits: logits[:, -1].logsumexp(-1).sum())
    for key, norms in flow.items():
        print(f"{key}: ‖∂L/∂h_t‖ at the last step {norms[-1]:.2e}, 10 steps back {norms[-11]:.2e}")

    if args.out is not None:
        from gatedrnn.viz import has_matplotlib

        if not has_matplotlib():
            print("no plot: matplotlib is not installed (pip install 'gatedrnn[viz]')")
            return
        from gatedrnn.viz import plots

        print(plots.save(plots.gate_heatmaps(rec.trace("encoder", layer=1)), args.out))


if __name__ == "__main__":
    main()
