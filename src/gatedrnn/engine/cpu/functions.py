"""The autograd layer of the cpu engine: :class:`RecurrenceFunction` differentiates the recurrence ops of
``ops.py``, and :func:`recurrence` is the engine's one entry point.

First derivatives run in C++: backpropagation through time, which also returns the recurrent parameters'
gradients (W_hh's as GEMMs over chunks of steps; the vector parameters', sums over time and batch taken step by step
while each step's rows are in cache). ``W_hr``'s (proj_size), ``W_ih``'s and the input's are GEMMs over all steps
here. Without autograd (``torch.no_grad()`` or nothing requiring a gradient) the forward kernels run without saving,
and from the layer's input they never hold the whole input projection.

Derivatives of any higher order — a backward with ``create_graph=True`` (gradient penalties, meta-learning),
``torch.func.grad``, ``vmap(grad)`` (per-sample gradients), ``jacrev``, ``hessian`` — and forward-mode ones
(``torch.func.jvp``, ``jacfwd``) are those of the reference engine: the backward (or jvp) recomputes the layer and
direction with the cell spec's step function looped over time, from the same inputs, and differentiates that
(``torch.func.vjp``/``jvp``, so it composes with every transform). Nothing to ask for: it happens whenever a graph of
the gradient is being built.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch._C._functorch import TransformType
from torch.autograd.function import FunctionCtx

from ...cells import CellSpec, GRUSpec, LSTMSpec, RNNSpec, State
from ...cells.base import layer_norm
from ..reference import loop
from . import ops

TENSORS = ("x", "weight_ih", "bias_ih", "h0", "c0", "weight_hh", "bias_hh", "weight_hr", "weight_ci", "weight_cf",
           "weight_co", "ln_hh_weight", "ln_hh_bias", "ln_c_weight", "ln_c_bias", "ln_ih_weight", "ln_ih_shift",
           "lengths")
"""The tensor arguments of ``gatedrnn::cpu_recurrence``, in order; the options (``cell``, ``relu``, ``coupled``,
``forget_bias``, ``reset_before``) follow them."""
_N = len(TENSORS)
_LENGTHS = TENSORS.index("lengths")


def recurrence(spec: CellSpec, x: Tensor, params: Mapping[str, Tensor], state: State, lengths: Tensor | None, *,
               from_input: bool, fused_norm: bool) -> tuple[Tensor, State]:
    """One layer and direction (the :class:`~gatedrnn.engine.base.Engine` contract). ``x`` is the layer's input
    with ``from_input`` (``run_input``), else the input projection: ``gx`` (``run``), or with ``fused_norm`` the product
    ``W_ih x`` (``run_product``), whose ``LN_ih`` (and ``b_ih``) the kernels apply."""
    ln_ih = spec.input_norm(params) if fused_norm else None  # LN_ih's gain, and its shift + b_ih
    lstm = isinstance(spec, LSTMSpec)
    tensors = (
        x, params["weight_ih"] if from_input else None, spec.input_bias(params) if from_input else None, state[0],
        state[1] if lstm else None, params["weight_hh"], params.get("bias_hh"), params.get("weight_hr"),
        params.get("weight_ci"), params.get("weight_cf"), params.get("weight_co"), params.get("ln_hh_weight"),
        params.get("ln_hh_bias"), params.get("ln_c_weight"), params.get("ln_c_bias"),
        *(ln_ih if ln_ih is not None else (None, None)), lengths,
    )
    options = _options(spec)
    count = ops.state_count(spec.family)
    if torch.autograd.forward_ad._current_level >= 0:
        # Forward-mode AD outside torch.func (dual tensors): the reference layer, whose ops all have forward
        # derivatives (a custom jvp cannot nest a second dual level).
        outputs = reference_layer(tensors, options)
    elif _differentiated(tensors):
        function = RecurrenceFunction if torch.compiler.is_compiling() else ForwardModeRecurrenceFunction
        outputs = function.apply(*tensors, *options)
    elif ops.traced(*tensors):
        outputs = ops.cpu_recurrence(*tensors, *options, False)
    else:
        outputs = ops.forward(*tensors, *options, False)
    return outputs[0], tuple(outputs[1 : 1 + count])


def _differentiated(tensors: tuple[Tensor | None, ...]) -> bool:
    """Whether autograd records the call, or a ``torch.func`` transform differentiates it (``grad``, ``jvp`` and
    what is made of them; ``vmap`` alone only batches)."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return True
    if not torch._C._are_functorch_transforms_active():
        return False
    transforms = {i.key() for i in torch._C._functorch.get_interpreter_stack() or ()}
    return bool(transforms & {TransformType.Grad, TransformType.Jvp})


