"""The cpu engine against the reference engine: outputs, states and every gradient; gradcheck; the fallback.

Parity runs 200 seeded random configurations per cell family (every variant flag, layers, directions, batch_first,
lengths, h0, float32 and float64) with norm-wise relative error <= 1e-10 in float64 and <= 1e-5 in float32 (layer
norm in float32: see the test for the bound and why); wider layers check every path of the per-step products (float32
bound: parity_bound).
"""

from __future__ import annotations

import contextlib
import copy
import random
import threading
from collections.abc import Iterator
from typing import NamedTuple

import pytest
import torch
from torch import Tensor

import gatedrnn
from gatedrnn import engine as registry
from gatedrnn.engine import cpu
from gatedrnn.engine.cpu import build, functions
from numerics import layer_as_function, relative_error
from test_variants import VARIANT_CASES, case_id, randomize_

CONFIGS_PER_FAMILY = 200


def random_options(kind: str, rng: random.Random, H: int) -> dict:
    bias, layer_norm = rng.random() < 0.8, rng.random() < 0.4
    if kind == "LSTM":
        coupled = rng.random() < 0.3
        return dict(bias=bias, layer_norm=layer_norm, peephole=rng.random() < 0.4, coupled=coupled,
                    forget_bias=0.0 if coupled or rng.random() < 0.5 else rng.uniform(-1, 1.5),
                    proj_size=rng.randrange(1, H) if H > 1 and rng.random() < 0.3 else 0)
    if kind == "GRU":
        return dict(bias=bias, layer_norm=layer_norm, reset=rng.choice(["after", "before"]))
    return dict(bias=bias, layer_norm=layer_norm, nonlinearity=rng.choice(["tanh", "relu"]))


