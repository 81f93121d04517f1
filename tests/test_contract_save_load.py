"""Whole modules saved with ``torch.save(model)`` load with ``torch.load``'s default (``weights_only=True``) in a fresh
process that only imports gatedrnn: no private name to allowlist. (State dicts are covered by the conversion
tests.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

import gatedrnn


def test_every_module_loads_with_weights_only_in_a_fresh_process(tmp_path: Path) -> None:
    torch.manual_seed(0)
    modules = {
        "lstm": gatedrnn.LSTM(3, 4, num_layers=2, bidirectional=True, peephole=True, layer_norm=True, proj_size=2,
                              dropout=0.1, batch_first=True),
        "lstm-coupled": gatedrnn.LSTM(3, 4, coupled=True, engine="reference"),
        "lstm-forgetbias": gatedrnn.LSTM(3, 4, forget_bias=1.0),
        "gru": gatedrnn.GRU(3, 4, reset="before", layer_norm=True),
        "rnn": gatedrnn.RNN(3, 4, nonlinearity="relu", bias=False),
        "lstm-cell": gatedrnn.LSTMCell(3, 4, peephole=True),
        "gru-cell": gatedrnn.GRUCell(3, 4, reset="before"),
        "rnn-cell": gatedrnn.RNNCell(3, 4, layer_norm=True),
        "clockwork": gatedrnn.ClockworkRNN(3, 4, periods=(1, 3), bidirectional=True),
        "lstm-depthgated": gatedrnn.LSTM(3, 4, num_layers=2, depth_gate=True),
        "grid-lstm": gatedrnn.GridLSTM(3, 4, num_layers=2, tied=True, depth="relu"),
    }
    modules["lstm"].eval()
    x_seq, x_step = torch.randn(2, 5, 3), torch.randn(2, 3)
    outputs = {}
    with torch.no_grad():
        for name, module in modules.items():
            result = module(x_step if name.endswith("cell") else x_seq)
            outputs[name] = result[0] if isinstance(result, tuple) else result
    torch.save(modules, tmp_path / "models.pt")
    torch.save({"x_seq": x_seq, "x_step": x_step, "outputs": outputs}, tmp_path / "io.pt")
    script = f"""
import torch, gatedrnn
modules = torch.load({str(tmp_path / "models.pt")!r})  # weights_only=True, torch's default
io = torch.load({str(tmp_path / "io.pt")!r})
for name, module in modules.items():
    assert type(module).__module__ == "gatedrnn.layers", type(module)
    with torch.no_grad():
        result = module(io["x_step"] if name.endswith("cell") else io["x_seq"])
    result = result[0] if isinstance(result, tuple) else result
    torch.testing.assert_close(result, io["outputs"][name], rtol=0, atol=0)
print("ok", len(modules))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ok", str(len(modules))]
