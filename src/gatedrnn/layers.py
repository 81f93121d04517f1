"""The ``torch.nn``-compatible modules: sequence layers (``LSTM``, ``GRU``, ``RNN``) and single-step cells.

A layer validates its input, brings it to the padded time-major form (``sequence.py``), computes the input
projection of all time steps in one GEMM, hands the recurrence of each layer and direction to an engine
(``engines/``), and stacks layers and directions exactly as ``torch.nn`` does. It never loops over time itself.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, overload

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.rnn import PackedSequence

from . import engine as engine_registry
from . import onnx as onnx_export
from .cells import CellSpec, ClockworkSpec, DepthGatedLSTMSpec, GridLSTMSpec, GRUSpec, LSTMSpec, RNNSpec, State
from .checks import (
    ShapeError,
    check_bool,
    check_choice,
    check_dropout,
    check_finite_float,
    check_flag,
    check_input,
    check_like,
    check_size,
    check_tensor,
)
from .sequence import from_padded, reverse_padded, to_padded

_Module = TypeVar("_Module", bound="_TorchConversion")

Tap = Callable[..., tuple[Tensor, State]]
"""``tap(spec, engine, layer, direction, gx, params, state, lengths) -> (out, final_state)``; see
``_Recurrent._tap``."""

_FOREIGN_OPTIONS = {
    "proj_size": "projections exist only for LSTM",
    "peephole": "peephole connections read the cell state, which only LSTM has",
    "coupled": "coupled input-forget gates (f = 1 - i) exist only for LSTM; {cls} has no forget gate",
    "forget_bias": "only LSTM has a forget gate",
    "reset": "the reset gate's placement exists only for GRU",
    "nonlinearity": "the choice of nonlinearity exists only for RNN",
    "depth_gate": "the depth gate connects the cell states of stacked LSTM layers (gatedrnn.LSTM, num_layers >= 2)",
}


def _reject_options(cls: str, options: dict[str, Any]) -> None:
    """Name the first keyword that ``cls`` does not take, and why (most often: it belongs to another cell)."""
    for key in options:
        why = _FOREIGN_OPTIONS.get(key, "no such option")
        raise TypeError(f"{key}: not an option of {cls}: {why.format(cls=cls)}")


def _check_state(hx: Any, spec: CellSpec, leading: tuple[int, ...], batched: bool, x: Tensor) -> list[Tensor]:
    """Check an initial state ``hx`` (``h_0``, or a tuple such as ``(h_0, c_0)``); return its tensors with a batch
    dimension."""
    names = spec.state_names
    if len(names) == 1:
        parts = (hx,)
    elif isinstance(hx, (tuple, list)) and len(hx) == len(names):
        parts = tuple(hx)
    else:
        count = {2: "two", 4: "four"}.get(len(names), str(len(names)))
        expected = ", ".join(f"{name}_0" for name in names)
        raise TypeError(f"hx: expected a tuple ({expected}) of {count} tensors, got {type(hx).__name__}")
    states = []
    for name, width, part in zip(names, spec.state_widths(), parts):
        check_like(f"hx ({name}_0)", part, (*leading, width), x)
        states.append(part if batched else part.unsqueeze(-2))
    return states


def _common_options(hidden_size: object, bias: object, layer_norm: object, cell: bool) -> tuple[int, bool, bool]:
    """``(hidden_size, bias, layer_norm)`` checked. Cells accept what ``torch.nn``'s cells accept: a hidden size
    of 0 (an empty state) and an int bias (``bias=1``); layers, as ``torch.nn``'s, a hidden size >= 1 and a bool."""
    hidden = check_size("hidden_size", hidden_size, minimum=0 if cell else 1)
    norm = check_bool("layer_norm", layer_norm)
    if norm and hidden == 0:
        raise ValueError("layer_norm: a layer norm needs hidden_size >= 1, got hidden_size=0")
    return hidden, check_flag("bias", bias) if cell else check_bool("bias", bias), norm


def _autocast_dtype(x: Tensor, lowers_on_cpu: bool) -> torch.dtype | None:
    """The dtype a module computes in under ``torch.autocast``, as its ``torch.nn`` counterpart does, or None.

    Autocast lowers float32 only. On CUDA every recurrent module runs in the autocast dtype; on CPU ``torch.nn``'s
    LSTM and RNN layers and RNNCell do, its GRU layer, LSTMCell and GRUCell stay float32 (torch 2.13), and the
    modules here follow each: ``lowers_on_cpu``."""
    device = x.device.type
    if x.dtype != torch.float32 or not torch.is_autocast_enabled(device):
        return None
    if device == "cpu" and not lowers_on_cpu:
        return None
    return torch.get_autocast_dtype(device)


def _cast(values: Mapping[str, Tensor], dtype: torch.dtype | None) -> Mapping[str, Tensor]:
    return values if dtype is None else {name: t.to(dtype) for name, t in values.items()}


def _from_spec(name: str) -> property:
    """A read-only module attribute read from the cell spec, the one place a module's cell options live."""
    return property(lambda self: getattr(self.spec, name), doc=f"The cell's ``{name}`` (from ``spec``).")


class _LSTMOptions:
    """LSTM's cell options, for ``LSTM`` and ``LSTMCell`` alike."""

    proj_size = _from_spec("proj_size")
    peephole = _from_spec("peephole")
    coupled = _from_spec("coupled")
    forget_bias = _from_spec("forget_bias")

    @staticmethod
    def _spec(hidden_size: object, bias: object, proj_size: object, peephole: object, coupled: object,
              layer_norm: object, forget_bias: object, cell: bool = False, depth_gate: object = False) -> LSTMSpec:
        hidden_size, bias, layer_norm = _common_options(hidden_size, bias, layer_norm, cell)
        proj_size = check_size("proj_size", proj_size, minimum=0)
        if proj_size and proj_size >= hidden_size:
            raise ValueError(f"proj_size: expected proj_size < hidden_size ({hidden_size}), got {proj_size}")
        depth_gate = check_bool("depth_gate", depth_gate)
        if depth_gate and layer_norm:
            raise ValueError("layer_norm: the depth-gated LSTM has no layer-norm form; leave layer_norm at False")
        spec = (DepthGatedLSTMSpec if depth_gate else LSTMSpec)(
            hidden_size,
            bias,
            layer_norm,
            proj_size=proj_size,
            peephole=check_bool("peephole", peephole),
            coupled=check_bool("coupled", coupled),
            forget_bias=check_finite_float("forget_bias", forget_bias),
        )
        if spec.coupled and spec.forget_bias:
            raise ValueError("forget_bias: a coupled LSTM has no forget gate (f = 1 - i); leave forget_bias at 0.0")
        return spec


