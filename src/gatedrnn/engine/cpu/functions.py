"""The autograd layer of the cpu engine: one ``torch.autograd.Function`` per cell family around the C++ kernels.

Each forward runs the whole recurrence of one layer and direction in C++. Each backward runs backpropagation
through time in C++, which also returns the parameters' gradients: W_hh's as GEMMs batched over chunks of time steps,
and the vector parameters' (biases, layer-norm gains and shifts, peepholes), sums over time and batch accumulated
step by step while each step's rows are in cache; W_hr's (proj_size) is one GEMM over all steps here. Without
autograd (``torch.no_grad()`` or nothing requiring a gradient) the kernels are called directly and save nothing.

The backward passes are not themselves differentiable: a backward with ``create_graph=True`` (second derivatives,
e.g. a gradient penalty) raises an error that names ``engine="reference"``, which supports them.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx

from ...cells import CellSpec, GRUSpec, LSTMSpec, RNNSpec, State


def _ops():  # noqa: ANN202 - torch.ops namespaces have no static type
    return torch.ops.gatedrnn_cpu


def _refuse_second_derivatives() -> None:
    """Inside backward, grad mode is on exactly when the caller asked for ``create_graph=True``; the gradients
    computed here would then silently be treated as constants, so refuse instead."""
    if torch.is_grad_enabled():
        raise RuntimeError('engine: the cpu engine has no second derivatives (backward with create_graph=True); '
                           'use engine="reference" for this module')


class LSTMFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, gx: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, b_hh: Tensor | None,
                w_hr: Tensor | None, w_ci: Tensor | None, w_cf: Tensor | None, w_co: Tensor | None,
                ln_hh_w: Tensor | None, ln_hh_b: Tensor | None, ln_c_w: Tensor | None, ln_c_b: Tensor | None,
                ln_ih_w: Tensor | None, ln_ih_s: Tensor | None, lengths: Tensor | None, forget_bias: float,
                coupled: bool) -> tuple[Tensor, Tensor, Tensor]:
        out, h_n, c_n, gates, cs, hh, xhat_hh, rstd_hh, mean_c, rstd_c, stats_ih = _ops().lstm_forward(
            gx, h0, c0, w_hh, b_hh, w_hr, w_ci, w_cf, w_co, ln_hh_w, ln_hh_b, ln_c_w, ln_c_b, ln_ih_w, ln_ih_s,
            forget_bias, coupled, lengths, True)
        # What backward needs (see lstm.cpp for why each): gates, cs, out, hh (proj), LN statistics (layer_norm),
        # the initial state and the weights the gradient flows back through. With LN_ih fused, gx (W_ih x) too, from
        # which (with the biases and shifts) backward recomputes the gates where they were not saved (B > 1).
        ctx.save_for_backward(h0, c0, w_hh, b_hh, ln_hh_b, ln_ih_s, w_hr, w_ci, w_cf, w_co, ln_hh_w, ln_c_w, ln_c_b,
                              ln_ih_w, lengths, out, gates, cs, hh, xhat_hh, rstd_hh, mean_c, rstd_c,
                              _fused_input(gx, ln_ih_w), stats_ih)
        ctx.forget_bias = forget_bias
        ctx.coupled = coupled
        ctx.has_bias = b_hh is not None
        return out, h_n, c_n

    @staticmethod
    def backward(ctx: FunctionCtx, dout: Tensor, dh_n: Tensor, dc_n: Tensor) -> tuple[Tensor | None, ...]:
        _refuse_second_derivatives()
        (h0, c0, w_hh, b_hh, ln_hh_b, ln_ih_s, w_hr, w_ci, w_cf, w_co, ln_hh_w, ln_c_w, ln_c_b, ln_ih_w, lengths,
         out, gates, cs, hh, xhat_hh, rstd_hh, mean_c, rstd_c, a_ih, stats_ih) = ctx.saved_tensors
        (dgx, d_w_hh, dhp, dh0, dc0, db, d_ln_hh_w, d_ln_c_w, d_ln_c_b, d_ci, d_cf, d_co,
         d_ln_ih_w) = _ops().lstm_backward(
            dout, dh_n.contiguous(), dc_n.contiguous(), h0, c0, w_hh, b_hh, ln_hh_b, ln_ih_s,
            ctx.forget_bias, w_hr, w_ci, w_cf, w_co, ln_hh_w, ln_c_w, ln_c_b, ln_ih_w, ctx.coupled, lengths, out,
            gates, cs, xhat_hh, rstd_hh, mean_c, rstd_c, a_ih, stats_ih)
        H = c0.shape[1]
        need = ctx.needs_input_grad
        ln, ln_ih = ln_hh_w is not None, ln_ih_w is not None
        return (dgx, dh0, dc0, d_w_hh,
                db if ctx.has_bias else None,
                dhp.reshape(-1, dhp.shape[2]).t() @ hh.reshape(-1, H) if w_hr is not None and need[5] else None,
                d_ci if w_ci is not None else None, d_cf if w_cf is not None else None,
                d_co if w_co is not None else None,
                d_ln_hh_w if ln else None, db if ln else None, d_ln_c_w if ln else None,
                d_ln_c_b if ln else None, d_ln_ih_w if ln_ih else None, db if ln_ih else None, None, None, None)


class GRUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, gx: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Tensor | None, ln_w: Tensor | None,
                ln_b: Tensor | None, ln_ih_w: Tensor | None, ln_ih_s: Tensor | None, lengths: Tensor | None,
                before: bool) -> tuple[Tensor, Tensor]:
        out, h_n, gates, aux, xhat, rstd, stats_ih = _ops().gru_forward(gx, h0, w_hh, b_hh, ln_w, ln_b, ln_ih_w,
                                                                        ln_ih_s, before, lengths, True)
        # What backward needs (see gru.cpp): gates, aux (r*h or the n block of the recurrent part), out, LN stats;
        # with LN_ih fused, gx (W_ih x) too.
        ctx.save_for_backward(h0, w_hh, ln_w, ln_ih_w, lengths, out, gates, aux, xhat, rstd,
                              _fused_input(gx, ln_ih_w), stats_ih)
        ctx.before = before
        ctx.has_bias = b_hh is not None
        return out, h_n

    @staticmethod
    def backward(ctx: FunctionCtx, dout: Tensor, dh_n: Tensor) -> tuple[Tensor | None, ...]:
        _refuse_second_derivatives()
        h0, w_hh, ln_w, ln_ih_w, lengths, out, gates, aux, xhat, rstd, a_ih, stats_ih = ctx.saved_tensors
        dgx, d_w_hh, dh0, db, d_ln_w, d_ln_ih_w, d_ln_ih_s = _ops().gru_backward(
            dout, dh_n.contiguous(), h0, w_hh, ln_w, ln_ih_w, ctx.before, lengths, out, gates, aux, xhat,
            rstd, a_ih, stats_ih)
        ln, ln_ih = ln_w is not None, ln_ih_w is not None
        return (dgx, dh0, d_w_hh, db if ctx.has_bias else None, d_ln_w if ln else None, db if ln else None,
                d_ln_ih_w if ln_ih else None, d_ln_ih_s if ln_ih else None, None, None)


class RNNFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, gx: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Tensor | None, ln_w: Tensor | None,
                ln_b: Tensor | None, ln_ih_w: Tensor | None, ln_ih_s: Tensor | None, lengths: Tensor | None,
                relu: bool) -> tuple[Tensor, Tensor]:
        out, h_n, xhat, rstd, stats_ih = _ops().rnn_forward(gx, h0, w_hh, b_hh, ln_w, ln_b, ln_ih_w, ln_ih_s, relu,
                                                            lengths, True)
        ctx.save_for_backward(h0, w_hh, ln_w, ln_ih_w, lengths, out, xhat, rstd, _fused_input(gx, ln_ih_w),
                              stats_ih)  # see rnn.cpp for why
        ctx.relu = relu
        ctx.has_bias = b_hh is not None
        return out, h_n

    @staticmethod
    def backward(ctx: FunctionCtx, dout: Tensor, dh_n: Tensor) -> tuple[Tensor | None, ...]:
        _refuse_second_derivatives()
        h0, w_hh, ln_w, ln_ih_w, lengths, out, xhat, rstd, a_ih, stats_ih = ctx.saved_tensors
        dgx, d_w_hh, dh0, db, d_ln_w, d_ln_ih_w = _ops().rnn_backward(
            dout, dh_n.contiguous(), h0, w_hh, ln_w, ln_ih_w, ctx.relu, lengths, out, xhat, rstd, a_ih,
            stats_ih)
        ln, ln_ih = ln_w is not None, ln_ih_w is not None
        return (dgx, dh0, d_w_hh, db if ctx.has_bias else None, d_ln_w if ln else None, db if ln else None,
                d_ln_ih_w if ln_ih else None, db if ln_ih else None, None, None)


class InputProductFunction(torch.autograd.Function):
    """``a = x W_ih^T (+ b_ih)`` into a buffer on huge pages (why: csrc/memory.cpp); the gradients are F.linear's."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, w)  # x is the right factor of dW_ih, W_ih the right factor of dx
        return _ops().input_product(x, w, b)

    @staticmethod
    def backward(ctx: FunctionCtx, da: Tensor) -> tuple[Tensor | None, ...]:
        x, w = ctx.saved_tensors
        da2 = da.reshape(-1, w.shape[0])  # (T·B, G·H)
        need = ctx.needs_input_grad
        return ((da2 @ w).reshape(x.shape) if need[0] else None,
                da2.t() @ x.reshape(-1, x.shape[-1]) if need[1] else None,
                da2.sum(0) if need[2] else None)


