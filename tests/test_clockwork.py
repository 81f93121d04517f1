"""The Clockwork RNN against an independent implementation written here from the paper's equations (Koutník et al.
2014), its fused cpu kernels against the reference engine, gradcheck, the module clocks seen by inspect.record, and
every bad argument.

The implementation below shares no code with the library: one sequence at a time (``lengths`` is a slice), one step
at a time, on 1-D vectors; module ``i`` at step ``t`` (from 0) computes
``h_i = act(W_ih[i] x + b_ih[i] + Σ_{j >= i} W_hh[i, j] h_j + b_hh[i])`` if ``t mod T_i = 0`` and keeps ``h_i``
otherwise.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor

import gatedrnn
from gatedrnn.cli import main
from gatedrnn.engine.cpu import build
from numerics import layer_as_function, relative_error

TOLERANCE = 1e-12
CPU = pytest.mark.skipif(not build.status()[0], reason="cpu engine not available")


def module_bounds(H: int, g: int) -> list[tuple[int, int]]:
    """Units of each module: the first ``H mod g`` modules one unit more (as the docs say)."""
    sizes = [H // g + (1 if i < H % g else 0) for i in range(g)]
    starts = [sum(sizes[:i]) for i in range(g)]
    return [(s, s + n) for s, n in zip(starts, sizes)]


def by_hand(x: Tensor, h0: Tensor, p: dict[str, Tensor], periods: tuple[int, ...], act: str, start: int = 0
            ) -> tuple[Tensor, Tensor]:
    """One direction over one sequence ``x`` (T, I) from ``h0`` (H,): outputs (T, H) and the last state."""
    H = h0.shape[0]
    bounds = module_bounds(H, len(periods))
    h = h0
    outs = []
    for t in range(x.shape[0]):
        parts = []
        for i, (r0, r1) in enumerate(bounds):
            if (start + t) % periods[i] != 0:
                parts.append(h[r0:r1])
                continue
            a = p["weight_ih"][r0:r1] @ x[t]
            for j in range(i, len(periods)):
                c0, c1 = bounds[j]
                a = a + p["weight_hh"][r0:r1, c0:c1] @ h[c0:c1]
            if "bias_ih" in p:
                a = a + p["bias_ih"][r0:r1] + p["bias_hh"][r0:r1]
            parts.append(torch.tanh(a) if act == "tanh" else torch.relu(a))
        h = torch.cat(parts)
        outs.append(h)
    return torch.stack(outs), h


def layer_by_hand(layer: gatedrnn.ClockworkRNN, x: Tensor, h0: Tensor, lengths: list[int]) -> tuple[Tensor, Tensor]:
    """The whole layer, sequence by sequence: ``x`` (T, B, I), ``h0`` (L·D, B, H) -> output, h_n as the layer."""
    T, B = x.shape[0], x.shape[1]
    D = 2 if layer.bidirectional else 1
    out = x.new_zeros(T, B, D * layer.hidden_size)
    finals = [[None] * B for _ in range(layer.num_layers * D)]
    for b, n in enumerate(lengths):
        seq = x[:n, b]
        for layer_index in range(layer.num_layers):
            outputs = []
            for d in range(D):
                suffix = f"_l{layer_index}" + ("_reverse" if d else "")
                p = {name: getattr(layer, name + suffix) for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
                     if hasattr(layer, name + suffix)}
                inputs = seq.flip(0) if d else seq  # the reverse direction's clock starts at the last step
                o, h = by_hand(inputs, h0[layer_index * D + d, b], p, layer.periods, layer.nonlinearity)
                outputs.append(o.flip(0) if d else o)
                finals[layer_index * D + d][b] = h
            seq = torch.cat(outputs, dim=1)
        out[:n, b] = seq
    return out, torch.stack([torch.stack(f) for f in finals])


CASES = [
    dict(periods=(1, 2, 4, 8), H=8, layers=1, bidirectional=False, nonlinearity="tanh", bias=True),
    dict(periods=(1, 3, 5), H=7, layers=2, bidirectional=True, nonlinearity="tanh", bias=True),
    dict(periods=(2, 3), H=5, layers=1, bidirectional=True, nonlinearity="relu", bias=False),
    dict(periods=(1, 2, 4, 8, 16), H=10, layers=2, bidirectional=False, nonlinearity="tanh", bias=False),
]


def case_id(case: dict) -> str:
    return f"P{'-'.join(map(str, case['periods']))}-H{case['H']}-L{case['layers']}" + (
        "-bi" if case["bidirectional"] else "") + f"-{case['nonlinearity']}" + ("" if case["bias"] else "-nobias")


def make(case: dict, engine: str, seed: int = 0, I: int = 3) -> gatedrnn.ClockworkRNN:
    torch.manual_seed(seed)
    layer = gatedrnn.ClockworkRNN(I, case["H"], num_layers=case["layers"], bidirectional=case["bidirectional"],
                                  nonlinearity=case["nonlinearity"], bias=case["bias"], periods=case["periods"],
                                  dtype=torch.float64, engine=engine)
    with torch.no_grad():  # every used weight nonzero and of unit scale, so that each term counts
        for p in layer.parameters():
            p.copy_(torch.randn_like(p) * 0.6)
    return layer


def results(layer: torch.nn.Module, x: Tensor, h0: Tensor, lengths: list[int] | None) -> list[Tensor]:
    """Output, h_n and the gradients of the input, h0 and every parameter of a fixed scalar loss."""
    layer.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    h0 = h0.detach().clone().requires_grad_()
    kwargs = {} if lengths is None else {"lengths": torch.tensor(lengths)}
    out, h_n = layer(x, h0, **kwargs)
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    ((out * weights).sum() + h_n.sin().sum()).backward()
    return [out.detach(), h_n.detach(), x.grad, h0.grad, *(p.grad for p in layer.parameters())]


@pytest.mark.parametrize("engine", ["reference", pytest.param("cpu", marks=CPU)])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_equals_the_papers_equations_by_hand(case: dict, engine: str) -> None:
    layer = make(case, engine)
    T, B = 11, 3
    lengths = [11, 4, 9]
    D = 2 if case["bidirectional"] else 1
    x = torch.randn(T, B, 3, dtype=torch.float64)
    h0 = torch.randn(case["layers"] * D, B, case["H"], dtype=torch.float64)
    got = results(layer, x, h0, lengths)

    class ByHand(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = layer

        def forward(self, x: Tensor, h0: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
            return layer_by_hand(self.layer, x, h0, lengths.tolist())

    want = results(ByHand(), x, h0, lengths)
    names = ["output", "h_n", "grad x", "grad h0", *(f"grad {n}" for n, _ in layer.named_parameters())]
    for name, g, w in zip(names, got, want):
        assert relative_error(g, w) <= TOLERANCE, (name, relative_error(g, w))


@CPU
@pytest.mark.parametrize("B", [1, 4, 9])  # products as dot loops (B <= 4) and as GEMMs
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_fused_kernels_equal_the_reference_engine(case: dict, B: int) -> None:
    T = 19
    D = 2 if case["bidirectional"] else 1
    x = torch.randn(T, B, 3, dtype=torch.float64)
    h0 = torch.randn(case["layers"] * D, B, case["H"], dtype=torch.float64)
    lengths = None if B == 1 else [T, *torch.randint(1, T + 1, (B - 1,)).tolist()]
    got = results(make(case, "cpu"), x, h0, lengths)
    want = results(make(case, "reference"), x, h0, lengths)
    for k, (g, w) in enumerate(zip(got, want)):
        assert relative_error(g, w) <= 1e-10, (k, relative_error(g, w))


@CPU
def test_float32_and_no_grad_paths_equal_the_reference() -> None:
    case = CASES[1]
    x = torch.randn(13, 6, 3)
    fused, reference = make(case, "cpu").float(), make(case, "reference").float()
    with torch.no_grad():
        torch.testing.assert_close(fused(x)[0], reference(x)[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused(x)[1], reference(x)[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("engine", ["reference", pytest.param("cpu", marks=CPU)])
def test_gradcheck_and_gradgradcheck(engine: str) -> None:
    torch.manual_seed(0)
    layer = gatedrnn.ClockworkRNN(2, 3, periods=(1, 2), bidirectional=True, dtype=torch.float64, engine=engine)
    f, inputs = layer_as_function(layer, [3], T=4, B=2, I=2, gen=torch.Generator().manual_seed(1))
    assert torch.autograd.gradcheck(f, inputs, fast_mode=True)
    assert torch.autograd.gradgradcheck(f, inputs, fast_mode=True)


@pytest.mark.parametrize("engine", ["reference", pytest.param("cpu", marks=CPU)])
def test_unused_blocks_get_no_gradient_are_zero_at_init_and_never_read(engine: str) -> None:
    layer = gatedrnn.ClockworkRNN(3, 6, periods=(1, 2, 4), num_layers=2, engine=engine, dtype=torch.float64)
    mask = layer.spec.recurrent_mask(layer.weight_hh_l0)
    assert mask.tolist()[2][:2] == [False, False] and mask.tolist()[0] == [True] * 6  # block upper-triangular
    for name in ("weight_hh_l0", "weight_hh_l1"):
        assert (getattr(layer, name)[~mask] == 0).all()
    x = torch.randn(9, 2, 3, dtype=torch.float64)
    out, h_n = layer(x)
    with torch.no_grad():  # values in the unused blocks, even infinite ones, change nothing
        layer.weight_hh_l0[~mask] = float("inf")
    out2, h_n2 = layer(x)
    assert torch.equal(out, out2) and torch.equal(h_n, h_n2)
    (out2.sum() + h_n2.sum()).backward()
    assert (layer.weight_hh_l0.grad[~mask] == 0).all() and (layer.weight_hh_l1.grad[~mask] == 0).all()
    assert layer.weight_hh_l0.grad[mask].abs().min() > 0


def test_state_dict_round_trips_and_names_say_what_they_are() -> None:
    a = gatedrnn.ClockworkRNN(3, 8, periods=(1, 4), bidirectional=True)
    assert [n for n, _ in a.named_parameters()] == [
        "weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0",
        "weight_ih_l0_reverse", "weight_hh_l0_reverse", "bias_ih_l0_reverse", "bias_hh_l0_reverse"]
    b = gatedrnn.ClockworkRNN(3, 8, periods=(1, 4), bidirectional=True)
    b.load_state_dict(a.state_dict())
    x = torch.randn(5, 2, 3)
    assert torch.equal(a(x)[0], b(x)[0])
    assert "periods=(1, 4)" in repr(a)


def test_default_periods_and_the_clock_of_each_step() -> None:
    layer = gatedrnn.ClockworkRNN(1, 8)
    assert layer.periods == (1, 2, 4, 8)
    assert gatedrnn.ClockworkRNN(1, 6, num_modules=3).periods == (1, 2, 4)
    spec = layer.spec
    like = torch.zeros(1)
    assert spec.active(0, like).tolist() == [True] * 8  # t = 0: every module updates
    assert spec.active(6, like).tolist() == [True, True, True, True, False, False, False, False]  # T = 1, 2
    assert spec.active(3, like).tolist() == [True, True] + [False] * 6


@pytest.mark.parametrize("engine", ["reference", pytest.param("cpu", marks=CPU)])
def test_a_sequence_fed_on_in_pieces_continues_its_clocks(engine: str) -> None:
    layer = gatedrnn.ClockworkRNN(2, 6, periods=(1, 2, 3), num_layers=2, engine=engine, dtype=torch.float64)
    x = torch.randn(10, 3, 2, dtype=torch.float64)
    whole, h_whole = layer(x)
    pieces, h, position = [], None, 0
    for n in (3, 1, 1, 5):
        out, h = layer(x[position:position + n], h, start=position)
        pieces.append(out)
        position += n
    torch.testing.assert_close(torch.cat(pieces), whole, rtol=0, atol=1e-15)
    torch.testing.assert_close(h, h_whole, rtol=0, atol=1e-15)


@CPU
def test_extreme_inputs_give_no_nan_on_the_fused_engine() -> None:
    layer = gatedrnn.ClockworkRNN(3, 8, periods=(1, 2, 4), num_layers=2, engine="cpu")
    reference = gatedrnn.ClockworkRNN(3, 8, periods=(1, 2, 4), num_layers=2, engine="reference")
    reference.load_state_dict(layer.state_dict())
    for value in (1e4, -1e4, float("inf"), float("-inf")):
        x = torch.randn(7, 5, 3)  # one feature at a time: W_ih x stays ±inf, not inf - inf
        x[2, :, 0] = value
        x[5, 1:, 1] = value
        out, h_n = layer(x)
        assert not out.isnan().any() and not h_n.isnan().any(), value
        torch.testing.assert_close(out, reference(x)[0], rtol=1e-5, atol=1e-6)
        x.requires_grad_()
        layer(x)[0].sum().backward()
        assert not x.grad.isnan().any(), value


def test_inspect_records_the_active_mask_of_every_step() -> None:
    layer = gatedrnn.ClockworkRNN(2, 4, periods=(1, 3), bidirectional=True)
    x = torch.randn(7, 2, 2)
    lengths = torch.tensor([7, 5])
    with gatedrnn.inspect.record(layer) as rec:
        out, _ = layer(x, lengths=lengths)
    forward = rec.trace(layer=0, direction=0)
    assert forward.family == "clockwork" and set(forward.names) == {"h", "active"}
    active = forward["active"]  # (B, T, H)
    slow = [1.0 if t % 3 == 0 else 0.0 for t in range(7)]
    assert active[0, :, 0].tolist() == [1.0] * 7 and active[0, :, 3].tolist() == slow
    torch.testing.assert_close(forward["h"][0], out[:, 0, :4])
    reverse = rec.trace(layer=0, direction=1)["active"]  # the reverse clock starts at each sequence's last step
    assert reverse[0, :, 3].tolist() == slow[::-1]
    assert reverse[1, :5, 3].tolist() == [1.0 if t % 3 == 0 else 0.0 for t in range(5)][::-1]
    assert reverse[1, 5:].isnan().all()  # padding
    flow = gatedrnn.inspect.gradient_flow(layer, x, lambda result: result[0][-1].sum(), lengths=lengths)
    assert flow["l0"].shape == (7,)


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    (dict(periods=(1, 1)), ValueError, "periods: expected strictly increasing"),
    (dict(periods=(2, 1)), ValueError, "periods: expected strictly increasing"),
    (dict(periods=(0, 1)), ValueError, "periods: expected an int >= 1"),
    (dict(periods=()), ValueError, "periods: expected at least one period"),
    (dict(periods="1248"), TypeError, "periods: expected a sequence of ints"),
    (dict(periods=(1.5, 2)), TypeError, "periods: expected an int"),
    (dict(num_modules=0), ValueError, "num_modules: expected an int >= 1"),
    (dict(periods=(1, 2), num_modules=3), ValueError, "num_modules: expected len(periods) = 2"),
    (dict(periods=tuple(range(1, 10))), ValueError, "hidden_size: expected at least one unit per module"),
    (dict(layer_norm=True), TypeError, "layer_norm: not an option of ClockworkRNN"),
    (dict(peephole=True), TypeError, "peephole: not an option of ClockworkRNN"),
    (dict(nonlinearity="sigmoid"), ValueError, "nonlinearity: expected 'tanh' or 'relu'"),
])
def test_bad_arguments_name_the_argument(kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        gatedrnn.ClockworkRNN(3, 8, **kwargs)


def test_bad_calls_name_the_argument() -> None:
    layer = gatedrnn.ClockworkRNN(3, 8, bidirectional=True)
    with pytest.raises(ValueError, match="start: a bidirectional layer"):
        layer(torch.randn(4, 2, 3), start=4)
    with pytest.raises(ValueError, match="start: expected an int >= 0"):
        gatedrnn.ClockworkRNN(3, 8)(torch.randn(4, 2, 3), start=-1)
    with pytest.raises(ValueError, match="to_torch: torch.nn has no counterpart"):
        layer.to_torch()
    with pytest.raises(ValueError, match="input"):
        layer(torch.randn(4, 2, 5))


def test_charlm_trains_samples_and_explores_a_clockwork_model(tmp_path: Path) -> None:
    from gatedrnn.tasks import charlm
    from gatedrnn.viz.explorer import explorer_data

    text = tmp_path / "play.txt"
    text.write_text((Path(charlm.__file__).parent.parent / "data" / "macbeth.txt").read_text()[:3000])
    out = tmp_path / "run"
    args = ["charlm", "train", "--text", str(text), "--cell", "clockwork", "--hidden", "8", "--embed", "8",
            "--seq-len", "16", "--batch", "4", "--eval-every", "2", "--warmup", "1", "--steps", "2", "--out",
            str(out), "--quiet"]
    assert main(args) == 0
    lm = charlm.load(out)
    assert isinstance(lm.model.rnn, gatedrnn.ClockworkRNN)
    assert len(lm.sample("M", 12)) == 12
    # sampling feeds one character at a time with the clocks going on: the logits of the last step equal those of
    # the whole text read at once
    ids = lm.vocab.encode("MACBETH", "text").unsqueeze(0)
    with torch.no_grad():
        whole, _ = lm.model.eval()(ids)
        logits, state = lm.model(ids[:, :3])
        for position in range(3, ids.shape[1]):
            logits, state = lm.model(ids[:, position:position + 1], state, position)
    torch.testing.assert_close(logits[0, -1], whole[0, -1])
    layers = explorer_data(lm, "MACBETH.")["layers"]
    assert layers[0]["family"] == "clockwork" and layers[0]["signals"]["active"]["kind"] == "gate"


def test_charlm_refuses_layer_norm_for_a_clockwork_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["charlm", "train", "--cell", "clockwork", "--layer-norm", "--steps", "1", "--out",
                 str(tmp_path / "run"), "--quiet"]) == 2
    assert "layer_norm: a Clockwork RNN has no layer-norm form" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_bench_times_the_clockwork_rnn_against_torch_nn_rnn_of_the_same_hidden_size() -> None:
    from gatedrnn import bench

    config = bench.BenchConfig(shapes=[(2, 9, 3, 8)], variants=["clockwork", "rnn"],
                               implementations=["torch.nn", "reference", "cpu"] if build.status()[0]
                               else ["torch.nn", "reference"], modes=["fwd"], repeats=1, warmup=0, block_ms=0)
    entries = {(e["variant"], e["implementation"]): e for e in bench.ratios(bench.run(config))}
    assert ("clockwork", "torch.nn") not in entries  # torch.nn has no Clockwork RNN
    for impl in config.implementations[1:]:
        entry = entries[("clockwork", impl)]
        assert entry["family_baseline"] == "rnn" and entry["vs_torch_nn_family"] is not None
