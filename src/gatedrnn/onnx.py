r"""ONNX export: what each layer and direction becomes in an ONNX graph, and :func:`export_onnx`.

While ``torch.onnx.export`` runs (either exporter), layers hand each layer and direction to :data:`ENGINE`, the
export engine, in place of their compute engine. It writes the recurrence so that the graph runs at any batch size
and sequence length:

======================================================  ==========================================================
cell                                                    ONNX
======================================================  ==========================================================
LSTM, with ``peephole``, ``coupled``, ``forget_bias``   ``LSTM`` (peepholes in ``P``, ``input_forget=1``, the
                                                        forget bias folded into ``B``)
GRU, ``reset="after"`` / ``"before"``                   ``GRU`` (``linear_before_reset=1`` / ``0``)
RNN, tanh / relu                                        ``RNN`` (``activations=["Tanh"]`` / ``["Relu"]``)
``layer_norm``, ``proj_size`` (any family)              ``Scan`` (the dynamo exporter) or ``Loop`` (the
                                                        TorchScript exporter) over time of the cell's step
======================================================  ==========================================================

ONNX's recurrent ops and ``torch.nn`` order the gate blocks differently; the weights are reordered in the graph
(constants that the exporters fold): LSTM ``i|f|g|o`` → ``i|o|f|c``, GRU ``r|z|n`` → ``z|r|h``; a coupled LSTM
(blocks ``i|g|o``) gets zero forget-gate rows, which ``input_forget=1`` ignores (``f = 1 - i``); peepholes go to ``P``
as ``[p_i, p_o, p_f]``. ``lengths`` (and a ``PackedSequence``'s lengths) become ``sequence_lens``: outputs past
each length are zero and the final state is the one at each sequence's last step, as in eager. Every other part of
a layer — batch-first transposes, the reversal of each sequence for the backward direction, stacking layers,
concatenating directions — is ordinary tensor code that exports as it is.

``Scan`` and ``Loop`` run the cell spec's own ``step`` (``cells/*.py``): the dynamo exporter through
``torch.ops.higher_order.scan``, the TorchScript exporter through a TorchScript loop around the traced step. Either
way the graph holds one step's nodes, whatever the sequence length.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .cells import CellSpec, GRUSpec, LSTMSpec, RNNSpec, State
from .engine.base import Engine
from .engine.reference import loop as reference_loop

OPSET = 18
"""The ONNX opset :func:`export_onnx` asks for (onnxruntime runs it; the legacy exporter supports it)."""


EXPORTED_SPECS: tuple[type[CellSpec], ...] = (LSTMSpec, GRUSpec, RNNSpec)
"""The cell specs whose layers export (the classic families, every option); other families raise an error."""

_NATIVE_OPTIONS: dict[type[CellSpec], tuple[str, set[str]]] = {
    LSTMSpec: ("LSTM", {"hidden_size", "bias", "peephole", "coupled", "forget_bias"}),
    GRUSpec: ("GRU", {"hidden_size", "bias", "reset"}),
    RNNSpec: ("RNN", {"hidden_size", "bias", "nonlinearity"}),
}
"""Each classic spec's ONNX op and the options that op expresses; an option set outside these runs as a loop."""


def native_op(spec: CellSpec) -> str | None:
    """The ONNX recurrent op (``"LSTM"``, ``"GRU"``, ``"RNN"``) that computes ``spec``, or None where none does
    (layer norm, projection, any other option): those run as a ``Scan``/``Loop`` of the cell's step."""
    if type(spec) not in _NATIVE_OPTIONS:
        return None
    op, expressed = _NATIVE_OPTIONS[type(spec)]
    default = type(spec)(hidden_size=spec.hidden_size)
    changed = {f.name for f in dataclasses.fields(spec) if getattr(spec, f.name) != getattr(default, f.name)}
    return op if changed <= expressed else None


class NoONNXForm(NotImplementedError, ValueError):
    """A layer with no ONNX form: a ``NotImplementedError``, and a ``ValueError`` (the command line's one-line
    error)."""


def check_exportable(spec: CellSpec) -> None:
    """Raise an error naming the cell where its layer has no ONNX form."""
    if type(spec) not in EXPORTED_SPECS:
        raise NoONNXForm(
            f"ONNX export: {type(spec).__name__} ({spec.family}) has no ONNX form yet; the LSTM, GRU and RNN "
            f"layers (every option) export")


