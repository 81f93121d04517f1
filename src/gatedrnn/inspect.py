"""Inside the gates: record what every gate of a model's gatedrnn layers did, and how the gradient flows back in time.

Recording::

    with gatedrnn.inspect.record(model) as rec:
        model(x)
    f = rec.trace("encoder", layer=0)["f"]      # (batch, time, unit): the forget gate of every step

Every ``gatedrnn.LSTM``/``GRU``/``RNN`` inside ``model`` (or ``model`` itself) is recorded, for each layer,
direction and forward call. The layers keep running on their own engine, whatever it is, and their outputs are
returned untouched; the recording replays each layer and direction with the cell's own step function
(``spec.step_with_gates``, the reference engine's math) from exactly what that layer and direction received: its
input projection ``gx``, its parameters, its initial state and the sequence lengths. So the recorded values are
the reference engine's, on every engine, given what each layer received (in a stack, layer 1 receives layer 0's
outputs as computed by the engine in use). Outside ``record`` a layer pays one ``is None`` test per layer and
direction.

Gradient flow: :func:`gradient_flow` returns ``‖∂L/∂h_t‖`` for every step ``t``, the total derivative of the loss
through every later step and layer — how much the loss still "hears" step ``t``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .cells import CellSpec, State
from .engine import Engine, reference
from .layers import Tap, _Recurrent
from .sequence import reverse_padded

DIMS = ("batch", "time", "unit")
"""The dimensions of every recorded tensor: ``(B, T, H)``, ``T`` in the input's time order for both directions."""


@dataclass
class Trace:
    """What one layer and direction of one gatedrnn module computed in one forward call.

    Every tensor is ``(B, T, ·)`` with dimensions :data:`DIMS`: sequence ``b`` of the batch (in the caller's
    order; 1 for unbatched input), step ``t`` of the input (for the reverse direction too: ``t`` is the input
    position, not the order of processing), and unit. Steps at or past a sequence's length are NaN, so that no
    statistic takes padding for a gate value.

    Attributes:
        module: qualified name of the module in the recorded model (``""`` for the model itself).
        layer: index of the stacked layer, from 0.
        direction: 0 forward, 1 reverse (bidirectional layers).
        call: which forward call of that module during the recording, from 0.
        family: ``"lstm"``, ``"gru"`` or ``"rnn"``.
        gates: activation of each gate, by name: ``i, f, g, o`` (LSTM; ``f = 1 - i`` when coupled), ``r, z, n``
            (GRU), ``h`` (RNN, the one "gate" is the new state). Each ``(B, T, H)``.
        pre: the argument of each gate's nonlinearity, by the same names; empty unless recorded with
            ``pre_activations=True``.
        states: ``h`` ``(B, T, P)`` — the layer's output at each step (``P`` = ``proj_size`` or ``H``) — and, for
            LSTM, ``c`` ``(B, T, H)``, the cell state after each step.
        lengths: ``(B,)`` valid steps of each sequence.
    """

    module: str
    layer: int
    direction: int
    call: int
    family: str
    gates: dict[str, Tensor]
    pre: dict[str, Tensor]
    states: dict[str, Tensor]
    lengths: Tensor

    @property
    def key(self) -> str:
        """``"<module>_l<layer>[_reverse][@<call>]"``, as ``torch.nn`` suffixes parameters (``lstm_l0_reverse``)."""
        return _key(self.module, self.layer, self.direction, self.call)

    @property
    def names(self) -> tuple[str, ...]:
        """What ``trace[name]`` accepts: the gate names, then the state names."""
        return (*self.gates, *(s for s in self.states if s not in self.gates))

    def __getitem__(self, name: str) -> Tensor:
        """A gate (``"f"``) or a state (``"c"``, ``"h"``) by name."""
        if name in self.gates:
            return self.gates[name]
        if name in self.states:
            return self.states[name]
        raise KeyError(f"name: expected one of {', '.join(self.names)}, got {name!r}")


def _key(module: str, layer: int, direction: int, call: int) -> str:
    key = f"{module}_l{layer}" if module else f"l{layer}"
    return key + ("_reverse" if direction else "") + (f"@{call}" if call else "")


@dataclass
class Recording:
    """The traces of one :func:`record` block, in the order the layers ran."""

    traces: list[Trace] = field(default_factory=list)

    def trace(self, module: str | None = None, layer: int = 0, direction: int = 0, call: int = -1) -> Trace:
        """One trace. ``module=None`` means the only recorded module; ``call=-1`` the last forward call."""
        modules = list(dict.fromkeys(t.module for t in self.traces))
        if not modules:
            raise LookupError("recording: nothing was recorded; call the model inside the `with record(...)` block")
        if module is None:
            if len(modules) > 1:
                raise ValueError(f"module: the recording holds several modules, name one of: {modules}")
            module = modules[0]
        if module not in modules:
            raise ValueError(f"module: expected one of {modules}, got {module!r}")
        found = [t for t in self.traces if (t.module, t.layer, t.direction) == (module, layer, direction)]
        if not found:
            raise ValueError(f"layer/direction: module {module!r} has no layer {layer} direction {direction}")
        calls = sorted({t.call for t in found})
        if -len(calls) <= call < 0:
            call = calls[call]
        match = [t for t in found if t.call == call]
        if not match:
            raise ValueError(f"call: module {module!r} ran {len(calls)} time(s) while recording, got call={call}")
        return match[0]

    def __iter__(self) -> Iterator[Trace]:
        return iter(self.traces)

    def __len__(self) -> int:
        return len(self.traces)


