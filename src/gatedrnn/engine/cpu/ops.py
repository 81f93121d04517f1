"""The cpu engine's recurrence as ``torch.library`` custom ops: what ``torch.compile``, ``torch.export`` and
``torch.func`` see of one layer and direction.

``gatedrnn::cpu_recurrence`` runs the forward kernels (``csrc/{lstm,gru,rnn}.cpp``), from the layer's input and
``W_ih`` or from a ready input projection; ``gatedrnn::cpu_recurrence_backward`` runs backpropagation through time.
Each has a fake implementation (the shapes of its outputs, for tracing) and a vmap rule. Neither has autograd of its
own: ``functions.RecurrenceFunction`` differentiates them (and supplies second derivatives).

Outputs of ``cpu_recurrence``: ``[out, h_n, (c_n), a, *saved]``. ``a`` is the input product ``W_ih x`` that a fused
``LN_ih`` needs in backward (empty otherwise), ``saved`` what the kernel keeps for backward (empty tensors without
``save``), per family:

- LSTM: ``gates, cs, hh, xhat_hh, rstd_hh, mean_c, rstd_c, stats_ih`` (see ``lstm.cpp``);
- GRU: ``gates, aux, xhat, rstd, stats_ih`` (``gru.cpp``);
- RNN: ``xhat, rstd, stats_ih`` (``rnn.cpp``).

Eager calls on plain tensors skip the op layer and run :func:`forward` and :func:`backward` directly (the same
code): the op's dispatch costs ~15 µs a call, more than a one-step generation call's kernel at batch 1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from . import build

LSTM_SAVED = ("gates", "cs", "hh", "xhat_hh", "rstd_hh", "mean_c", "rstd_c", "stats_ih")
GRU_SAVED = ("gates", "aux", "xhat", "rstd", "stats_ih")
RNN_SAVED = ("xhat", "rstd", "stats_ih")
SAVED = {"lstm": LSTM_SAVED, "gru": GRU_SAVED, "rnn": RNN_SAVED}


def _kernels():  # noqa: ANN202 - torch.ops namespaces have no static type
    """The compiled kernels, built or loaded on first use (an exported program may call the ops before any layer
    has run in this process)."""
    available, reason = build.status()
    if not available:
        raise RuntimeError(f"engine: the cpu engine is not available: {reason}")
    return torch.ops.gatedrnn_cpu


def state_count(cell: str) -> int:
    return 2 if cell == "lstm" else 1


def traced(*tensors: Tensor | None) -> bool:
    """Whether a call must go through the custom ops: while compiling or exporting, under a ``torch.func`` transform
    or a dispatch mode (fake tensors, functionalization), or for tensor subclasses."""
    if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
        return True
    if torch._C._len_torch_dispatch_stack() > 0:
        return True
    return any(t is not None and type(t) not in (Tensor, nn.Parameter) for t in tensors)


def _fresh(outputs: Sequence[Tensor]) -> list[Tensor]:
    """Outputs of a custom op may not alias one another: the kernels return one shared empty tensor for every
    result they did not save, and ``.to(dtype)`` of a tensor already in that dtype is the tensor itself."""
    seen: set[int] = set()
    result = []
    for t in outputs:
        if t.numel() == 0:
            t = t.new_empty(0)
        elif id(t) in seen:
            t = t.clone()
        seen.add(id(t))
        result.append(t)
    return result


def forward(x: Tensor, weight_ih: Tensor | None, bias_ih: Tensor | None, h0: Tensor, c0: Tensor | None,
            weight_hh: Tensor, bias_hh: Tensor | None, weight_hr: Tensor | None, weight_ci: Tensor | None,
            weight_cf: Tensor | None, weight_co: Tensor | None, ln_hh_weight: Tensor | None,
            ln_hh_bias: Tensor | None, ln_c_weight: Tensor | None, ln_c_bias: Tensor | None,
            ln_ih_weight: Tensor | None, ln_ih_shift: Tensor | None, lengths: Tensor | None, cell: str, relu: bool,
            coupled: bool, forget_bias: float, reset_before: bool, save: bool) -> list[Tensor]:
    """The forward kernels (the op's implementation). ``x`` is the layer's input ``(T, B, I)`` where ``weight_ih``
    is given, else the input projection: ``gx`` (``LN_ih(W_ih x) + b_ih``), or with ``ln_ih_weight`` the product
    ``a = W_ih x`` whose ``LN_ih`` (shift ``ln_ih_shift``, ``b_ih`` included) the kernels apply."""
    c = _contiguous
    kernels = _kernels()
    ln_ih = (c(ln_ih_weight), c(ln_ih_shift))
    if cell == "lstm":
        recurrent = (c(weight_hh), c(bias_hh), c(weight_hr), c(weight_ci), c(weight_cf), c(weight_co), c(ln_hh_weight),
                     c(ln_hh_bias), c(ln_c_weight), c(ln_c_bias), *ln_ih)
        states: tuple[Tensor, ...] = (h0.contiguous(), c0.contiguous())  # type: ignore[union-attr]
    else:
        recurrent = (c(weight_hh), c(bias_hh), c(ln_hh_weight), c(ln_hh_bias), *ln_ih)
        states = (h0.contiguous(),)
    lengths = c(lengths)
    flag = relu if cell == "rnn" else reset_before
    empty = x.new_empty(0)
    if weight_ih is not None and not save:
        # The kernels form the input projection a chunk of steps at a time and never hold all of it.
        head = (x, weight_ih.contiguous(), c(bias_ih), *states)
        if cell == "lstm":
            result = kernels.lstm_forward_input(*head, *recurrent, forget_bias, coupled, lengths)
        elif cell == "gru":
            result = kernels.gru_forward_input(*head, *recurrent, flag, lengths)
        else:
            result = kernels.rnn_forward_input(*head, *recurrent, flag, lengths)
        return _fresh([*result, empty, *[empty] * len(SAVED[cell])])
    a = kernels.input_product(x, weight_ih.contiguous(), c(bias_ih)) if weight_ih is not None else x.contiguous()
    if cell == "lstm":
        result = kernels.lstm_forward(a, *states, *recurrent, forget_bias, coupled, lengths, save)
    elif cell == "gru":
        result = kernels.gru_forward(a, *states, *recurrent, flag, lengths, save)
    else:
        result = kernels.rnn_forward(a, *states, *recurrent, flag, lengths, save)
    count = state_count(cell) + 1
    # W_ih x goes back only where it was made here and a fused LN_ih's backward needs it.
    kept = a if weight_ih is not None and save and ln_ih_weight is not None else empty
    return _fresh([*result[:count], kept, *result[count:]])


def backward(dout: Tensor, dh_n: Tensor, dc_n: Tensor | None, a: Tensor | None, h0: Tensor, c0: Tensor | None,
             out: Tensor, saved: list[Tensor], weight_hh: Tensor, bias_hh: Tensor | None, weight_hr: Tensor | None,
             weight_ci: Tensor | None, weight_cf: Tensor | None, weight_co: Tensor | None,
             ln_hh_weight: Tensor | None, ln_hh_bias: Tensor | None, ln_c_weight: Tensor | None,
             ln_c_bias: Tensor | None, ln_ih_weight: Tensor | None, ln_ih_shift: Tensor | None,
             lengths: Tensor | None, cell: str, relu: bool, coupled: bool, forget_bias: float,
             reset_before: bool) -> list[Tensor]:
    """The backward kernels (the op's implementation): ``a`` is ``W_ih x`` where ``LN_ih`` was fused, else None.

    Returns, per family (the kernels' order; sums over time and batch for the vector parameters):

    - LSTM: ``dgx, dW_hh, dh_proj, dh0, dc0, db, dln_hh_w, dln_c_w, dln_c_b, dp_i, dp_f, dp_o, dln_ih_w``
    - GRU: ``dgx, dW_hh, dh0, db, dln_hh_w, dln_ih_w, dln_ih_shift``
    - RNN: ``dgx, dW_hh, dh0, db, dln_hh_w, dln_ih_w``

    ``dgx`` is the gradient of the kernel's input projection (of ``a`` with a fused ``LN_ih``); ``db`` that of
    ``b_hh`` and of every shift added to the gates.
    """
    c = _contiguous
    kernels = _kernels()
    if cell == "lstm":
        gates, cs, _, xhat_hh, rstd_hh, mean_c, rstd_c, stats_ih = saved
        result = kernels.lstm_backward(
            dout, dh_n.contiguous(), dc_n.contiguous(), h0.contiguous(), c0.contiguous(),  # type: ignore[union-attr]
            c(weight_hh), c(bias_hh), c(ln_hh_bias), c(ln_ih_shift), forget_bias, c(weight_hr), c(weight_ci),
            c(weight_cf), c(weight_co), c(ln_hh_weight), c(ln_c_weight), c(ln_c_bias), c(ln_ih_weight), coupled,
            c(lengths), out, gates, cs, xhat_hh, rstd_hh, mean_c, rstd_c, c(a), stats_ih)
    elif cell == "gru":
        gates, aux, xhat, rstd, stats_ih = saved
        result = kernels.gru_backward(dout, dh_n.contiguous(), h0.contiguous(), c(weight_hh), c(ln_hh_weight),
                                      c(ln_ih_weight), reset_before, c(lengths), out, gates, aux, xhat, rstd, c(a),
                                      stats_ih)
    else:
        xhat, rstd, stats_ih = saved
        result = kernels.rnn_backward(dout, dh_n.contiguous(), h0.contiguous(), c(weight_hh), c(ln_hh_weight),
                                      c(ln_ih_weight), relu, c(lengths), out, xhat, rstd, c(a), stats_ih)
    return _fresh(result)


def _contiguous(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.contiguous()


# ---------------------------------------------------------------------------------------------------------------
# The custom ops.


@torch.library.custom_op("gatedrnn::cpu_recurrence", mutates_args=(), device_types="cpu")
def cpu_recurrence(x: Tensor, weight_ih: Tensor | None, bias_ih: Tensor | None, h0: Tensor, c0: Tensor | None,
                   weight_hh: Tensor, bias_hh: Tensor | None, weight_hr: Tensor | None, weight_ci: Tensor | None,
                   weight_cf: Tensor | None, weight_co: Tensor | None, ln_hh_weight: Tensor | None,
                   ln_hh_bias: Tensor | None, ln_c_weight: Tensor | None, ln_c_bias: Tensor | None,
                   ln_ih_weight: Tensor | None, ln_ih_shift: Tensor | None, lengths: Tensor | None, cell: str,
                   relu: bool, coupled: bool, forget_bias: float, reset_before: bool, save: bool) -> list[Tensor]:
    """One layer and direction of the cpu engine's recurrence (see :func:`forward` and the module docstring)."""
    return forward(x, weight_ih, bias_ih, h0, c0, weight_hh, bias_hh, weight_hr, weight_ci, weight_cf, weight_co,
                   ln_hh_weight, ln_hh_bias, ln_c_weight, ln_c_bias, ln_ih_weight, ln_ih_shift, lengths, cell, relu,
                   coupled, forget_bias, reset_before, save)


@cpu_recurrence.register_fake
def _(x, weight_ih, bias_ih, h0, c0, weight_hh, bias_hh, weight_hr, weight_ci, weight_cf, weight_co, ln_hh_weight,
      ln_hh_bias, ln_c_weight, ln_c_bias, ln_ih_weight, ln_ih_shift, lengths, cell, relu, coupled, forget_bias,
      reset_before, save):
    T, B = x.shape[0], x.shape[1]
    G = weight_hh.shape[0]
    P = h0.shape[1]
    empty = x.new_empty(0)

    def kept(*shape: Any, when: bool = True) -> Tensor:
        return x.new_empty(shape) if save and when else empty

    ln, ln_ih = ln_hh_weight is not None, ln_ih_weight is not None
    a = kept(T, B, G, when=weight_ih is not None and ln_ih)
    if cell == "lstm":
        H = c0.shape[1]
        proj = weight_hr is not None
        gates = kept(T, B, G, when=not (ln_ih and B > 1))  # lstm.cpp's recompute_gates
        saved = [gates, kept(T, B, H), kept(T, B, H, when=proj), kept(T, B, G, when=ln), kept(T, B, when=ln),
                 kept(T, B, when=ln), kept(T, B, when=ln), kept(T, B, 2, when=ln_ih)]
        return [x.new_empty(T, B, P), h0.new_empty(B, P), c0.new_empty(B, H), a, *saved]
    H = P
    if cell == "gru":
        saved = [kept(T, B, G), kept(T, B, H), kept(T, B, G, when=ln), kept(T, B, 2, when=ln),
                 kept(T, B, 2, when=ln_ih)]
    else:
        saved = [kept(T, B, H, when=ln), kept(T, B, when=ln), kept(T, B, 2, when=ln_ih)]
    return [x.new_empty(T, B, H), h0.new_empty(B, H), a, *saved]


@torch.library.custom_op("gatedrnn::cpu_recurrence_backward", mutates_args=(), device_types="cpu")
def cpu_recurrence_backward(dout: Tensor, dh_n: Tensor, dc_n: Tensor | None, a: Tensor | None, h0: Tensor,
                            c0: Tensor | None, out: Tensor, saved: list[Tensor], weight_hh: Tensor,
                            bias_hh: Tensor | None, weight_hr: Tensor | None, weight_ci: Tensor | None,
                            weight_cf: Tensor | None, weight_co: Tensor | None, ln_hh_weight: Tensor | None,
                            ln_hh_bias: Tensor | None, ln_c_weight: Tensor | None, ln_c_bias: Tensor | None,
                            ln_ih_weight: Tensor | None, ln_ih_shift: Tensor | None, lengths: Tensor | None,
                            cell: str, relu: bool, coupled: bool, forget_bias: float,
                            reset_before: bool) -> list[Tensor]:
    """Backpropagation through time of one layer and direction (see :func:`backward`)."""
    return backward(dout, dh_n, dc_n, a, h0, c0, out, saved, weight_hh, bias_hh, weight_hr, weight_ci, weight_cf,
                    weight_co, ln_hh_weight, ln_hh_bias, ln_c_weight, ln_c_bias, ln_ih_weight, ln_ih_shift, lengths,
                    cell, relu, coupled, forget_bias, reset_before)


@cpu_recurrence_backward.register_fake
def _(dout, dh_n, dc_n, a, h0, c0, out, saved, weight_hh, bias_hh, weight_hr, weight_ci, weight_cf, weight_co,
      ln_hh_weight, ln_hh_bias, ln_c_weight, ln_c_bias, ln_ih_weight, ln_ih_shift, lengths, cell, relu, coupled,
      forget_bias, reset_before):
    T, B, P = dout.shape
    G = weight_hh.shape[0]
    ln, ln_ih = ln_hh_weight is not None, ln_ih_weight is not None

    def vector(n: Any, when: bool = True) -> Tensor:
        return dout.new_empty(n if when else 0)

    dgx, dw_hh = dout.new_empty(T, B, G), dout.new_empty(G, P)
    if cell == "lstm":
        H = c0.shape[1]
        return [dgx, dw_hh, dout.new_empty((T, B, P) if weight_hr is not None else (0,)), dout.new_empty(B, P),
                dout.new_empty(B, H), vector(G), vector(G, ln), vector(H, ln), vector(H, ln),
                vector(H, weight_ci is not None), vector(H, weight_cf is not None), vector(H, weight_co is not None),
                vector(G, ln_ih)]
    if cell == "gru":
        return [dgx, dw_hh, dout.new_empty(B, P), vector(G), vector(G, ln), vector(G, ln_ih), vector(G, ln_ih)]
    return [dgx, dw_hh, dout.new_empty(B, P), vector(G), vector(G, ln), vector(G, ln_ih)]


# ---------------------------------------------------------------------------------------------------------------
# vmap rules. Sequences are independent along the batch, so a vmapped forward whose weights are shared folds the
# vmapped dimension into the batch: one kernel call for all of it. Anything else (batched weights, the backward,
# whose weight gradients must stay per vmapped sample) runs one call per vmapped index.

# Position of each tensor argument of cpu_recurrence.
_X, _WEIGHT_IH, _H0, _C0, _LENGTHS = 0, 1, 3, 4, 17
_ACTIVATIONS = {_X, _H0, _C0, _LENGTHS}


def _unbatched(tensor: Tensor | None, dim: int | None, index: int) -> Tensor | None:
    return tensor if tensor is None or dim is None else tensor.select(dim, index)


def _vmap_by_loop(op: Callable[..., list[Tensor]], batch_size: int, in_dims: Sequence[Any],
                  args: Sequence[Any]) -> tuple[list[Tensor], list[int]]:
    """``op`` once per vmapped index, the results stacked along a new first dimension."""
    calls = []
    for index in range(batch_size):
        call_args = []
        for arg, dim in zip(args, in_dims):
            if isinstance(arg, list):  # a Tensor[] argument: in_dims holds one dim per element
                call_args.append([_unbatched(t, d, index) for t, d in zip(arg, dim or [None] * len(arg))])
            else:
                call_args.append(_unbatched(arg, dim, index) if isinstance(arg, Tensor) else arg)
        calls.append(op(*call_args))
    outputs = [torch.stack(parts) for parts in zip(*calls)]
    return outputs, [0] * len(outputs)


def _fold(t: Tensor, dim: int | None, batch_size: int, batch_axis: int) -> Tensor:
    """A vmapped activation with its vmapped dimension folded into its batch axis (logical ``batch_axis``):
    ``(..., B, ...)`` per index becomes ``(..., V·B, ...)``, index-major."""
    t = t.movedim(dim, batch_axis) if dim is not None else t.unsqueeze(batch_axis).expand(
        *t.shape[:batch_axis], batch_size, *t.shape[batch_axis:])
    return t.flatten(batch_axis, batch_axis + 1)


def _unfold(t: Tensor, batch_size: int, batch_axis: int) -> tuple[Tensor, int | None]:
    if t.numel() == 0:
        return t, None
    return t.unflatten(batch_axis, (batch_size, -1)), batch_axis


@torch.library.register_vmap("gatedrnn::cpu_recurrence")
def _(info, in_dims, *args):
    batch_size = info.batch_size
    if any(dim is not None for k, dim in enumerate(in_dims) if k not in _ACTIVATIONS):
        return _vmap_by_loop(cpu_recurrence, batch_size, in_dims, args)
    args = list(args)
    # x (T, B, ·) and lengths (B,) fold along their batch axis; h0, c0 (B, ·) along axis 0.
    for k, axis in ((_X, 1), (_H0, 0), (_C0, 0), (_LENGTHS, 0)):
        if args[k] is not None:
            args[k] = _fold(args[k], in_dims[k], batch_size, axis)
    outputs = cpu_recurrence(*args)
    cell = args[18]
    count = state_count(cell)
    dims: list[int | None] = []
    result = []
    for k, t in enumerate(outputs):
        # out, a and every saved tensor are (T, V·B, ...); the final states (V·B, ·)
        t, dim = _unfold(t, batch_size, 0 if 1 <= k <= count else 1)
        result.append(t)
        dims.append(dim)
    return result, dims


@torch.library.register_vmap("gatedrnn::cpu_recurrence_backward")
def _(info, in_dims, *args):
    return _vmap_by_loop(cpu_recurrence_backward, info.batch_size, in_dims, args)