def _blocks(t: Tensor, spec: CellSpec) -> dict[str, Tensor]:
    """``t``'s gate blocks along dim 0, by gate name (slices, which the exporters fold on constant weights)."""
    H = spec.hidden_size
    return {name: t[k * H : (k + 1) * H] for k, name in enumerate(spec.gate_names)}


_ONNX_ORDER = {"lstm": "iofg", "gru": "zrn", "rnn": "h"}
"""Gate blocks in ONNX's order, in our gate names (ONNX's LSTM ``c`` is our ``g``, GRU's ``h`` our ``n``)."""


def _onnx_order(t: Tensor, spec: CellSpec, shift: float = 0.0) -> Tensor:
    """``t`` ``(G·H, ...)`` with its gate blocks in ONNX's order; a coupled LSTM's missing forget block is zeros,
    ``shift`` is added to the forget block (an LSTM's forget bias)."""
    blocks = _blocks(t, spec)
    if "f" not in blocks and spec.family == "lstm":
        blocks["f"] = torch.zeros_like(blocks["i"])
    if shift:
        blocks["f"] = blocks["f"] + shift
    return torch.cat([blocks[name] for name in _ONNX_ORDER[spec.family]], 0)


def native_inputs(spec: CellSpec, x: Tensor, params: Mapping[str, Tensor], state: State,
                  lengths: Tensor | None) -> tuple[list[Tensor | None], dict[str, Any]]:
    """The inputs and attributes of the ONNX op of :func:`native_op`, one direction: ``X, W, R, B, sequence_lens,
    initial_h`` (``, initial_c, P`` for LSTM) and ``hidden_size`` with the op's variant attributes."""
    H = spec.hidden_size
    W = _onnx_order(params["weight_ih"], spec)[None]  # (1, G'·H, I)
    R = _onnx_order(params["weight_hh"], spec)[None]  # (1, G'·H, H)
    forget_bias = float(getattr(spec, "forget_bias", 0.0))
    if spec.bias:
        B = torch.cat([_onnx_order(params["bias_ih"], spec, forget_bias), _onnx_order(params["bias_hh"], spec)])[None]
    elif forget_bias:
        zeros = params["weight_ih"].new_zeros(spec.gate_size)
        B = torch.cat([_onnx_order(zeros, spec, forget_bias), _onnx_order(zeros, spec)])[None]
    else:
        B = None
    seq = lengths.to(torch.int32) if lengths is not None else None
    inputs: list[Tensor | None] = [x, W, R, B, seq, state[0][None]]
    attrs: dict[str, Any] = {"hidden_size": H}
    if isinstance(spec, LSTMSpec):
        inputs.append(state[1][None])
        if spec.peephole:
            p_f = params["weight_cf"] if not spec.coupled else torch.zeros_like(params["weight_ci"])
            inputs.append(torch.cat([params["weight_ci"], params["weight_co"], p_f])[None])  # (1, 3H): [i, o, f]
        attrs["input_forget"] = int(spec.coupled)
    elif isinstance(spec, GRUSpec):
        attrs["linear_before_reset"] = int(spec.reset == "after")
    elif isinstance(spec, RNNSpec):
        attrs["activations"] = ["Relu" if spec.nonlinearity == "relu" else "Tanh"]
    return inputs, attrs


def active_steps(gx: Tensor, lengths: Tensor | None) -> Tensor:
    """``(T, B)`` bool: whether step ``t`` of sequence ``b`` is within its length (all true without lengths)."""
    if lengths is None:
        return gx.new_ones(gx.shape[:2], dtype=torch.bool)
    steps = torch.arange(gx.shape[0], device=gx.device).unsqueeze(1)  # (T, 1)
    return steps < lengths.to(gx.device).unsqueeze(0)


def _recurrent_names(spec: CellSpec, params: Mapping[str, Tensor]) -> tuple[str, ...]:
    """The parameters ``spec.step`` reads: all but those of the input projection, which is done before the loop."""
    return tuple(name for name in params if name not in ("weight_ih", "bias_ih", "ln_ih_weight", "ln_ih_bias"))