def _options(spec: CellSpec) -> tuple[str, bool, bool, float, bool]:
    """``(cell, relu, coupled, forget_bias, reset_before)`` of the ops."""
    if isinstance(spec, LSTMSpec):
        return "lstm", False, spec.coupled, float(spec.forget_bias), False
    if isinstance(spec, GRUSpec):
        return "gru", False, False, 0.0, spec.reset == "before"
    if isinstance(spec, RNNSpec):
        return "rnn", spec.nonlinearity == "relu", False, 0.0, False
    raise ValueError(f"engine: 'cpu' does not run {type(spec).__name__}")


def _spec(tensors: tuple[Tensor | None, ...], options: tuple[Any, ...]) -> CellSpec:
    """The cell spec of an op call, from its options and which parameters it was given."""
    t = dict(zip(TENSORS, tensors))
    cell, relu, coupled, forget_bias, reset_before = options
    bias, norm = t["bias_hh"] is not None, t["ln_hh_weight"] is not None
    if cell == "lstm":
        proj = t["weight_hr"]
        return LSTMSpec(t["c0"].shape[-1], bias, norm, proj_size=0 if proj is None else proj.shape[0],
                        peephole=t["weight_ci"] is not None, coupled=coupled, forget_bias=forget_bias)
    H = t["h0"].shape[-1]
    if cell == "gru":
        return GRUSpec(H, bias, norm, reset="before" if reset_before else "after")
    return RNNSpec(H, bias, norm, nonlinearity="relu" if relu else "tanh")


def reference_layer(tensors: tuple[Tensor | None, ...], options: tuple[Any, ...]) -> tuple[Tensor, ...]:
    """What an op call computes, in plain PyTorch: the input projection, then the reference engine's loop of the
    cell spec's step. Returns ``(out, h_n[, c_n])``."""
    t = dict(zip(TENSORS, tensors))
    spec = _spec(tensors, options)
    gx = t["x"] if t["weight_ih"] is None else F.linear(t["x"], t["weight_ih"], t["bias_ih"])
    if t["ln_ih_weight"] is not None:
        gx = layer_norm(gx, t["ln_ih_weight"], t["ln_ih_shift"])
    recurrent = ("weight_hh", "bias_hh", "weight_hr", "weight_ci", "weight_cf", "weight_co", "ln_hh_weight",
                 "ln_hh_bias", "ln_c_weight", "ln_c_bias")
    params = {name: t[name] for name in recurrent if t[name] is not None}
    state = (t["h0"], t["c0"]) if options[0] == "lstm" else (t["h0"],)
    out, final = loop(spec, gx, params, state, t["lengths"])
    return (out, *final)


def _differentiable(tensors: tuple[Tensor | None, ...]) -> list[int]:
    return [k for k, t in enumerate(tensors) if t is not None and k != _LENGTHS]


def _reference_vjp(tensors: tuple[Tensor | None, ...], options: tuple[Any, ...],
                   grads: tuple[Tensor, ...]) -> list[Tensor | None]:
    """The gradients of :func:`reference_layer` for the output gradients ``grads``, themselves differentiable."""
    present = _differentiable(tensors)

    def layer(*values: Tensor) -> tuple[Tensor, ...]:
        args = list(tensors)
        for k, v in zip(present, values):
            args[k] = v
        return reference_layer(tuple(args), options)

    result: list[Tensor | None] = [None] * _N
    if torch._C._are_functorch_transforms_active():
        _, vjp = torch.func.vjp(layer, *(tensors[k] for k in present))
        for k, g in zip(present, vjp(grads)):
            result[k] = g
        return result
    # Plain autograd (a backward with create_graph=True): differentiate the recomputed graph directly, several times
    # faster than through torch.func's wrappers. Only what requires a gradient can take part at any order.
    wanted = [k for k in present if tensors[k].requires_grad]
    if not wanted:
        return result
    with torch.enable_grad():
        outputs = reference_layer(tensors, options)
    found = torch.autograd.grad(outputs, [tensors[k] for k in wanted], grads, create_graph=True, allow_unused=True)
    for k, g in zip(wanted, found):
        result[k] = g
    return result


class RecurrenceFunction(torch.autograd.Function):
    """``gatedrnn::cpu_recurrence`` with its derivatives: the backward kernels for first derivatives, the reference
    engine's for any graph of the gradient (see the module docstring).

    Arguments: the tensors of ``TENSORS`` then the options; outputs: those of the op (``ops.py``), of which only
    ``out`` and the final states are differentiable."""

    generate_vmap_rule = True

    @staticmethod
    def forward(*args: Any) -> tuple[Tensor, ...]:
        tensors, options = args[:_N], args[_N:]
        run = ops.cpu_recurrence if ops.traced(*tensors) else ops.forward
        return tuple(run(*tensors, *options, True))

    @staticmethod
    def setup_context(ctx: FunctionCtx, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        tensors, options = inputs[:_N], inputs[_N:]
        count = ops.state_count(options[0])
        kept = output[1 + count:]  # a, then the kernel's saved tensors
        ctx.mark_non_differentiable(*kept)
        ctx.save_for_backward(*tensors, output[0], *kept)
        ctx.save_for_forward(*tensors)
        ctx.options = options
        ctx.count = count

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor | None, ...]:
        saved = ctx.saved_tensors
        tensors, out, a, kernel_saved = saved[:_N], saved[_N], saved[_N + 1], list(saved[_N + 2:])
        options, count = ctx.options, ctx.count
        state_grads = grads[: 1 + count]
        if torch.is_grad_enabled():  # a graph of the gradient is being built: the reference's derivatives
            return (*_reference_vjp(tensors, options, state_grads), *[None] * len(options))
        return (*_kernel_gradients(ctx, tensors, out, a, kernel_saved, state_grads), *[None] * len(options))