def input_product(spec: CellSpec, x: Tensor, p: Mapping[str, Tensor]) -> Tensor:
    """``spec.input_product(x, p)`` (``W_ih x``, plus ``b_ih`` where there is no layer norm), on huge pages."""
    w, b = p["weight_ih"], spec.input_bias(p)
    if _autograd(x, w, b):
        return InputProductFunction.apply(x, w, b)
    return _ops().input_product(x, w, b)


def run_input(spec: CellSpec, x: Tensor, params: Mapping[str, Tensor], state: State,
              lengths: Tensor | None) -> tuple[Tensor, State] | None:
    """Without autograd, the recurrence of one layer and direction from its input ``x`` in one op that never makes
    the whole input projection (``{lstm,gru,rnn}_forward_input``: the time loop forms it a chunk of steps at a time,
    and the batch-1 LSTM team each member's part); None with autograd, where the caller runs :func:`input_product`
    and :func:`run`."""
    if _autograd(x, *state, *params.values()):
        return None
    p = {name: t.contiguous() for name, t in params.items()}
    head = (x, p["weight_ih"], spec.input_bias(p), state[0].contiguous())
    ln_ih = spec.input_norm(p) or (None, None)  # LN_ih's gain, and its shift + b_ih
    lengths = _contiguous(lengths)
    ops = _ops()
    if isinstance(spec, LSTMSpec):
        out, h, c = ops.lstm_forward_input(
            *head, state[1].contiguous(), p["weight_hh"], p.get("bias_hh"), p.get("weight_hr"), p.get("weight_ci"),
            p.get("weight_cf"), p.get("weight_co"), p.get("ln_hh_weight"), p.get("ln_hh_bias"),
            p.get("ln_c_weight"), p.get("ln_c_bias"), *ln_ih, spec.forget_bias, spec.coupled, lengths)
        return out, (h, c)
    recurrent = (p["weight_hh"], p.get("bias_hh"), p.get("ln_hh_weight"), p.get("ln_hh_bias"), *ln_ih)
    if isinstance(spec, GRUSpec):
        out, h = ops.gru_forward_input(*head, *recurrent, spec.reset == "before", lengths)
        return out, (h,)
    if isinstance(spec, RNNSpec):
        out, h = ops.rnn_forward_input(*head, *recurrent, spec.nonlinearity == "relu", lengths)
        return out, (h,)
    return None


