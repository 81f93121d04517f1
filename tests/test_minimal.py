"""minGRU and minLSTM against an independent implementation written here from the paper's equations, and the parallel
scan (plain PyTorch and the cpu engine's C++) against the sequential loop.

The implementation below shares no code with the library: one sequence at a time (``lengths`` is a slice), one step
at a time, on 1-D vectors, the gates sliced out of ``weight_ih``/``bias_ih`` by hand, ``f / (f + i)`` divided as
written. The paper's own log-space parallel scan (``cumsum`` and ``logcumsumexp``) is a second independent check of
the log mode.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import gatedrnn
from gatedrnn.engine.cpu import build
from gatedrnn.engine.scan import linear_scan_reference, scan_reference
from numerics import layer_as_function, relative_error

CPU = pytest.mark.skipif(not build.status()[0], reason="cpu engine not available")
LAYERS = {"mingru": gatedrnn.MinGRU, "minlstm": gatedrnn.MinLSTM}
CASES = [(name, mode) for name in LAYERS for mode in ("log", "plain")]
ENGINES = ["reference", "scan", pytest.param("cpu", marks=CPU)]


def case_id(case: tuple[str, str]) -> str:
    return f"{case[0]}-{case[1]}"


# ---------------------------------------------------------------------------------------------------------------
# The independent implementation: one sequence, one step, 1-D vectors.


def sigmoid(v: Tensor) -> Tensor:
    return 1 / (1 + torch.exp(-v))


def g(v: Tensor) -> Tensor:
    """``g(x) = x + 0.5`` for ``x >= 0``, ``σ(x)`` below (the paper's)."""
    return torch.where(v >= 0, v + 0.5, sigmoid(v))


def linear(p: dict[str, Tensor], k: int, H: int, x: Tensor) -> Tensor:
    """``Linear_k(x)``: gate block ``k`` of ``weight_ih`` (and ``bias_ih`` where there is one)."""
    out = p["weight_ih"][k * H : (k + 1) * H] @ x
    return out + p["bias_ih"][k * H : (k + 1) * H] if "bias_ih" in p else out


def mingru_step(x: Tensor, h: Tensor, p: dict[str, Tensor], H: int, mode: str) -> Tensor:
    z = sigmoid(linear(p, 0, H, x))
    h_tilde = linear(p, 1, H, x)
    if mode == "log":
        h_tilde = g(h_tilde)
    return (1 - z) * h + z * h_tilde


def minlstm_step(x: Tensor, h: Tensor, p: dict[str, Tensor], H: int, mode: str) -> Tensor:
    f = sigmoid(linear(p, 0, H, x))
    i = sigmoid(linear(p, 1, H, x))
    h_tilde = linear(p, 2, H, x)
    if mode == "log":
        h_tilde = g(h_tilde)
    f_norm, i_norm = f / (f + i), i / (f + i)
    return f_norm * h + i_norm * h_tilde


STEPS = {"mingru": mingru_step, "minlstm": minlstm_step}


def independent(name: str, mode: str, module: torch.nn.Module, x: Tensor, h0: Tensor, lengths: list[int]
                ) -> tuple[Tensor, Tensor]:
    """Outputs ``(T, B, D·H)`` and ``h_n`` ``(L·D, B, H)`` of a stack, sequence by sequence, step by step."""
    T, B, _ = x.shape
    H, L, D = module.hidden_size, module.num_layers, 2 if module.bidirectional else 1
    out = torch.zeros(T, B, D * H, dtype=x.dtype)
    h_n = torch.zeros(L * D, B, H, dtype=x.dtype)
    for b in range(B):
        seq = x[: lengths[b], b]  # (n, I)
        for layer in range(L):
            outs = []
            for d in range(D):
                suffix = f"_l{layer}" + ("_reverse" if d else "")
                p = {base: getattr(module, base + suffix) for base in ("weight_ih", "bias_ih")
                     if hasattr(module, base + suffix)}
                h = h0[layer * D + d, b]
                steps = []
                for x_t in (seq.flip(0) if d else seq):
                    h = STEPS[name](x_t, h, p, H, mode)
                    steps.append(h)
                h_n[layer * D + d, b] = h
                ys = torch.stack(steps)
                outs.append(ys.flip(0) if d else ys)
            seq = torch.cat(outs, dim=1)
        out[: lengths[b], b] = seq
    return out, h_n


def paper_log_scan(log_coeffs: Tensor, log_values: Tensor) -> Tensor:
    """The paper's ``parallel_scan_log``: ``h_t`` from ``log a`` ``(T, H)`` and ``[log h_0, log b_1 … log b_T]``."""
    a_star = F.pad(torch.cumsum(log_coeffs, dim=0), (0, 0, 1, 0))
    log_h0_plus_b_star = torch.logcumsumexp(log_values - a_star, dim=0)
    return torch.exp(a_star + log_h0_plus_b_star)[1:]


def log_g(v: Tensor) -> Tensor:
    return torch.where(v >= 0, (F.relu(v) + 0.5).log(), -F.softplus(-v))


def paper_log_space(name: str, module: torch.nn.Module, x: Tensor, h0: Tensor) -> Tensor:
    """One layer, one direction, one sequence ``x`` ``(T, I)`` from ``h0 > 0``: the paper's log-space form."""
    H = module.hidden_size
    p = {"weight_ih": module.weight_ih_l0, "bias_ih": module.bias_ih_l0}
    k = torch.stack([linear(p, 0, H, x_t) for x_t in x])
    if name == "mingru":
        log_coeffs, log_z = -F.softplus(k), -F.softplus(-k)
        log_h_tilde = log_g(torch.stack([linear(p, 1, H, x_t) for x_t in x]))
        log_b = log_z + log_h_tilde
    else:
        k_i = torch.stack([linear(p, 1, H, x_t) for x_t in x])
        diff = F.softplus(-k) - F.softplus(-k_i)
        log_coeffs, log_i = -F.softplus(diff), -F.softplus(-diff)
        log_b = log_i + log_g(torch.stack([linear(p, 2, H, x_t) for x_t in x]))
    return paper_log_scan(log_coeffs, torch.cat([h0.log().unsqueeze(0), log_b]))


# ---------------------------------------------------------------------------------------------------------------


def randomize_(module: torch.nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.7)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_layers_equal_the_paper_equations(case: tuple[str, str], engine: str) -> None:
    name, mode = case
    rng = random.Random(f"{name}-{mode}-{engine}")
    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    for _ in range(6):
        T, B, I, H = rng.choice([1, 2, 7, 33]), rng.randint(1, 4), rng.randint(1, 5), rng.choice([1, 3, 8])
        L, bidirectional, batch_first = rng.randint(1, 3), rng.random() < 0.5, rng.random() < 0.5
        bias = rng.random() < 0.8
        module = LAYERS[name](I, H, num_layers=L, bidirectional=bidirectional, batch_first=batch_first, bias=bias,
                              mode=mode, engine=engine, dtype=torch.float64)
        randomize_(module, gen)
        D = 2 if bidirectional else 1
        x = torch.randn(T, B, I, generator=gen, dtype=torch.float64)
        h0 = torch.randn(L * D, B, H, generator=gen, dtype=torch.float64)
        lengths = [T] + [rng.randint(1, T) for _ in range(B - 1)]
        given_h0 = rng.random() < 0.7
        with torch.no_grad():
            out, h_n = module(x.transpose(0, 1) if batch_first else x, h0 if given_h0 else None,
                              lengths=torch.tensor(lengths))
            want_out, want_h = independent(name, mode, module, x, h0 if given_h0 else torch.zeros_like(h0), lengths)
        out = out.transpose(0, 1) if batch_first else out
        assert relative_error(out, want_out) <= 1e-12, (T, B, I, H, L, bidirectional)
        assert relative_error(h_n, want_h) <= 1e-12


@pytest.mark.parametrize("name", list(LAYERS))
def test_log_mode_equals_the_papers_log_space_scan(name: str) -> None:
    gen = torch.Generator().manual_seed(3)
    module = LAYERS[name](4, 6, dtype=torch.float64)
    randomize_(module, gen)
    x = torch.randn(50, 4, generator=gen, dtype=torch.float64)
    h0 = torch.rand(6, generator=gen, dtype=torch.float64) + 0.1  # the paper's log h_0 needs h_0 > 0
    want = paper_log_space(name, module, x, h0)
    for engine in ("reference", "scan", *(("cpu",) if build.status()[0] else ())):
        module.engine = engine
        with torch.no_grad():
            out, _ = module(x, h0.unsqueeze(0))
        assert relative_error(out, want) <= 1e-12, engine
        assert bool((out > 0).all())  # g keeps the state positive


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_gradcheck_and_gradgradcheck(case: tuple[str, str], engine: str) -> None:
    name, mode = case
    gen = torch.Generator().manual_seed(5)
    module = LAYERS[name](2, 2, bidirectional=True, mode=mode, engine=engine, dtype=torch.float64)
    f, inputs = layer_as_function(module, [2], T=3, B=2, I=2, gen=gen)
    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)


