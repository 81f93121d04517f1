"""The cpu engine's Clockwork RNN (``csrc/clockwork.cpp``): the kernels as ``torch.library`` custom ops, their
derivatives, and :func:`recurrence`, what the engine runs for a :class:`~gatedrnn.cells.ClockworkSpec`.

``gatedrnn::cpu_clockwork`` runs the forward kernel from the input projection ``gx`` (``W_ih x + b_ih``, one GEMM
over all steps by the layer, differentiated by autograd); ``gatedrnn::cpu_clockwork_backward`` runs
backpropagation through time. Each has a fake implementation (the shapes of its outputs) for ``torch.compile`` and
``torch.export``. :class:`ClockworkFunction` differentiates them: first derivatives from the backward kernel, any
graph of the gradient (``create_graph=True``, ``torch.func``) from the reference engine's loop of the cell spec's
step, recomputed from the same inputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx

from ...cells import ClockworkSpec, State
from ..reference import loop
from . import ops


@torch.library.custom_op("gatedrnn::cpu_clockwork", mutates_args=(), device_types="cpu")
def cpu_clockwork(gx: Tensor, h0: Tensor, weight_hh: Tensor, bias_hh: Tensor | None, lengths: Tensor | None,
                  periods: list[int], start: int, relu: bool) -> list[Tensor]:
    """One layer and direction of the Clockwork RNN: ``[out (T, B, H), h_n (B, H)]``; step ``t`` of ``gx`` is
    step ``start + t`` of the module clocks."""
    return forward(gx, h0, weight_hh, bias_hh, lengths, periods, start, relu)


@cpu_clockwork.register_fake
def _(gx, h0, weight_hh, bias_hh, lengths, periods, start, relu):
    return [gx.new_empty(gx.shape), h0.new_empty(h0.shape)]


@torch.library.custom_op("gatedrnn::cpu_clockwork_backward", mutates_args=(), device_types="cpu")
def cpu_clockwork_backward(dout: Tensor, dh_n: Tensor, h0: Tensor, weight_hh: Tensor, lengths: Tensor | None,
                           out: Tensor, periods: list[int], start: int, relu: bool) -> list[Tensor]:
    """``[dgx (T, B, H), dW_hh (H, H), dh0 (B, H), db_hh (H,)]``."""
    return backward(dout, dh_n, h0, weight_hh, lengths, out, periods, start, relu)


@cpu_clockwork_backward.register_fake
def _(dout, dh_n, h0, weight_hh, lengths, out, periods, start, relu):
    return [out.new_empty(out.shape), weight_hh.new_empty(weight_hh.shape), h0.new_empty(h0.shape),
            weight_hh.new_empty(weight_hh.shape[0])]


def forward(gx: Tensor, h0: Tensor, weight_hh: Tensor, bias_hh: Tensor | None, lengths: Tensor | None,
            periods: list[int], start: int, relu: bool) -> list[Tensor]:
    kernels = ops._kernels()
    return ops._fresh(kernels.clockwork_forward(gx, h0, weight_hh, bias_hh, list(periods), start, relu, lengths))


def backward(dout: Tensor, dh_n: Tensor, h0: Tensor, weight_hh: Tensor, lengths: Tensor | None, out: Tensor,
             periods: list[int], start: int, relu: bool) -> list[Tensor]:
    kernels = ops._kernels()
    return ops._fresh(kernels.clockwork_backward(dout, dh_n, h0, weight_hh, list(periods), start, relu, lengths, out))


def _spec(weight_hh: Tensor, bias_hh: Tensor | None, periods: list[int], start: int, relu: bool) -> ClockworkSpec:
    return ClockworkSpec(weight_hh.shape[0], bias_hh is not None, periods=tuple(periods), start=start,
                         nonlinearity="relu" if relu else "tanh")


def reference_layer(gx: Tensor, h0: Tensor, weight_hh: Tensor, bias_hh: Tensor | None, lengths: Tensor | None,
                    periods: list[int], start: int, relu: bool) -> tuple[Tensor, Tensor]:
    """What the op computes, in plain PyTorch: the reference engine's loop of the cell spec's step."""
    params = {"weight_hh": weight_hh} if bias_hh is None else {"weight_hh": weight_hh, "bias_hh": bias_hh}
    out, (h_n,) = loop(_spec(weight_hh, bias_hh, periods, start, relu), gx, params, (h0,), lengths)
    return out, h_n


class ClockworkFunction(torch.autograd.Function):
    """``gatedrnn::cpu_clockwork`` with its derivatives (see the module docstring). Arguments: ``gx, h0, weight_hh,
    bias_hh, lengths, periods, start, relu``; outputs ``out, h_n``."""

    @staticmethod
    def forward(gx: Tensor, h0: Tensor, weight_hh: Tensor, bias_hh: Tensor | None, lengths: Tensor | None,
                periods: tuple[int, ...], start: int, relu: bool) -> tuple[Tensor, Tensor]:
        run = cpu_clockwork if ops.traced(gx, h0, weight_hh, bias_hh) else forward
        out, h_n = run(gx, h0, weight_hh, bias_hh, lengths, list(periods), start, relu)
        return out, h_n

    @staticmethod
    def setup_context(ctx: FunctionCtx, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
        gx, h0, weight_hh, bias_hh, lengths, periods, start, relu = inputs
        ctx.save_for_backward(gx, h0, weight_hh, bias_hh, lengths, output[0])
        ctx.periods, ctx.start, ctx.relu = periods, start, relu

    @staticmethod
    def backward(ctx: Any, dout: Tensor, dh_n: Tensor) -> tuple[Tensor | None, ...]:
        gx, h0, weight_hh, bias_hh, lengths, out = ctx.saved_tensors
        periods, start, relu = list(ctx.periods), ctx.start, ctx.relu
        need = ctx.needs_input_grad
        if torch.is_grad_enabled():  # a graph of the gradient is being built: the reference's derivatives
            inputs = [(k, t) for k, t in enumerate((gx, h0, weight_hh, bias_hh)) if t is not None and need[k]]
            with torch.enable_grad():
                result = reference_layer(gx, h0, weight_hh, bias_hh, lengths, periods, start, relu)
            grads = torch.autograd.grad(result, [t for _, t in inputs], (dout, dh_n), create_graph=True,
                                        allow_unused=True)
            found: list[Tensor | None] = [None] * 4
            for (k, _), g in zip(inputs, grads):
                found[k] = g
            return (*found, None, None, None, None)
        run = cpu_clockwork_backward if ops.traced(dout, dh_n, gx, h0, weight_hh) else backward
        dgx, dw_hh, dh0, db = run(dout.contiguous(), dh_n.contiguous(), h0, weight_hh, lengths, out, periods, start,
                                  relu)
        return (dgx if need[0] else None, dh0 if need[1] else None, dw_hh if need[2] else None,
                db if bias_hh is not None and need[3] else None, None, None, None, None)


def recurrence(spec: ClockworkSpec, gx: Tensor, params: Mapping[str, Tensor], state: State,
               lengths: Tensor | None) -> tuple[Tensor, State]:
    """One layer and direction (the :class:`~gatedrnn.engine.base.Engine` contract) from the input projection."""
    args = (gx, state[0], params["weight_hh"], params.get("bias_hh"), lengths)
    periods, start, relu = list(spec.periods), spec.start, spec.nonlinearity == "relu"
    if torch._C._are_functorch_transforms_active() or torch.autograd.forward_ad._current_level >= 0:
        # torch.func transforms and forward-mode AD: the reference layer, plain PyTorch ops that every transform
        # differentiates and batches.
        out, h_n = reference_layer(*args, periods, start, relu)
    elif torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in args[:4]):
        out, h_n = ClockworkFunction.apply(*args, tuple(periods), start, relu)
    else:
        run = cpu_clockwork if ops.traced(*args[:4]) else forward
        out, h_n = run(*args, periods, start, relu)
    return out, (h_n,)
