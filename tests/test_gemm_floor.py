"""The GEMM floor of ``gatedrnn bench``: exactly the products of the cell equations, forward and backward."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import gatedrnn
from gatedrnn import gemm_floor
from gatedrnn.cli import main
from gatedrnn.gemm_floor import GemmFloor

LAYERS = {
    "lstm": lambda: gatedrnn.LSTM(8, 16, dtype=torch.float64),
    "lstm-coupled": lambda: gatedrnn.LSTM(8, 16, coupled=True, dtype=torch.float64),
    "lstm-proj": lambda: gatedrnn.LSTM(8, 16, proj_size=6, dtype=torch.float64),
    "gru": lambda: gatedrnn.GRU(8, 16, dtype=torch.float64),
    "gru-before": lambda: gatedrnn.GRU(8, 16, reset="before", dtype=torch.float64),
    "rnn": lambda: gatedrnn.RNN(8, 16, dtype=torch.float64),
}
GATE_BLOCKS = {"lstm": 4, "lstm-coupled": 3, "lstm-proj": 4, "gru": 3, "gru-before": 3, "rnn": 1}


@pytest.mark.parametrize("name", LAYERS)
def test_the_floor_runs_the_products_of_the_cell_equations(name: str) -> None:
    # float64 goes through torch.mm, which the flop counter sees; every product of the forward and the backward is
    # counted, with G = gate blocks x H and the recurrent width R = P with a projection.
    layer = LAYERS[name]()
    T, B, I, H = 5, 3, 8, 16
    P = 6 if name == "lstm-proj" else 0
    G, R = GATE_BLOCKS[name] * H, P or H
    floor = GemmFloor(layer)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    with FlopCounterMode(display=False) as forward:
        out, state = floor(x)
    with FlopCounterMode(display=False) as backward:
        out.sum().backward()
    want = gemm_floor.flops(T, B, I, G, R, H if P else 0, P)
    assert (forward.get_total_flops(), backward.get_total_flops()) == want
    assert want[0] == 2 * T * B * G * (I + R) + 2 * T * B * H * P
    assert state is None and out.shape == (T, B, R) and not out.any()
    assert x.grad.shape == x.shape
    for param_name in ("weight_ih_l0", "weight_hh_l0") + (("weight_hr_l0",) if P else ()):
        param = dict(layer.named_parameters())[param_name]
        assert param.grad is not None and param.grad.shape == param.shape


@pytest.mark.skipif(gemm_floor._packed_product(torch.ones(4, 4), 2) is None, reason="torch without MKL's packed GEMM")
def test_the_packed_product_is_the_plain_product() -> None:
    w, a = torch.randn(48, 16), torch.randn(5, 16)
    torch.testing.assert_close(gemm_floor._product(w, 5)(a), a @ w.t())
    b = torch.randn(5, 48)
    torch.testing.assert_close(gemm_floor._product(w.t().contiguous(), 5)(b), b @ w)
    assert gemm_floor._packed_product(w, 1) is None and gemm_floor._packed_product(w.double(), 5) is None


def test_the_floor_takes_one_layer_one_direction() -> None:
    with pytest.raises(ValueError, match="layer: the GEMM floor takes a one-layer, one-direction layer"):
        GemmFloor(gatedrnn.LSTM(4, 8, num_layers=2))
    with pytest.raises(ValueError, match="one-direction"):
        GemmFloor(gatedrnn.GRU(4, 8, bidirectional=True))


def test_bench_times_the_floor_beside_torch_nn(tmp_path: Path) -> None:
    path = tmp_path / "bench.json"
    argv = ["bench", "--shapes", "2x5x3x4", "--variants", "lstm,gru-before", "--impls", "torch.nn,gemms",
            "--repeats", "1", "--block-ms", "0", "--json", str(path)]
    assert main(argv) == 0
    entries = {(e["variant"], e["implementation"], e["mode"]): e for e in json.loads(path.read_text())["results"]}
    assert set(entries) == {(v, i, m) for v in ("lstm", "gru-before") for i in ("torch.nn", "gemms")
                            for m in ("fwd", "fwd+bwd")} - {("gru-before", "torch.nn", m) for m in ("fwd", "fwd+bwd")}
    assert entries[("lstm", "gemms", "fwd+bwd")]["vs_torch_nn_lstm"] > 0
