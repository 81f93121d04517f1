"""Swap torch.nn.LSTM for gatedrnn.LSTM in an existing model, keep its trained weights, then try a variant.

    python examples/replace_torch_lstm.py [--steps N]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import gatedrnn


class SequenceRegressor(nn.Module):
    """An existing model: an LSTM encoder and a linear head on its last output."""

    def __init__(self, features: int = 4, hidden: int = 32) -> None:
        super().__init__()
        self.rnn = nn.LSTM(features, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def batch(size: int = 32, steps: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(size, steps, 4)
    return x, x[:, :, 0].sum(dim=1, keepdim=True)  # the target: the sum of the first feature


def train(model: nn.Module, steps: int) -> float:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        x, y = batch()
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss.item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="training steps of each phase")
    steps = parser.parse_args().steps
    torch.manual_seed(0)

    model = SequenceRegressor()
    print(f"torch.nn.LSTM, after {steps} steps: loss {train(model, steps):.4f}")

    # 1. The drop-in: the same module, the same weights; the rest of the model does not change.
    x, _ = batch()
    before = model(x)
    model.rnn = gatedrnn.LSTM.from_torch(model.rnn)
    torch.testing.assert_close(model(x), before)
    print(f"gatedrnn.LSTM with the trained weights: same outputs; engine {model.rnn.engine!r}")
    print(f"  continued training: loss {train(model, steps):.4f}")

    # 2. A variant torch.nn does not have: a peephole LSTM, initialised from the same weights (peepholes at zero
    #    compute exactly the plain LSTM), then trained further.
    peephole = gatedrnn.LSTM(4, 32, num_layers=2, batch_first=True, peephole=True)
    missing = peephole.load_state_dict(model.rnn.state_dict(), strict=False).missing_keys
    for name in missing:
        nn.init.zeros_(getattr(peephole, name))
    torch.testing.assert_close(peephole(x)[0], model.rnn(x)[0])
    model.rnn = peephole
    print(f"peephole LSTM (new parameters {', '.join(missing)}): loss {train(model, steps):.4f}")

    # 3. Back to torch.nn for a tool that expects it (standard configurations only).
    plain = gatedrnn.LSTM.from_torch(nn.LSTM(4, 32, num_layers=2, batch_first=True)).to_torch()
    print(f"to_torch() gives {type(plain).__module__}.{type(plain).__name__}")


if __name__ == "__main__":
    main()