def run_with(module: torch.nn.Module, engine: str, x: Tensor, hx, lengths, weights) -> list[Tensor]:
    """Outputs, final states, and the gradients of input, h0 and every parameter for a fixed random projection."""
    module.engine = engine
    module.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    hx_leaf = None
    if hx is not None:
        hx_leaf = tuple(h.detach().clone().requires_grad_() for h in hx)
    out, state = module(x, None if hx_leaf is None else (hx_leaf if len(hx_leaf) > 1 else hx_leaf[0]),
                        lengths=lengths)
    states = state if isinstance(state, tuple) else (state,)
    loss = sum((t * w).sum() for t, w in zip((out, *states), weights))
    loss.backward()
    grads = [x.grad, *(h.grad for h in hx_leaf or ()), *(p.grad for p in module.parameters())]
    return [out, *states, *grads]


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_parity_with_reference_on_random_configurations(kind: str) -> None:
    rng = random.Random(f"cpu-parity-{kind}")
    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    for case in range(CONFIGS_PER_FAMILY):
        dtype = torch.float64 if case % 2 else torch.float32
        T, B, I, H = rng.randint(1, 7), rng.randint(1, 4), rng.randint(1, 5), rng.randint(1, 9)
        options = random_options(kind, rng, H)
        if options["layer_norm"]:
            # Layer norm over one value is its constant shift: every gradient through it is rounding noise.
            H = max(H, 2)
        layers, bidirectional, batch_first = rng.choice([1, 1, 2]), rng.random() < 0.4, rng.random() < 0.3
        module = getattr(gatedrnn, kind)(I, H, num_layers=layers, bidirectional=bidirectional,
                                         dtype=torch.float64, batch_first=batch_first, **options)
        randomize_(module, gen)
        x = torch.randn(T, B, I, generator=gen, dtype=torch.float64)
        x = x.transpose(0, 1) if batch_first else x
        lengths = torch.tensor([rng.randint(1, T) for _ in range(B)]) if rng.random() < 0.5 else None
        count = layers * (2 if bidirectional else 1)
        widths = module.spec.state_widths()
        hx = None
        if rng.random() < 0.5:
            hx = tuple(torch.randn(count, B, w, generator=gen, dtype=torch.float64) for w in widths)
        out_shape = (B, T) if batch_first else (T, B)
        shapes = [(*out_shape, count // layers * module.spec.state_size), *((count, B, w) for w in widths)]
        weights = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
        names = ["output", *module.spec.state_names, "input", *(["hx"] * len(widths) if hx else []),
                 *(n for n, _ in module.named_parameters())]
        label = f"case {case} {options} {dtype}"
        truth = run_with(module, "reference", x, hx, lengths, weights)
        if dtype == torch.float64:
            got = run_with(module, "cpu", x, hx, lengths, weights)
            for name, g, w in zip(names, got, truth):
                assert relative_error(g, w) <= 1e-10, f"{label} {name}: {relative_error(g, w):.2e}"
            continue
        to32 = lambda ts: None if ts is None else tuple(t.float() for t in ts)  # noqa: E731
        module.float()
        want = run_with(module, "reference", x.float(), to32(hx), lengths, to32(weights))
        got = run_with(module, "cpu", x.float(), to32(hx), lengths, to32(weights))
        # Layer norm over few or nearly equal values (small H, h0 = 0 where 1/std = 1/sqrt(eps)) amplifies float32
        # rounding in any implementation: the reference engine's own float32 result is up to 1e-2 from float64
        # there. So with layer norm the cpu engine is held to float64 truth, within 10x the reference's own error.
        reference_error = max(relative_error(w.double(), t) for w, t in zip(want, truth))
        for name, g, w, t in zip(names, got, want, truth):
            if options["layer_norm"]:
                error, bound = relative_error(g.double(), t), max(1e-5, 10 * reference_error)
            else:
                error, bound = relative_error(g, w), 1e-5
            assert error <= bound, f"{label} {name}: relative error {error:.2e} > {bound:.2e}"


# Widths that reach every kind of column block of the kernels' per-step products (full blocks of 8 vectors, the
# 4/2/1-vector remainders and a zero-padded last vector, in float32 and float64), one sequence (the packed
# matrix-vector path) and five (the batched GEMM path: MKL's packed GEMM in float32 where torch has MKL, ATen's mm
# in float64).
WIDE_CASES = [
    ("LSTM", {}), ("LSTM", dict(peephole=True, forget_bias=1.0)), ("LSTM", dict(coupled=True)),
    ("LSTM", dict(proj_size=13)), ("LSTM", dict(layer_norm=True, proj_size=13)), ("GRU", dict(reset="after")),
    ("GRU", dict(reset="before")), ("GRU", dict(reset="before", layer_norm=True)), ("RNN", dict(nonlinearity="tanh")),
    ("RNN", dict(nonlinearity="relu", layer_norm=True)),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("B", [1, 5], ids=["B1", "B5"])
@pytest.mark.parametrize("case", WIDE_CASES, ids=case_id)
def test_wide_layers_match_reference(case: tuple[str, dict], B: int, dtype: torch.dtype) -> None:
    """Outputs, final states and every gradient at H = 57, both directions, with sequences that end early."""
    rng = random.Random(f"cpu-wide-{case_id(case)}-{B}-{dtype}")
    check_bidirectional_against_reference(case, rng, T=9, I=5, H=57, B=B, dtype=dtype, short=3)


class Case(NamedTuple):
    """A layer checked by check_bidirectional_against_reference, with its inputs and the reference's results."""
    module: torch.nn.Module
    x: Tensor
    hx: tuple[Tensor, ...]
    lengths: Tensor
    names: list[str]
    want: list[Tensor]
    bound: float


def check_bidirectional_against_reference(case: tuple[str, dict], rng: random.Random, T: int, I: int, H: int, B: int,
                                          dtype: torch.dtype, short: int) -> Case:
    """A bidirectional layer of `case` with random weights, input and initial state, its sequences ending early
    (batch 1: `short` steps early): outputs, final states and every gradient of the cpu engine against the reference
    engine. Returns the case, for further checks."""
    kind, options = case
    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    module = getattr(gatedrnn, kind)(I, H, bidirectional=True, dtype=torch.float64, **options)
    randomize_(module, gen)
    module.to(dtype)
    x = torch.randn(T, B, I, generator=gen, dtype=dtype)
    lengths = torch.tensor([T - short] if B == 1 else [T, *(rng.randint(1, T) for _ in range(B - 1))])
    hx = tuple(torch.randn(2, B, w, generator=gen, dtype=dtype) for w in module.spec.state_widths())
    shapes = [(T, B, 2 * module.spec.state_size), *(h.shape for h in hx)]
    weights = [torch.randn(s, generator=gen, dtype=dtype) for s in shapes]
    names, want, bound = assert_cpu_matches_reference(module, x, hx, lengths, weights)
    return Case(module, x, hx, lengths, names, want, bound)


def assert_cpu_matches_reference(module: torch.nn.Module, x: Tensor, hx: tuple[Tensor, ...], lengths, weights
                                 ) -> tuple[list[str], list[Tensor], float]:
    """Outputs, final states and every gradient (``run_with``) of the cpu engine against the reference engine, within
    ``parity_bound``; returns the values' names, the reference's values and that bound."""
    names = ["output", *module.spec.state_names, "input", *["hx"] * len(hx), *(n for n, _ in module.named_parameters())]
    want = run_with(module, "reference", x, hx, lengths, weights)
    got = run_with(module, "cpu", x, hx, lengths, weights)
    bound = parity_bound(module, x, hx, lengths, weights, want)
    for name, g, w in zip(names, got, want):
        assert relative_error(g, w) <= bound, f"{name}: relative error {relative_error(g, w):.2e}"
    return names, want, bound


def parity_bound(module: torch.nn.Module, x: Tensor, hx: tuple[Tensor, ...] | None, lengths, weights,
                 want: list[Tensor]) -> float:
    """How far the cpu engine may be from the reference engine's results ``want``: 1e-10 in float64; in float32
    1e-5, or three times the reference engine's own float32 error against float64 where that is larger. Two float32
    computations that are each as accurate as the other differ by up to twice that error, and a recurrence with the
    large random weights of ``randomize_`` can be ill-conditioned: a saturated tanh RNN's gradients carry
    1 - h^2 for h within ulps of 1, so the last bit of each h moves them (the reference is up to 1e-5 from float64
    there, the engine as close)."""
    if x.dtype == torch.float64:
        return 1e-10
    exact = copy.deepcopy(module).double()
    truth = run_with(exact, "reference", x.double(), None if hx is None else tuple(h.double() for h in hx), lengths,
                     [w.double() for w in weights])
    own_error = max(relative_error(w.double(), t) for w, t in zip(want, truth))
    return max(1e-5, 3 * own_error)


@pytest.mark.parametrize("case", VARIANT_CASES, ids=case_id)
def test_gradcheck_and_gradgradcheck(case: tuple[str, dict]) -> None:
    """Input, initial state and every parameter, bidirectional, uneven lengths, float64, through the cpu engine:
    first derivatives from its backward kernels, second ones (``create_graph=True``) from the reference engine's."""
    assert_gradcheck(case, "cpu-grad-" + case_id(case), T=3, B=2, I=2, H=3, second_order=True)


def assert_gradcheck(case: tuple[str, dict], seed: str, T: int, B: int, I: int, H: int,
                     second_order: bool = False) -> None:
    """float64 gradcheck (and with ``second_order`` gradgradcheck) of a bidirectional cpu-engine layer of ``case``
    with random weights (uneven lengths)."""
    kind, options = case
    gen = torch.Generator().manual_seed(random.Random(seed).randrange(2**31))
    module = getattr(gatedrnn, kind)(I, H, **options, bidirectional=True, dtype=torch.float64, engine="cpu")
    randomize_(module, gen)
    f, inputs = layer_as_function(module, module.spec.state_widths(), T, B, I, gen)
    assert torch.autograd.gradcheck(f, inputs)
    if second_order:
        assert torch.autograd.gradgradcheck(f, inputs, fast_mode=True)


def test_auto_chooses_cpu_for_cpu_tensors() -> None:
    x = torch.randn(2, 1, 3)
    for layer in (gatedrnn.LSTM(3, 4), gatedrnn.GRU(3, 4), gatedrnn.RNN(3, 4)):
        assert registry.resolve("auto", layer.spec, x).name == "cpu"
        assert registry.resolve("auto", layer.spec, x.double()).name == "cpu"
    assert registry.resolve("auto", gatedrnn.LSTM(3, 4).spec, x.half()).name == "reference"
    assert {e.name: e.available for e in gatedrnn.engines()}["cpu"]


def test_no_grad_saves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without autograd the kernels run directly (no autograd Function, nothing saved) and give the same result."""
    def refuse(*args: object) -> None:
        raise AssertionError("the autograd Function ran without autograd")

    lstm = gatedrnn.LSTM(3, 5, peephole=True, layer_norm=True, proj_size=2)
    gru = gatedrnn.GRU(3, 5, reset="before")
    x = torch.randn(4, 2, 3)
    with_grad = [lstm(x)[0].detach(), gru(x)[0].detach()]
    for function in (functions.RecurrenceFunction, functions.ForwardModeRecurrenceFunction):
        monkeypatch.setattr(function, "apply", refuse)
    with torch.no_grad():
        without = [lstm(x)[0], gru(x)[0]]
    assert all(t.grad_fn is None for t in without)
    for a, b in zip(with_grad, without):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("B", [1, 64])
def test_results_do_not_depend_on_the_thread_count(B: int) -> None:
    lstm = gatedrnn.LSTM(8, 64, layer_norm=True)
    x = torch.randn(5, B, 8, dtype=torch.float32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = lstm(x)[0]
        torch.set_num_threads(2)
        two = lstm(x)[0]
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(one, two)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_bias_and_layer_norm_shift_gradients_do_not_alias(kind: str) -> None:
    """b_hh and LN_hh's shift have the same gradient, computed once and returned for both (autograd copies a tensor
    it receives twice); an in-place change of one ``.grad`` (gradient clipping) must not change the other."""
    module = getattr(gatedrnn, kind)(3, 4, layer_norm=True, engine="cpu")
    module(torch.randn(5, 2, 3))[0].sum().backward()
    bias, shift = module.bias_hh_l0.grad, module.ln_hh_bias_l0.grad
    torch.testing.assert_close(bias, shift, rtol=0, atol=0)
    bias.mul_(2)
    assert not torch.equal(bias, shift)


CHUNKED = [("LSTM", dict(layer_norm=True)), ("LSTM", dict(layer_norm=True, proj_size=2, peephole=True)),
           ("GRU", dict(layer_norm=True)), ("GRU", dict(layer_norm=True, reset="before")), ("GRU", dict()),
           ("RNN", dict(layer_norm=True))]


def check_uneven_lengths_against_reference(module: torch.nn.Module, gen: torch.Generator, T: int, B: int,
                                           I: int) -> None:
    """A float64 layer on random input and initial state, lengths drawn from 1..T: outputs, final states and every
    gradient of the cpu engine against the reference engine, to 1e-10."""
    x = torch.randn(T, B, I, generator=gen, dtype=torch.float64)
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    widths = module.spec.state_widths()
    hx = tuple(torch.randn(1, B, w, generator=gen, dtype=torch.float64) for w in widths)
    weights = [torch.randn(s, generator=gen, dtype=torch.float64)
               for s in [(T, B, module.spec.state_size), *((1, B, w) for w in widths)]]
    truth = run_with(module, "reference", x, hx, lengths, weights)
    got = run_with(module, "cpu", x, hx, lengths, weights)
    names = ["output", *module.spec.state_names, "input", *module.spec.state_names,
             *(n for n, _ in module.named_parameters())]
    for name, g, w in zip(names, got, truth, strict=True):
        assert relative_error(g, w) <= 1e-10, f"{name}: {relative_error(g, w):.2e}"


@pytest.mark.parametrize("case", CHUNKED, ids=case_id)
def test_recurrent_weight_gradient_in_chunks_of_steps(case: tuple[str, dict]) -> None:
    """Where the gradient before the recurrent product's layer norm exists only for W_hh's gradient (layer norm; GRU
    reset-after), the cpu engine keeps it for a chunk of steps (as many as make 1024 rows of the GEMM: 16 at B=64)
    and adds each chunk to dW_hh. 37 steps are two full chunks and a partial one; uneven lengths leave rows of the
    reused buffer masked."""
    kind, options = case
    gen = torch.Generator().manual_seed(7)
    T, B, I, H = 37, 64, 3, 5
    module = getattr(gatedrnn, kind)(I, H, dtype=torch.float64, **options)
    randomize_(module, gen)
    check_uneven_lengths_against_reference(module, gen, T, B, I)


@pytest.mark.parametrize("case", [("LSTM", dict(peephole=True)), ("GRU", dict()), ("RNN", dict())], ids=case_id)
def test_buffers_of_several_huge_pages_match_reference(case: tuple[str, dict]) -> None:
    """At T=40, B=64, H=256 in float64 every (T, B, ·) buffer of the kernels (out 5 MiB, the gates up to 21 MiB,
    dgx) spans whole 2 MiB pages, which the kernels advise the OS to back with huge pages before the first write;
    uneven lengths leave rows that only the buffers' zero fill sets. Every parameter is drawn from U(-1/sqrt(H),
    1/sqrt(H)), torch.nn's initial range: randomize_'s wider range makes a layer this wide chaotic over 40 steps,
    where float64 rounding differences between any two implementations grow to 1e-3."""
    kind, options = case
    gen = torch.Generator().manual_seed(11)
    T, B, I, H = 40, 64, 3, 256
    module = getattr(gatedrnn, kind)(I, H, dtype=torch.float64, **options)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_((torch.rand(p.shape, generator=gen, dtype=p.dtype) * 2 - 1) / H**0.5)
    check_uneven_lengths_against_reference(module, gen, T, B, I)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("shape", [(3, 2, 5, 8), (40, 64, 7, 1024)], ids=["small", "huge-pages"])
def test_input_product_equals_linear(shape: tuple[int, int, int, int], bias: bool) -> None:
    """The cpu engine's input projection (csrc/memory.cpp: one GEMM into a buffer on huge pages; 40·64·1024 float64 is
    20 MiB) equals F.linear, for a contiguous x and for the transposed view that batch_first input gives. (Its
    gradients are RecurrenceFunction's, checked with every layer's.)"""
    T, B, I, G = shape
    gen = torch.Generator().manual_seed(T * B + bias)
    w = torch.randn(G, I, generator=gen, dtype=torch.float64)
    b = torch.randn(G, generator=gen, dtype=torch.float64) if bias else None
    for x in (torch.randn(T, B, I, generator=gen, dtype=torch.float64),
              torch.randn(B, T, I, generator=gen, dtype=torch.float64).transpose(0, 1)):
        got = torch.ops.gatedrnn_cpu.input_product(x, w, b)
        assert got.shape == (T, B, G) and got.is_contiguous()
        assert relative_error(got, torch.nn.functional.linear(x, w, b)) <= 1e-12


CHUNKED_INPUT_CASES = [
    ("LSTM", {}), ("LSTM", dict(bias=False)), ("LSTM", dict(peephole=True, coupled=True)),
    ("LSTM", dict(layer_norm=True)), ("LSTM", dict(layer_norm=True, bias=False)), ("LSTM", dict(proj_size=5)),
    ("LSTM", dict(layer_norm=True, proj_size=5, peephole=True, forget_bias=0.5)), ("GRU", dict(reset="after")),
    ("GRU", dict(reset="before", bias=False)), ("GRU", dict(layer_norm=True)), ("RNN", dict(nonlinearity="tanh")),
    ("RNN", dict(nonlinearity="relu", layer_norm=True)),
]


@pytest.mark.parametrize("case", CHUNKED_INPUT_CASES, ids=case_id)
def test_forward_without_autograd_forms_the_input_projection_in_chunks(case: tuple[str, dict]) -> None:
    """Without autograd a layer never makes its whole input projection ({lstm,gru,rnn}_forward_input): at B = 64 the
    time loop forms it 8 steps at a time (StepInput: 512 rows a chunk), so 37 steps are four whole chunks and a
    partial one; both directions, two layers, uneven lengths, against the reference engine in float64."""
    kind, options = case
    gen = torch.Generator().manual_seed(17)
    T, B, I, H = 37, 64, 5, 16
    module = getattr(gatedrnn, kind)(I, H, num_layers=2, bidirectional=True, dtype=torch.float64, **options)
    randomize_(module, gen)
    x = torch.randn(T, B, I, generator=gen, dtype=torch.float64)
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    lengths[0] = T
    hx = tuple(torch.randn(4, B, w, generator=gen, dtype=torch.float64) for w in module.spec.state_widths())
    results = {}
    with torch.no_grad():
        for engine in ("cpu", "reference"):
            module.engine = engine
            out, state = module(x, hx if len(hx) > 1 else hx[0], lengths=lengths)
            results[engine] = (out, *(state if isinstance(state, tuple) else (state,)))
    for name, g, w in zip(["output", *module.spec.state_names], results["cpu"], results["reference"], strict=True):
        assert relative_error(g, w) <= 1e-10, f"{name}: relative error {relative_error(g, w):.2e}"


def split_rule(min_rows: int, max_weight_bytes: int, threads: int) -> contextlib.AbstractContextManager[None]:
    """Forwards and backwards above batch 1 split their batch among `threads` threads (csrc/common.h
    for_batch_slices) from min_rows rows a thread, for recurrent weights of at most max_weight_bytes."""
    return kernel_rule("set_split_rule", min_rows, max_weight_bytes, threads=threads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("B", [2, 5], ids=["B2", "B5"])
@pytest.mark.parametrize("case", CHUNKED_INPUT_CASES, ids=case_id)
def test_batch_split_among_threads_matches_reference(case: tuple[str, dict], B: int, dtype: torch.dtype) -> None:
    """Each of two threads runs the recurrence of its own rows (B 2: one each; B 5: two and three), forward and
    backward: the forward writes its slice of the outputs and of what backward reads, the backward its rows of the
    gradients, its own weight gradient and sums, added up after. Outputs, final states and every gradient, both
    directions, random initial states, sequences that end early; and the forward without autograd, whose time loop
    forms each slice's input projection in chunks."""
    rng = random.Random(f"cpu-split-{case_id(case)}-{B}-{dtype}")
    with split_rule(1, 2**40, 2):
        c = check_bidirectional_against_reference(case, rng, T=9, I=6, H=7, B=B, dtype=dtype, short=3)
        with torch.no_grad():
            out, state = c.module(c.x, c.hx if len(c.hx) > 1 else c.hx[0], lengths=c.lengths)
    for name, g, w in zip(c.names, (out, *(state if isinstance(state, tuple) else (state,))), c.want):
        assert relative_error(g, w) <= c.bound, f"no_grad {name}: relative error {relative_error(g, w):.2e}"


