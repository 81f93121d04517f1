"""The depth-gated LSTM (Yao et al. 2015) against an independent implementation written here from the paper's
equations, gradcheck, the depth gate seen by inspect.record, and every bad argument.

The implementation below shares no code with the library: one sequence at a time (``lengths`` is a slice), one step
and one layer at a time, on 1-D vectors. Layer ``L >= 1`` at step ``t``, with ``x_t`` its input (the outputs of the
layer below) and ``c^{L-1}_t`` the cell state of the layer below (same direction):
``d = σ(b_d + W_xd x_t + w_cd ⊙ c_{t-1} + w_ld ⊙ c^{L-1}_t)``, ``c_t = d ⊙ c^{L-1}_t + f ⊙ c_{t-1} + i ⊙ g``; the
bottom layer is an LSTM.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import Tensor

import gatedrnn
from gatedrnn.cli import main
from numerics import layer_as_function, relative_error

TOLERANCE = 1e-12


def sigmoid(v: Tensor) -> Tensor:
    return 1 / (1 + torch.exp(-v))


def by_hand(x: Tensor, h0: Tensor, c0: Tensor, p: dict[str, Tensor], below: Tensor | None, options: dict
            ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One layer and direction over one sequence ``x`` (T, I): outputs h (T, P), cells (T, H), h_T, c_T."""
    H = c0.shape[0]
    blocks = ["i", "g", "o"] if options.get("coupled") else ["i", "f", "g", "o"]

    def rows(name: str, k: str) -> Tensor:
        j = blocks.index(k)
        return p[name][j * H:(j + 1) * H]

    h, c = h0, c0
    hs, cs = [], []
    for t in range(x.shape[0]):
        a = {k: rows("weight_ih", k) @ x[t] + rows("weight_hh", k) @ h for k in blocks}
        if "bias_ih" in p:
            a = {k: a[k] + rows("bias_ih", k) + rows("bias_hh", k) for k in blocks}
        peep = options.get("peephole")
        i = sigmoid(a["i"] + (p["weight_ci"] * c if peep else 0))
        f = 1 - i if options.get("coupled") else sigmoid(a["f"] + (p["weight_cf"] * c if peep else 0)
                                                           + options.get("forget_bias", 0.0))
        g = torch.tanh(a["g"])
        if below is None:
            c_new = f * c + i * g
        else:
            d = sigmoid(p["weight_xd"] @ x[t] + (p["bias_d"] if "bias_d" in p else 0) + p["weight_cd"] * c
                        + p["weight_ld"] * below[t])
            c_new = d * below[t] + f * c + i * g
        o = sigmoid(a["o"] + (p["weight_co"] * c_new if peep else 0))
        h = o * torch.tanh(c_new)
        if "weight_hr" in p:
            h = p["weight_hr"] @ h
        c = c_new
        hs.append(h)
        cs.append(c)
    return torch.stack(hs), torch.stack(cs), h, c


