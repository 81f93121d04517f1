"""sLSTM against an independent implementation written here from the xLSTM paper's equations, gradcheck, states.

The implementation below shares no code with the library: one sequence at a time, one step at a time, on 1-D
vectors, with the block-diagonal recurrent matrix assembled as a full ``(4H, H)`` matrix of zeros and head blocks.
A second check runs the cell without its stabiliser (raw ``exp`` gates, ``c`` and ``n`` unscaled): ``h`` must be the
same, which is what the stabiliser promises.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from torch import Tensor

import gatedrnn
from numerics import relative_error

OPTIONS = [dict(forget_gate=fg, num_heads=nh) for fg in ("sigmoid", "exp") for nh in (1, 2)]


def option_id(options: dict) -> str:
    return f"{options['forget_gate']}-heads{options['num_heads']}"


def full_recurrent(weight_hh: Tensor, H: int) -> Tensor:
    """The ``(4H, H)`` matrix ``R``: rows of gate ``g``, head ``k`` hold head ``k``'s block, zeros elsewhere."""
    heads, rows, D = weight_hh.shape  # rows = 4D
    R = torch.zeros(4 * H, H, dtype=weight_hh.dtype)
    for k in range(heads):
        for g in range(4):
            R[g * H + k * D : g * H + (k + 1) * D, k * D : (k + 1) * D] = weight_hh[k, g * D : (g + 1) * D]
    return R


def slstm_step(x: Tensor, state: tuple[Tensor, ...], W: Tensor, R: Tensor, b: Tensor | None, H: int,
               forget_gate: str) -> tuple[Tensor, ...]:
    """One step of the stabilised sLSTM, as the paper writes it."""
    h, c, n, m = state
    a = W @ x + R @ h + (b if b is not None else 0.0)
    i_, f_, z_, o_ = a[:H], a[H : 2 * H], a[2 * H : 3 * H], a[3 * H :]
    log_i = i_
    log_f = torch.log(1 / (1 + torch.exp(-f_))) if forget_gate == "sigmoid" else f_
    if bool((n == 0).all()):  # the first step from the zero state: the stabiliser starts at log i
        m_new = log_i
        f = torch.zeros_like(log_f)
    else:
        m_new = torch.maximum(log_f + m, log_i)
        f = torch.exp(log_f + m - m_new)
    i = torch.exp(log_i - m_new)
    z, o = torch.tanh(z_), 1 / (1 + torch.exp(-o_))
    c = f * c + i * z
    n = f * n + i
    return o * c / n, c, n, m_new


def unstabilised_h(x_seq: Tensor, W: Tensor, R: Tensor, b: Tensor, H: int, forget_gate: str) -> Tensor:
    """``h_t`` of the cell without stabiliser from the zero state: ``i = exp(ĩ)``, ``f = σ(f̃)`` or ``exp(f̃)``."""
    h, c, n = (torch.zeros(H, dtype=x_seq.dtype) for _ in range(3))
    out = []
    for x in x_seq:
        a = W @ x + R @ h + b
        i = torch.exp(a[:H])
        f = 1 / (1 + torch.exp(-a[H : 2 * H])) if forget_gate == "sigmoid" else torch.exp(a[H : 2 * H])
        z, o = torch.tanh(a[2 * H : 3 * H]), 1 / (1 + torch.exp(-a[3 * H :]))
        c, n = f * c + i * z, f * n + i
        h = o * c / n
        out.append(h)
    return torch.stack(out)


def independent(module: gatedrnn.SLSTM, x: Tensor, hx: tuple[Tensor, ...], lengths: list[int]
                ) -> tuple[Tensor, tuple[Tensor, ...]]:
    T, B, _ = x.shape
    H, L, D = module.hidden_size, module.num_layers, 2 if module.bidirectional else 1
    out = torch.zeros(T, B, D * H, dtype=x.dtype)
    finals = [torch.zeros(L * D, B, H, dtype=x.dtype) for _ in range(4)]
    for b in range(B):
        seq = x[: lengths[b], b]
        for layer in range(L):
            outs = []
            for d in range(D):
                suffix = f"_l{layer}" + ("_reverse" if d else "")
                W = getattr(module, "weight_ih" + suffix)
                R = full_recurrent(getattr(module, "weight_hh" + suffix), H)
                bias = getattr(module, "bias_ih" + suffix, None)
                state = tuple(s[layer * D + d, b] for s in hx)
                steps = []
                for x_t in (seq.flip(0) if d else seq):
                    state = slstm_step(x_t, state, W, R, bias, H, module.forget_gate)
                    steps.append(state[0])
                for k in range(4):
                    finals[k][layer * D + d, b] = state[k]
                ys = torch.stack(steps)
                outs.append(ys.flip(0) if d else ys)
            seq = torch.cat(outs, dim=1)
        out[: lengths[b], b] = seq
    return out, tuple(finals)


def randomize_(module: torch.nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.6)