@pytest.mark.parametrize("case", CHUNKED_INPUT_CASES, ids=case_id)
def test_batch_split_gradcheck(case: tuple[str, dict]) -> None:
    """float64 gradcheck with the batch split between two threads, one sequence each."""
    with split_rule(1, 2**40, 2):
        assert_gradcheck(case, "cpu-split-grad-" + case_id(case), T=3, B=2, I=2, H=6)


def test_large_buffers_are_kept_for_the_next_call_and_never_shared_while_alive() -> None:
    """Buffers of 2 MiB and more come from a cache of blocks (csrc/common.h BlockCache): a second call of the same
    shape reuses them rather than taking more, a result still alive keeps its block (a later call does not write
    into it), and empty_cache frees what is kept."""
    cpu.empty_cache()
    assert cpu.cached_bytes() == 0
    torch.manual_seed(19)
    module = gatedrnn.LSTM(8, 512)  # out (T, B, 512) float32 at T 40, B 32: 2.5 MiB, from the cache
    x = torch.randn(40, 32, 8)
    with torch.no_grad():
        first = module(x)[0]
        kept = first.clone()
        assert cpu.cached_bytes() > 0  # the call's other large buffers (W_hh packed) went back to the cache
        module(torch.randn(40, 32, 8))  # its output is freed at once, so its block is kept too
        held = cpu.cached_bytes()
        for _ in range(3):
            module(torch.randn(40, 32, 8))
        assert cpu.cached_bytes() == held  # same shapes: the same blocks again
    torch.testing.assert_close(first, kept, rtol=0, atol=0)  # alive throughout, so never handed out again
    module.engine = "reference"
    with torch.no_grad():
        torch.testing.assert_close(first, module(x)[0])
    del first
    assert cpu.cached_bytes() > held  # its block came back
    cpu.empty_cache()
    assert cpu.cached_bytes() == 0


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_gradient_of_output_with_any_strides(kind: str) -> None:
    """The backward kernels read the output's gradient row by row; the one out.sum() gives is a single value
    expanded (stride 0), and a transposed one is not contiguous either: both equal the reference engine's."""
    gen = torch.Generator().manual_seed(3)
    T, B, I, H = 6, 3, 4, 5
    module = getattr(gatedrnn, kind)(I, H, dtype=torch.float64)
    randomize_(module, gen)
    x = torch.randn(T, B, I, generator=gen, dtype=torch.float64)
    scale = torch.randn(B, T, H, generator=gen, dtype=torch.float64).transpose(0, 1)
    for loss in (lambda out: out.sum(), lambda out: (out * scale).sum()):
        grads = {}
        for engine in ("reference", "cpu"):
            module.engine = engine
            out = module(x)[0]
            grads[engine] = torch.autograd.grad(loss(out), list(module.parameters()))
        for (name, _), g, e in zip(module.named_parameters(), grads["cpu"], grads["reference"]):
            assert relative_error(g, e) <= 1e-10, f"{name}: {relative_error(g, e):.2e}"