class ForwardModeRecurrenceFunction(RecurrenceFunction):
    """:class:`RecurrenceFunction` with forward-mode derivatives (``torch.func.jvp``, ``jacfwd``, ``hessian``), the
    reference engine's. Eager only: ``torch.compile`` cannot trace a custom ``jvp``, and compiles
    :class:`RecurrenceFunction` instead."""

    @staticmethod
    def jvp(ctx: Any, *tangents: Tensor | None) -> tuple[Tensor | None, ...]:
        tensors = tuple(ctx.saved_tensors)  # what setup_context saved for forward mode: the op's tensor arguments
        present = _differentiable(tensors)

        def layer(*values: Tensor) -> tuple[Tensor, ...]:
            args = list(tensors)
            for k, v in zip(present, values):
                args[k] = v
            return reference_layer(tuple(args), ctx.options)

        primals = tuple(tensors[k] for k in present)
        directions = tuple(torch.zeros_like(p) if tangents[k] is None else tangents[k]
                           for k, p in zip(present, primals))
        _, out_tangents = torch.func.jvp(layer, primals, directions)
        kept = len(ops.SAVED[ctx.options[0]]) + 1
        return (*out_tangents, *[None] * kept)


def _kernel_gradients(ctx: Any, tensors: tuple[Tensor | None, ...], out: Tensor, a: Tensor,
                      kernel_saved: list[Tensor], grads: tuple[Tensor, ...]) -> list[Tensor | None]:
    """First derivatives from the backward kernels, then the GEMMs of W_ih, the input and W_hr."""
    t = dict(zip(TENSORS, tensors))
    cell, relu, coupled, forget_bias, reset_before = ctx.options
    need = dict(zip(TENSORS, ctx.needs_input_grad))
    from_input = t["weight_ih"] is not None
    fused = t["ln_ih_weight"] is not None
    # W_ih x for a fused LN_ih: made by the forward op from the layer's input, or the op's input itself.
    product = (a if from_input else t["x"]) if fused else None
    args = (grads[0], grads[1], grads[2] if cell == "lstm" else None, product, t["h0"], t["c0"], out, kernel_saved,
            t["weight_hh"], t["bias_hh"], t["weight_hr"], t["weight_ci"], t["weight_cf"], t["weight_co"],
            t["ln_hh_weight"], t["ln_hh_bias"], t["ln_c_weight"], t["ln_c_bias"], t["ln_ih_weight"],
            t["ln_ih_shift"], t["lengths"], cell, relu, coupled, forget_bias, reset_before)
    run = ops.cpu_recurrence_backward if ops.traced(*grads, *tensors) else ops.backward
    result = run(*args)
    d: dict[str, Tensor | None] = {}
    if cell == "lstm":
        (dgx, d["weight_hh"], dh_proj, d["h0"], d["c0"], db, d["ln_hh_weight"], d["ln_c_weight"], d["ln_c_bias"],
         d["weight_ci"], d["weight_cf"], d["weight_co"], d["ln_ih_weight"]) = result
        d["ln_ih_shift"] = db
        if t["weight_hr"] is not None and need["weight_hr"]:
            hh = kernel_saved[ops.LSTM_SAVED.index("hh")]  # o * tanh(LN_c(c_t)), the projection's input
            d["weight_hr"] = dh_proj.reshape(-1, dh_proj.shape[2]).t() @ hh.reshape(-1, hh.shape[2])
    elif cell == "gru":
        dgx, d["weight_hh"], d["h0"], db, d["ln_hh_weight"], d["ln_ih_weight"], d["ln_ih_shift"] = result
    else:
        dgx, d["weight_hh"], d["h0"], db, d["ln_hh_weight"], d["ln_ih_weight"] = result
        d["ln_ih_shift"] = db
    d["bias_hh"] = d["ln_hh_bias"] = db
    if from_input:
        x, w = t["x"], t["weight_ih"]
        flat = dgx.reshape(-1, dgx.shape[2])  # (T·B, G·H)
        if need["x"]:
            d["x"] = (flat @ w).reshape(x.shape)
        if need["weight_ih"]:
            d["weight_ih"] = flat.t() @ x.reshape(-1, x.shape[2])
        if t["bias_ih"] is not None and need["bias_ih"]:
            d["bias_ih"] = flat.sum(0)
    else:
        d["x"] = dgx
    return [d.get(name) if t[name] is not None and need[name] else None for name in TENSORS]