@pytest.mark.parametrize("options", OPTIONS, ids=option_id)
def test_layer_equals_the_paper_equations(options: dict) -> None:
    rng = random.Random(option_id(options))
    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    for _ in range(5):
        T, B, I, L = rng.choice([1, 2, 9, 25]), rng.randint(1, 3), rng.randint(1, 4), rng.randint(1, 2)
        H = options["num_heads"] * rng.choice([1, 3])
        bidirectional, batch_first, bias = rng.random() < 0.5, rng.random() < 0.5, rng.random() < 0.8
        module = gatedrnn.SLSTM(I, H, num_layers=L, bidirectional=bidirectional, batch_first=batch_first, bias=bias,
                                dtype=torch.float64, **options)
        randomize_(module, gen)
        D = 2 if bidirectional else 1
        x = torch.randn(T, B, I, generator=gen, dtype=torch.float64)
        lengths = [T] + [rng.randint(1, T) for _ in range(B - 1)]
        given = rng.random() < 0.5
        if given:  # any state: n > 0, m of either sign
            hx = (torch.randn(L * D, B, H, generator=gen, dtype=torch.float64),
                  torch.randn(L * D, B, H, generator=gen, dtype=torch.float64),
                  torch.rand(L * D, B, H, generator=gen, dtype=torch.float64) + 0.1,
                  torch.randn(L * D, B, H, generator=gen, dtype=torch.float64))
        else:
            hx = tuple(torch.zeros(L * D, B, H, dtype=torch.float64) for _ in range(4))
        with torch.no_grad():
            out, state = module(x.transpose(0, 1) if batch_first else x, hx if given else None,
                                lengths=torch.tensor(lengths))
            want_out, want_state = independent(module, x, hx, lengths)
        out = out.transpose(0, 1) if batch_first else out
        assert relative_error(out, want_out) <= 1e-12
        for got, want in zip(state, want_state):
            assert relative_error(got, want) <= 1e-12


@pytest.mark.parametrize("options", OPTIONS, ids=option_id)
def test_the_stabiliser_leaves_h_unchanged(options: dict) -> None:
    gen = torch.Generator().manual_seed(2)
    module = gatedrnn.SLSTM(3, 4, dtype=torch.float64, **options)
    randomize_(module, gen)
    x = torch.randn(30, 3, generator=gen, dtype=torch.float64)
    R = full_recurrent(module.weight_hh_l0, 4)
    want = unstabilised_h(x, module.weight_ih_l0, R, module.bias_ih_l0, 4, options["forget_gate"])
    with torch.no_grad():
        out, (h, c, n, m) = module(x)
    assert relative_error(out, want) <= 1e-10
    assert bool((m != 0).any()) and bool((n > 0).all())