class _GRUOptions:
    """GRU's cell options, for ``GRU`` and ``GRUCell`` alike."""

    reset = _from_spec("reset")

    @staticmethod
    def _spec(hidden_size: object, bias: object, reset: object, layer_norm: object, cell: bool = False) -> GRUSpec:
        return GRUSpec(*_common_options(hidden_size, bias, layer_norm, cell),
                       reset=check_choice("reset", reset, ("after", "before")))


class _RNNOptions:
    """The Elman RNN's cell options, for ``RNN`` and ``RNNCell`` alike; ``nonlinearity`` also exists in torch.nn."""

    nonlinearity = _from_spec("nonlinearity")

    @staticmethod
    def _spec(hidden_size: object, bias: object, nonlinearity: object, layer_norm: object,
              cell: bool = False) -> RNNSpec:
        return RNNSpec(*_common_options(hidden_size, bias, layer_norm, cell),
                       nonlinearity=check_choice("nonlinearity", nonlinearity, ("tanh", "relu")))

    def _torch_kwargs(self) -> dict[str, Any]:
        return {**super()._torch_kwargs(), "nonlinearity": self.nonlinearity}  # type: ignore[misc]

    @classmethod
    def _from_torch_kwargs(cls, module: nn.Module) -> dict[str, Any]:
        return {**super()._from_torch_kwargs(module), "nonlinearity": module.nonlinearity}  # type: ignore[misc]


