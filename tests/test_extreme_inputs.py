"""No input turns finite math into NaN: the fused kernels' σ and tanh on every value, and every variant on every
engine at inputs of ±1e4 and ±inf, against the reference engine.

Inputs of ±1e4 (unnormalised features: prices, sensor counts) saturate every gate; an input of ±inf makes the gates'
pre-activations infinite, where σ and tanh have exact limits (0, 1, ±1) and the state stays finite. Only layer norm
of an infinite row (its mean is inf) and relu of an infinite pre-activation are NaN or inf by their definition, in
the reference engine as in ``torch.nn``; there the fused engines must give NaN in the same places.

The check of the activations is itself checked: the σ that ``-ffast-math`` made of ``1 / (1 + exp(-x))`` (the
engine's build before these tests existed, NaN for x below about -89) is compiled here and must fail it.
"""

from __future__ import annotations

import copy
import ctypes
import random
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor

import gatedrnn
from gatedrnn import engine as registry
from gatedrnn.engine.cpu import build
from numerics import relative_error
from test_variants import VARIANT_CASES, case_id, randomize_

SPECIALS = [0.0, -0.0, 1e-40, -1e-40, 20.0, -20.0, 88.0, -88.0, 89.0, -89.0, 100.0, -100.0, 710.0, -710.0, 1e4,
            -1e4, 1e30, -1e30, float("inf"), float("-inf"), float("nan")]
ULP_BOUND = {"sigmoid": 3.0, "tanh": 1.0}
"""Largest error allowed, in units in the last place of the exact value; torch's own float32 σ is 2.44 ulp from
exact at worst over the same inputs, its tanh 0.51 (this machine, torch 2.13)."""


def activation_inputs(dtype: torch.dtype) -> Tensor:
    """Half a million values log-uniform in magnitude from 2^-30 to 2^12, both signs, then the special values."""
    gen = torch.Generator().manual_seed(11)
    magnitude = 2.0 ** (torch.rand(500_000, generator=gen, dtype=torch.float64) * 42 - 30)
    sign = torch.where(torch.rand(500_000, generator=gen) < 0.5, -1.0, 1.0).double()
    return torch.cat([magnitude * sign, torch.tensor(SPECIALS, dtype=torch.float64)]).to(dtype)


def exact_activation(name: str, x: Tensor) -> Tensor:
    """σ or tanh of float64 ``x`` by torch, exact to float32's precision and within about an ulp in float64; σ of
    x < 0 as e^x / (1 + e^x), which keeps its subnormal values (torch's 1 / (1 + e^-x) is 0 there)."""
    if name == "tanh":
        return torch.tanh(x)
    e = torch.exp(-x.abs())
    return torch.where(x < 0, e, torch.ones_like(e)) / (1 + e)


def assert_activation_exact(fn: Callable[[Tensor], Tensor], name: str, dtype: torch.dtype) -> None:
    """``fn`` (σ or tanh of a tensor) within ``ULP_BOUND`` of the exact value everywhere, subnormal results included,
    with the exact limits at ±inf, NaN only for NaN."""
    x = activation_inputs(dtype)
    exact = exact_activation(name, x.double())
    got = fn(x)
    assert got.dtype == dtype
    assert torch.equal(got.isnan(), x.isnan()), f"{name}: NaN for {x[got.isnan() & ~x.isnan()][:5].tolist()}"
    limits = {"sigmoid": (1.0, 0.0), "tanh": (1.0, -1.0)}[name]
    assert got[x == float("inf")].tolist() == [limits[0]] and got[x == float("-inf")].tolist() == [limits[1]]
    finite = ~x.isnan()
    info = torch.finfo(dtype)
    rounded = exact.to(dtype).abs()
    # One ulp of the exact value (the spacing at its magnitude; subnormal spacing below the smallest normal number).
    ulp = (torch.nextafter(rounded, torch.tensor(float("inf"), dtype=dtype)) - rounded).double().clamp_min(
        float(info.smallest_normal) * info.eps)
    error = (got.double() - exact).abs()[finite] / ulp[finite]
    # float64's own "exact" values are torch's, themselves up to about an ulp off.
    bound = ULP_BOUND[name] + (1.0 if dtype == torch.float64 else 0.0)
    worst = error.max().item()
    assert worst <= bound, f"{name}: {worst:.2f} ulp at x = {x[finite][error.argmax()].item()}"