def recurrent_modules(model: nn.Module) -> list[tuple[str, _Recurrent]]:
    """Every gatedrnn ``LSTM``/``GRU``/``RNN`` in ``model`` (``model`` itself included) with its qualified name."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, _Recurrent)]
    if not found:
        raise ValueError(
            f"model: {type(model).__name__} contains no gatedrnn.LSTM, GRU or RNN layer "
            "(a torch.nn layer converts with gatedrnn.LSTM.from_torch(layer))"
        )
    return found


@contextmanager
def _tapped(model: nn.Module, make_tap: Callable[[str, _Recurrent, Tap], Tap]) -> Iterator[None]:
    """Install a tap on every recurrent module of ``model``; taps already there (nested blocks) run inside it."""
    modules = recurrent_modules(model)
    previous = [m._tap for _, m in modules]
    try:
        for (name, module), inner in zip(modules, previous):
            module._tap = make_tap(name, module, inner or _engine_run)
        yield
    finally:
        for (_, module), inner in zip(modules, previous):
            if inner is None:
                del module._tap  # back to the class's None
            else:
                module._tap = inner


def _engine_run(spec: CellSpec, engine: Engine, layer: int, direction: int, gx: Tensor, p: Mapping[str, Tensor],
                state: State, lengths: Tensor | None) -> tuple[Tensor, State]:
    return engine.run(spec, gx, p, state, lengths)


def _calls() -> Callable[[int, int], int]:
    """Counts forward calls: a call starts when layer 0, direction 0 runs."""
    count = [-1]

    def call(layer: int, direction: int) -> int:
        if layer == 0 and direction == 0:
            count[0] += 1
        return count[0]

    return call


def _to_input_order(x: Tensor, direction: int, lengths: Tensor | None) -> Tensor:
    """``(T, B, F)`` in processing order -> ``(B, T, F)`` in the input's time order."""
    return (reverse_padded(x, lengths) if direction else x).transpose(0, 1)


@contextmanager
def record(model: nn.Module, *, pre_activations: bool = False) -> Iterator[Recording]:
    """Record the gates and states of every gatedrnn layer in ``model`` during the forward calls of the block.

    Args:
        model: a gatedrnn ``LSTM``/``GRU``/``RNN``, or any ``nn.Module`` containing them.
        pre_activations: also keep the argument of each gate's nonlinearity (``Trace.pre``).

    Yields a :class:`Recording` that fills as the model runs. The model's outputs and gradients are exactly what
    they are without recording; the recorded values are computed without gradient from what each layer and
    direction received (see the module docstring).

    Examples:
        >>> lstm = gatedrnn.LSTM(10, 20, num_layers=2)
        >>> with gatedrnn.inspect.record(lstm) as rec:
        ...     out, _ = lstm(torch.randn(7, 3, 10))
        >>> rec.trace(layer=1)["f"].shape        # (batch, time, unit)
        torch.Size([3, 7, 20])
    """
    pre_activations = bool(pre_activations)
    recording = Recording()

    def make_tap(name: str, module: _Recurrent, inner: Tap) -> Tap:
        call = _calls()

        def tap(spec: CellSpec, engine: Engine, layer: int, direction: int, gx: Tensor, p: Mapping[str, Tensor],
                state: State, lengths: Tensor | None) -> tuple[Tensor, State]:
            result = inner(spec, engine, layer, direction, gx, p, state, lengths)
            gates, pre, states = (
                {k: _to_input_order(v, direction, lengths) for k, v in part.items()}
                for part in _replay(spec, gx, p, state, lengths, pre_activations)
            )
            steps, batch = gx.shape[0], gx.shape[1]
            valid = torch.full((batch,), steps, device=gx.device) if lengths is None else lengths.clone()
            recording.traces.append(
                Trace(name, layer, direction, call(layer, direction), spec.family, gates, pre, states, valid)
            )
            return result

        return tap

    with _tapped(model, make_tap):
        yield recording