class _TorchConversion:
    """What layers and cells share: the spec's common options as attributes, and ``from_torch``/``to_torch``."""

    _torch_class: ClassVar[type[nn.Module]]
    spec: CellSpec
    hidden_size = _from_spec("hidden_size")
    bias = _from_spec("bias")
    layer_norm = _from_spec("layer_norm")

    def _torch_kwargs(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def _from_torch_kwargs(cls, module: nn.Module) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_torch(cls: type[_Module], module: nn.Module, **options: Any) -> _Module:
        """A module of this class computing exactly what ``module`` (the ``torch.nn`` counterpart) computes.

        ``options`` are further keywords for the constructor, e.g. ``engine="reference"`` for layers.
        """
        if type(module) is not cls._torch_class:
            raise TypeError(
                f"module: expected a {cls._torch_class.__module__}.{cls._torch_class.__name__}, "
                f"got {type(module).__name__}"
            )
        weight = next(module.parameters())
        new = cls(**cls._from_torch_kwargs(module), device=weight.device, dtype=weight.dtype, **options)
        new.load_state_dict(module.state_dict())  # type: ignore[attr-defined]
        return new.train(module.training)  # type: ignore[attr-defined, no-any-return]

    def to_torch(self) -> nn.Module:
        """The ``torch.nn`` module computing exactly what this one computes (standard configurations only).

        A forget bias is folded into ``bias_ih``'s forget-gate rows. Peephole, coupled, layer-norm and
        reset-before cells have no ``torch.nn`` counterpart and raise ``ValueError``.
        """
        spec = self.spec
        variants = [name for name in ("peephole", "coupled", "layer_norm", "depth_gate")
                    if getattr(spec, name, False)]
        if getattr(spec, "reset", "after") != "after":
            variants.append('reset="before"')
        if variants:
            raise ValueError(f"to_torch: torch.nn has no counterpart for {', '.join(variants)}")
        forget_bias = getattr(spec, "forget_bias", 0.0)
        if forget_bias and not spec.bias:
            raise ValueError("to_torch: a forget_bias cannot be folded into a module without biases (bias=False)")
        weight = next(self.parameters())  # type: ignore[attr-defined]
        module = self._torch_class(**self._torch_kwargs(), device=weight.device, dtype=weight.dtype)
        state = {k: v.detach().clone() for k, v in self.state_dict().items()}  # type: ignore[attr-defined]
        if forget_bias:
            H = spec.hidden_size
            for name in state:
                if name.startswith("bias_ih"):
                    state[name][H : 2 * H] += forget_bias  # rows of the forget gate f in i|f|g|o
        module.load_state_dict(state)
        return module.train(self.training)  # type: ignore[attr-defined]


class _Recurrent(_TorchConversion, nn.Module):
    """Stacked, optionally bidirectional recurrence over sequences; subclasses choose the cell spec."""

    _tap: Tap | None = None
    """Set only while :mod:`gatedrnn.inspect` records or measures gradients: it then runs each layer and
    direction in place of ``engine.run`` (same arguments, plus the engine, layer and direction)."""

    def __init__(self, spec: CellSpec, input_size: int, num_layers: int, batch_first: bool, dropout: float,
                 bidirectional: bool, engine: str, device: Any, dtype: Any) -> None:
        super().__init__()
        self.spec = spec
        self.input_size = check_size("input_size", input_size)
        self.num_layers = check_size("num_layers", num_layers)
        self.batch_first = check_bool("batch_first", batch_first)
        self.dropout = check_dropout(dropout)
        self.bidirectional = check_bool("bidirectional", bidirectional)
        self.engine = engine_registry.check_name(engine)
        if self.dropout > 0 and num_layers == 1:
            warnings.warn(
                f"dropout={dropout} has no effect with num_layers=1: dropout is applied between layers",
                stacklevel=3,
            )
        self._names: list[dict[str, str]] = []  # per (layer, direction): base name -> attribute name
        self._inits: dict[str, str] = {}
        for layer in range(self.num_layers):
            layer_input = self.input_size if layer == 0 else spec.state_size * self.num_directions
            for direction in range(self.num_directions):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                names = {}
                for pdef in spec.for_layer(layer).params(layer_input):
                    name = pdef.name + suffix
                    self.register_parameter(name, nn.Parameter(torch.empty(pdef.shape, device=device, dtype=dtype)))
                    names[pdef.name] = name
                    self._inits[name] = pdef.init
                self._names.append(names)
        self.reset_parameters()

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def reset_parameters(self) -> None:
        """Initialise as ``torch.nn``: ``U(-1/sqrt(H), 1/sqrt(H))``; layer-norm gains 1, shifts 0."""
        for name, init in self._inits.items():
            self.spec.init_(getattr(self, name), init)  # type: ignore[arg-type]

    def flatten_parameters(self) -> None:
        """Accepted for drop-in compatibility with ``torch.nn``; parameters here are never flattened."""

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        """The parameters of each layer and direction, in registration order, as ``torch.nn``'s ``all_weights``."""
        return [[getattr(self, name) for name in names.values()] for names in self._names]

    def layer_params(self, layer: int, direction: int = 0) -> dict[str, Tensor]:
        """Parameters of one layer and direction, by base name (``weight_ih``, ``weight_hh``, …)."""
        names = self._names[layer * self.num_directions + direction]
        return {base: getattr(self, name) for base, name in names.items()}

    def _initial_states(self, hx: Any, batch: int, batched: bool, x: Tensor) -> list[State]:
        """Split ``hx`` into one state per (layer, direction), checking shape, dtype and device."""
        count = self.num_layers * self.num_directions
        if hx is None:
            return [self.spec.zero_state(batch, x)] * count
        states = _check_state(hx, self.spec, (count, batch) if batched else (count,), batched, x)
        return [tuple(s[k] for s in states) for k in range(count)]

    def forward(
        self, input: Tensor | PackedSequence, hx: Any = None, *, lengths: Tensor | None = None
    ) -> tuple[Tensor | PackedSequence, Any]:
        return self._forward(input, hx, lengths, self.spec)

    def _forward(self, input: Tensor | PackedSequence, hx: Any, lengths: Tensor | None,
                 spec: CellSpec) -> tuple[Tensor | PackedSequence, Any]:
        """:meth:`forward` with the cell spec of this call (``self.spec`` but for per-call options: the Clockwork
        RNN's ``start``)."""
        first = self.layer_params(0)  # layer 0, direction 0: also the dtype and device the input must have
        x, lengths, layout = to_padded(input, lengths, self.batch_first, self.input_size, next(iter(first.values())))
        steps, batch = x.shape[0], x.shape[1]
        states = self._initial_states(hx, batch, layout.batched, x)
        autocast = _autocast_dtype(x, self._lowers_on_cpu(layout.packed is not None))
        if autocast is not None:
            x = x.to(autocast)
            states = [tuple(s.to(autocast) for s in st) for st in states]
            first = _cast(first, autocast)
        # An empty batch (an empty bucket of a batch sampler) runs as torch.nn's does: an empty output, and a
        # backward of zeros, on the engine that runs any shape.
        # While torch.onnx.export traces the model, the recurrence is written as ONNX's recurrent ops or a loop.
        exporting = torch.onnx.is_in_onnx_export()
        if exporting:
            engine = onnx_export.ENGINE
        else:
            engine = engine_registry.resolve(self.engine if batch else "reference", spec, x)
        # Masking is needed only where some sequence ends before T; while tracing (compile, export) that is data the
        # graph cannot branch on, and the mask, correct either way, stays.
        mask = lengths
        if (lengths is not None and not torch.compiler.is_compiling() and not exporting
                and not bool((lengths < steps).any())):
            mask = None
        finals: list[State] = []
        # The cell states a depth-gated layer hands to the layer above, per direction, in processing order.
        below: list[Tensor | None] = [None] * self.num_directions
        for layer in range(self.num_layers):
            outs = []
            layer_spec = spec.for_layer(layer)
            for direction in range(self.num_directions):
                p = _cast(self.layer_params(layer, direction), autocast) if finals else first
                if below[direction] is not None:
                    p = {**p, "cell_below": below[direction]}
                layer_x = reverse_padded(x, mask) if direction else x
                if self._tap is None:
                    out, final = engine.run_input(layer_spec, layer_x, p, states[len(finals)], mask)
                else:  # the tap replays the cells from the normalised gx
                    gx = layer_spec.input_projection(layer_x, p)  # (T, B, G·H)
                    out, final = self._tap(layer_spec, engine, layer, direction, gx, p, states[len(finals)], mask)
                if layer_spec.output_size != layer_spec.state_size:  # out is [h | c]: c goes to the layer above
                    out, below[direction] = out.split([layer_spec.state_size, layer_spec.hidden_size], dim=2)
                outs.append(reverse_padded(out, mask) if direction else out)
                finals.append(final)
            x = torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]  # (T, B, D·state_size)
            if self.dropout and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, training=True)
        output = from_padded(x, layout)
        h_n = tuple(torch.stack([final[k] for final in finals]) for k in range(len(finals[0])))
        if not layout.batched:
            h_n = tuple(s.squeeze(1) for s in h_n)
        if autocast is not None:
            h_n = self._autocast_states(h_n, x.device.type)
        return output, (h_n if len(h_n) > 1 else h_n[0])

    def _lowers_on_cpu(self, packed: bool) -> bool:
        """Whether ``torch.nn``'s counterpart runs in the autocast dtype under CPU autocast (``_autocast_dtype``)."""
        return True

    def _autocast_states(self, states: State, device: str) -> State:
        """The final states in the dtypes ``torch.nn``'s counterpart gives them under autocast."""
        return states

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        for name, default in (("bias", True), ("batch_first", False), ("dropout", 0.0), ("bidirectional", False)):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)}"
        return s + _variant_repr(self.spec) + (f", engine={self.engine!r}" if self.engine != "auto" else "")

    def _torch_kwargs(self) -> dict[str, Any]:
        return dict(
            input_size=self.input_size, hidden_size=self.hidden_size, num_layers=self.num_layers, bias=self.bias,
            batch_first=self.batch_first, dropout=self.dropout, bidirectional=self.bidirectional,
        )

    @classmethod
    def _from_torch_kwargs(cls, module: nn.Module) -> dict[str, Any]:
        return dict(
            input_size=module.input_size, hidden_size=module.hidden_size, num_layers=module.num_layers,
            bias=module.bias, batch_first=module.batch_first, dropout=module.dropout,
            bidirectional=module.bidirectional,
        )


