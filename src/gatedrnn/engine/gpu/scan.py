"""The gpu engine's linear scan ``h_t = a_t ⊙ h_{t-1} + b_t`` (minGRU, minLSTM) in Triton, as the custom op
``gatedrnn::gpu_linear_scan`` with its fake implementation and its derivatives (the backward scans of
:func:`gatedrnn.engine.scan.scan_gradients`, which call this op again).

Each program owns ``BLOCK_N`` lanes of the ``B·H`` and walks the sequence in tiles of ``BLOCK_T`` steps: a tile's
affine maps are composed by ``tl.associative_scan`` (``(a₂, b₂) ∘ (a₁, b₁) = (a₂a₁, a₂b₁ + b₂)``), applied to the
carry from the tile before, and the tile's last state becomes the next carry. Products and the carry are float32
whatever the dtype of the tensors. Steps past ``T`` in the last tile are the identity (``a = 1, b = 0``).
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..scan import linear_scan_reference, scan_gradients

BLOCK_T = 32
BLOCK_N = 64


@triton.jit
def _compose(a1, b1, a2, b2):  # noqa: ANN001, ANN202 - Triton values
    return a2 * a1, a2 * b1 + b2


@triton.jit
def scan_kernel(a_ptr, b_ptr, h0_ptr, h_ptr, T, N, REVERSE: tl.constexpr, BLOCK_T: tl.constexpr,  # noqa: ANN001
                BLOCK_N: tl.constexpr) -> None:
    lanes = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    lane_ok = lanes < N
    carry = tl.load(h0_ptr + lanes, mask=lane_ok, other=0.0).to(tl.float32)  # (BLOCK_N,)
    steps = tl.arange(0, BLOCK_T)
    for start in range(0, T, BLOCK_T):
        s = start + steps  # processing order
        ok = (s < T)[:, None] & lane_ok[None, :]
        t = (T - 1 - s) if REVERSE else s
        offsets = t.to(tl.int64)[:, None] * N + lanes[None, :]  # (BLOCK_T, BLOCK_N)
        a = tl.load(a_ptr + offsets, mask=ok, other=1.0).to(tl.float32)
        b = tl.load(b_ptr + offsets, mask=ok, other=0.0).to(tl.float32)
        A, B = tl.associative_scan((a, b), 0, _compose)
        h = A * carry[None, :] + B
        tl.store(h_ptr + offsets, h.to(h_ptr.dtype.element_ty), mask=ok)
        carry = tl.sum(tl.where((steps == BLOCK_T - 1)[:, None], h, 0.0), axis=0)


@torch.library.custom_op("gatedrnn::gpu_linear_scan", mutates_args=())
def gpu_linear_scan(a: Tensor, b: Tensor, h0: Tensor, reverse: bool) -> Tensor:
    """``h_t = a_t ⊙ h_{t-1} + b_t`` over the steps of ``a, b`` ``(T, ...)`` from ``h0`` ``(...)`` (with ``reverse``,
    from ``t = T - 1`` down)."""
    a, b, h0 = a.contiguous(), b.contiguous(), h0.contiguous()
    h = torch.empty_like(b)
    T = a.shape[0]
    N = h0.numel()
    if T and N:
        scan_kernel[(triton.cdiv(N, BLOCK_N),)](a, b, h0, h, T, N, REVERSE=reverse, BLOCK_T=BLOCK_T,
                                                 BLOCK_N=BLOCK_N)
    return h


@gpu_linear_scan.register_fake
def _(a, b, h0, reverse):
    return torch.empty_like(b, memory_format=torch.contiguous_format)


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    a, _, h0, reverse = inputs
    ctx.save_for_backward(a, h0, output)
    ctx.reverse = reverse


def _backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
    a, h0, h = ctx.saved_tensors
    return (*scan_gradients(gpu_linear_scan, a, h0, h, grad, ctx.reverse), None)


gpu_linear_scan.register_autograd(_backward, setup_context=_setup_context)


def linear_scan(a: Tensor, b: Tensor, h0: Tensor) -> Tensor:
    """The forward scan in Triton (the engine's :data:`~gatedrnn.engine.scan.Scan`); under a ``torch.func``
    transform and in forward-mode AD, the plain-PyTorch scan, the same function."""
    if torch._C._are_functorch_transforms_active() or torch.autograd.forward_ad._current_level >= 0:
        return linear_scan_reference(a, b, h0)
    return gpu_linear_scan(a, b, h0, False)