@pytest.mark.parametrize("options", OPTIONS, ids=option_id)
def test_gradcheck_and_gradgradcheck(options: dict) -> None:
    gen = torch.Generator().manual_seed(3)
    module = gatedrnn.SLSTM(2, 2, bidirectional=True, dtype=torch.float64, **options)
    names = [name for name, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in module.parameters()]
    x = torch.randn(3, 2, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 2, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(2, 2, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    n0 = (torch.rand(2, 2, 2, generator=gen, dtype=torch.float64) + 0.5).requires_grad_()
    m0 = torch.randn(2, 2, 2, generator=gen, dtype=torch.float64, requires_grad=True)

    def f(x: Tensor, h0: Tensor, c0: Tensor, n0: Tensor, m0: Tensor, *values: Tensor) -> tuple[Tensor, ...]:
        out, state = torch.func.functional_call(module, dict(zip(names, values)), (x, (h0, c0, n0, m0)),
                                                {"lengths": torch.tensor([3, 2])})
        return (out, *state[:3])  # m is a stabiliser: a max, whose derivative is a choice at ties

    inputs = (x, h0, c0, n0, m0, *params)
    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)


@pytest.mark.parametrize("options", OPTIONS, ids=option_id)
def test_generation_step_by_step_equals_the_whole_sequence(options: dict) -> None:
    torch.manual_seed(4)
    module = gatedrnn.SLSTM(3, 4, num_layers=2, batch_first=True, dtype=torch.float64, **options)
    x = torch.randn(2, 8, 3, dtype=torch.float64)
    with torch.no_grad():
        want, want_state = module(x)
        state, outs = None, []
        for t in range(8):
            out, state = module(x[:, t : t + 1], state)
            outs.append(out)
    torch.testing.assert_close(torch.cat(outs, dim=1), want, rtol=1e-12, atol=1e-14)
    for got, expected in zip(state, want_state):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("options", OPTIONS, ids=option_id)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_inputs_of_1e4_give_finite_values_and_gradients(options: dict, dtype: torch.dtype) -> None:
    torch.manual_seed(5)
    module = gatedrnn.SLSTM(1, 4, dtype=dtype, bias=False, **options)
    with torch.no_grad():
        module.weight_ih_l0.uniform_(0.5, 1.5)
    x = torch.tensor([2.0, 1e4, -1e4, 1e4, 1e4, -1e4, -1e4, 0.5], dtype=dtype).reshape(-1, 1, 1).requires_grad_()
    out, state = module(x)
    (out.sum() + state[0].sum()).backward()
    assert torch.isfinite(out).all() and all(torch.isfinite(s).all() for s in state)
    assert torch.isfinite(x.grad).all() and torch.isfinite(module.weight_hh_l0.grad).all()


def test_record_shows_the_gates_normaliser_and_stabiliser() -> None:
    torch.manual_seed(6)
    module = gatedrnn.SLSTM(3, 4, num_heads=2, dtype=torch.float64)
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    with gatedrnn.inspect.record(module) as rec:
        out, (h, c, n, m) = module(x)
    trace = rec.trace()
    assert trace.family == "slstm" and set(trace.gates) == {"i", "f", "z", "o"}
    assert set(trace.states) == {"h", "c", "n", "m"}
    torch.testing.assert_close(trace["n"][:, -1], n[0])
    torch.testing.assert_close(trace["m"][:, -1], m[0])
    torch.testing.assert_close(trace["h"], trace["o"] * trace["c"] / trace["n"])
    for gate in ("i", "f", "o"):  # the stabilised gates lie in [0, 1]
        assert bool(((trace[gate] >= 0) & (trace[gate] <= 1)).all())


@pytest.mark.parametrize(
    ("kwargs", "call", "error", "message"),
    [
        ({"num_heads": 3}, None, ValueError, "num_heads: expected a divisor of hidden_size (4), got 3"),
        ({"num_heads": 0}, None, ValueError, "num_heads: expected an int >= 1, got 0"),
        ({"forget_gate": "tanh"}, None, ValueError, "forget_gate: expected 'sigmoid' or 'exp', got 'tanh'"),
        ({"peephole": True}, None, TypeError, "peephole: not an option of SLSTM"),
        ({}, lambda m: m(torch.randn(5, 2, 3), torch.zeros(1, 2, 4)), TypeError,
         "hx: expected a tuple (h_0, c_0, n_0, m_0) of four tensors, got Tensor"),
        ({}, lambda m: m(torch.randn(5, 2, 3), (torch.zeros(1, 2, 4),) * 3 + (torch.zeros(1, 2, 5),)), ValueError,
         "hx (m_0): expected shape (1, 2, 4), got (1, 2, 5)"),
        ({"engine": "cpu"}, lambda m: m(torch.randn(5, 2, 3)), ValueError, "engine: 'cpu' does not run"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, call: object, error: type, message: str) -> None:
    with pytest.raises(error) as caught:
        module = gatedrnn.SLSTM(3, 4, **kwargs)
        call(module)  # type: ignore[operator]
    assert message in str(caught.value)


# ---------------------------------------------------------------------------------------------------------------
# Wherever a cell is chosen.


def test_variants_charlm_explorer_and_bench(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gatedrnn import bench
    from gatedrnn.cli import main
    from gatedrnn.tasks import charlm
    from gatedrnn.variants import VARIANTS
    from gatedrnn.viz import explorer, plots
    from test_charlm import TINY

    assert VARIANTS["slstm-exp"].build(3, 4).forget_gate == "exp"
    text = tmp_path / "play.txt"
    text.write_text((Path(charlm.__file__).parent.parent / "data" / "macbeth.txt").read_text()[:3000])
    out = tmp_path / "run"
    assert main(["charlm", "train", "--text", str(text), *TINY, "--steps", "2", "--out", str(out), "--quiet",
                 "--cell", "slstm"]) == 0
    lm = charlm.load(out)
    assert isinstance(lm.model.rnn, gatedrnn.SLSTM) and len(lm.sample("M", 5)) >= 5
    data = explorer.explorer_data(lm, "When shall we three meet again?")
    signals = data["layers"][0]["signals"]
    assert set(signals) == {"i", "f", "z", "o", "h", "c", "n", "m"}
    assert {k for k, v in signals.items() if v["kind"] == "gate"} == {"i", "f", "o"}
    with gatedrnn.inspect.record(lm.model) as rec:
        lm.model(lm.vocab.encode("When shall", "text").unsqueeze(0))
    figure = plots.gate_heatmaps(rec.trace(), text="When shall")
    assert [ax.get_ylabel().split()[0] for ax in figure.axes if ax.get_ylabel()] == ["i", "f", "z", "o", "c", "n", "m"]
    rows = bench.run(bench.BenchConfig(shapes=[(2, 5, 3, 4)], variants=["slstm"], implementations=[
        "torch.nn", "reference", "cpu"], modes=["fwd"], repeats=1, warmup=0, block_ms=0))
    assert [r.implementation for r in rows] == ["reference"]  # no torch.nn twin, no fused kernels