def _variant_repr(spec: CellSpec) -> str:
    parts = []
    for name, default in (("proj_size", 0), ("peephole", False), ("coupled", False), ("layer_norm", False),
                          ("forget_bias", 0.0), ("reset", "after"), ("nonlinearity", "tanh"), ("depth_gate", False)):
        value = getattr(spec, name, default)
        if value != default:
            parts.append(f"{name}={value!r}")
    return "".join(f", {p}" for p in parts)


class LSTM(_LSTMOptions, _Recurrent):
    r"""Multi-layer LSTM over sequences, a drop-in for ``torch.nn.LSTM`` with peephole, coupled and
    layer-norm variants. The cell's equations are in :class:`gatedrnn.cells.LSTMSpec`.

    ``num_layers``, ``bias``, ``batch_first``, ``dropout``, ``bidirectional``, ``proj_size``, ``device`` and
    ``dtype`` are as in ``torch.nn.LSTM``.

    Args:
        input_size: ``I``, features of each input step.
        hidden_size: ``H``, width of the cell state and each gate.
        peephole: gates read the cell state (``weight_ci``, ``weight_cf``, ``weight_co``).
        coupled: coupled input-forget gate ``f = 1 - i``; gate blocks ``i|g|o``.
        layer_norm: layer-normalise the input and recurrent pre-activations and the cell state.
        forget_bias: constant added to the forget gate's pre-activation.
        depth_gate: the depth-gated LSTM (Yao et al. 2015): each layer above the first also receives the cell
            state of the layer below at the same step through a depth gate ``d``
            (:class:`gatedrnn.cells.DepthGatedLSTMSpec`; parameters ``weight_xd``, ``bias_d``, ``weight_cd``,
            ``weight_ld`` in those layers). Runs on the reference engine.
        engine: ``"auto"`` (best available, see :func:`gatedrnn.engines`) or an engine's name.

    Inputs: ``input, (h_0, c_0)`` exactly as ``torch.nn.LSTM`` (``(T, B, I)``, ``(B, T, I)`` if batch_first,
    ``(T, I)`` unbatched, or a ``PackedSequence``); keyword ``lengths`` ``(B,)`` for padded batches.

    Outputs: ``output, (h_n, c_n)``: ``output`` ``(T, B, D·P)`` (zero past each length), ``h_n`` ``(L·D, B, P)``,
    ``c_n`` ``(L·D, B, H)`` with ``D`` = 2 if bidirectional else 1 and ``P`` = proj_size or ``H``.

    Examples:
        >>> lstm = gatedrnn.LSTM(10, 20, num_layers=2, peephole=True)
        >>> out, (h_n, c_n) = lstm(torch.randn(5, 3, 10))
    """

    _torch_class = nn.LSTM

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
                 device: Any = None, dtype: Any = None, *, peephole: bool = False, coupled: bool = False,
                 layer_norm: bool = False, forget_bias: float = 0.0, depth_gate: bool = False, engine: str = "auto",
                 **options: Any) -> None:
        _reject_options("LSTM", options)
        spec = self._spec(hidden_size, bias, proj_size, peephole, coupled, layer_norm, forget_bias,
                          depth_gate=depth_gate)
        if depth_gate and num_layers == 1:
            warnings.warn("depth_gate=True has no effect with num_layers=1: the depth gate connects each layer's cell "
                          "to the cell of the layer below", stacklevel=2)
        super().__init__(spec, input_size, num_layers, batch_first, dropout, bidirectional, engine, device, dtype)

    @property
    def depth_gate(self) -> bool:
        """Whether each layer above the first reads the cell state of the layer below through a depth gate."""
        return isinstance(self.spec, DepthGatedLSTMSpec)

    def _lowers_on_cpu(self, packed: bool) -> bool:
        return not packed  # torch.nn.LSTM on a PackedSequence stays float32 under CPU autocast

    def _autocast_states(self, states: State, device: str) -> State:
        # torch.nn.LSTM with a projection returns c_n in float32 under CPU autocast.
        return (states[0], states[1].float()) if device == "cpu" and self.proj_size else states

    def _torch_kwargs(self) -> dict[str, Any]:
        return {**super()._torch_kwargs(), "proj_size": self.proj_size}

    @classmethod
    def _from_torch_kwargs(cls, module: nn.Module) -> dict[str, Any]:
        return {**super()._from_torch_kwargs(module), "proj_size": module.proj_size}

    if TYPE_CHECKING:  # what a call returns, for type checkers: torch.nn.Module's __call__ is untyped

        @overload
        def __call__(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None, *,
                     lengths: Tensor | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]: ...
        @overload
        def __call__(self, input: PackedSequence, hx: tuple[Tensor, Tensor] | None = None, *,
                     lengths: Tensor | None = None) -> tuple[PackedSequence, tuple[Tensor, Tensor]]: ...
        def __call__(self, *args: Any, **kwargs: Any) -> Any: ...