class ExportEngine(Engine):
    """What layers run while ``torch.onnx.export`` traces them: ONNX's recurrent op where it computes the cell,
    else a ``Scan``/``Loop`` of the cell's step (see the module docstring). Its eager values are the reference
    engine's, so the exporters' tracing sees the numbers the model computes. It is not in the engine registry:
    layers take it while exporting, never by name."""

    name = "onnx"
    priority = -1

    def status(self) -> tuple[bool, str]:
        return True, "the layers' form in an ONNX graph; runs while torch.onnx.export traces a model"

    def covers(self, spec: CellSpec, x: Tensor) -> bool:
        return x.is_floating_point()

    def run_input(self, spec: CellSpec, x: Tensor, params: Mapping[str, Tensor], state: State,
                  lengths: Tensor | None) -> tuple[Tensor, State]:
        check_exportable(spec)
        op = native_op(spec)
        if op is None:
            return super().run_input(spec, x, params, state, lengths)
        inputs, attrs = native_inputs(spec, x, params, state, lengths)
        if torch.jit.is_tracing():
            outputs = _NativeNode.apply(spec, op, tuple(attrs.items()), tuple(params), len(inputs), *inputs, *state,
                                        lengths, *params.values())
        else:
            T, B, H = x.shape[0], x.shape[1], spec.hidden_size
            outputs = torch.onnx.ops.symbolic_multi_out(op, inputs, attrs, dtypes=[x.dtype] * (1 + len(state)),
                                                        shapes=[(T, 1, B, H)] + [(1, B, H)] * len(state))
        return outputs[0].squeeze(1), tuple(s.squeeze(0) for s in outputs[1:])

    def run(self, spec: CellSpec, gx: Tensor, params: Mapping[str, Tensor], state: State,
            lengths: Tensor | None) -> tuple[Tensor, State]:
        active = active_steps(gx, lengths)
        names = _recurrent_names(spec, params)
        weights = [params[name] for name in names]
        if torch.jit.is_tracing():
            loop = _script_loop(spec, names, tuple(tuple(w.shape) for w in weights), gx.dtype)
            zero = gx.new_zeros(())  # outputs past each length, in the layer's dtype (a scripted zeros_like has none)
            out, final = loop(gx, list(state), active, zero, weights)
            # The loop's results have no static rank in the TorchScript graph; reshaping gives them theirs, which
            # what follows (a batch-first transpose) needs.
            T, B = gx.shape[0], gx.shape[1]
            final = [s.reshape(B, w) for s, w in zip(final, spec.state_widths())]
            return out.reshape(T, B, spec.state_size), tuple(final)
        return _scan(spec, names, gx, state, active, weights)


ENGINE = ExportEngine()


class _NativeNode(torch.autograd.Function):
    """One ONNX recurrent node for the TorchScript exporter: ``symbolic`` writes the node, ``forward`` computes its
    values with the reference engine from the layer's own tensors (passed after the node's inputs, so that the
    tracer sees every tensor it reads)."""

    @staticmethod
    def forward(ctx: Any, spec: CellSpec, op: str, attrs: tuple, order: tuple[str, ...], n_inputs: int,
                *tensors: Tensor | None) -> tuple[Tensor, ...]:
        x = tensors[0]
        count = len(spec.state_names)
        rest = tensors[n_inputs:]
        state, lengths, values = tuple(rest[:count]), rest[count], rest[count + 1 :]
        params = dict(zip(order, values))
        out, final = reference_loop(spec, spec.input_projection(x, params), params, state, lengths)
        return (out.unsqueeze(1), *(s.unsqueeze(0) for s in final))

    @staticmethod
    def symbolic(g: Any, spec: CellSpec, op: str, attrs: tuple, order: tuple[str, ...], n_inputs: int,
                 *tensors: Any) -> Any:
        inputs = []
        for value in tensors[:n_inputs]:
            if value is None or (hasattr(value, "node") and value.node().mustBeNone()):
                value = g.op("prim::Constant")
                value.setType(torch._C.OptionalType.ofTensor())
            inputs.append(value)
        suffix = {int: "_i", str: "_s", list: "_s"}
        kwargs = {name + suffix[type(value)]: value for name, value in attrs}
        return g.op(op, *inputs, outputs=1 + len(spec.state_names), **kwargs)


def _scan(spec: CellSpec, names: Sequence[str], gx: Tensor, state: State, active: Tensor,
          weights: Sequence[Tensor]) -> tuple[Tensor, State]:
    """The recurrence as ``torch.ops.higher_order.scan`` of ``spec.step``: ONNX ``Scan`` in the dynamo exporter."""
    from torch._higher_order_ops.scan import scan

    params = dict(zip(names, weights))

    def combine(carry: list[Tensor], xs: tuple[Tensor, Tensor]) -> tuple[list[Tensor], Tensor]:
        gx_t, active_t = xs
        new = spec.step(gx_t, tuple(carry), params)
        keep = active_t.unsqueeze(1)  # (B, 1)
        carry = [torch.where(keep, n, old) for n, old in zip(new, carry)]
        return carry, torch.where(keep, carry[0], 0.0)

    final, out = scan(combine, list(state), (gx, active))
    return out, tuple(final)


