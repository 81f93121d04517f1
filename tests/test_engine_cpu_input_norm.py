"""The cpu engine's two ways in for a layer-norm cell, each against the reference engine.

Layers hand the engine ``a = W_ih x`` (``Engine.run_product``) and the kernels apply LN_ih and ``b_ih`` row by
row; :mod:`gatedrnn.inspect`'s taps hand it the normalised ``gx`` (``Engine.run``). Both must give the reference's
outputs, states and gradients: of ``a`` (or ``gx``), the initial state, and every parameter, LN_ih's gain and shift
and ``b_ih`` included.
"""

from __future__ import annotations

import random

import pytest
import torch
from torch import Tensor

import gatedrnn
from gatedrnn import engine as registry
from gatedrnn.cells import CellSpec
from gatedrnn.engine.cpu import CPUEngine
from numerics import relative_error
from test_variants import case_id

CASES = [
    ("LSTM", dict(layer_norm=True)), ("LSTM", dict(layer_norm=True, peephole=True, proj_size=2)),
    ("LSTM", dict(layer_norm=True, coupled=True, bias=False)), ("LSTM", dict(layer_norm=True, forget_bias=1.0)),
    ("GRU", dict(layer_norm=True)), ("GRU", dict(layer_norm=True, reset="before")),
    ("GRU", dict(layer_norm=True, bias=False)), ("RNN", dict(layer_norm=True)),
    ("RNN", dict(layer_norm=True, nonlinearity="relu")),
]


def make_call(case: tuple[str, dict], B: int, dtype: torch.dtype, seed: str, T: int = 7, I: int = 5, H: int = 11
              ) -> tuple[CellSpec, Tensor, dict[str, Tensor], tuple[Tensor, ...], Tensor | None]:
    """What a layer hands an engine for one direction: spec, ``a = W_ih x`` (T, B, G·H), parameters with fresh
    random values (not the 1/0 of LN's init), a random initial state and uneven lengths (B > 1)."""
    kind, options = case
    gen = torch.Generator().manual_seed(random.Random(seed).randrange(2**31))
    module = getattr(gatedrnn, kind)(I, H, dtype=dtype, **options)
    spec = module.spec
    p = {name: (torch.rand(t.shape, generator=gen, dtype=dtype) * 1.6 - 0.8).requires_grad_()
         for name, t in module.layer_params(0).items()}
    x = torch.randn(T, B, I, generator=gen, dtype=dtype)
    a = spec.input_product(x, p).detach().requires_grad_()
    state = tuple(torch.randn(B, w, generator=gen, dtype=dtype, requires_grad=True) for w in spec.state_widths())
    lengths = torch.tensor([T, *torch.randint(1, T + 1, (B - 1,), generator=gen).tolist()]) if B > 1 else None
    return spec, a, p, state, lengths


def outputs_and_gradients(run, spec: CellSpec, a: Tensor, p: dict[str, Tensor], state: tuple[Tensor, ...],
                          lengths: Tensor | None) -> dict[str, Tensor]:
    """Outputs, final states and the gradients of a fixed random projection of them, by name."""
    out, final = run(spec, a, p, state, lengths)
    gen = torch.Generator().manual_seed(3)
    loss = sum((t * torch.randn(t.shape, generator=gen, dtype=t.dtype)).sum() for t in (out, *final))
    leaves = [a, *state, *p.values()]
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    names = ["a", *(f"{n}0" for n in spec.state_names), *p]
    result = {"out": out, **dict(zip(spec.state_names, final))}
    result.update({f"grad {n}": g for n, g in zip(names, grads) if g is not None})
    return result


def reference_run(spec: CellSpec, a: Tensor, p: dict[str, Tensor], state: tuple[Tensor, ...],
                  lengths: Tensor | None) -> tuple[Tensor, tuple[Tensor, ...]]:
    return registry.resolve("reference", spec, a).run(spec, spec.normalise_input(a, p), p, state, lengths)


def cpu_fused(spec: CellSpec, a: Tensor, p: dict[str, Tensor], state: tuple[Tensor, ...],
              lengths: Tensor | None) -> tuple[Tensor, tuple[Tensor, ...]]:
    return registry.resolve("cpu", spec, a).run_product(spec, a, p, state, lengths)


def cpu_normalised(spec: CellSpec, a: Tensor, p: dict[str, Tensor], state: tuple[Tensor, ...],
                   lengths: Tensor | None) -> tuple[Tensor, tuple[Tensor, ...]]:
    return registry.resolve("cpu", spec, a).run(spec, spec.normalise_input(a, p), p, state, lengths)


@pytest.mark.parametrize("path", [cpu_fused, cpu_normalised], ids=["fused", "normalised"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("B", [1, 6], ids=["B1", "B6"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_engine_paths_match_reference(case: tuple[str, dict], B: int, dtype: torch.dtype, path) -> None:
    spec, a, p, state, lengths = make_call(case, B, dtype, f"input-norm-{case_id(case)}-{B}-{dtype}")
    want = outputs_and_gradients(reference_run, spec, a, p, state, lengths)
    got = outputs_and_gradients(path, spec, a, p, state, lengths)
    assert got.keys() == want.keys()
    assert {"grad a", "grad ln_ih_weight", "grad ln_ih_bias"} <= got.keys()
    assert "grad bias_ih" in got or not spec.bias
    bound = 1e-5 if dtype == torch.float32 else 1e-10
    for name in want:
        error = relative_error(got[name], want[name])
        assert error <= bound, f"{name}: relative error {error:.2e}"


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_fused_path_gradcheck(case: tuple[str, dict]) -> None:
    """float64 gradcheck of ``run_product`` with respect to ``a``, the initial state and every parameter."""
    spec, a, p, state, lengths = make_call(case, 3, torch.float64, f"input-norm-grad-{case_id(case)}", T=4, H=4)
    names = list(p)

    def f(a: Tensor, *rest: Tensor) -> tuple[Tensor, ...]:
        state, values = rest[: len(spec.state_widths())], rest[len(spec.state_widths()) :]
        out, final = cpu_fused(spec, a, dict(zip(names, values)), tuple(state), lengths)
        return (out, *final)

    assert torch.autograd.gradcheck(f, (a, *state, *p.values()))


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_layers_hand_the_unnormalised_product_to_the_cpu_engine(kind: str, monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    """A layer-norm layer on the cpu engine runs through ``run_product`` (LN_ih in the kernels), not through a
    normalised ``gx``; multi-layer, bidirectional, uneven lengths, against the reference engine."""
    def refuse(*args: object) -> None:
        raise AssertionError("the layer normalised W_ih x itself")

    torch.manual_seed(5)
    module = getattr(gatedrnn, kind)(4, 6, num_layers=2, bidirectional=True, layer_norm=True, dtype=torch.float64)
    with torch.no_grad():
        for t in module.parameters():
            t.uniform_(-0.8, 0.8)
    x = torch.randn(5, 3, 4, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([5, 2, 4])

    def forward_backward(engine: str) -> list[Tensor]:
        module.engine = engine
        module.zero_grad(set_to_none=True)
        x.grad = None
        out, _ = module(x, lengths=lengths)
        out.sin().sum().backward()
        return [out, x.grad, *(t.grad for t in module.parameters())]

    want = forward_backward("reference")
    monkeypatch.setattr(CPUEngine, "run", refuse)
    got = forward_backward("cpu")
    for g, w in zip(got, want):
        assert relative_error(g, w) <= 1e-10