class GRU(_GRUOptions, _Recurrent):
    r"""Multi-layer GRU over sequences, a drop-in for ``torch.nn.GRU`` with reset-before and layer-norm variants.
    The cell's equations are in :class:`gatedrnn.cells.GRUSpec`.

    ``input_size``, ``hidden_size``, ``num_layers``, ``bias``, ``batch_first``, ``dropout``, ``bidirectional``,
    ``device`` and ``dtype`` are as in ``torch.nn.GRU``.

    Args:
        reset: ``"after"`` (``torch.nn``/cuDNN form, the default) or ``"before"`` (Cho et al. 2014).
        layer_norm: layer-normalise the input and recurrent pre-activations.
        engine: ``"auto"`` or an engine's name.

    Inputs: ``input, h_0``; outputs: ``output, h_n``, shaped as ``torch.nn.GRU``; keyword ``lengths`` as LSTM.

    Examples:
        >>> gru = gatedrnn.GRU(10, 20, reset="before", batch_first=True)
        >>> out, h_n = gru(torch.randn(3, 5, 10))
    """

    _torch_class = nn.GRU

    def _lowers_on_cpu(self, packed: bool) -> bool:
        return False

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, device: Any = None,
                 dtype: Any = None, *, reset: str = "after", layer_norm: bool = False, engine: str = "auto",
                 **options: Any) -> None:
        _reject_options("GRU", options)
        spec = self._spec(hidden_size, bias, reset, layer_norm)
        super().__init__(spec, input_size, num_layers, batch_first, dropout, bidirectional, engine, device, dtype)

    if TYPE_CHECKING:  # what a call returns, for type checkers: torch.nn.Module's __call__ is untyped

        @overload
        def __call__(self, input: Tensor, hx: Tensor | None = None, *,
                     lengths: Tensor | None = None) -> tuple[Tensor, Tensor]: ...
        @overload
        def __call__(self, input: PackedSequence, hx: Tensor | None = None, *,
                     lengths: Tensor | None = None) -> tuple[PackedSequence, Tensor]: ...
        def __call__(self, *args: Any, **kwargs: Any) -> Any: ...


class RNN(_RNNOptions, _Recurrent):
    r"""Multi-layer Elman RNN (tanh or relu) over sequences, a drop-in for ``torch.nn.RNN`` with a layer-norm
    variant. The cell's equation is in :class:`gatedrnn.cells.RNNSpec`.

    ``input_size``, ``hidden_size``, ``num_layers``, ``nonlinearity``, ``bias``, ``batch_first``, ``dropout``,
    ``bidirectional``, ``device`` and ``dtype`` are as in ``torch.nn.RNN``.

    Args:
        layer_norm: layer-normalise the input and recurrent pre-activations.
        engine: ``"auto"`` or an engine's name.

    Inputs: ``input, h_0``; outputs: ``output, h_n``, shaped as ``torch.nn.RNN``; keyword ``lengths`` as LSTM.

    Examples:
        >>> rnn = gatedrnn.RNN(10, 20, nonlinearity="relu")
        >>> out, h_n = rnn(torch.randn(5, 3, 10))
    """

    _torch_class = nn.RNN

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device: Any = None, dtype: Any = None, *, layer_norm: bool = False, engine: str = "auto",
                 **options: Any) -> None:
        _reject_options("RNN", options)
        spec = self._spec(hidden_size, bias, nonlinearity, layer_norm)
        super().__init__(spec, input_size, num_layers, batch_first, dropout, bidirectional, engine, device, dtype)

    if TYPE_CHECKING:  # what a call returns, for type checkers: torch.nn.Module's __call__ is untyped

        @overload
        def __call__(self, input: Tensor, hx: Tensor | None = None, *,
                     lengths: Tensor | None = None) -> tuple[Tensor, Tensor]: ...
        @overload
        def __call__(self, input: PackedSequence, hx: Tensor | None = None, *,
                     lengths: Tensor | None = None) -> tuple[PackedSequence, Tensor]: ...
        def __call__(self, *args: Any, **kwargs: Any) -> Any: ...



def _periods(periods: object, num_modules: object, hidden_size: int) -> tuple[int, ...]:
    """The Clockwork RNN's module periods, checked: given, or ``2^(i-1)`` for ``i = 1 … num_modules``."""
    if periods is None:
        count = check_size("num_modules", 4 if num_modules is None else num_modules)
        periods = tuple(2**i for i in range(count))
    else:
        if isinstance(periods, (str, bytes)) or not isinstance(periods, (tuple, list)):
            raise TypeError(f"periods: expected a sequence of ints, e.g. (1, 2, 4, 8), got {type(periods).__name__}")
        periods = tuple(check_size("periods", p) for p in periods)
        if not periods:
            raise ValueError("periods: expected at least one period, got an empty sequence")
        if any(a >= b for a, b in zip(periods, periods[1:])):
            raise ValueError(f"periods: expected strictly increasing periods (T_1 < … < T_g), got {periods}")
        if num_modules is not None and check_size("num_modules", num_modules) != len(periods):
            raise ValueError(f"num_modules: expected len(periods) = {len(periods)} or None, got {num_modules}")
    if hidden_size < len(periods):
        raise ValueError(f"hidden_size: expected at least one unit per module ({len(periods)} periods), "
                         f"got {hidden_size}")
    return periods


