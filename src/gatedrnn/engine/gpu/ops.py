"""The gpu engine's recurrence as ``torch.library`` custom ops with autograd, so ``torch.compile`` traces through it.

``gatedrnn::recurrence`` runs the forward kernel, ``gatedrnn::recurrence_backward`` the backward kernel; both are
opaque to the compiler (it sees their fake implementations, never a graph break). The weight gradients are plain
PyTorch around the backward op: one GEMM over all steps, ``dW_hh = Σ_t dy_tᵀ h_{t-1}``, and sums for the biases,
peephole and layer-norm weights.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import launch


def _cell(cell: str, relu: bool, coupled: bool, peephole: bool, forget_bias: float, reset_before: bool,
          layer_norm: bool, proj: bool) -> launch.Cell:
    return launch.Cell(cell, relu=relu, coupled=coupled, peephole=peephole, forget_bias=forget_bias,
                       reset_before=reset_before, layer_norm=layer_norm, proj=proj)


@torch.library.custom_op("gatedrnn::recurrence", mutates_args=())
def recurrence(gx: Tensor, weight_hh: Tensor, weight_hr: Tensor | None, bias_hh: Tensor | None,
               peephole: Tensor | None, ln: Tensor | None, h0: Tensor, c0: Tensor | None, lengths: Tensor | None,
               cell: str, relu: bool, coupled: bool, forget_bias: float, reset_before: bool,
               save: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(out, hs, cs, saved, q, xhat, stats, us)`` of one layer and direction (see ``launch.forward``); ``save``
    keeps the activations that backward needs."""
    spec = _cell(cell, relu, coupled, peephole is not None, forget_bias, reset_before, ln is not None,
                 weight_hr is not None)
    return launch.forward(spec, gx, weight_hh, weight_hr, bias_hh, peephole, ln, h0, c0, lengths, save)


@recurrence.register_fake
def _(gx, weight_hh, weight_hr, bias_hh, peephole, ln, h0, c0, lengths, cell, relu, coupled, forget_bias,
      reset_before, save):
    T, B, _ = gx.shape
    S = weight_hh.shape[1]
    spec = _cell(cell, relu, coupled, peephole is not None, forget_bias, reset_before, ln is not None,
                 weight_hr is not None)
    H = gx.shape[2] // spec.gates
    f32 = torch.float32
    cs_shape = (T + 1, B, H) if cell == "lstm" else (0,)
    saved_shape = (T, B, spec.saved * H) if save else (0,)
    norm_saved = ln is not None and save
    return (gx.new_empty(T, B, S), gx.new_empty(T + 1, B, S), gx.new_empty(cs_shape, dtype=f32),
            gx.new_empty(saved_shape, dtype=f32), gx.new_empty((T, B, H) if reset_before else (0,)),
            gx.new_empty((T, B, spec.gates * H) if norm_saved else (0,), dtype=f32),
            gx.new_empty((T, B, 3) if norm_saved else (0,), dtype=f32),
            gx.new_empty((T, B, H) if weight_hr is not None else (0,)))


