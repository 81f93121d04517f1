"""The vanilla (Elman) RNN cell, tanh or relu."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from .base import CellSpec, Gates, State


@dataclass(frozen=True)
class RNNSpec(CellSpec):
    r"""Elman RNN: one gate, the new hidden state itself.

    .. math::
        h_t = \mathrm{act}\big(\mathrm{LN_{ih}}(W_{ih} x_t) + b_{ih} + \mathrm{LN_{hh}}(W_{hh} h_{t-1}) + b_{hh}\big)

    ``act`` is ``tanh`` or ``relu``; the ``LN`` terms exist only with ``layer_norm=True``. The tutorials'
    ``h = tanh(W·[h, x] + b)`` is the same thing with ``W = [W_hh | W_ih]`` and ``b = b_ih + b_hh``.

    Attributes:
        nonlinearity: ``"tanh"`` or ``"relu"``.
    """

    nonlinearity: Literal["tanh", "relu"] = "tanh"

    family: ClassVar[str] = "rnn"

    @property
    def gate_names(self) -> tuple[str, ...]:
        return ("h",)

    def step_with_gates(self, gx: Tensor, state: State, p: Mapping[str, Tensor]) -> tuple[State, Gates, Gates]:
        (h,) = state
        a = gx + self.recurrent_projection(h, p)  # (B, H)
        h = torch.tanh(a) if self.nonlinearity == "tanh" else torch.relu(a)
        return (h,), {"h": h}, {"h": a}