class ClockworkRNN(_RNNOptions, _Recurrent):
    r"""Multi-layer Clockwork RNN (Koutník et al. 2014) over sequences: an Elman RNN whose hidden units are split
    into modules updating at their own clock periods. The cell's equations are in
    :class:`gatedrnn.cells.ClockworkSpec`.

    Args:
        input_size, hidden_size, num_layers, nonlinearity, bias, batch_first, dropout, bidirectional, device,
            dtype: as ``torch.nn.RNN``.
        periods: the modules' clock periods ``T_1 < … < T_g`` (at most ``hidden_size`` of them). Default
            ``2^(i-1)`` for ``i = 1 … num_modules``.
        num_modules: ``g`` when ``periods`` is not given (default 4).
        engine: ``"auto"`` or an engine's name.

    Parameters are named as ``torch.nn.RNN``'s (``weight_ih_l0``, ``weight_hh_l0`` …). Only the block
    upper-triangular part of each ``weight_hh`` is used; :meth:`reset_parameters` sets the rest to zero, and its
    gradient is always zero.

    Inputs: ``input, h_0``; outputs: ``output, h_n``, shaped as ``torch.nn.RNN``; keyword ``lengths`` as LSTM.
    Every sequence's clock starts at its first step (``t = 0``: all modules update); a reverse direction's at the
    sequence's last step.

    Example:
        >>> cw = gatedrnn.ClockworkRNN(1, 64, periods=(1, 2, 4, 8, 16, 32, 64, 128))
        >>> out, h_n = cw(torch.randn(320, 3, 1))
    """

    _torch_class = nn.RNN

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device: Any = None, dtype: Any = None, *, periods: Any = None, num_modules: int | None = None,
                 engine: str = "auto", **options: Any) -> None:
        if "layer_norm" in options:
            raise TypeError("layer_norm: not an option of ClockworkRNN: a layer norm over all units would mix the "
                            "modules that update with those that keep their state")
        _reject_options("ClockworkRNN", options)
        hidden, bias, _ = _common_options(hidden_size, bias, False, cell=False)
        spec = ClockworkSpec(hidden, bias, periods=_periods(periods, num_modules, hidden),
                             nonlinearity=check_choice("nonlinearity", nonlinearity, ("tanh", "relu")))
        super().__init__(spec, input_size, num_layers, batch_first, dropout, bidirectional, engine, device, dtype)

    @property
    def periods(self) -> tuple[int, ...]:
        """The modules' clock periods ``(T_1, …, T_g)``."""
        return self.spec.periods  # type: ignore[attr-defined]

    def forward(self, input: Tensor | PackedSequence, hx: Any = None, *, lengths: Tensor | None = None,
                start: int = 0) -> tuple[Tensor | PackedSequence, Any]:
        """As ``torch.nn.RNN``'s; ``start`` is the clocks' time at the first step: a sequence fed on in pieces (one
        character at a time when sampling) passes the number of steps it has run so far, and its modules update
        as they would over the whole sequence at once."""
        start = check_size("start", start, minimum=0)
        if start and self.bidirectional:
            raise ValueError(f"start: a bidirectional layer reads whole sequences, whose clocks start at 0; "
                             f"got {start}")
        spec = self.spec if not start else dataclasses.replace(self.spec, start=start)
        return self._forward(input, hx, lengths, spec)

    def reset_parameters(self) -> None:
        """As ``torch.nn.RNN`` (``U(-1/sqrt(H), 1/sqrt(H))``), with the unused blocks of ``weight_hh`` at zero."""
        super().reset_parameters()
        with torch.no_grad():
            for names in self._names:
                w = getattr(self, names["weight_hh"])
                w.masked_fill_(~self.spec.recurrent_mask(w), 0.0)  # type: ignore[attr-defined]

    def extra_repr(self) -> str:
        return super().extra_repr() + f", periods={self.periods}"

    def to_torch(self) -> nn.Module:
        raise ValueError("to_torch: torch.nn has no counterpart for a Clockwork RNN")

    @classmethod
    def from_torch(cls, module: nn.Module, **options: Any) -> Any:
        raise TypeError("module: a Clockwork RNN has no torch.nn counterpart to convert from")

    def _torch_kwargs(self) -> dict[str, Any]:
        raise ValueError("to_torch: torch.nn has no counterpart for a Clockwork RNN")


class GridLSTM(_Recurrent):
    r"""2-D Grid LSTM over sequences (Kalchbrenner, Danihelka and Graves 2015): a grid of blocks over time × depth,
    each with an LSTM along time and one along depth, so that depth has memory cells and gates of its own. The
    equations are in :class:`gatedrnn.cells.GridLSTMSpec`.

    Args:
        input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, device, dtype: as
            ``torch.nn.LSTM`` (``num_layers``: the grid's depth; ``dropout`` on the depth outputs between layers).
        depth: ``"lstm"`` (default), or ``"tanh"``/``"relu"`` for a non-LSTM depth dimension.
        tied: every layer shares the bottom layer's weights (the paper's tied Grid LSTM; not with bidirectional).
        engine: ``"auto"`` or an engine's name (the reference engine runs it).

    Inputs: ``input, (h_0, c_0)`` as ``torch.nn.LSTM``: the time dimension's hidden and memory vectors of each layer
    (zeros if omitted); keyword ``lengths`` as LSTM. Outputs: ``output, (h_n, c_n)``: ``output`` ``(T, B, D·H)`` is
    the top layer's depth output ``h^d`` of every step, ``h_n, c_n`` ``(L·D, B, H)`` the time dimension's last
    hidden and memory vectors.

    Example:
        >>> grid = gatedrnn.GridLSTM(10, 32, num_layers=4, tied=True)
        >>> out, (h_n, c_n) = grid(torch.randn(5, 3, 10))
    """

    _torch_class = nn.LSTM

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, device: Any = None,
                 dtype: Any = None, *, depth: str = "lstm", tied: bool = False, engine: str = "auto",
                 **options: Any) -> None:
        _reject_options("GridLSTM", options)
        hidden, bias, _ = _common_options(hidden_size, bias, False, cell=False)
        spec = GridLSTMSpec(hidden, bias, depth=check_choice("depth", depth, ("lstm", "tanh", "relu")),
                            tied=check_bool("tied", tied))
        if spec.tied and check_bool("bidirectional", bidirectional):
            raise ValueError("tied: a bidirectional grid's layers above the first read both directions (2H wide), "
                             "the first layer H: their weights cannot be tied; use tied=False")
        super().__init__(spec, input_size, num_layers, batch_first, dropout, bidirectional, engine, device, dtype)

    @property
    def depth(self) -> str:
        """``"lstm"``, ``"tanh"`` or ``"relu"``: the depth dimension's transform."""
        return self.spec.depth  # type: ignore[attr-defined]

    @property
    def tied(self) -> bool:
        """Whether every layer uses the bottom layer's weights."""
        return self.spec.tied  # type: ignore[attr-defined]

    def layer_params(self, layer: int, direction: int = 0) -> dict[str, Tensor]:
        if self.tied and layer > 0:  # the bottom layer's transforms, without its input projection
            return {k: v for k, v in super().layer_params(0, direction).items() if not k.endswith("_in")}
        return super().layer_params(layer, direction)

    def _initial_states(self, hx: Any, batch: int, batched: bool, x: Tensor) -> list[State]:
        """``(h_0, c_0)`` of the time dimension checked as an LSTM's; the depth outputs start at zero (each step
        overwrites them before they are read)."""
        count = self.num_layers * self.num_directions
        if hx is None:
            return [self.spec.zero_state(batch, x)] * count
        H = self.hidden_size
        states = _check_state(hx, LSTMSpec(H), (count, batch) if batched else (count,), batched, x)
        depth = self.spec.zero_state(states[0].shape[-2], x)[2:]
        return [(states[0][k], states[1][k], *depth) for k in range(count)]

    def forward(self, input: Tensor | PackedSequence, hx: Any = None, *, lengths: Tensor | None = None
                ) -> tuple[Tensor | PackedSequence, Any]:
        output, states = self._forward(input, hx, lengths, self.spec)
        return output, states[:2]  # the time dimension's (h_n, c_n)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s + (f", depth={self.depth!r}" if self.depth != "lstm" else "") + (", tied=True" if self.tied else "")

    def to_torch(self) -> nn.Module:
        raise ValueError("to_torch: torch.nn has no counterpart for a Grid LSTM")

    @classmethod
    def from_torch(cls, module: nn.Module, **options: Any) -> Any:
        raise TypeError("module: a Grid LSTM has no torch.nn counterpart to convert from")

    def _torch_kwargs(self) -> dict[str, Any]:
        raise ValueError("to_torch: torch.nn has no counterpart for a Grid LSTM")

