"""The matrix products of a recurrent layer's call alone: a floor under any engine that runs them with the BLAS.

``gatedrnn bench --impls ...,gemms`` times :class:`GemmFloor` beside the real implementations. For a one-layer,
one-direction layer with ``W_ih`` (G, I), ``W_hh`` (G, R) and, with ``proj_size``, ``W_hr`` (P, H), a call on
``x`` (T, B, I) runs:

forward
    ``X W_ih^T``               one GEMM over all T·B rows (the input projection),
    ``h W_hh^T``               one (B, R) x (R, G) product per step,
    ``(o*tanh(c)) W_hr^T``     one (B, H) x (H, P) product per step (proj_size only);
backward
    ``dh = dG_t W_hh``         one (B, G) x (G, R) product per step,
    ``dW_hh = dG^T H``, ``dW_ih = dG^T X``, ``dX = dG W_ih``
                               one GEMM each over all T·B rows,
    ``dc = dh W_hr``           per step, and ``dW_hr = dH^T C`` over all rows (proj_size only).

That is every product the cell equations need (G = 4H for the LSTM, 3H for the GRU and the coupled LSTM, H for
the RNN) and nothing else: no gate, no nonlinearity, no layer norm, on fixed operands of the right shapes, made
once per shape. The GRU with the reset before the matmul splits its per-step product in two; the floor counts the
same work as one. A per-step product goes through MKL's packed GEMM where torch has it (float32, B > 1: the weight
packed once per call, as the cpu engine does), else ``torch.mm``. So an engine can only beat the floor by running
the products faster than torch's BLAS does here; a target ratio below ``floor / torch.nn`` needs exactly that.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


def flops(T: int, B: int, I: int, G: int, R: int, H: int = 0, P: int = 0) -> tuple[int, int]:  # noqa: E741
    """Floating-point operations of the products of a forward and of a backward (2 per multiply-add)."""
    forward = 2 * T * B * G * (I + R) + 2 * T * B * H * P
    return forward, 2 * forward


def _packed_product(w: Tensor, rows: int) -> Callable[[Tensor], Tensor] | None:
    """``a -> a @ w^T`` through MKL's packed GEMM, ``w`` packed once; None where torch has no such op."""
    if w.dtype != torch.float32 or w.device.type != "cpu" or rows < 2 or not torch.backends.mkl.is_available():
        return None
    reorder = getattr(torch.ops.mkl, "_mkl_reorder_linear_weight", None)
    linear = getattr(torch.ops.mkl, "_mkl_linear", None)
    if reorder is None or linear is None:
        return None
    packed = reorder(w, rows)
    return lambda a: linear(a, packed, w, None, rows)


def _product(w: Tensor, rows: int) -> Callable[[Tensor], Tensor]:
    """``a -> a @ w^T`` for ``rows`` rows at a time, the fastest way torch offers for many calls."""
    packed = _packed_product(w, rows)
    if packed is not None:
        return packed
    w_t = w.t()
    return lambda a: torch.mm(a, w_t)


class _Products(torch.autograd.Function):
    """Forward and backward of :class:`GemmFloor`: the products only (see the module docstring)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor, w_ih: Tensor, w_hh: Tensor,
                w_hr: Tensor | None, operands: dict[str, Tensor]) -> Tensor:
        T, B, I = x.shape
        x2 = x.reshape(T * B, I)
        torch.mm(x2, w_ih.t())
        step = _product(w_hh, B)
        project = _product(w_hr, B) if w_hr is not None else None
        for _ in range(T):
            step(operands["h"])
            if project is not None:
                project(operands["c"])
        ctx.save_for_backward(x2, w_ih, w_hh, w_hr)
        ctx.operands = operands
        return x.new_zeros(T, B, operands["h"].shape[1])

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, dout: Tensor) -> tuple[Tensor | None, ...]:
        x2, w_ih, w_hh, w_hr = ctx.saved_tensors
        ops = ctx.operands
        B = ops["h"].shape[0]
        step = _product(w_hh.t().contiguous(), B)  # dh = dG_t W_hh = dG_t (W_hh^T)^T
        project = _product(w_hr.t().contiguous(), B) if w_hr is not None else None
        for _ in range(dout.shape[0]):
            step(ops["dg"])
            if project is not None:
                project(ops["dh"])
        dG = ops["dG"]
        d_w_hh = torch.mm(dG.t(), ops["H"])
        d_w_ih = torch.mm(dG.t(), x2)
        dx = torch.mm(dG, w_ih).reshape(dout.shape[0], B, -1)
        d_w_hr = torch.mm(ops["dH"].t(), ops["C"]) if w_hr is not None else None
        return dx, d_w_ih, d_w_hh, d_w_hr, None


class GemmFloor(nn.Module):
    """The products of ``layer``'s call alone, with the call signature of the layer: ``(output, None)``.

    ``layer`` is a one-layer, one-direction :class:`gatedrnn.LSTM`, ``GRU`` or ``RNN`` whose parameters this
    module shares. The output is a (T, B, R) tensor of zeros (R = P with proj_size, else H) that carries the
    backward; the state is None.
    """

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        if getattr(layer, "num_layers", 1) != 1 or getattr(layer, "bidirectional", False):
            raise ValueError("layer: the GEMM floor takes a one-layer, one-direction layer")
        self.layer = layer
        self._operands: dict[tuple, dict[str, Tensor]] = {}

    def forward(self, x: Tensor, hx: object = None) -> tuple[Tensor, None]:
        p = self.layer.layer_params(0)  # type: ignore[operator]
        w_ih, w_hh, w_hr = p["weight_ih"], p["weight_hh"], p.get("weight_hr")
        T, B, _ = x.shape
        return _Products.apply(x, w_ih, w_hh, w_hr, self._operands_for(T, B, w_hh, w_hr)), None

    def _operands_for(self, T: int, B: int, w_hh: Tensor, w_hr: Tensor | None) -> dict[str, Tensor]:
        """Fixed operands of the products' shapes, made once per (T, B): ones, so no value is subnormal."""
        key = (T, B)
        if key not in self._operands:
            G, R = w_hh.shape
            one = lambda *shape: w_hh.new_ones(shape)  # noqa: E731
            ops = {"h": one(B, R), "dg": one(B, G), "dG": one(T * B, G), "H": one(T * B, R)}
            if w_hr is not None:
                P, H = w_hr.shape
                ops.update(c=one(B, H), dh=one(B, P), dH=one(T * B, P), C=one(T * B, H))
            self._operands[key] = ops
        return self._operands[key]
