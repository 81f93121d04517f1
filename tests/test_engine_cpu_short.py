"""The cpu engine's direct products for calls of few steps (common.h, ShortRule) against the reference engine.

A call whose steps times batch rows are at most the rule's max_rows forms every per-step product from the weights as
stored (no packing) and skips the thread team: one-step generation calls take this path. The tests run each family
and variant on either side of the threshold, and with the rule moved so that the same shapes run both paths.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import pytest
import torch
from torch import Tensor

import gatedrnn
from gatedrnn.engine.cpu import build
from numerics import relative_error
from test_engine_cpu import assert_cpu_matches_reference, assert_gradcheck
from test_variants import case_id, randomize_

MAX_ROWS = 8  # rules.cpp's default ShortRule

CASES = [
    ("LSTM", {}), ("LSTM", dict(bias=False)), ("LSTM", dict(peephole=True, forget_bias=1.0)),
    ("LSTM", dict(coupled=True, peephole=True)), ("LSTM", dict(proj_size=5)),
    ("LSTM", dict(layer_norm=True, proj_size=5)), ("LSTM", dict(layer_norm=True, peephole=True)),
    ("GRU", dict(reset="after")), ("GRU", dict(reset="before")), ("GRU", dict(reset="before", layer_norm=True)),
    ("GRU", dict(reset="after", layer_norm=True, bias=False)), ("RNN", dict(nonlinearity="tanh")),
    ("RNN", dict(nonlinearity="relu", layer_norm=True)),
]


@contextlib.contextmanager
def short_rule(max_rows: int) -> Iterator[None]:
    """Direct products for calls of at most max_rows steps times batch rows."""
    assert build.status()[0]
    previous = torch.ops.gatedrnn_cpu.set_short_rule(max_rows)
    try:
        yield
    finally:
        torch.ops.gatedrnn_cpu.set_short_rule(previous)


def test_the_default_rule_is_the_documented_one() -> None:
    assert build.status()[0]
    assert torch.ops.gatedrnn_cpu.set_short_rule(MAX_ROWS) == MAX_ROWS


def make_case(case: tuple[str, dict], seed: str, T: int, B: int, I: int, H: int, layers: int,
              dtype: torch.dtype) -> tuple[torch.nn.Module, Tensor, tuple[Tensor, ...], Tensor | None, list[Tensor]]:
    """A bidirectional layer stack of `case` with random weights, input, initial state and loss weights; with B > 1
    the sequences end at random lengths."""
    kind, options = case
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    module = getattr(gatedrnn, kind)(I, H, num_layers=layers, bidirectional=True, dtype=torch.float64, **options)
    randomize_(module, gen)
    module.to(dtype)
    x = torch.randn(T, B, I, generator=gen, dtype=dtype)
    lengths = torch.tensor([T, *(rng.randint(1, T) for _ in range(B - 1))]) if B > 1 else None
    hx = tuple(torch.randn(2 * layers, B, w, generator=gen, dtype=dtype) for w in module.spec.state_widths())
    shapes = [(T, B, 2 * module.spec.state_size), *(h.shape for h in hx)]
    weights = [torch.randn(s, generator=gen, dtype=dtype) for s in shapes]
    return module, x, hx, lengths, weights


def check_against_reference(case: tuple[str, dict], seed: str, T: int, B: int, I: int, H: int, layers: int,
                            dtype: torch.dtype) -> None:
    """Outputs, final states and every gradient (the forward saving for backward), then the forward without
    autograd, of the cpu engine against the reference engine."""
    module, x, hx, lengths, weights = make_case(case, seed, T, B, I, H, layers, dtype)
    names, want, bound = assert_cpu_matches_reference(module, x, hx, lengths, weights)
    with torch.no_grad():
        out, state = module(x, hx if len(hx) > 1 else hx[0], lengths=lengths)
    for name, g, w in zip(names, (out, *(state if isinstance(state, tuple) else (state,))), want):
        assert relative_error(g, w) <= bound, f"no_grad {name}: relative error {relative_error(g, w):.2e}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("B,T", [(1, 1), (1, 2), (1, MAX_ROWS), (1, MAX_ROWS + 1), (3, 1), (3, MAX_ROWS // 3),
                                 (3, MAX_ROWS // 3 + 1)], ids=lambda v: str(v))
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_calls_around_the_threshold_match_reference(case: tuple[str, dict], B: int, T: int,
                                                    dtype: torch.dtype) -> None:
    """Two bidirectional layers at the default rule, on either side of the threshold (T·B = 8): the direct path
    up to it, the packed products (or the team) above."""
    seed = f"cpu-short-{case_id(case)}-{B}-{T}-{dtype}"
    check_against_reference(case, seed, T=T, B=B, I=4, H=11, layers=2, dtype=dtype)


# Sizes that reach every part of the direct products: dot products over a row of W of whole vectors and a remainder
# (H = 37 and 57 in float32 and float64), groups of 8, 4, 2 and 1 rows (G·H = 4·37 = 148 = 18·8 + 4, 3·57 = 171 =
# 21·8 + 2 + 1), columns of whole vector blocks and leftover columns in backward's product; H = 160 makes W_hh
# large enough (above kDirectGrainBytes) that two threads split its columns, unevenly for the GRU (480 rows).
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("H", [37, 57, 160], ids=["H37", "H57", "H160"])
@pytest.mark.parametrize("B", [1, 3], ids=["B1", "B3"])
@pytest.mark.parametrize("case", [("LSTM", dict(peephole=True)), ("LSTM", dict(proj_size=13)),
                                  ("GRU", dict(reset="before")), ("GRU", dict(reset="after")),
                                  ("RNN", dict(nonlinearity="tanh"))], ids=case_id)
def test_direct_products_at_every_width_match_reference(case: tuple[str, dict], B: int, H: int,
                                                        dtype: torch.dtype) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with short_rule(2**40):
            check_against_reference(case, f"cpu-direct-{case_id(case)}-{B}-{H}-{dtype}", T=3, B=B, I=5, H=H, layers=1,
                                    dtype=dtype)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("max_rows", [2**40, 0], ids=["direct", "packed"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_gradcheck_both_paths(case: tuple[str, dict], max_rows: int) -> None:
    """float64 gradcheck of input, initial state and every parameter, bidirectional, uneven lengths, at a shape that
    the rule moved puts on either path."""
    with short_rule(max_rows):
        assert_gradcheck(case, "cpu-short-grad-" + case_id(case), T=3, B=2, I=2, H=6)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_generation_loop_equals_one_call(case: tuple[str, dict]) -> None:
    """T = 1 calls carrying the state, as text generation makes them, give what one call over the whole sequence
    gives (which runs the packed products: 12 steps)."""
    kind, options = case
    gen = torch.Generator().manual_seed(random.Random("cpu-short-loop-" + case_id(case)).randrange(2**31))
    T, I, H = 12, 5, 23
    module = getattr(gatedrnn, kind)(I, H, num_layers=2, dtype=torch.float64, engine="cpu", **options)
    randomize_(module, gen)
    x = torch.randn(T, 1, I, generator=gen, dtype=torch.float64)
    hx = tuple(torch.randn(2, 1, w, generator=gen, dtype=torch.float64) for w in module.spec.state_widths())
    state = hx if len(hx) > 1 else hx[0]
    with torch.no_grad():
        whole, whole_state = module(x, state)
        steps = []
        for t in range(T):
            out, state = module(x[t : t + 1], state)
            steps.append(out)
    torch.testing.assert_close(torch.cat(steps), whole, rtol=1e-12, atol=1e-12)
    for s, w in zip(state if isinstance(state, tuple) else (state,),
                    whole_state if isinstance(whole_state, tuple) else (whole_state,)):
        torch.testing.assert_close(s, w, rtol=1e-12, atol=1e-12)
