"""Numeric helpers shared by the tests."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn


def relative_error(actual: Tensor, expected: Tensor) -> float:
    """Norm-wise relative error ``max|a - e| / max|e|`` (absolute where ``e`` is all zero)."""
    scale = expected.abs().max().item()
    return (actual - expected).abs().max().item() / (scale if scale > 0 else 1.0)


def layer_as_function(module: nn.Module, widths: Sequence[int], T: int, B: int, I: int, gen: torch.Generator
                      ) -> tuple[Callable[..., tuple[Tensor, ...]], tuple[Tensor, ...]]:
    """A bidirectional layer as a function of (input, initial states, parameters), for gradcheck/gradgradcheck.

    Returns the function and fresh random float64 inputs: ``x`` (T, B, I), one (2, B, w) initial state per width in
    ``widths`` (``(h, c)`` for an LSTM), and copies of the parameters; the batch has uneven lengths ``[T, T-1]``.
    """
    names = [name for name, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in module.parameters()]
    x = torch.randn(T, B, I, generator=gen, dtype=torch.float64, requires_grad=True)
    state = [torch.randn(2, B, w, generator=gen, dtype=torch.float64, requires_grad=True) for w in widths]
    lengths = torch.tensor([T, T - 1])

    def f(x: Tensor, *rest: Tensor) -> tuple[Tensor, ...]:
        states, values = rest[: len(widths)], rest[len(widths) :]
        out, hx = torch.func.functional_call(
            module, dict(zip(names, values)), (x, tuple(states) if len(widths) == 2 else states[0]),
            {"lengths": lengths},
        )
        return (out, *(hx if isinstance(hx, tuple) else (hx,)))

    return f, (x, *state, *params)
