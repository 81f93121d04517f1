"""The cpu engine's linear scan (``csrc/scan.cpp``) as the ``torch.library`` custom op ``gatedrnn::cpu_linear_scan``,
with its fake implementation (shapes, for ``torch.compile`` and ``torch.export``) and its derivatives: the backward
scan of :func:`gatedrnn.engine.scan.scan_gradients`, which calls this op again, so derivatives of every order are
scans in C++ too."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..scan import linear_scan_reference, scan_gradients
from .ops import _kernels


@torch.library.custom_op("gatedrnn::cpu_linear_scan", mutates_args=(), device_types="cpu")
def cpu_linear_scan(a: Tensor, b: Tensor, h0: Tensor, reverse: bool, chunks: int) -> Tensor:
    """``h_t = a_t ⊙ h_{t-1} + b_t`` over the steps of ``a, b`` ``(T, ...)`` from ``h0`` ``(...)`` (with ``reverse``,
    from ``t = T - 1`` down, ``h_t = a_t ⊙ h_{t+1} + b_t``); ``chunks`` > 0 sets the number of chunks over time, 0
    lets the kernel choose."""
    return _kernels().linear_scan(a, b, h0, reverse, chunks)


@cpu_linear_scan.register_fake
def _(a, b, h0, reverse, chunks):
    return torch.empty_like(b, memory_format=torch.contiguous_format)


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    a, _, h0, reverse, chunks = inputs
    ctx.save_for_backward(a, h0, output)
    ctx.reverse, ctx.chunks = reverse, chunks


def _backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
    a, h0, h = ctx.saved_tensors

    def scan(a: Tensor, b: Tensor, h0: Tensor, reverse: bool) -> Tensor:
        return cpu_linear_scan(a, b, h0, reverse, ctx.chunks)

    return (*scan_gradients(scan, a, h0, h, grad, ctx.reverse), None, None)


cpu_linear_scan.register_autograd(_backward, setup_context=_setup_context)


def linear_scan(a: Tensor, b: Tensor, h0: Tensor, chunks: int = 0) -> Tensor:
    """The forward scan of ``h_t = a_t ⊙ h_{t-1} + b_t`` in C++ (the engine's :data:`~gatedrnn.engine.scan.Scan`).

    Under a ``torch.func`` transform (``grad``, ``vmap``, ``jvp`` and what is made of them) and in forward-mode AD it
    is the plain-PyTorch scan of ``engine/scan.py``, the same function, whose derivatives compose with every
    transform."""
    if torch._C._are_functorch_transforms_active() or torch.autograd.forward_ad._current_level >= 0:
        return linear_scan_reference(a, b, h0)
    return cpu_linear_scan(a, b, h0, False, chunks)