@functools.lru_cache(maxsize=64)
def _script_loop(spec: CellSpec, names: tuple[str, ...], shapes: tuple[tuple[int, ...], ...],
                 dtype: torch.dtype) -> Any:
    """A TorchScript loop over time around ``spec.step`` traced once: ONNX ``Loop`` in the TorchScript exporter.

    The step is traced with random inputs of the layer's shapes and dtype, which the exported body keeps (from a
    generator of its own: the caller's random state is left as it was), outside the exporter's trace, whose tracer
    would otherwise record the step's example run into the model's graph."""

    def step(gx_t: Tensor, state: list[Tensor], weights: list[Tensor]) -> list[Tensor]:
        return list(spec.step(gx_t, tuple(state), dict(zip(names, weights))))

    tracing = torch._C._get_tracing_state()
    torch._C._set_tracing_state(None)
    try:
        generator = torch.Generator().manual_seed(0)
        example_state = [torch.randn(2, w, generator=generator, dtype=dtype) for w in spec.state_widths()]
        example = (torch.randn(2, spec.gate_size, generator=generator, dtype=dtype), example_state,
                   [torch.randn(s, generator=generator, dtype=dtype) for s in shapes])
        traced = torch.jit.trace(step, example, check_trace=False)

        def loop(gx: Tensor, state: list[Tensor], active: Tensor, zero: Tensor,
                 weights: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
            outs = []
            for t in range(gx.size(0)):
                new = traced(gx[t], state, weights)
                keep = active[t].unsqueeze(1)
                state = [torch.where(keep, n, old) for n, old in zip(new, state)]
                outs.append(torch.where(keep, state[0], zero))
            return torch.stack(outs), state

        return torch.jit.script(loop)
    finally:
        torch._C._set_tracing_state(tracing)


def export_onnx(model: nn.Module, args: tuple[Any, ...], path: str | os.PathLike[str], *, dynamo: bool = True,
                input_names: Sequence[str] | None = None, output_names: Sequence[str] | None = None,
                dynamic: Mapping[str, Mapping[int, str]] | None = None, opset: int = OPSET) -> None:
    """Export ``model`` (holding gatedrnn layers, or anything else) to ``path`` with either exporter.

    ``dynamic`` names the dynamic axes of each input, by input name: ``{"x": {0: "T", 1: "B"}}``; one name used by
    several inputs is one dimension. ``dynamo=True`` (the default) runs ``torch.onnx.export(dynamo=True)`` with
    the matching ``dynamic_shapes``; ``dynamo=False`` the TorchScript exporter with ``dynamic_axes``. The model is
    exported in eval mode (dropout off) and given back in the mode it had.
    """
    names = list(input_names) if input_names is not None else [f"input_{k}" for k in range(len(args))]
    if len(names) != len(args):
        raise ValueError(f"input_names: expected {len(args)} names, one per argument, got {len(names)}")
    dynamic = dict(dynamic or {})
    unknown = set(dynamic) - set(names)
    if unknown:
        raise ValueError(f"dynamic: no input named {sorted(unknown)[0]!r}; inputs: {', '.join(names)}")
    for module in model.modules():
        spec = getattr(module, "spec", None)
        if isinstance(spec, CellSpec):
            check_exportable(spec)
    training = model.training
    model.eval()
    try:
        if dynamo:
            dims: dict[str, Any] = {}
            shapes = []
            for name in names:
                axes = dynamic.get(name)
                shapes.append({axis: dims.setdefault(dim, torch.export.Dim(dim)) for axis, dim in axes.items()}
                              if axes else None)
            program = torch.onnx.export(model, tuple(args), dynamo=True, input_names=names, output_names=output_names,
                                        dynamic_shapes=tuple(shapes), opset_version=opset, verbose=False)
            program.save(os.fspath(path))
        else:
            torch.onnx.export(model, tuple(args), os.fspath(path), dynamo=False, input_names=names,
                              output_names=output_names, dynamic_axes=dict(dynamic), opset_version=opset)
    finally:
        model.train(training)
