"""The 2-D Grid LSTM (Kalchbrenner, Danihelka and Graves 2015) against an independent implementation written here from
the paper's equations, gradcheck, inspect.record, and every bad argument.

The implementation below shares no code with the library: one sequence at a time (``lengths`` is a slice) and one
block at a time on 1-D vectors, in wavefront order (every layer of step ``t`` before step ``t + 1``; the library runs
the grid layer by layer). Block ``(t, l)``: ``H = [h_{t-1,l} ; h^d_{t,l-1}]``, then the time LSTM and the depth LSTM
(or a plain layer), each ``m' = f ⊙ m + i ⊙ g``, ``h' = tanh(o ⊙ m')``.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import gatedrnn
from gatedrnn.cli import main
from numerics import layer_as_function, relative_error

TOLERANCE = 1e-12


def sigmoid(v: Tensor) -> Tensor:
    return 1 / (1 + torch.exp(-v))


def lstm(H: Tensor, m: Tensor, W: Tensor, b: Tensor | None) -> tuple[Tensor, Tensor]:
    n = m.shape[0]
    a = W @ H + (b if b is not None else 0)
    i, f, g, o = sigmoid(a[:n]), sigmoid(a[n:2 * n]), torch.tanh(a[2 * n:3 * n]), sigmoid(a[3 * n:])
    m = f * m + i * g
    return torch.tanh(o * m), m


def block(h: Tensor, m: Tensor, h_d: Tensor, m_d: Tensor | None, p: dict[str, Tensor], depth: str
          ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    H = torch.cat([h, h_d])
    h2, m2 = lstm(H, m, p["weight_time"], p.get("bias_time"))
    if depth == "lstm":
        hd2, md2 = lstm(H, m_d, p["weight_depth"], p.get("bias_depth"))
    else:
        a = p["weight_depth"] @ H + (p["bias_depth"] if "bias_depth" in p else 0)
        hd2, md2 = (torch.tanh(a) if depth == "tanh" else torch.relu(a)), None
    return h2, m2, hd2, md2


def params_of(grid: gatedrnn.GridLSTM, layer: int, direction: int = 0) -> dict[str, Tensor]:
    source = 0 if grid.tied else layer
    suffix = f"_l{source}" + ("_reverse" if direction else "")
    p = {}
    for name, value in grid.named_parameters():
        if name.endswith(suffix) and (direction or not name.endswith("_reverse")):
            p[name.removesuffix(suffix)] = value
    return p


def by_hand(grid: gatedrnn.GridLSTM, x: Tensor, h0: Tensor, c0: Tensor, lengths: list[int]
            ) -> tuple[Tensor, Tensor, Tensor]:
    T, B = x.shape[0], x.shape[1]
    L, D, Hs = grid.num_layers, 2 if grid.bidirectional else 1, grid.hidden_size
    out = x.new_zeros(T, B, D * Hs)
    h_n = [[None] * B for _ in range(L * D)]
    c_n = [[None] * B for _ in range(L * D)]
    for b, n in enumerate(lengths):
        if D == 1:  # wavefront: the whole depth of step t, then step t + 1
            h = [h0[k, b] for k in range(L)]
            m = [c0[k, b] for k in range(L)]
            for t in range(n):
                p0 = params_of(grid, 0)
                h_d = p0["weight_in"] @ x[t, b] + (p0["bias_in"] if "bias_in" in p0 else 0)
                m_d = torch.zeros(Hs, dtype=x.dtype)
                for k in range(L):
                    h[k], m[k], h_d, m_d = block(h[k], m[k], h_d, m_d, params_of(grid, k), grid.depth)
                out[t, b] = h_d
            for k in range(L):
                h_n[k][b], c_n[k][b] = h[k], m[k]
            continue
        # bidirectional: a layer's depth input is both directions' depth outputs below, so layer by layer
        below_h = [None, None]
        below_m = [None, None]
        for k in range(L):
            new_h, new_m = [], []
            for d in range(D):
                p = params_of(grid, k, d)
                order = list(range(n))[::-1] if d else list(range(n))
                h, m = h0[k * D + d, b], c0[k * D + d, b]
                hd_seq, md_seq = [None] * n, [None] * n
                for t in order:
                    if k == 0:
                        h_d = p["weight_in"] @ x[t, b] + (p["bias_in"] if "bias_in" in p else 0)
                        m_d = torch.zeros(Hs, dtype=x.dtype)
                    else:
                        h_d = torch.cat([below_h[0][t], below_h[1][t]])
                        m_d = below_m[d][t] if grid.depth == "lstm" else None
                    h, m, hd_seq[t], md_seq[t] = block(h, m, h_d, m_d, p, grid.depth)
                h_n[k * D + d][b], c_n[k * D + d][b] = h, m
                new_h.append(hd_seq)
                new_m.append(md_seq)
            below_h, below_m = new_h, new_m
        for t in range(n):
            out[t, b] = torch.cat([below_h[0][t], below_h[1][t]])
    return out, torch.stack([torch.stack(r) for r in h_n]), torch.stack([torch.stack(r) for r in c_n])


CASES = [
    dict(layers=3, depth="lstm", tied=False, bidirectional=False, bias=True),
    dict(layers=3, depth="lstm", tied=True, bidirectional=False, bias=True),
    dict(layers=2, depth="tanh", tied=False, bidirectional=False, bias=False),
    dict(layers=3, depth="relu", tied=True, bidirectional=False, bias=True),
    dict(layers=2, depth="lstm", tied=False, bidirectional=True, bias=True),
]


def case_id(case: dict) -> str:
    return "-".join(f"{k}={v}" for k, v in case.items())


def make(case: dict, H: int = 4, I: int = 3) -> gatedrnn.GridLSTM:
    torch.manual_seed(0)
    grid = gatedrnn.GridLSTM(I, H, num_layers=case["layers"], depth=case["depth"], tied=case["tied"],
                             bidirectional=case["bidirectional"], bias=case["bias"], dtype=torch.float64)
    with torch.no_grad():
        for p in grid.parameters():
            p.copy_(torch.randn_like(p) * 0.6)
    return grid


def results(module: torch.nn.Module, x: Tensor, state: tuple[Tensor, Tensor], lengths: list[int]) -> list[Tensor]:
    module.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    h0, c0 = (s.detach().clone().requires_grad_() for s in state)
    out, (h_n, c_n) = module(x, (h0, c0), lengths=torch.tensor(lengths))
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    ((out * weights).sum() + h_n.sin().sum() + c_n.cos().sum()).backward()
    return [out.detach(), h_n.detach(), c_n.detach(), x.grad, h0.grad, c0.grad,
            *(p.grad for p in module.parameters())]


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_equals_the_papers_equations_by_hand(case: dict) -> None:
    grid = make(case)
    T, B, D = 6, 3, 2 if case["bidirectional"] else 1
    lengths = [6, 2, 5]
    x = torch.randn(T, B, 3, dtype=torch.float64)
    h0 = torch.randn(case["layers"] * D, B, 4, dtype=torch.float64)
    c0 = torch.randn(case["layers"] * D, B, 4, dtype=torch.float64)
    got = results(grid, x, (h0, c0), lengths)

    class ByHand(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.grid = grid

        def forward(self, x: Tensor, state: tuple[Tensor, Tensor], lengths: Tensor) -> tuple[Tensor, tuple]:
            out, h_n, c_n = by_hand(self.grid, x, *state, lengths.tolist())
            return out, (h_n, c_n)

    want = results(ByHand(), x, (h0, c0), lengths)
    names = ["output", "h_n", "c_n", "grad x", "grad h0", "grad c0",
             *(f"grad {n}" for n, _ in grid.named_parameters())]
    assert len(got) == len(want)
    for name, g, w in zip(names, got, want):
        assert relative_error(g, w) <= TOLERANCE, (name, relative_error(g, w))


def test_parameters_tied_and_untied() -> None:
    untied = gatedrnn.GridLSTM(3, 4, num_layers=2)
    assert [n for n, _ in untied.named_parameters()] == [
        "weight_in_l0", "bias_in_l0", "weight_time_l0", "bias_time_l0", "weight_depth_l0", "bias_depth_l0",
        "weight_time_l1", "bias_time_l1", "weight_depth_l1", "bias_depth_l1"]
    assert untied.weight_time_l0.shape == (16, 8) and untied.weight_depth_l1.shape == (16, 8)
    tied = gatedrnn.GridLSTM(3, 4, num_layers=5, tied=True, depth="tanh")
    assert [n for n, _ in tied.named_parameters()] == [
        "weight_in_l0", "bias_in_l0", "weight_time_l0", "bias_time_l0", "weight_depth_l0", "bias_depth_l0"]
    assert tied.weight_depth_l0.shape == (4, 8)
    assert "depth='tanh', tied=True" in repr(tied)
    out, (h_n, c_n) = tied(torch.randn(7, 2, 3))
    assert out.shape == (7, 2, 4) and h_n.shape == c_n.shape == (5, 2, 4)


def test_gradcheck_and_gradgradcheck() -> None:
    torch.manual_seed(0)
    grid = gatedrnn.GridLSTM(2, 3, bidirectional=True, dtype=torch.float64)
    f, inputs = layer_as_function(grid, [3, 3], T=4, B=2, I=2, gen=torch.Generator().manual_seed(1))
    assert torch.autograd.gradcheck(f, inputs, fast_mode=True)
    assert torch.autograd.gradgradcheck(f, inputs, fast_mode=True)


def test_inspect_records_both_transforms_of_every_layer() -> None:
    grid = gatedrnn.GridLSTM(3, 4, num_layers=2)
    with gatedrnn.inspect.record(grid) as rec:
        out, _ = grid(torch.randn(5, 2, 3), lengths=torch.tensor([5, 3]))
    trace = rec.trace(layer=1)
    assert trace.family == "grid"
    assert {"i", "f", "g", "o", "i_depth", "f_depth", "g_depth", "o_depth", "h", "c", "h_depth"} <= set(trace.names)
    torch.testing.assert_close(trace["h_depth"][0], out[:, 0])
    assert trace["f_depth"][1, 3:].isnan().all()
    flow = gatedrnn.inspect.gradient_flow(grid, torch.randn(5, 2, 3), lambda result: result[0][-1].sum())
    assert set(flow) == {"l0", "l1"}


def test_the_variant_and_a_task_use_it() -> None:
    from gatedrnn.variants import variant

    grid = variant("grid-lstm").build(3, 4, num_layers=2)
    assert isinstance(grid, gatedrnn.GridLSTM)
    assert gatedrnn.engine.resolve("auto", grid.spec, torch.zeros(1)).name == "reference"
    assert main(["cells", "--cells", "grid-lstm", "--steps", "3"]) == 0


def test_bad_arguments_name_the_argument() -> None:
    with pytest.raises(ValueError, match="depth: expected 'lstm' or 'tanh' or 'relu'"):
        gatedrnn.GridLSTM(3, 4, depth="gru")
    with pytest.raises(TypeError, match="tied: expected a bool"):
        gatedrnn.GridLSTM(3, 4, tied=1)
    with pytest.raises(ValueError, match="tied: a bidirectional grid"):
        gatedrnn.GridLSTM(3, 4, num_layers=2, tied=True, bidirectional=True)
    with pytest.raises(TypeError, match="peephole: not an option of GridLSTM"):
        gatedrnn.GridLSTM(3, 4, peephole=True)
    with pytest.raises(TypeError, match=r"hx: expected a tuple \(h_0, c_0\)"):
        gatedrnn.GridLSTM(3, 4)(torch.randn(2, 1, 3), torch.zeros(1, 1, 4))
    with pytest.raises(ValueError, match="to_torch: torch.nn has no counterpart for a Grid LSTM"):
        gatedrnn.GridLSTM(3, 4).to_torch()
    with pytest.raises(ValueError, match="engine: 'cpu' does not run"):
        gatedrnn.GridLSTM(3, 4, engine="cpu")(torch.randn(2, 1, 3))


def test_quantize_dynamic_refuses_the_new_layers_by_name() -> None:
    model = torch.nn.Sequential(gatedrnn.GridLSTM(3, 4), gatedrnn.ClockworkRNN(4, 4),
                                gatedrnn.LSTM(4, 4, num_layers=2, depth_gate=True))
    for cls, name in ((gatedrnn.GridLSTM, "GridLSTM"), (gatedrnn.ClockworkRNN, "ClockworkRNN"),
                      (gatedrnn.LSTM, "depth_gate")):
        with pytest.raises(NotImplementedError, match=name):
            torch.ao.quantization.quantize_dynamic(model, {cls})