def _replay(spec: CellSpec, gx: Tensor, p: Mapping[str, Tensor], state: State, lengths: Tensor | None,
            pre_activations: bool) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
    """Loop ``spec.step_with_gates_at`` over time as the reference engine loops ``spec.step_at``; stack
    ``(T, B, ·)``."""
    gates: dict[str, list[Tensor]] = {}
    pre: dict[str, list[Tensor]] = {}
    states: dict[str, list[Tensor]] = {name: [] for name in spec.state_names}
    with torch.no_grad():
        state = tuple(s.detach() for s in state)
        for t in range(gx.shape[0]):
            new_state, step_gates, step_pre = spec.step_with_gates_at(t, gx[t].detach(), state, p)
            if lengths is None:
                state = new_state
            else:
                active = (t < lengths).unsqueeze(1)  # (B, 1); ended sequences keep their state, as in the engines
                state = tuple(torch.where(active, new, old) for new, old in zip(new_state, state))
            for name, value in zip(spec.state_names, state):
                states[name].append(value)
            for name, value in step_gates.items():
                gates.setdefault(name, []).append(value)
            if pre_activations:
                for name, value in step_pre.items():
                    pre.setdefault(name, []).append(value)
        stacked = [{k: _mask_padding(torch.stack(v), lengths) for k, v in d.items()} for d in (gates, pre, states)]
    return stacked[0], stacked[1], stacked[2]


def _mask_padding(x: Tensor, lengths: Tensor | None) -> Tensor:
    """NaN at ``t >= lengths[b]`` of ``x`` ``(T, B, F)``."""
    if lengths is None:
        return x
    valid = torch.arange(x.shape[0], device=x.device).unsqueeze(1) < lengths  # (T, B)
    return x.masked_fill(~valid.unsqueeze(2), float("nan"))


def gradient_flow(model: nn.Module, x: Any, loss_fn: Callable[[Any], Tensor], **forward: Any) -> dict[str, Tensor]:
    r"""How much a loss depends on each step's hidden state: ``‖∂L/∂h_t‖`` for every layer, direction and ``t``.

    ``L = loss_fn(model(x, **forward))`` must be a scalar (``forward``: further arguments of the model's
    ``forward``, such as ``lengths=``). ``∂L/∂h_t`` is the total derivative: through the output at ``t``
    and through every later step of the recurrence (and every layer above). For each gatedrnn layer and direction
    the result holds a tensor ``(T,)`` with, at each input position ``t``, the norm over the batch and units:

    .. math::
        \Big\|\frac{\partial L}{\partial h_t}\Big\| = \sqrt{\textstyle\sum_{b, u} (\partial L / \partial h_{t,b,u})^2}

    It is measured by adding a zero probe ``δ_t`` to ``h_t`` in a replay of the recurrence with the cell's step
    function (the reference engine's math, whatever engine the layer uses) and taking ``∂L/∂δ_t``. Parameter
    gradients (``.grad``) are left untouched. Steps at or past a sequence's length contribute 0.

    Returns a dict keyed like :attr:`Trace.key` (``"lstm_l0"``, ``"l1_reverse"`` …), in the order the layers ran.

    Examples:
        >>> rnn = gatedrnn.RNN(8, 16)
        >>> flow = gatedrnn.inspect.gradient_flow(rnn, torch.randn(50, 4, 8), lambda out: out[0][-1].sum())
        >>> flow["l0"].shape
        torch.Size([50])
    """
    if not callable(loss_fn):
        raise TypeError(f"loss_fn: expected a callable taking the model's output, got {type(loss_fn).__name__}")
    probes: dict[str, tuple[Tensor, int, Tensor | None]] = {}

    def make_tap(name: str, module: _Recurrent, inner: Tap) -> Tap:
        call = _calls()

        def tap(spec: CellSpec, engine: Engine, layer: int, direction: int, gx: Tensor, p: Mapping[str, Tensor],
                state: State, lengths: Tensor | None) -> tuple[Tensor, State]:
            steps, batch = gx.shape[0], gx.shape[1]
            probe = gx.new_zeros(steps, batch, spec.state_size, requires_grad=True)  # (T, B, P): δ_t
            probes[_key(name, layer, direction, call(layer, direction))] = (probe, direction, lengths)
            return reference.loop(spec, gx, p, state, lengths, probe)

        return tap

    with torch.enable_grad(), _tapped(model, make_tap):
        loss = loss_fn(model(x, **forward))
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise ValueError(f"loss_fn: expected it to return a scalar tensor, got {_describe(loss)}")
    if not loss.requires_grad:
        raise ValueError("loss_fn: the loss does not depend on the model's output (it has no gradient)")
    grads = torch.autograd.grad(loss.squeeze(), [probe for probe, _, _ in probes.values()], allow_unused=True)
    flow = {}
    for (key, (probe, direction, lengths)), grad in zip(probes.items(), grads):
        grad = torch.zeros_like(probe) if grad is None else grad  # (T, B, P)
        flow[key] = _to_input_order(grad, direction, lengths).detach().square().sum(dim=(0, 2)).sqrt()  # (T,)
    return flow


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


__all__ = ["DIMS", "Recording", "Trace", "gradient_flow", "record", "recurrent_modules"]
