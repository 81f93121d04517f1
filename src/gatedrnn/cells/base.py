"""What every cell family shares: the parameter table, initialisation and the input projection.

A *cell spec* is a frozen description of one cell family with its variant options (see ``rnn.py``,
``lstm.py``, ``gru.py``). It owns the math of that family, written once:

- ``params(input_size)``: the parameters of one layer and direction, in ``torch.nn``'s names and order;
- ``input_projection(x, p)``: ``LN_ih(W_ih x) + b_ih`` for all time steps at once (one GEMM), in two parts:
  ``input_product`` (the GEMM) and ``normalise_input`` (LN_ih and ``b_ih``), which a fast engine may fuse into its
  kernel (``Engine.run_product``);
- ``step(gx_t, state, p)``: one step of the recurrence given that step's input projection (``step_with_gates``
  also returns the gate activations and pre-activations of that step); engines call it as ``step_at(t, gx_t, state,
  p)`` with the step's index ``t`` in processing order (from 0), which a cell whose step depends on time (the
  Clockwork RNN's module clocks) overrides, and which is ``step`` for every other cell;
- ``zero_state(batch, like)``: the state used when no initial state is given.

Engines run ``step`` over time (the reference engine literally, fast engines by an equivalent fused kernel).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

LN_EPS = 1e-5
"""Epsilon of every layer norm inside the cells (``torch.nn.LayerNorm``'s default)."""

State = tuple[Tensor, ...]
"""A recurrent state: ``(h,)`` for RNN and GRU, ``(h, c)`` for LSTM. ``h`` always comes first."""

Gates = dict[str, Tensor]
"""Per-gate tensors of one step, by gate name (``"i"``, ``"f"`` …), each ``(B, H)``."""

Init = Literal["uniform", "ones", "zeros"]


@dataclass(frozen=True)
class ParamDef:
    """One parameter of a layer/direction: its ``torch.nn``-style base name, shape and initialisation."""

    name: str
    shape: tuple[int, ...]
    init: Init = "uniform"


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``LN(x) = (x - mean(x)) / sqrt(var(x) + eps) * weight + bias`` over the last dimension."""
    # weight.shape is x.shape[-1], and stays a constant while the TorchScript ONNX exporter traces the layer
    return F.layer_norm(x, weight.shape, weight, bias, LN_EPS)


@dataclass(frozen=True)
class CellSpec:
    """Fields shared by every cell family; subclasses add their variant options.

    Attributes:
        hidden_size: ``H``, the width of each gate.
        bias: whether the ``b_ih``/``b_hh`` biases exist.
        layer_norm: whether the input and recurrent pre-activations are layer-normalised (Ba et al. 2016).
    """

    hidden_size: int
    bias: bool = True
    layer_norm: bool = False

    family: ClassVar[str]
    """``"rnn"``, ``"lstm"`` or ``"gru"``."""

    @property
    def gate_names(self) -> tuple[str, ...]:
        """Names of the gate blocks of ``weight_ih``/``weight_hh``, in row order."""
        raise NotImplementedError

    @property
    def gate_size(self) -> int:
        """``G·H``: the rows of ``weight_ih`` and ``weight_hh``."""
        return len(self.gate_names) * self.hidden_size

    @property
    def state_size(self) -> int:
        """Width of ``h`` (``proj_size`` for a projected LSTM, else ``H``)."""
        return self.hidden_size

    @property
    def state_names(self) -> tuple[str, ...]:
        """``("h",)`` or ``("h", "c")``."""
        return ("h",)

    def state_widths(self) -> tuple[int, ...]:
        """Width of each state tensor, in ``state_names`` order."""
        return (self.state_size,)

    def for_layer(self, layer: int) -> CellSpec:
        """The spec of layer ``layer`` (from 0) of a stack: this one, but where the bottom layer differs (the
        depth-gated LSTM's has no layer below)."""
        return self

    def output(self, state: State) -> Tensor:
        """What a step hands on, stacked over time by the engines: ``h`` (``state[0]``), or for a cell whose layer
        above also reads its cell state, ``[h | c]``."""
        return state[0]

    @property
    def output_size(self) -> int:
        """Width of :meth:`output`."""
        return self.state_size

    def params(self, input_size: int) -> list[ParamDef]:
        """Parameters of one layer and direction, in ``torch.nn``'s registration order."""
        defs = [
            ParamDef("weight_ih", (self.gate_size, input_size)),
            ParamDef("weight_hh", (self.gate_size, self.state_size)),
        ]
        if self.bias:
            defs += [ParamDef("bias_ih", (self.gate_size,)), ParamDef("bias_hh", (self.gate_size,))]
        return defs + self._extra_params()

    def _extra_params(self) -> list[ParamDef]:
        defs: list[ParamDef] = []
        if self.layer_norm:
            for part in ("ih", "hh"):
                defs += [
                    ParamDef(f"ln_{part}_weight", (self.gate_size,), "ones"),
                    ParamDef(f"ln_{part}_bias", (self.gate_size,), "zeros"),
                ]
        return defs

    def init_(self, tensor: Tensor, init: Init) -> None:
        """Initialise like ``torch.nn``: ``U(-1/sqrt(H), 1/sqrt(H))``; layer-norm gains 1 and shifts 0."""
        with torch.no_grad():
            if init == "uniform":
                bound = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size else 0.0  # H = 0: empty anyway
                tensor.uniform_(-bound, bound)
            elif init == "ones":
                tensor.fill_(1.0)
            else:
                tensor.zero_()

    def input_product(self, x: Tensor, p: Mapping[str, Tensor]) -> Tensor:
        """The input projection up to LN_ih, for every step at once (one GEMM): ``(..., I) -> (..., G·H)``.

        With layer norm it is ``W_ih x``, which :meth:`normalise_input` turns into ``gx``; without, it is ``gx``
        itself, ``W_ih x + b_ih``.
        """
        return F.linear(x, p["weight_ih"], self.input_bias(p))

    def input_bias(self, p: Mapping[str, Tensor]) -> Tensor | None:
        """The bias :meth:`input_product` adds: ``b_ih``, or None with layer norm (``b_ih`` is then in LN_ih's
        shift, :meth:`input_norm`) or without bias."""
        return None if self.layer_norm else p.get("bias_ih")

    def input_norm(self, p: Mapping[str, Tensor]) -> tuple[Tensor, Tensor] | None:
        """LN_ih's gain and shift, ``b_ih`` folded into the shift (``LN_ih(a) + b_ih`` is one layer norm whose shift
        is ``ln_ih_bias + b_ih``: one pass over the ``(..., G·H)`` product instead of two, and no separate sum for
        ``b_ih``'s gradient in backward); None without layer norm."""
        if not self.layer_norm:
            return None
        return p["ln_ih_weight"], (p["ln_ih_bias"] + p["bias_ih"] if self.bias else p["ln_ih_bias"])

    def normalise_input(self, a: Tensor, p: Mapping[str, Tensor]) -> Tensor:
        """``gx`` from :meth:`input_product`'s ``a``: ``LN_ih(a) + b_ih`` with layer norm, ``a`` itself without."""
        norm = self.input_norm(p)
        return a if norm is None else layer_norm(a, *norm)

    def input_projection(self, x: Tensor, p: Mapping[str, Tensor]) -> Tensor:
        """``gx = LN_ih(W_ih x) + b_ih`` for every step at once: ``(..., I) -> (..., G·H)``, one GEMM."""
        return self.normalise_input(self.input_product(x, p), p)

    def recurrent_projection(self, h: Tensor, p: Mapping[str, Tensor]) -> Tensor:
        """``gh = LN_hh(W_hh h) + b_hh``: ``(B, state_size) -> (B, G·H)``."""
        gh = F.linear(h, p["weight_hh"])
        if self.layer_norm:
            gh = layer_norm(gh, p["ln_hh_weight"], p["ln_hh_bias"])
        return gh + p["bias_hh"] if self.bias else gh

    def zero_state(self, batch: int, like: Tensor) -> State:
        """The all-zero state of a batch, on ``like``'s device and dtype."""
        return tuple(like.new_zeros(batch, w) for w in self.state_widths())

    def step(self, gx: Tensor, state: State, p: Mapping[str, Tensor]) -> State:
        """One step: ``gx`` is this step's input projection ``(B, G·H)``; returns the new state."""
        return self.step_with_gates(gx, state, p)[0]

    def step_at(self, t: int, gx: Tensor, state: State, p: Mapping[str, Tensor]) -> State:
        """Step ``t`` of a sequence (from 0, in processing order): what engines loop over time. It is :meth:`step`
        for cells whose step does not depend on time."""
        return self.step_with_gates_at(t, gx, state, p)[0]

    def step_with_gates_at(self, t: int, gx: Tensor, state: State,
                           p: Mapping[str, Tensor]) -> tuple[State, Gates, Gates]:
        """:meth:`step_with_gates` at step ``t``, as :meth:`step_at`; a cell whose step depends on time overrides it."""
        return self.step_with_gates(gx, state, p)

    def step_with_gates(self, gx: Tensor, state: State, p: Mapping[str, Tensor]) -> tuple[State, Gates, Gates]:
        """One step, also returning what happened inside: ``(state, gates, pre)``.

        ``gates`` maps each gate name (``gate_names``, plus ``f = 1 - i`` for a coupled LSTM) to its activation
        ``(B, H)``; ``pre`` maps each gate name to the argument of its nonlinearity. This is the one place the
        family's math is written: :meth:`step` returns its state, :mod:`gatedrnn.inspect` records the rest.
        """
        raise NotImplementedError