@pytest.fixture(scope="module")
def cpu_ops():
    available, reason = build.status()
    if not available:
        pytest.skip(f"cpu engine not available: {reason}")
    return torch.ops.gatedrnn_cpu


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_cpu_engine_activations_are_exact_for_every_input(cpu_ops, name: str, dtype: torch.dtype) -> None:
    assert_activation_exact(getattr(cpu_ops, name), name, dtype)


def test_build_flags_keep_ieee_arithmetic() -> None:
    """No flag that lets the compiler assume finite values, drop signed zeros or reassociate."""
    unsafe = {"-ffast-math", "-Ofast", "-ffinite-math-only", "-funsafe-math-optimizations", "-fassociative-math",
              "-freciprocal-math", "-fno-signed-zeros", "-fcx-limited-range"}
    assert not unsafe & set(build.CFLAGS)


def _compile_block_functions(tmp: Path, source: str, flags: list[str]) -> ctypes.CDLL:
    """A shared library of ``void f(float*, int64_t)`` block functions from ``source``, compiled with ``flags``."""
    cpp = tmp / "activations_probe.cpp"
    cpp.write_text(source)
    lib = tmp / f"probe{abs(hash(tuple(flags)))}.so"
    subprocess.run(["g++", "-std=c++17", "-shared", "-fPIC", *flags, "-I", str(build.source_dir()), str(cpp),
                    "-o", str(lib)], check=True, capture_output=True)
    return ctypes.CDLL(str(lib))


def _as_tensor_function(lib: ctypes.CDLL, symbol: str) -> Callable[[Tensor], Tensor]:
    f = getattr(lib, symbol)
    f.argtypes = [ctypes.c_void_p, ctypes.c_int64]

    def apply(x: Tensor) -> Tensor:
        y = x.float().contiguous().clone()
        f(y.data_ptr(), y.numel())
        return y

    return apply


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_fast_math_sigmoid_fails_the_check(tmp_path: Path) -> None:
    """The mutation check: the engine's σ compiled with the engine's flags passes ``assert_activation_exact``, the
    σ of the old build (``1 / (1 + exp(-x))`` under ``-ffast-math``) fails it, with NaN at -1e4."""
    source = """
        #include <cmath>
        #include "activations.h"
        extern "C" void ours(float* a, int64_t n) { gatedrnn::sigmoid_(a, n); }
        extern "C" void fast_math(float* a, int64_t n) {
          for (int64_t k = 0; k < n; ++k) a[k] = 1.0f / (1.0f + std::exp(-a[k]));
        }
    """
    strict = _compile_block_functions(tmp_path, source, [f for f in build.CFLAGS])
    assert_activation_exact(_as_tensor_function(strict, "ours"), "sigmoid", torch.float32)
    fast = _compile_block_functions(tmp_path, source, ["-O3", "-march=native", "-ffast-math", "-fopenmp"])
    mutant = _as_tensor_function(fast, "fast_math")
    assert mutant(torch.full((64,), -1e4)).isnan().all()  # whole vectors: the scalar remainder loop is exact
    with pytest.raises(AssertionError, match="NaN"):
        assert_activation_exact(mutant, "sigmoid", torch.float32)


# ---------------------------------------------------------------------------------------------------------------
# Every variant, every engine.


def nan_by_definition(kind: str, options: dict, inputs: str) -> bool:
    """Whether the exact result has NaN or inf: layer norm of a row holding inf, or relu of +inf fed back."""
    return inputs == "inf" and (options.get("layer_norm", False) or options.get("nonlinearity") == "relu")