class _Cell(_TorchConversion, nn.Module):
    """One step of a cell: ``spec.input_projection`` then ``spec.step``, the same math the engines run."""

    _lowers_on_cpu: ClassVar[bool] = False
    """Whether ``torch.nn``'s counterpart computes in the autocast dtype under CPU autocast (RNNCell only)."""

    def __init__(self, spec: CellSpec, input_size: int, device: Any, dtype: Any) -> None:
        super().__init__()
        self.spec = spec
        self.input_size = check_size("input_size", input_size, minimum=0)  # as torch.nn's cells
        self._inits = {}
        for pdef in spec.params(self.input_size):
            self.register_parameter(pdef.name, nn.Parameter(torch.empty(pdef.shape, device=device, dtype=dtype)))
            self._inits[pdef.name] = pdef.init
        self._fused_names = self._fused_parameters()
        self._state_count = len(spec.state_names)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise as ``torch.nn``: ``U(-1/sqrt(H), 1/sqrt(H))``; layer-norm gains 1, shifts 0."""
        for name, init in self._inits.items():
            self.spec.init_(getattr(self, name), init)  # type: ignore[arg-type]

    def _fused_parameters(self) -> tuple[str, ...] | None:
        """The parameters of :meth:`_torch_step` for a cell that computes exactly what its ``torch.nn`` counterpart
        computes (no variant option), else None."""
        spec = self.spec
        if (spec.layer_norm or getattr(spec, "peephole", False) or getattr(spec, "coupled", False)
                or getattr(spec, "forget_bias", 0.0) or getattr(spec, "proj_size", 0)
                or getattr(spec, "reset", "after") != "after"):
            return None
        return ("weight_ih", "weight_hh", "bias_ih", "bias_hh") if spec.bias else ("weight_ih", "weight_hh")

    def _torch_step(self, x: Tensor, state: State, *weights: Tensor) -> State:
        """One step of a standard cell by ATen's fused cell op, as ``torch.nn``'s cells run it: the same equations
        as ``spec.step`` (the tests hold them to it) in one call, where a step of a generation loop or an LBFGS
        closure is mostly per-op overhead. ``weights``: those of ``_fused_names``."""
        raise NotImplementedError

    def forward(self, input: Tensor, hx: Any = None) -> Any:
        x = check_tensor("input", input)
        if x.dim() not in (1, 2):
            raise ShapeError(
                f"input: expected a 2-D tensor (B, I) or a 1-D unbatched tensor (I,), "
                f"got a {x.dim()}-D tensor of shape {tuple(x.shape)}"
            )
        batched = x.dim() == 2
        if self._fused_names is not None and not torch.is_autocast_enabled(x.device.type):
            new = self._fused_forward(x, hx, batched)
        else:
            new = self._spec_forward(x, hx, batched)
        if not batched:
            new = tuple(s.squeeze(0) for s in new)
        return new if len(new) > 1 else new[0]

    def _fused_forward(self, x: Tensor, hx: Any, batched: bool) -> State:
        """The fused op, with the checks left to it (as ``torch.nn``'s cells): a call that fails there is checked
        here to say which argument is wrong."""
        if hx is None:
            state = self.spec.zero_state(x.shape[0] if batched else 1, x)
        else:
            parts = (hx,) if isinstance(hx, Tensor) else hx
            if not isinstance(parts, tuple) or len(parts) != self._state_count:
                return self._spec_forward(x, hx, batched)  # the checks explain what is wrong
            for part in parts:
                # ATen's op promotes a state of another dtype silently; ours names it (the checks raise).
                if not isinstance(part, Tensor) or part.dim() != x.dim() or part.dtype != x.dtype:
                    return self._spec_forward(x, hx, batched)
            state = parts if batched else tuple(part.unsqueeze(0) for part in parts)
        params = self._parameters
        weights = []
        for name in self._fused_names:
            weight = params.get(name)
            weights.append(weight if weight is not None else getattr(self, name))  # a parametrization computes it
        try:
            return self._torch_step(x if batched else x.unsqueeze(0), state, *weights)
        except RuntimeError:
            self._checked(x, hx, batched)  # raises the error that names the argument
            raise

    def _checked(self, x: Tensor, hx: Any, batched: bool) -> tuple[Tensor, State]:
        """``x`` with a batch dimension and the initial state, both checked against the parameters."""
        check_input(x, self.input_size, self.weight_ih, "(B, I)")
        x = x if batched else x.unsqueeze(0)
        if hx is None:
            return x, self.spec.zero_state(x.shape[0], x)
        return x, tuple(_check_state(hx, self.spec, (x.shape[0],) if batched else (), batched, x))

    def _spec_forward(self, x: Tensor, hx: Any, batched: bool) -> State:
        """``spec.input_projection`` then ``spec.step``, in the autocast dtype where ``torch.nn``'s cell uses it."""
        x, state = self._checked(x, hx, batched)
        p: Mapping[str, Tensor] = {name: getattr(self, name) for name in self._inits}
        autocast = _autocast_dtype(x, self._lowers_on_cpu)
        if autocast is not None:
            x, state, p = x.to(autocast), tuple(s.to(autocast) for s in state), _cast(p, autocast)
        if self._fused_names is not None:
            return self._torch_step(x, state, *(p[name] for name in self._fused_names))
        return self.spec.step(self.spec.input_projection(x, p), state, p)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        return s + _variant_repr(self.spec)

    def _torch_kwargs(self) -> dict[str, Any]:
        return dict(input_size=self.input_size, hidden_size=self.hidden_size, bias=self.bias)

    @classmethod
    def _from_torch_kwargs(cls, module: nn.Module) -> dict[str, Any]:
        return dict(input_size=module.input_size, hidden_size=module.hidden_size, bias=module.bias)


class LSTMCell(_LSTMOptions, _Cell):
    r"""One LSTM step, a drop-in for ``torch.nn.LSTMCell`` with the variants of :class:`LSTM`.

    Inputs: ``input`` ``(B, I)`` or ``(I,)``, ``(h, c)`` (zeros if omitted). Output: ``(h', c')``.
    The equations are in :class:`gatedrnn.cells.LSTMSpec`; parameters are named without layer suffix
    (``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh``, ``weight_ci`` …).

    Examples:
        >>> cell = gatedrnn.LSTMCell(10, 20, coupled=True)
        >>> h, c = cell(torch.randn(3, 10))
    """

    _torch_class = nn.LSTMCell

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device: Any = None, dtype: Any = None,
                 *, proj_size: int = 0, peephole: bool = False, coupled: bool = False, layer_norm: bool = False,
                 forget_bias: float = 0.0, **options: Any) -> None:
        _reject_options("LSTMCell", options)
        spec = self._spec(hidden_size, bias, proj_size, peephole, coupled, layer_norm, forget_bias, cell=True)
        super().__init__(spec, input_size, device, dtype)

    def to_torch(self) -> nn.Module:
        if self.proj_size:
            raise ValueError("to_torch: torch.nn.LSTMCell has no projection (proj_size)")
        return super().to_torch()

    def _torch_step(self, x: Tensor, state: State, *weights: Tensor) -> State:
        return tuple(torch._VF.lstm_cell(x, state, *weights))

    if TYPE_CHECKING:  # what a call returns, for type checkers: torch.nn.Module's __call__ is untyped

        def __call__(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]: ...


