"""``torch.export.export`` of gatedrnn layers on the cpu engine, with dynamic batch and time
(``torch.export.Dim``): the exported program holds one custom op per layer and direction and runs at other shapes
with the eager results; a program saved with ``torch.export.save`` loads and runs in a fresh process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor

import gatedrnn
from gatedrnn.engine.cpu import CPUEngine, build
from gatedrnn.variants import VARIANTS

pytestmark = pytest.mark.skipif(not build.status()[0], reason="cpu engine not available")

# Every variant the cpu engine runs, and sLSTM on the reference engine (a program of a fixed T); the depth-gated and
# Grid LSTMs run on the reference engine too.
CASES = {**{name: (v.layer, v.options) for name, v in VARIANTS.items()
            if v.layer is gatedrnn.SLSTM or CPUEngine().covers(v.build(4, 4, num_layers=2).spec, torch.zeros(1))},
         "lstm-proj": (gatedrnn.LSTM, {"proj_size": 3})}
OPS = {"clockwork": "gatedrnn.cpu_clockwork"}
"""The cpu engine's op of each variant other than ``gatedrnn.cpu_recurrence``."""


class Tagger(torch.nn.Module):
    """A model around a recurrent layer: embedding-free sequence tagger with padded batches."""

    def __init__(self, layer_cls: type, options: dict) -> None:
        super().__init__()
        torch.manual_seed(0)
        engine = "reference" if layer_cls is gatedrnn.SLSTM else "cpu"  # no fused sLSTM kernels
        self.rnn = layer_cls(4, 6, num_layers=2, bidirectional=True, batch_first=True, engine=engine, **options)
        self.head = torch.nn.Linear(2 * self.rnn.spec.state_size, 3)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        out, _ = self.rnn(x, lengths=lengths)
        return self.head(out)


def exported(model: torch.nn.Module, dynamic_time: bool = True) -> torch.export.ExportedProgram:
    """The program with a dynamic batch and (where the layer runs one op per layer and direction) a dynamic time;
    the reference engine's loop over time unrolls into a program of a fixed T."""
    batch, time = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("time", min=2, max=4096)
    return torch.export.export(model, (torch.randn(3, 5, 4), torch.tensor([5, 2, 4])),
                               dynamic_shapes=({0: batch, 1: time} if dynamic_time else {0: batch}, {0: batch}))


@pytest.mark.parametrize("name", list(CASES))
def test_export_with_dynamic_batch_and_time_runs_at_other_shapes(name: str) -> None:
    model = Tagger(*CASES[name]).eval()
    fused = CASES[name][0] is not gatedrnn.SLSTM
    program = exported(model, dynamic_time=fused)
    ops = [str(n.target) for n in program.graph.nodes if str(n.target).startswith("gatedrnn.")]
    op = ("gatedrnn.cpu_linear_scan" if CASES[name][0] in (gatedrnn.MinGRU, gatedrnn.MinLSTM)
          else OPS.get(name, "gatedrnn.cpu_recurrence"))
    assert ops == ([f"{op}.default"] * 4 if fused else [])
    for B, T in ((2, 9), (7, 3)) if fused else ((2, 5), (7, 5)):
        x = torch.randn(B, T, 4)
        lengths = torch.randint(1, T + 1, (B,))
        lengths[0] = T
        with torch.no_grad():
            torch.testing.assert_close(program.module()(x, lengths), model(x, lengths), rtol=1e-5, atol=1e-6)


def test_saved_program_loads_and_runs_in_a_fresh_process(tmp_path: Path) -> None:
    model = Tagger(gatedrnn.LSTM, {"peephole": True}).eval()
    path = tmp_path / "tagger.pt2"
    torch.export.save(exported(model), path)
    x, lengths = torch.randn(4, 6, 4), torch.tensor([6, 1, 5, 3])
    with torch.no_grad():
        want = model(x, lengths)
    torch.save({"x": x, "lengths": lengths, "want": want}, tmp_path / "io.pt")
    script = f"""
import torch, gatedrnn  # importing gatedrnn registers its custom ops
program = torch.export.load({str(path)!r})
io = torch.load({str(tmp_path / "io.pt")!r})
got = program.module()(io["x"], io["lengths"])
torch.testing.assert_close(got, io["want"], rtol=1e-5, atol=1e-6)
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
