"""The depth-gated LSTM (Yao et al. 2015): in a stack, each layer's cell also receives the cell of the layer below."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import CellSpec, Gates, ParamDef, State
from .lstm import LSTMSpec


@dataclass(frozen=True)
class DepthGatedLSTMSpec(LSTMSpec):
    r"""Depth-gated LSTM (DGLSTM, Yao et al. 2015): an LSTM layer ``L`` whose cell takes in the cell state
    ``c^{L-1}_t`` of the layer below at the same step, through a depth gate ``d``:

    .. math::
        \begin{aligned}
        d &= \sigma(b_d + W_{xd}\, x_t + w_{cd} \odot c_{t-1} + w_{ld} \odot c^{L-1}_t) \\
        c_t &= d \odot c^{L-1}_t + f \odot c_{t-1} + i \odot g
        \end{aligned}

    and every other equation as :class:`LSTMSpec` (``x_t`` is the layer's input, ``h^{L-1}_t``; ``i, f, o`` read
    the cell state only with ``peephole=True``, the paper's form). ``w_cd`` and ``w_ld`` are diagonal (vectors).
    The bottom layer has no layer below and no depth gate: it is an LSTM (``bottom=True``, :meth:`for_layer`).

    Each layer hands its cell state of every step to the layer above: :meth:`output` is ``[h_t | c_t]``, and the
    layer above finds ``c^{L-1}`` in its parameters as ``cell_below`` ``(T, B, H)``, which :meth:`input_product`
    appends to its input projection: ``gx = [W_ih x + b_ih | W_xd x + b_d | c^{L-1}]`` ``(T, B, G·H + 2H)``.

    ======================  =====================
    parameter               shape
    ======================  =====================
    ``weight_xd``           ``(H, I)``: ``W_xd``
    ``bias_d``              ``(H,)``: ``b_d``, only if bias
    ``weight_cd``           ``(H,)``: ``w_cd``
    ``weight_ld``           ``(H,)``: ``w_ld``
    ======================  =====================

    These come after :class:`LSTMSpec`'s parameters, in layers above the bottom one only. No layer norm.

    Attributes:
        bottom: the bottom layer's spec (no depth gate).
    """

    bottom: bool = False

    @property
    def depth_gate(self) -> bool:
        return True

    def for_layer(self, layer: int) -> CellSpec:
        return dataclasses.replace(self, bottom=True) if layer == 0 else self

    def output(self, state: State) -> Tensor:
        return torch.cat(state, dim=-1)

    @property
    def output_size(self) -> int:
        return self.state_size + self.hidden_size

    def params(self, input_size: int) -> list[ParamDef]:
        defs = super().params(input_size)
        if self.bottom:
            return defs
        H = self.hidden_size
        defs.append(ParamDef("weight_xd", (H, input_size)))
        if self.bias:
            defs.append(ParamDef("bias_d", (H,)))
        return defs + [ParamDef("weight_cd", (H,)), ParamDef("weight_ld", (H,))]

    def input_product(self, x: Tensor, p: Mapping[str, Tensor]) -> Tensor:
        """``[W_ih x + b_ih | W_xd x + b_d | c^{L-1}]`` ``(T, B, G·H + 2H)``; the bottom layer's is LSTM's."""
        if self.bottom:
            return super().input_product(x, p)
        bias = None
        if self.bias:
            bias = torch.cat([p["bias_ih"], p["bias_d"]])
        a = F.linear(x, torch.cat([p["weight_ih"], p["weight_xd"]]), bias)
        return torch.cat([a, p["cell_below"].to(a.dtype)], dim=-1)

    def step_with_gates(self, gx: Tensor, state: State, p: Mapping[str, Tensor]) -> tuple[State, Gates, Gates]:
        if self.bottom:
            return super().step_with_gates(gx, state, p)
        H = self.hidden_size
        h, c = state
        a_ih, a_d, c_below = gx.split([self.gate_size, H, H], dim=1)
        gates, pre, a_o = self.cell_gates(a_ih + self.recurrent_projection(h, p), c, p)
        a_d = a_d + p["weight_cd"] * c + p["weight_ld"] * c_below
        d = torch.sigmoid(a_d)
        c = d * c_below + gates["f"] * c + gates["i"] * gates["g"]
        h, o, a_o = self.hidden_output(a_o, c, p)
        return (h, c), {**gates, "o": o, "d": d}, {**pre, "o": a_o, "d": a_d}