# The small-batch loop (csrc/team.h): a team of threads that split the hidden units and meet once per step, or one
# thread alone. The rule that chooses it (batch and hidden size) is set here so that it runs on every shape, small
# ones included, with the team of every thread. Cases: every variant it covers, bias or not.
TEAM_CASES = [
    ("LSTM", {}), ("LSTM", dict(bias=False)), ("LSTM", dict(peephole=True)), ("LSTM", dict(coupled=True)),
    ("LSTM", dict(coupled=True, peephole=True)), ("LSTM", dict(forget_bias=1.0)), ("GRU", dict(reset="after")),
    ("GRU", dict(reset="before")), ("GRU", dict(reset="before", bias=False)), ("RNN", dict(nonlinearity="tanh")),
    ("RNN", dict(nonlinearity="relu")),
]


@contextlib.contextmanager
def kernel_rule(setter: str, *values: int, threads: int) -> Iterator[None]:
    """One of the kernels' measured rules set to `values` (torch.ops.gatedrnn_cpu.<setter>, which returns the
    previous ones) and torch on `threads` threads, both restored after."""
    assert build.status()[0]
    set_rule = getattr(torch.ops.gatedrnn_cpu, setter)
    previous, before = set_rule(*values), torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        set_rule(*previous)
        torch.set_num_threads(before)


