"""Linear recurrences ``h_t = a_t ⊙ h_{t-1} + b_t`` as a parallel scan: one op for every such cell (minGRU, minLSTM).

A step is the affine map ``h ↦ a h + b``; two steps compose into one, ``(a₂, b₂) ∘ (a₁, b₁) = (a₂ a₁, a₂ b₁ + b₂)``,
and composition is associative, so the states of all T steps come out of ``⌈log₂ T⌉`` rounds of elementwise work
over the whole sequence (:func:`scan_reference`, Hillis and Steele's scan) instead of T dependent steps. It never
divides or takes a logarithm, so it is exact for coefficients of any sign, zeros included, and as accurate in float32
over thousands of steps as the sequential loop (a log-space form, ``cumsum`` of ``log a`` then ``logcumsumexp``,
subtracts numbers that grow with T and loses float32 digits at that length).

Derivatives: the backward of a linear scan is a linear scan run backwards in time,
``dh_t = g_t + a_{t+1} dh_{t+1}`` (``g_t`` the gradient reaching ``h_t`` from outside, ``dh_T``'s from the final
state), then ``da_t = dh_t h_{t-1}``, ``db_t = dh_t`` and ``dh_0 = a_0 dh_0``. Both directions call the same scan,
whose derivatives are again these, so every order of derivative is a few scans (:class:`LinearScan`).

The cpu engine runs the same scan in C++ (``cpu/csrc/scan.cpp``), the gpu engine in Triton (``gpu/scan.py``); the
``scan`` engine here runs :func:`scan_reference` on any device.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from ..cells import CellSpec, State
from ..cells.minimal import LinearRecurrenceSpec
from .base import Engine

Scan = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``scan(a, b, h0) -> h``: ``a, b, h`` ``(T, B, H)``, ``h0`` ``(B, H)``; differentiable in all three."""


def scan_reference(a: Tensor, b: Tensor, h0: Tensor, reverse: bool = False) -> Tensor:
    """``h_t = a_t ⊙ h_{t-1} + b_t`` for every ``t`` from ``h_{-1} = h0`` (with ``reverse``, ``h_t = a_t ⊙ h_{t+1} +
    b_t`` from ``h_T = h0``), by ``⌈log₂ T⌉`` rounds of composing each step with the one ``shift`` steps before it.

    After the round of ``shift``, ``(A_t, B_t)`` is the composition of steps ``t - 2·shift + 1 … t`` (fewer at the
    start), so at the end ``h_t = A_t h0 + B_t``. Not differentiable by itself in a useful way: :class:`LinearScan`
    differentiates it."""
    if reverse:
        return scan_reference(a.flip(0), b.flip(0), h0).flip(0)
    A, B = a, b  # (T, B, H)
    shift = 1
    while shift < a.shape[0]:
        # (A_t, B_t) ∘ (A_{t-shift}, B_{t-shift}) for t >= shift; the first `shift` steps are already complete
        B = torch.cat([B[:shift], A[shift:] * B[:-shift] + B[shift:]])
        A = torch.cat([A[:shift], A[shift:] * A[:-shift]])
        shift *= 2
    return A * h0 + B


def _shifted(a: Tensor) -> Tensor:
    """``a_{t+1}`` at ``t`` and 1 at ``T - 1``: the coefficients of the backward scan."""
    return torch.cat([a[1:], torch.ones_like(a[:1])])


def _previous(h: Tensor, h0: Tensor) -> Tensor:
    """``h_{t-1}`` at ``t`` (``h0`` at 0)."""
    return torch.cat([h0.unsqueeze(0), h[:-1]])