class GRUCell(_GRUOptions, _Cell):
    r"""One GRU step, a drop-in for ``torch.nn.GRUCell`` with the variants of :class:`GRU`.

    Inputs: ``input`` ``(B, I)`` or ``(I,)``, ``h`` (zeros if omitted). Output: ``h'``.
    The equations are in :class:`gatedrnn.cells.GRUSpec`.

    Examples:
        >>> cell = gatedrnn.GRUCell(10, 20, reset="before")
        >>> h = cell(torch.randn(3, 10))
    """

    _torch_class = nn.GRUCell

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device: Any = None, dtype: Any = None,
                 *, reset: str = "after", layer_norm: bool = False, **options: Any) -> None:
        _reject_options("GRUCell", options)
        super().__init__(self._spec(hidden_size, bias, reset, layer_norm, cell=True), input_size, device, dtype)

    def _torch_step(self, x: Tensor, state: State, *weights: Tensor) -> State:
        return (torch._VF.gru_cell(x, state[0], *weights),)

    if TYPE_CHECKING:  # what a call returns, for type checkers: torch.nn.Module's __call__ is untyped

        def __call__(self, input: Tensor, hx: Tensor | None = None) -> Tensor: ...


class RNNCell(_RNNOptions, _Cell):
    r"""One Elman RNN step, a drop-in for ``torch.nn.RNNCell`` with a layer-norm variant.

    Inputs: ``input`` ``(B, I)`` or ``(I,)``, ``h`` (zeros if omitted). Output: ``h'``.
    The equation is in :class:`gatedrnn.cells.RNNSpec`.

    Examples:
        >>> cell = gatedrnn.RNNCell(10, 20, nonlinearity="relu")
        >>> h = cell(torch.randn(3, 10))
    """

    _torch_class = nn.RNNCell
    _lowers_on_cpu = True

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh",
                 device: Any = None, dtype: Any = None, *, layer_norm: bool = False, **options: Any) -> None:
        _reject_options("RNNCell", options)
        super().__init__(self._spec(hidden_size, bias, nonlinearity, layer_norm, cell=True), input_size, device,
                         dtype)

    def _torch_step(self, x: Tensor, state: State, *weights: Tensor) -> State:
        step = torch._VF.rnn_relu_cell if self.spec.nonlinearity == "relu" else torch._VF.rnn_tanh_cell
        return (step(x, state[0], *weights),)

    if TYPE_CHECKING:  # what a call returns, for type checkers: torch.nn.Module's __call__ is untyped

        def __call__(self, input: Tensor, hx: Tensor | None = None) -> Tensor: ...