def team_rule(max_batch: int, min_hidden: int, threads: int) -> contextlib.AbstractContextManager[None]:
    """The small-batch loop up to batch max_batch, as a team from hidden size min_hidden, on `threads` threads."""
    return kernel_rule("set_team_rule", max_batch, min_hidden, threads=threads)


@pytest.fixture
def team_everywhere() -> Iterator[None]:
    with team_rule(2**40, 1, 2):
        yield


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("H", [37, 5], ids=["H37", "H5"])
@pytest.mark.parametrize("B", [1, 2, 4], ids=["B1", "B2", "B4"])
@pytest.mark.parametrize("case", TEAM_CASES, ids=case_id)
def test_team_matches_reference(team_everywhere, case: tuple[str, dict], B: int, H: int, dtype: torch.dtype) -> None:
    """Outputs, final states and every gradient, and the forward without autograd, both directions, random initial
    states, sequences that end early. H = 37: members' slices of unequal size (a cache line of units each, 16 or 8,
    then the rest); H = 5: fewer units than a slice, so one member has none."""
    rng = random.Random(f"cpu-team-{case_id(case)}-{B}-{H}-{dtype}")
    c = check_bidirectional_against_reference(case, rng, T=11, I=6, H=H, B=B, dtype=dtype, short=4)
    with torch.no_grad():
        out, state = c.module(c.x, c.hx if len(c.hx) > 1 else c.hx[0], lengths=c.lengths)
    for name, g, w in zip(c.names, (out, *(state if isinstance(state, tuple) else (state,))), c.want):
        assert relative_error(g, w) <= c.bound, f"no_grad {name}: relative error {relative_error(g, w):.2e}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", TEAM_CASES, ids=case_id)
