"""What every cell family shares: the parameter table, initialisation and the input projection.

A *cell spec* is a frozen description of one cell family with its variant options (see ``rnn.py``,
``lstm.py``, ``gru.py``). It owns the math of that family, written once:

- ``params(input_size)``: the parameters of one layer and direction, in ``torch.nn``'s names and order;
- ``input_projection(x, p)``: ``LN_ih(W_ih x) + b_ih`` for all time steps at once (one GEMM);
- ``step(gx_t, state, p)``: one step of the recurrence given that step's input projection (``step_with_gates``
  also returns the gate activations and pre-activations of that step);
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
    return F.layer_norm(x, (x.shape[-1],), weight, bias, LN_EPS)


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
                bound = 1.0 / math.sqrt(self.hidden_size)
                tensor.uniform_(-bound, bound)
            elif init == "ones":
                tensor.fill_(1.0)
            else:
                tensor.zero_()

    def input_projection(self, x: Tensor, p: Mapping[str, Tensor]) -> Tensor:
        """``gx = LN_ih(W_ih x) + b_ih`` for every step at once: ``(..., I) -> (..., G·H)``, one GEMM."""
        if not self.layer_norm:
            return F.linear(x, p["weight_ih"], p.get("bias_ih"))
        # b_ih joins LN_ih's shift: one pass over the (..., G·H) result instead of two, and no separate sum for
        # b_ih's gradient in backward.
        shift = p["ln_ih_bias"] + p["bias_ih"] if self.bias else p["ln_ih_bias"]
        return layer_norm(F.linear(x, p["weight_ih"]), p["ln_ih_weight"], shift)

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

    def step_with_gates(self, gx: Tensor, state: State, p: Mapping[str, Tensor]) -> tuple[State, Gates, Gates]:
        """One step, also returning what happened inside: ``(state, gates, pre)``.

        ``gates`` maps each gate name (``gate_names``, plus ``f = 1 - i`` for a coupled LSTM) to its activation
        ``(B, H)``; ``pre`` maps each gate name to the argument of its nonlinearity. This is the one place the
        family's math is written: :meth:`step` returns its state, :mod:`gatedrnn.inspect` records the rest.
        """
        raise NotImplementedError