def extreme_call(kind: str, options: dict, inputs: str, dtype: torch.dtype, gen: torch.Generator,
                 T: int = 6, B: int = 3, I: int = 4, H: int = 5, device: str = "cpu"
                 ) -> tuple[torch.nn.Module, Tensor, tuple[Tensor, ...]]:
    """A bidirectional two-layer module of ``kind`` with random weights, and its input and initial state: ``"large"``
    scales both by 1e4, ``"inf"`` makes one input feature +inf or -inf at every step, a different one each step (a
    row holding both would be inf - inf = NaN in ``W_ih x`` itself)."""
    module = getattr(gatedrnn, kind)(I, H, num_layers=2, bidirectional=True, dtype=torch.float64, **options)
    randomize_(module, gen)
    module.to(device=device, dtype=dtype)
    x = torch.randn(T, B, I, generator=gen, dtype=torch.float64)
    hx = tuple(torch.randn(4, B, w, generator=gen, dtype=torch.float64) for w in module.spec.state_widths())
    if inputs == "large":
        x, hx = x * 1e4, tuple(h * 1e4 for h in hx)
    else:
        for t in range(T):
            x[t, :, t % I] = float("inf") if t % 2 else float("-inf")
    return module, x.to(device=device, dtype=dtype), tuple(h.to(device=device, dtype=dtype) for h in hx)


def outputs(module: torch.nn.Module, engine: str, x: Tensor, hx: tuple[Tensor, ...], backward: bool
            ) -> list[Tensor]:
    """Output and final states, and with ``backward`` the gradients of input, initial state and every parameter."""
    module.engine = engine
    module.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(backward)
    hx = tuple(h.detach().clone().requires_grad_(backward) for h in hx)
    with torch.set_grad_enabled(backward):
        out, state = module(x, hx if len(hx) > 1 else hx[0])
    states = state if isinstance(state, tuple) else (state,)
    if not backward:
        return [out, *states]
    weights = [torch.linspace(-1, 1, t.numel(), dtype=t.dtype, device=t.device).reshape(t.shape)
               for t in (out, *states)]
    sum((t * w).sum() for t, w in zip((out, *states), weights)).backward()
    return [out, *states, x.grad, *(h.grad for h in hx), *(p.grad for p in module.parameters())]


def assert_same_values(got: list[Tensor], want: list[Tensor], truth: list[Tensor], bounds: list[float],
                       expect_finite: bool) -> None:
    """``got`` (a fused engine) has NaN and inf in exactly the places where ``want`` (the reference engine, same
    dtype) has them; elsewhere each result is as close to ``truth`` (the reference engine in float64) as its bound,
    or as ``want`` is (three times the reference's own error: gradients through saturated gates can be so small that
    float32 underflows, in both engines alike). With ``expect_finite`` the reference itself must be all finite: the
    inputs reach the extremes without NaN."""
    for k, (g, w, t, bound) in enumerate(zip(got, want, truth, bounds)):
        if expect_finite:
            assert torch.isfinite(w).all(), f"result {k}: the reference is not finite"
        assert torch.equal(g.isnan(), w.isnan()), f"result {k}: NaN in {int(g.isnan().sum())} places, " \
                                                  f"the reference in {int(w.isnan().sum())}"
        both = ~w.isnan()
        assert torch.equal(g[both].isinf(), w[both].isinf()), f"result {k}: inf in other places"
        finite = both & ~w.isinf() & torch.isfinite(t)
        if finite.any():
            error, own = relative_error(g[finite].double(), t[finite]), relative_error(w[finite].double(), t[finite])
            assert error <= max(bound, 3 * own), f"result {k}: relative error {error:.2e} (the reference's {own:.2e})"


GRADIENT_BOUND_AT_1E4 = 1e-2
"""How far float32 gradients at inputs of 1e4 may be from float64. A saturated gate's derivative σ(a)(1 - σ(a)) is
e^-|a| for large |a|, and a pre-activation a that lands within a few dozen of 0 is the difference of terms of 1e4
(W x, W h, peephole p c): float32 rounds it by ulp(1e4) ~ 1e-3 in any summation order, which moves that gate's
derivative, and every gradient through it, by ~1e-3 relative (the reference engine's own float32 gradients are up to
6e-4 from float64 on these cases). Outputs and states stay within 1e-5."""


def truth_of(module: torch.nn.Module, x: Tensor, hx: tuple[Tensor, ...], backward: bool) -> list[Tensor]:
    """The reference engine's results in float64 from the same (rounded) values."""
    exact = copy.deepcopy(module).double()
    return outputs(exact, "reference", x.double(), tuple(h.double() for h in hx), backward)