# ---------------------------------------------------------------------------------------------------------------
# The parallel scan against the sequential loop.


def pair(a_first: bool, engine: str, name: str, mode: str, dtype: torch.dtype, **options: object
         ) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The same layer on the reference engine (the sequential loop) and on ``engine``."""
    torch.manual_seed(7)
    loop = LAYERS[name](3, 8, mode=mode, engine="reference", dtype=dtype, **options)
    fast = LAYERS[name](3, 8, mode=mode, engine=engine, dtype=dtype, **options)
    fast.load_state_dict(loop.state_dict())
    return (loop, fast) if a_first else (fast, loop)


def forward_backward(module: torch.nn.Module, x: Tensor, h0: Tensor, lengths: Tensor | None) -> list[Tensor]:
    module.zero_grad(set_to_none=True)
    x, h0 = x.clone().requires_grad_(), h0.clone().requires_grad_()
    out, h_n = module(x, h0, lengths=lengths)
    (out.sin().sum() + h_n.square().sum()).backward()
    return [out.detach(), h_n.detach(), x.grad, h0.grad, *(p.grad for p in module.parameters())]


@pytest.mark.parametrize("engine", ["scan", pytest.param("cpu", marks=CPU)])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_scan_equals_the_sequential_loop_float64(case: tuple[str, str], engine: str) -> None:
    loop, fast = pair(True, engine, *case, torch.float64, num_layers=2, bidirectional=True)
    gen = torch.Generator().manual_seed(1)
    for T in (1, 2, 63, 200):
        x = torch.randn(T, 3, 3, generator=gen, dtype=torch.float64) * 3
        h0 = torch.randn(4, 3, 8, generator=gen, dtype=torch.float64)
        lengths = torch.tensor([T, max(1, T // 2), 1])
        for got, want in zip(forward_backward(fast, x, h0, lengths), forward_backward(loop, x, h0, lengths)):
            assert relative_error(got, want) <= 1e-10, T


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_scan_equals_the_sequential_loop_float32_at_4096_steps(case: tuple[str, str]) -> None:
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(4096, 2, 3, generator=gen)
    h0 = torch.randn(1, 2, 8, generator=gen)
    loop, fast = pair(True, "scan", *case, torch.float32)
    with torch.no_grad():
        want, want_h = loop(x, h0)
        for engine in ("scan", *(("cpu",) if build.status()[0] else ())):
            fast.engine = engine
            got, got_h = fast(x, h0)
            assert relative_error(got, want) <= 1e-5, engine
            assert relative_error(got_h, want_h) <= 1e-5, engine


@CPU
@pytest.mark.parametrize("chunks", [0, 1, 2, 5, 64])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("shape", [(1, 1, 1), (4, 1, 2), (2, 3, 5), (63, 2, 33), (300, 1, 3), (17, 64, 40)],
                         ids=lambda s: "T{}-B{}-H{}".format(*s))
def test_cpu_scan_equals_the_reference_scan_values_and_gradients(shape: tuple[int, int, int], reverse: bool,
                                                                 chunks: int) -> None:
    from gatedrnn.engine.cpu.scan import cpu_linear_scan

    T, B, H = shape
    gen = torch.Generator().manual_seed(T * 1000 + B * 10 + H)
    a = torch.rand(T, B, H, generator=gen, dtype=torch.float64).requires_grad_()
    b = torch.randn(T, B, H, generator=gen, dtype=torch.float64).requires_grad_()
    h0 = torch.randn(B, H, generator=gen, dtype=torch.float64).requires_grad_()
    weight = torch.randn(T, B, H, generator=gen, dtype=torch.float64)
    results = []
    for scan in (lambda: cpu_linear_scan(a, b, h0, reverse, chunks), lambda: linear_scan_reference(a, b, h0, reverse)):
        h = scan()
        grads = torch.autograd.grad((h * weight).sum(), (a, b, h0))
        results.append([h, *grads])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    if T * B * H <= 8 and chunks in (1, 2):
        f = lambda a, b, h0: cpu_linear_scan(a, b, h0, reverse, chunks)  # noqa: E731
        assert torch.autograd.gradcheck(f, (a, b, h0)) and torch.autograd.gradgradcheck(f, (a, b, h0))


def test_reference_scan_equals_a_loop_for_coefficients_of_any_sign_and_zeros() -> None:
    gen = torch.Generator().manual_seed(4)
    a = torch.randn(37, 2, 3, generator=gen, dtype=torch.float64)
    a[5] = 0.0
    b = torch.randn(37, 2, 3, generator=gen, dtype=torch.float64)
    h0 = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    h, want = h0, []
    for t in range(37):
        h = a[t] * h + b[t]
        want.append(h)
    torch.testing.assert_close(scan_reference(a, b, h0), torch.stack(want), rtol=1e-12, atol=1e-12)
    h, back = h0, []
    for t in reversed(range(37)):
        h = a[t] * h + b[t]
        back.append(h)
    torch.testing.assert_close(scan_reference(a, b, h0, reverse=True), torch.stack(back[::-1]), rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_generation_step_by_step_equals_the_whole_sequence(case: tuple[str, str], engine: str) -> None:
    name, mode = case
    torch.manual_seed(8)
    module = LAYERS[name](3, 5, num_layers=2, mode=mode, engine=engine, dtype=torch.float64, batch_first=True)
    x = torch.randn(2, 9, 3, dtype=torch.float64)
    with torch.no_grad():
        want, want_h = module(x)
        h, outs = None, []
        for t in range(9):
            out, h = module(x[:, t : t + 1], h)
            outs.append(out)
    torch.testing.assert_close(torch.cat(outs, dim=1), want, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(h, want_h, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_extreme_inputs_give_no_nan_where_the_math_is_finite(case: tuple[str, str], engine: str,
                                                            dtype: torch.dtype) -> None:
    name, mode = case
    torch.manual_seed(9)
    # One input feature and positive weights: x = ±1e4 and ±inf reach every pre-activation as they are.
    module = LAYERS[name](1, 4, mode=mode, engine=engine, dtype=dtype, bias=False)
    loop = LAYERS[name](1, 4, mode=mode, engine="reference", dtype=dtype, bias=False)
    with torch.no_grad():
        module.weight_ih_l0.uniform_(0.5, 1.5)
    loop.load_state_dict(module.state_dict())
    # ±1e4 saturates every gate (z, f, i round to 0 or 1, f + i to 0): values and gradients stay finite.
    x = torch.tensor([3.0, 1e4, -1e4, -3.0, -1e4, 1e4, 1e4, 0.0, -1e4], dtype=dtype).reshape(-1, 1, 1)
    x.requires_grad_()
    out, h_n = module(x)
    (out.sum() + h_n.sum()).backward()
    assert torch.isfinite(out).all() and torch.isfinite(h_n).all()
    assert torch.isfinite(x.grad).all() and torch.isfinite(module.weight_ih_l0.grad).all()
    want, _ = loop(x)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    # ±inf: the engines give what the equations give, NaN only where they do (inf·0 of a plain candidate of -inf
    # with z = 0; f / (f + i) with both gates exactly 0). The log-mode minGRU is finite at -inf (z = 0, g(-inf) = 0).
    with torch.no_grad():
        special = torch.tensor([2.0, float("-inf"), -1e4, float("inf"), 1.0, float("-inf"), 3.0],
                               dtype=dtype).reshape(-1, 1, 1)
        torch.testing.assert_close(module(special)[0], loop(special)[0], equal_nan=True, rtol=1e-5, atol=1e-5)
        if name == "mingru" and mode == "log":
            assert torch.isfinite(module(special[:3])[0]).all()


# ---------------------------------------------------------------------------------------------------------------
# Layouts and errors.


@pytest.mark.parametrize("name", list(LAYERS))
def test_packed_sequence_equals_padded_with_lengths(name: str) -> None:
    torch.manual_seed(10)
    module = LAYERS[name](3, 4, num_layers=2, bidirectional=True, dtype=torch.float64)
    x = torch.randn(6, 3, 3, dtype=torch.float64)
    lengths = torch.tensor([4, 6, 2])
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    out_packed, h_packed = module(packed)
    out, h_n = module(x, lengths=lengths)
    padded, _ = torch.nn.utils.rnn.pad_packed_sequence(out_packed)
    torch.testing.assert_close(padded, out[: int(lengths.max())])
    torch.testing.assert_close(h_packed, h_n)
    assert bool((out[4:, 0] == 0).all()) and bool((out[2:, 2] == 0).all())  # zero past each length


@pytest.mark.parametrize("name", list(LAYERS))
def test_unbatched_input_and_dropout_between_layers(name: str) -> None:
    torch.manual_seed(11)
    module = LAYERS[name](3, 4, num_layers=2, dropout=0.5, dtype=torch.float64)
    x = torch.randn(5, 3, dtype=torch.float64)
    out, h_n = module(x)
    assert out.shape == (5, 4) and h_n.shape == (2, 4)
    module.eval()
    first, _ = module(x)
    second, _ = module(x)
    torch.testing.assert_close(first, second)
    module.train()
    torch.manual_seed(0)
    dropped, _ = module(x)
    assert not torch.allclose(dropped, first)


@pytest.mark.parametrize(
    ("kwargs", "call", "error", "message"),
    [
        ({"mode": "linear"}, None, ValueError, "mode: expected 'log' or 'plain', got 'linear'"),
        ({"layer_norm": True}, None, TypeError, "layer_norm: not an option of"),
        ({"reset": "before"}, None, TypeError, "reset: not an option of"),
        ({"hidden_size": 0}, None, ValueError, "hidden_size: expected an int >= 1"),
        ({"num_layers": 0}, None, ValueError, "num_layers: expected an int >= 1"),
        ({"engine": "warp"}, None, ValueError, "engine: unknown engine 'warp'"),
        ({}, lambda m: m(torch.randn(5, 2, 4)), ValueError, "input: expected shape (T, B, I) with I = input_size = 3"),
        ({}, lambda m: m(torch.randn(5, 2, 3), torch.randn(1, 2, 5)), ValueError, "hx (h_0): expected shape (1, 2, 4)"),
        ({}, lambda m: m(torch.randn(5, 2, 3), lengths=[5, 6]), ValueError, "lengths: a length of 6 is longer"),
        ({}, lambda m: m(torch.randn(5, 2, 3), (torch.zeros(1, 2, 4),) * 2), TypeError, "hx (h_0): expected a torch"),
        ({}, lambda m: m(torch.randn(5, 2, 3, dtype=torch.float64)), TypeError, "input: dtype torch.float64 does not"),
    ],
)
@pytest.mark.parametrize("name", list(LAYERS))
def test_bad_arguments_are_named(name: str, kwargs: dict, call: object, error: type, message: str) -> None:
    options = {"input_size": 3, "hidden_size": 4, **kwargs}
    with pytest.raises(error) as caught:
        module = LAYERS[name](**options)
        call(module)  # type: ignore[operator]
    assert message in str(caught.value)


@pytest.mark.parametrize("name", list(LAYERS))
def test_no_torch_nn_counterpart_is_said_plainly(name: str) -> None:
    module = LAYERS[name](3, 4)
    with pytest.raises(ValueError, match="to_torch: torch.nn has no counterpart"):
        module.to_torch()
    with pytest.raises(TypeError, match="module: torch.nn has no counterpart"):
        LAYERS[name].from_torch(torch.nn.GRU(3, 4))


def test_auto_engine_runs_the_scan() -> None:
    from gatedrnn import engine as registry

    module = gatedrnn.MinGRU(3, 4)
    chosen = registry.resolve("auto", module.spec, torch.zeros(1)).name
    assert chosen == ("cpu" if build.status()[0] else "scan")
    with pytest.raises((ValueError, RuntimeError), match="engine: 'gpu' (does not run|is not available)"):
        gatedrnn.MinGRU(3, 4, engine="gpu")(torch.randn(2, 1, 3))


@pytest.mark.parametrize("engine", ["scan", pytest.param("cpu", marks=CPU)])
@pytest.mark.parametrize("name", list(LAYERS))
def test_torch_func_transforms_equal_the_sequential_loop(name: str, engine: str) -> None:
    from torch.func import functional_call, grad, hessian, jacfwd, vmap

    torch.manual_seed(12)
    fast = LAYERS[name](3, 4, bidirectional=True, engine=engine, dtype=torch.float64)
    loop = LAYERS[name](3, 4, bidirectional=True, engine="reference", dtype=torch.float64)
    loop.load_state_dict(fast.state_dict())
    params = {k: v.detach() for k, v in fast.named_parameters()}
    x = torch.randn(5, 6, 3, dtype=torch.float64)

    def results(module: torch.nn.Module) -> list[Tensor]:
        def loss(p: dict[str, Tensor], xs: Tensor) -> Tensor:
            return functional_call(module, p, (xs.unsqueeze(1),))[0].square().sum()

        per_sample = vmap(grad(loss), in_dims=(None, 1))(params, x)  # per-sample gradients
        with torch.autograd.forward_ad.dual_level():
            dual = torch.autograd.forward_ad.make_dual(x, torch.ones_like(x))
            tangent = torch.autograd.forward_ad.unpack_dual(module(dual)[0]).tangent
        return [*per_sample.values(), jacfwd(lambda xs: module(xs)[0])(x[:, 0]),
                hessian(lambda xs: module(xs)[0].sin().sum())(x[:, 0]), tangent]

    for got, want in zip(results(fast), results(loop)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_whole_modules_load_with_weights_only(tmp_path: Path) -> None:
    torch.manual_seed(13)
    modules = {"mingru": gatedrnn.MinGRU(3, 4, num_layers=2, mode="plain", bidirectional=True),
               "minlstm": gatedrnn.MinLSTM(3, 4, batch_first=True, engine="scan"),
               "slstm": gatedrnn.SLSTM(3, 4, num_heads=2, forget_gate="exp")}
    x = torch.randn(2, 5, 3)
    torch.save(modules, tmp_path / "models.pt")
    loaded = torch.load(tmp_path / "models.pt")  # weights_only=True, torch's default
    for name, module in modules.items():
        assert type(loaded[name]) is type(module) and loaded[name].spec == module.spec
        with torch.no_grad():
            torch.testing.assert_close(loaded[name](x)[0], module(x)[0], rtol=0, atol=0)


@pytest.mark.parametrize("engine", ENGINES)
def test_cpu_autocast_keeps_float32(engine: str) -> None:
    for module in (gatedrnn.MinGRU(3, 4, engine=engine), gatedrnn.MinLSTM(3, 4, engine=engine)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, h_n = module(torch.randn(5, 2, 3))
            out.sum().backward()
        assert out.dtype == h_n.dtype == module.weight_ih_l0.grad.dtype == torch.float32