def stack_by_hand(layer: gatedrnn.LSTM, x: Tensor, h0: Tensor, c0: Tensor, lengths: list[int], options: dict
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """The whole stack, sequence by sequence, as the layer: output, h_n, c_n."""
    T, B = x.shape[0], x.shape[1]
    D = 2 if layer.bidirectional else 1
    P = layer.proj_size or layer.hidden_size
    out = x.new_zeros(T, B, D * P)
    h_n = [[None] * B for _ in range(layer.num_layers * D)]
    c_n = [[None] * B for _ in range(layer.num_layers * D)]
    for b, n in enumerate(lengths):
        seq = x[:n, b]
        cells: list[Tensor | None] = [None] * D  # per direction, in the input's time order
        for layer_index in range(layer.num_layers):
            outputs, new_cells = [], []
            for d in range(D):
                suffix = f"_l{layer_index}" + ("_reverse" if d else "")
                p = {name.removesuffix(suffix): value for name, value in layer.named_parameters()
                     if name.endswith(suffix) and (d or not name.endswith("_reverse"))}
                inputs, below = (seq.flip(0), cells[d].flip(0) if cells[d] is not None else None) if d else (
                    seq, cells[d])
                k = layer_index * D + d
                hs, cs, h_n[k][b], c_n[k][b] = by_hand(inputs, h0[k, b], c0[k, b], p, below, options)
                outputs.append(hs.flip(0) if d else hs)
                new_cells.append(cs.flip(0) if d else cs)
            seq, cells = torch.cat(outputs, dim=1), new_cells
        out[:n, b] = seq
    return out, torch.stack([torch.stack(r) for r in h_n]), torch.stack([torch.stack(r) for r in c_n])


CASES = [
    dict(layers=3, bidirectional=False, options={}),
    dict(layers=2, bidirectional=True, options={"peephole": True}),
    dict(layers=2, bidirectional=False, options={"coupled": True, "proj_size": 2, "bias": False}),
    dict(layers=3, bidirectional=True, options={"forget_bias": 1.0, "peephole": True, "proj_size": 3}),
]


def case_id(case: dict) -> str:
    return f"L{case['layers']}" + ("-bi" if case["bidirectional"] else "") + "".join(
        f"-{k}={v}" for k, v in case["options"].items())


def make(case: dict, H: int = 5, I: int = 3) -> gatedrnn.LSTM:
    torch.manual_seed(0)
    layer = gatedrnn.LSTM(I, H, num_layers=case["layers"], bidirectional=case["bidirectional"], depth_gate=True,
                          dtype=torch.float64, **case["options"])
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn_like(p) * 0.6)
    return layer


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
    layer = make(case)
    T, B, D = 7, 3, 2 if case["bidirectional"] else 1
    lengths = [7, 3, 5]
    P = case["options"].get("proj_size") or 5
    x = torch.randn(T, B, 3, dtype=torch.float64)
    h0 = torch.randn(case["layers"] * D, B, P, dtype=torch.float64)
    c0 = torch.randn(case["layers"] * D, B, 5, dtype=torch.float64)
    got = results(layer, x, (h0, c0), lengths)

    class ByHand(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = layer

        def forward(self, x: Tensor, state: tuple[Tensor, Tensor], lengths: Tensor) -> tuple[Tensor, tuple]:
            out, h_n, c_n = stack_by_hand(self.layer, x, *state, lengths.tolist(), case["options"])
            return out, (h_n, c_n)

    want = results(ByHand(), x, (h0, c0), lengths)
    names = ["output", "h_n", "c_n", "grad x", "grad h0", "grad c0",
             *(f"grad {n}" for n, _ in layer.named_parameters())]
    for name, g, w in zip(names, got, want):
        assert relative_error(g, w) <= TOLERANCE, (name, relative_error(g, w))


def test_the_depth_gate_carries_the_lower_cell_and_its_parameters_are_named() -> None:
    layer = gatedrnn.LSTM(3, 4, num_layers=2, depth_gate=True, dtype=torch.float64)
    names = [n for n, _ in layer.named_parameters()]
    assert names[-4:] == ["weight_xd_l1", "bias_d_l1", "weight_cd_l1", "weight_ld_l1"]
    assert not any(n.endswith("d_l0") for n in names)  # the bottom layer has no layer below
    # the gradient of c_n of the top layer reaches the bottom layer's cell through the depth gate alone when the
    # upper layer's input weights are zero
    with torch.no_grad():
        layer.weight_ih_l1.zero_()
        layer.weight_xd_l1.zero_()
    _, (_, c_n) = layer(torch.randn(5, 2, 3, dtype=torch.float64))
    c_n[1].sum().backward()
    assert layer.weight_hh_l0.grad.abs().sum() > 0 and layer.weight_ld_l1.grad.abs().sum() > 0
    assert repr(layer).endswith("depth_gate=True)") and layer.depth_gate


def test_gradcheck_and_gradgradcheck() -> None:
    torch.manual_seed(0)
    layer = gatedrnn.LSTM(2, 3, num_layers=2, bidirectional=True, depth_gate=True, peephole=True,
                          dtype=torch.float64)
    f, inputs = layer_as_function(layer, [3, 3], T=4, B=2, I=2, gen=torch.Generator().manual_seed(1))
    f2 = lambda x, h, c, *params: f(x, torch.cat([h, h]), torch.cat([c, c]), *params)  # noqa: E731 (2 layers)
    assert torch.autograd.gradcheck(f2, inputs, fast_mode=True)
    assert torch.autograd.gradgradcheck(f2, inputs, fast_mode=True)


def test_inspect_records_the_depth_gate() -> None:
    layer = gatedrnn.LSTM(3, 4, num_layers=3, depth_gate=True)
    with gatedrnn.inspect.record(layer) as rec:
        out, _ = layer(torch.randn(6, 2, 3), lengths=torch.tensor([6, 4]))
    assert "d" not in rec.trace(layer=0).gates
    d = rec.trace(layer=2)["d"]
    assert d.shape == (2, 6, 4) and ((d[0] > 0) & (d[0] < 1)).all() and d[1, 4:].isnan().all()
    torch.testing.assert_close(rec.trace(layer=2)["h"][0], out[:, 0])
    flow = gatedrnn.inspect.gradient_flow(layer, torch.randn(6, 2, 3), lambda result: result[0][-1].sum())
    assert set(flow) == {"l0", "l1", "l2"} and flow["l0"][0] > 0


def test_the_variant_runs_everywhere_a_cell_is_named() -> None:
    from gatedrnn.variants import variant

    layer = variant("lstm-depthgated").build(3, 4, num_layers=2)
    assert layer.depth_gate
    assert gatedrnn.engine.resolve("auto", layer.spec, torch.zeros(1)).name == "reference"
    out, _ = layer(torch.randn(5, 2, 3))
    assert out.shape == (5, 2, 4)


def test_bad_arguments_name_the_argument() -> None:
    with pytest.raises(ValueError, match="layer_norm: the depth-gated LSTM has no layer-norm form"):
        gatedrnn.LSTM(3, 4, num_layers=2, depth_gate=True, layer_norm=True)
    with pytest.raises(TypeError, match="depth_gate: expected a bool"):
        gatedrnn.LSTM(3, 4, num_layers=2, depth_gate="yes")
    with pytest.raises(TypeError, match="depth_gate: not an option of GRU"):
        gatedrnn.GRU(3, 4, depth_gate=True)
    with pytest.raises(TypeError, match="depth_gate: not an option of LSTMCell"):
        gatedrnn.LSTMCell(3, 4, depth_gate=True)
    with pytest.raises(ValueError, match="to_torch: torch.nn has no counterpart for depth_gate"):
        gatedrnn.LSTM(3, 4, num_layers=2, depth_gate=True).to_torch()
    with pytest.raises(ValueError, match="engine: 'cpu' does not run"):
        gatedrnn.LSTM(3, 4, num_layers=2, depth_gate=True, engine="cpu")(torch.randn(2, 1, 3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gatedrnn.LSTM(3, 4, depth_gate=True)
    assert any("depth_gate=True has no effect with num_layers=1" in str(w.message) for w in caught)


def test_charlm_trains_samples_and_explores_a_depth_gated_model(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from gatedrnn.tasks import charlm
    from gatedrnn.viz.explorer import explorer_data

    text = tmp_path / "play.txt"
    text.write_text((Path(charlm.__file__).parent.parent / "data" / "macbeth.txt").read_text()[:3000])
    out = tmp_path / "run"
    args = ["charlm", "train", "--text", str(text), "--depth-gate", "--layers", "2", "--hidden", "8", "--embed", "8",
            "--seq-len", "16", "--batch", "4", "--eval-every", "2", "--warmup", "1", "--steps", "2", "--quiet"]
    assert main([*args, "--out", str(out)]) == 0
    lm = charlm.load(out)
    assert lm.model.rnn.depth_gate and len(lm.sample("M", 8)) == 8
    layers = explorer_data(lm, "MACBETH.")["layers"]
    assert layers[1]["signals"]["d"]["kind"] == "gate" and "d" not in layers[0]["signals"]
    assert main([*args, "--layers", "1", "--out", str(tmp_path / "one")]) == 2  # the last --layers counts
    assert "depth_gate: the depth gate connects adjacent layers; expected layers >= 2" in capsys.readouterr().err
    assert not (tmp_path / "one").exists()