@pytest.mark.parametrize("inputs", ["large", "inf"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", VARIANT_CASES, ids=case_id)
def test_cpu_engine_matches_reference_at_extreme_inputs(cpu_ops, case: tuple[str, dict], dtype: torch.dtype,
                                                        inputs: str) -> None:
    kind, options = case
    gen = torch.Generator().manual_seed(random.Random(f"extreme-{case_id(case)}-{inputs}").randrange(2**31))
    module, x, hx = extreme_call(kind, options, inputs, dtype, gen)
    backward = inputs == "large"  # an infinite input makes its weights' gradients inf - inf = NaN by definition
    want = outputs(module, "reference", x, hx, backward)
    got = outputs(module, "cpu", x, hx, backward)
    truth = want if dtype == torch.float64 else truth_of(module, x, hx, backward)
    states = 1 + len(hx)
    bound = 1e-10 if dtype == torch.float64 else 1e-5
    gradient_bound = GRADIENT_BOUND_AT_1E4 if dtype == torch.float32 else bound
    bounds = [bound] * states + [gradient_bound] * (len(want) - states)
    assert_same_values(got, want, truth, bounds, expect_finite=not nan_by_definition(kind, options, inputs))


GPU_CASES = [("LSTM", {}), ("LSTM", dict(peephole=True, forget_bias=1.0)), ("LSTM", dict(coupled=True)),
             ("LSTM", dict(layer_norm=True)), ("LSTM", dict(proj_size=3)), ("GRU", {}), ("GRU", dict(reset="before")),
             ("GRU", dict(layer_norm=True)), ("RNN", {}), ("RNN", dict(nonlinearity="relu")),
             ("RNN", dict(layer_norm=True))]


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the interpreter's NumPy, at ±inf
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("inputs", ["large", "inf"])
@pytest.mark.parametrize("case", GPU_CASES, ids=case_id)
def test_gpu_engine_matches_reference_at_extreme_inputs(case: tuple[str, dict], inputs: str) -> None:
    """The gpu engine's kernels, in Triton's interpreter without CUDA (float32; on a device also bfloat16)."""
    pytest.importorskip("triton")
    from test_gpu_engine import DEVICE, InterpretedGPUEngine

    registry.register(InterpretedGPUEngine())
    try:
        dtypes = [torch.float32] + ([torch.bfloat16, torch.float16] if DEVICE == "cuda" else [])
        for dtype in dtypes:
            kind, options = case
            gen = torch.Generator().manual_seed(random.Random(f"extreme-{case_id(case)}-{inputs}").randrange(2**31))
            module, x, hx = extreme_call(kind, options, inputs, dtype, gen, T=4, B=2, I=3, H=4, device=DEVICE)
            backward = inputs == "large"
            got = outputs(module, "gpu-test", x, hx, backward)
            want = outputs(module, "reference", x, hx, backward)
            states = 1 + len(hx)
            bound = 1e-4 if dtype == torch.float32 else 5e-2
            bounds = [bound] * states + [max(bound, GRADIENT_BOUND_AT_1E4)] * (len(want) - states)
            assert_same_values(got, want, truth_of(module, x, hx, backward), bounds,
                               expect_finite=not nan_by_definition(kind, options, inputs))
    finally:
        registry._REGISTRY.pop("gpu-test")


def test_the_documented_example_has_no_nan(cpu_ops) -> None:
    """The report's example: an LSTM on inputs of scale 100, and one input of -1e4."""
    torch.manual_seed(0)
    lstm = gatedrnn.LSTM(5, 8)
    x = torch.randn(10, 2, 5) * 100
    reference = torch.nn.LSTM(5, 8)
    reference.load_state_dict(lstm.state_dict())
    with torch.no_grad():
        out = lstm(x)[0]
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, reference(x)[0], rtol=1e-5, atol=1e-6)
        x[3, 1, 2] = -1e4
        h = lstm(x)[1][0]
        assert torch.isfinite(h).all()
        torch.testing.assert_close(h, reference(x)[1][0], rtol=1e-5, atol=1e-6)