def test_one_thread_small_batch_loop_matches_reference(case: tuple[str, dict], dtype: torch.dtype) -> None:
    """The same loop on one thread (torch.set_num_threads(1)): a team of one member that owns every unit."""
    kind, options = case
    gen = torch.Generator().manual_seed(random.Random(f"cpu-team1-{case_id(case)}-{dtype}").randrange(2**31))
    T, B, I, H = 11, 2, 6, 37
    module = getattr(gatedrnn, kind)(I, H, bidirectional=True, dtype=torch.float64, **options)
    randomize_(module, gen)
    module.to(dtype)
    x = torch.randn(T, B, I, generator=gen, dtype=dtype)
    lengths = torch.tensor([T, T - 5])
    hx = tuple(torch.randn(2, B, w, generator=gen, dtype=dtype) for w in module.spec.state_widths())
    shapes = [(T, B, 2 * module.spec.state_size), *(h.shape for h in hx)]
    weights = [torch.randn(s, generator=gen, dtype=dtype) for s in shapes]
    want = run_with(module, "reference", x, hx, lengths, weights)
    with team_rule(2**40, 1, 1):
        got = run_with(module, "cpu", x, hx, lengths, weights)
    bound = parity_bound(module, x, hx, lengths, weights, want)
    for k, (g, w) in enumerate(zip(got, want)):
        assert relative_error(g, w) <= bound, f"result {k}: relative error {relative_error(g, w):.2e}"