def _autograd(*tensors: Tensor | None) -> bool:
    """Whether autograd records a call on these tensors (grad mode on and one of them requires a gradient)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _contiguous(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.contiguous()


def _fused_input(gx: Tensor, ln_ih_w: Tensor | None) -> Tensor | None:
    """gx is saved only where LN_ih is fused: it is then W_ih x, from which backward rebuilds LN_ih's xhat."""
    return gx if ln_ih_w is not None else None


def run(spec: CellSpec, gx: Tensor, params: Mapping[str, Tensor], state: State, lengths: Tensor | None,
        product: bool = False) -> tuple[Tensor, State]:
    """The recurrence of one layer and direction (the :class:`~gatedrnn.engine.base.Engine` contract): from the
    normalised ``gx`` (``Engine.run``), or with ``product`` from ``spec.input_product`` (``Engine.run_product``),
    whose LN_ih (for a layer-norm spec) the kernels apply."""
    p = {name: t.contiguous() for name, t in params.items()}
    gx = gx.contiguous()
    state = tuple(s.contiguous() for s in state)
    lengths = _contiguous(lengths)
    grad = _autograd(gx, *state, *p.values())
    ops = _ops()
    ln_ih = (product and spec.input_norm(p)) or (None, None)  # LN_ih's gain, and its shift + b_ih
    if isinstance(spec, LSTMSpec):
        args = (gx, state[0], state[1], p["weight_hh"], p.get("bias_hh"), p.get("weight_hr"), p.get("weight_ci"),
                p.get("weight_cf"), p.get("weight_co"), p.get("ln_hh_weight"), p.get("ln_hh_bias"),
                p.get("ln_c_weight"), p.get("ln_c_bias"), *ln_ih)
        if grad:
            out, h, c = LSTMFunction.apply(*args, lengths, spec.forget_bias, spec.coupled)
        else:
            out, h, c = ops.lstm_forward(*args, spec.forget_bias, spec.coupled, lengths, False)[:3]
        return out, (h, c)
    if isinstance(spec, GRUSpec):
        args = (gx, state[0], p["weight_hh"], p.get("bias_hh"), p.get("ln_hh_weight"), p.get("ln_hh_bias"), *ln_ih)
        before = spec.reset == "before"
        if grad:
            out, h = GRUFunction.apply(*args, lengths, before)
        else:
            out, h = ops.gru_forward(*args, before, lengths, False)[:2]
        return out, (h,)
    if isinstance(spec, RNNSpec):
        args = (gx, state[0], p["weight_hh"], p.get("bias_hh"), p.get("ln_hh_weight"), p.get("ln_hh_bias"), *ln_ih)
        relu = spec.nonlinearity == "relu"
        if grad:
            out, h = RNNFunction.apply(*args, lengths, relu)
        else:
            out, h = ops.rnn_forward(*args, relu, lengths, False)[:2]
        return out, (h,)
    raise ValueError(f"engine: 'cpu' does not run {type(spec).__name__}")