@torch.library.custom_op("gatedrnn::recurrence_backward", mutates_args=())
def recurrence_backward(dout: Tensor, dh_n: Tensor, dc_n: Tensor | None, weight_hh: Tensor,
                        weight_hr: Tensor | None, peephole: Tensor | None, ln: Tensor | None,
                        lengths: Tensor | None, hs: Tensor, cs: Tensor, saved: Tensor, xhat: Tensor, stats: Tensor,
                        cell: str, relu: bool, coupled: bool,
                        reset_before: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(dgx, dgh, dy, dcn, dh0, dc0, dhs)`` (see ``launch.backward``): ``dgx``, ``dgh``, ``dy`` and ``dhs`` in the
    weights' dtype, the others float32; ``dgh`` is empty where it equals ``dgx``, ``dy`` where it equals ``dgh``."""
    spec = _cell(cell, relu, coupled, peephole is not None, 0.0, reset_before, ln is not None, weight_hr is not None)
    dgx, dgh, dy, dcn, dh0, dc0, dhs = launch.backward(spec, dout.contiguous(), dh_n, dc_n, weight_hh, weight_hr,
                                                       peephole, ln, lengths, hs, cs, saved, xhat, stats)
    # Custom ops may not return aliases of each other, so a dgh that is dgx (a dy that is dgh) comes back empty.
    return (dgx, (dgh if dgh is not dgx else dgx.new_empty(0)), (dy if dy is not dgh else dgx.new_empty(0)), dcn,
            dh0, dc0, dhs)


@recurrence_backward.register_fake
def _(dout, dh_n, dc_n, weight_hh, weight_hr, peephole, ln, lengths, hs, cs, saved, xhat, stats, cell, relu,
      coupled, reset_before):
    T, B, S = dout.shape
    G = _cell(cell, relu, coupled, peephole is not None, 0.0, reset_before, ln is not None,
              weight_hr is not None).gates
    H = weight_hh.shape[0] // G
    f32, wt = torch.float32, weight_hh.dtype
    dgh_shape = (T, B, G * H) if cell == "gru" and not reset_before else (0,)
    return (dout.new_empty(T, B, G * H, dtype=wt), dout.new_empty(dgh_shape, dtype=wt),
            dout.new_empty((T, B, G * H) if ln is not None else (0,), dtype=wt),
            dout.new_empty((T, B, H) if ln is not None and cell == "lstm" else (0,), dtype=f32),
            dout.new_empty(B, S, dtype=f32), dout.new_empty((B, H) if cell == "lstm" else (0,), dtype=f32),
            dout.new_empty((T, B, S) if weight_hr is not None else (0,), dtype=wt))


def _setup_context(ctx, inputs, output) -> None:
    (gx, weight_hh, weight_hr, bias_hh, peephole, ln, h0, c0, lengths, cell, relu, coupled, forget_bias,
     reset_before, save) = inputs
    _, hs, cs, saved, q, xhat, stats, us = output
    ctx.save_for_backward(weight_hh, weight_hr, peephole, ln, lengths, hs, cs, saved, q, xhat, stats, us)
    ctx.options = (cell, relu, coupled, reset_before)
    ctx.dtypes = (gx.dtype, h0.dtype, None if c0 is None else c0.dtype)
    ctx.has_bias = bias_hh is not None


def _backward(ctx, d_out: Tensor, d_hs: Tensor, d_cs: Tensor, d_saved: Tensor, d_q: Tensor, d_xhat: Tensor,
              d_stats: Tensor, d_us: Tensor):
    weight_hh, weight_hr, peephole, ln, lengths, hs, cs, saved, q, xhat, stats, us = ctx.saved_tensors
    cell, relu, coupled, reset_before = ctx.options
    gx_dtype, h0_dtype, c0_dtype = ctx.dtypes
    if saved.numel() == 0:
        raise RuntimeError("gpu engine: backward through a recurrence run without saving (save=False)")
    # The final state is hs[T] (and cs[T]); the other slots of hs and cs are internal and get no gradient.
    dh_n = d_hs[-1]
    dc_n = d_cs[-1] if cell == "lstm" else None
    dgx, dgh, dy, dcn, dh0, dc0, dhs = recurrence_backward(d_out, dh_n, dc_n, weight_hh, weight_hr, peephole, ln,
                                                           lengths, hs, cs, saved, xhat, stats, cell, relu, coupled,
                                                           reset_before)
    dgh = dgh if dgh.numel() else dgx  # (T, B, G·H): ∂L/∂(LN_hh(W_hh h_{t-1}) + b_hh)
    dy = dy if dy.numel() else dgh  # (T, B, G·H): ∂L/∂(W_hh h_{t-1})
    T, B, S = d_out.shape
    H = cs.shape[2] if cell == "lstm" else S  # only a projected LSTM's state is narrower than its cell
    # One GEMM over all steps, in the weights' dtype (accumulating in float32): dW_hh = Σ_t dy_tᵀ h_{t-1}; the n rows
    # of a reset-before GRU multiply q = r h_{t-1} instead.
    flat = dy.reshape(T * B, -1)
    d_weight = flat.t() @ hs[:-1].reshape(T * B, S)
    if reset_before:
        d_weight = torch.cat([d_weight[: 2 * H], flat[:, 2 * H:].t() @ q.reshape(T * B, H)])
    d_bias = dgh.sum((0, 1), dtype=torch.float32).to(weight_hh.dtype) if ctx.has_bias else None
    d_peephole = None
    if peephole is not None:
        c_prev, c_new = cs[:-1], cs[1:]
        da = dgx.float()
        if coupled:  # gate blocks i|g|o; p_f does not exist
            d_peephole = torch.stack([(da[..., :H] * c_prev).sum((0, 1)), torch.zeros_like(peephole[1]),
                                      (da[..., 2 * H:] * c_new).sum((0, 1))])
        else:  # gate blocks i|f|g|o
            d_peephole = torch.stack([(da[..., :H] * c_prev).sum((0, 1)), (da[..., H:2 * H] * c_prev).sum((0, 1)),
                                      (da[..., 3 * H:] * c_new).sum((0, 1))])
    d_ln = None
    if ln is not None:
        # LN(x) = x̂ w + b: ∂w = Σ ∂LN(x) x̂, ∂b = Σ ∂LN(x); LN_hh's output gradient is dgh, LN_c's is dcn, with
        # ĉ = (c_t - mean_c) rstd_c from the saved statistics.
        g = dgh.float()
        parts = [(g * xhat).sum((0, 1)), g.sum((0, 1))]
        if cell == "lstm":
            c_hat = (cs[1:] - stats[..., 1:2]) * stats[..., 2:3]
            parts += [(dcn * c_hat).sum((0, 1)), dcn.sum((0, 1))]
        d_ln = torch.cat(parts)
    # h_t = W_hr u_t: dW_hr = Σ_t ∂L/∂h_tᵀ u_t, one GEMM over all steps.
    d_weight_hr = None if weight_hr is None else dhs.reshape(T * B, S).t() @ us.reshape(T * B, -1)
    d_c0 = dc0.to(c0_dtype) if cell == "lstm" else None
    return (dgx.to(gx_dtype), d_weight, d_weight_hr, d_bias, d_peephole, d_ln, dh0.to(h0_dtype), d_c0,
            *[None] * 7)


recurrence.register_autograd(_backward, setup_context=_setup_context)