@pytest.mark.parametrize("case", [("LSTM", {}), ("GRU", dict(reset="before")), ("RNN", {})], ids=case_id)
def test_team_equals_the_single_thread_loop(case: tuple[str, dict]) -> None:
    """At the default rule's shape (batch 1, a wide layer, a long sequence), the team of two threads gives what the
    single-thread loops give, to rounding: the members' slices and their sync at every step are right over many
    steps. The default initialisation keeps the recurrence contractive (weights as randomize_ makes them would make
    it chaotic over 200 steps, where rounding differences grow to O(1))."""
    kind, options = case
    gen = torch.Generator().manual_seed(7)
    with torch.random.fork_rng():
        torch.manual_seed(7)
        module = getattr(gatedrnn, kind)(16, 256, **options)
    x = torch.randn(200, 1, 16, generator=gen)
    with torch.no_grad():
        with team_rule(0, 2**40, 1):
            single = module(x)[0]
        with team_rule(1, 64, 2):
            team = module(x)[0]
    assert relative_error(team, single) <= 1e-5


@pytest.mark.parametrize("case", [("LSTM", {}), ("LSTM", dict(bias=False)),
                                  ("LSTM", dict(coupled=True, peephole=True))], ids=case_id)
def test_team_input_projection_from_batch_first_input(case: tuple[str, dict]) -> None:
    """Without autograd the batch-1 team forms each member's part of x W_ih^T itself (lstm_forward_input); batch_first
    input reaches it as a transposed view of (B, T, I). Two threads, the default rule, against the reference."""
    gen = torch.Generator().manual_seed(13)
    module = gatedrnn.LSTM(6, 64, batch_first=True, dtype=torch.float64, **case[1])
    randomize_(module, gen)
    x = torch.randn(1, 30, 6, generator=gen, dtype=torch.float64)
    hx = tuple(torch.randn(1, 1, 64, generator=gen, dtype=torch.float64) for _ in range(2))
    results = {}
    with torch.no_grad(), team_rule(1, 64, 2):
        for engine in ("cpu", "reference"):
            module.engine = engine
            out, (h, c) = module(x, hx)
            results[engine] = (out, h, c)
    for name, g, w in zip(["output", "h", "c"], results["cpu"], results["reference"]):
        assert relative_error(g, w) <= 1e-10, f"{name}: relative error {relative_error(g, w):.2e}"


def test_team_called_from_two_python_threads_at_once() -> None:
    """Two callers each form their own team of two (four threads on this machine's two cores): both finish, and
    right."""
    gen = torch.Generator().manual_seed(3)
    module = gatedrnn.LSTM(8, 96, engine="reference")
    randomize_(module, gen)
    x = torch.randn(30, 1, 8, generator=gen)
    with torch.no_grad():
        want = module(x)[0]
    module.engine = "cpu"
    results: list[Tensor] = []

    def call() -> None:
        torch.set_num_threads(2)  # each Python thread has its own OpenMP thread count
        with torch.no_grad():
            for _ in range(20):
                results.append(module(x)[0])

    with team_rule(1, 64, 2):
        callers = [threading.Thread(target=call) for _ in range(2)]
        for c in callers:
            c.start()
        for c in callers:
            c.join(timeout=60)
    assert not any(c.is_alive() for c in callers), "a caller hung"
    assert len(results) == 40
    for r in results:
        assert relative_error(r, want) <= 1e-5