class LinearScan(torch.autograd.Function):
    """:func:`scan_reference` with its derivatives, themselves scans (see the module docstring)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(a: Tensor, b: Tensor, h0: Tensor, reverse: bool) -> Tensor:
        return scan_reference(a, b, h0, reverse)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        a, _, h0, reverse = inputs
        ctx.save_for_backward(a, h0, output)
        ctx.save_for_forward(a, h0, output)
        ctx.reverse = reverse

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        a, h0, h = ctx.saved_tensors
        return (*scan_gradients(linear_scan_reference, a, h0, h, grad, ctx.reverse), None)

    @staticmethod
    def jvp(ctx: Any, da: Tensor | None, db: Tensor | None, dh0: Tensor | None, _: None) -> Tensor:
        # the tangent follows the same recurrence: dh_t = a_t dh_{t-1} + (da_t h_{t-1} + db_t)
        a, h0, h = ctx.saved_tensors
        if ctx.reverse:
            previous = torch.cat([h[1:], h0.unsqueeze(0)])  # h_{t+1} at t
        else:
            previous = _previous(h, h0)
        source = torch.zeros_like(h) if db is None else db
        if da is not None:
            source = source + da * previous
        return linear_scan_reference(a, source, torch.zeros_like(h0) if dh0 is None else dh0, ctx.reverse)


def scan_gradients(scan: Callable[..., Tensor], a: Tensor, h0: Tensor, h: Tensor, grad: Tensor,
                   reverse: bool) -> tuple[Tensor, Tensor, Tensor]:
    """``(da, db, dh0)`` of a scan's output ``h`` for its gradient ``grad``, by the backward scan ``scan(a, b, h0,
    reverse)`` (the forward's direction flipped). Written in differentiable ops, so it has derivatives too."""
    if reverse:  # a reversed scan is the forward scan of the flipped sequence
        da, db, dh0 = scan_gradients(scan, a.flip(0), h0, h.flip(0), grad.flip(0), False)
        return da.flip(0), db.flip(0), dh0
    dh = scan(_shifted(a), grad, torch.zeros_like(h0), True)  # dh_t = g_t + a_{t+1} dh_{t+1}
    return dh * _previous(h, h0), dh, a[0] * dh[0]


def linear_scan_reference(a: Tensor, b: Tensor, h0: Tensor, reverse: bool = False) -> Tensor:
    """The differentiable plain-PyTorch scan (:class:`LinearScan`)."""
    return LinearScan.apply(a, b, h0, reverse)


def run(spec: LinearRecurrenceSpec, gx: Tensor, state: State, lengths: Tensor | None, scan: Scan) -> tuple[
        Tensor, State]:
    """One layer and direction of a linear-recurrence cell (the :class:`~gatedrnn.engine.base.Engine` contract).

    Past a sequence's length the step is the identity (``a = 1, b = 0``), so ``h`` keeps its last valid value and
    the final state is simply the last step's; the outputs there are then set to 0. The scan runs in the dtype of
    the state."""
    h0 = state[0]
    # in the state's dtype: under CPU autocast the input product comes in bfloat16 while the layer computes in float32
    a, b = (t.to(h0.dtype) for t in spec.coefficients(gx))  # (T, B, H) each
    if lengths is not None:
        active = (torch.arange(gx.shape[0], device=gx.device).unsqueeze(1) < lengths).unsqueeze(2)  # (T, B, 1)
        a = torch.where(active, a, 1.0)
        b = torch.where(active, b, 0.0)
    h = scan(a, b, h0)
    out = h if lengths is None else torch.where(active, h, 0.0)
    return out, (h[-1],)


class ScanEngine(Engine):
    """The parallel scan of linear-recurrence cells (minGRU, minLSTM) in plain PyTorch, on every device and floating
    dtype: what ``engine="auto"`` runs for them where no fused scan covers the call."""

    name = "scan"
    priority = 1

    def status(self) -> tuple[bool, str]:
        return True, "parallel scan of linear-recurrence cells (minGRU, minLSTM) in plain PyTorch; runs everywhere"

    def covers(self, spec: CellSpec, x: Tensor) -> bool:
        return isinstance(spec, LinearRecurrenceSpec) and x.is_floating_point()

    def run(self, spec: CellSpec, gx: Tensor, params: Mapping[str, Tensor], state: State,
            lengths: Tensor | None) -> tuple[Tensor, State]:
        assert isinstance(spec, LinearRecurrenceSpec)  # covers() admits no other
        return run(spec, gx, state, lengths, linear_scan_reference)
