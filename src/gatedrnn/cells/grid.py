"""The 2-D Grid LSTM for sequences (Kalchbrenner, Danihelka and Graves 2015): LSTM cells along time and along depth."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import CellSpec, Gates, ParamDef, State


def grid_lstm_transform(a: Tensor, m: Tensor) -> tuple[Tensor, Tensor, Gates]:
    """The paper's LSTM transform from the pre-activations ``a = W H + b`` (blocks ``i|f|g|o``) and a memory ``m``:
    ``m' = f ⊙ m + i ⊙ g``, ``h' = tanh(o ⊙ m')``. Returns ``h', m'`` and the gates."""
    a_i, a_f, a_g, a_o = a.chunk(4, dim=-1)
    i, f, g, o = torch.sigmoid(a_i), torch.sigmoid(a_f), torch.tanh(a_g), torch.sigmoid(a_o)
    m = f * m + i * g
    return torch.tanh(o * m), m, {"i": i, "f": f, "g": g, "o": o}


@dataclass(frozen=True)
class GridLSTMSpec(CellSpec):
    r"""One layer of a 2-D Grid LSTM over a sequence: the block at step ``t`` and layer ``l`` has an LSTM along time
    and one along depth, both reading the concatenated hidden vectors ``H = [h_{t-1,l} ; h^d_{t,l-1}]``:

    .. math::
        \begin{aligned}
        (h_{t,l},\ m_{t,l}) &= \mathrm{LSTM}(H,\ m_{t-1,l},\ W_t) \qquad\text{(time)} \\
        (h^d_{t,l},\ m^d_{t,l}) &= \mathrm{LSTM}(H,\ m^d_{t,l-1},\ W_d) \qquad\text{(depth)} \\
        \mathrm{LSTM}(H, m, W):\ & i, f, o = \sigma(W^{i,f,o} H + b^{i,f,o}),\ g = \tanh(W^g H + b^g),\
            m' = f \odot m + i \odot g,\ h' = \tanh(o \odot m')
        \end{aligned}

    ``h' = tanh(o ⊙ m')`` is the paper's form of the LSTM (not ``o ⊙ tanh(m')``). The bottom layer's depth input is
    the projected input, ``h^d_{t,-1} = W_in x_t + b_in``, with memory ``m^d_{t,-1} = 0``; the module's output is
    the top layer's ``h^d_{t,L-1}``. With ``depth="tanh"`` or ``"relu"`` the depth dimension is a plain layer,
    ``h^d_{t,l} = act(W_d H + b_d)`` with no memory (the paper's non-LSTM dimension).

    Block ``(t, l)`` needs only ``(t-1, l)`` and ``(t, l-1)``, so the grid runs layer by layer: each layer a
    recurrence over time with state ``(h, m)`` whose input is the depth output of the layer below. The state also
    carries the block's depth output ``(h^d, m^d)``, which :meth:`output` hands to the layer above (``[h^d | m^d]``;
    ``h^d`` becomes that layer's input, ``m^d`` its ``cell_below``).

    ======================  =====================
    parameter               shape
    ======================  =====================
    ``weight_in``           ``(H, I)``, bottom layer only
    ``bias_in``             ``(H,)``, bottom layer only, if bias
    ``weight_time``         ``(4H, H + J)``: ``W_t``, columns ``[h | h^d]``, ``J`` the width of ``h^d`` below
    ``bias_time``           ``(4H,)``, if bias
    ``weight_depth``        ``(4H, H + J)`` (``(H, H + J)`` for a non-LSTM depth): ``W_d``
    ``bias_depth``          ``(4H,)`` (``(H,)``), if bias
    ======================  =====================

    With ``tied=True`` every layer uses the bottom layer's ``W_t, b_t, W_d, b_d`` (the paper's tied Grid LSTM); the
    layers above have no parameters of their own.

    Attributes:
        depth: ``"lstm"``, or ``"tanh"``/``"relu"`` for a non-LSTM depth dimension.
        tied: one set of weights for every layer.
        bottom: the bottom layer's spec (the input projection; :meth:`for_layer`).
    """

    depth: Literal["lstm", "tanh", "relu"] = "lstm"
    tied: bool = False
    bottom: bool = False

    family: ClassVar[str] = "grid"

    @property
    def gate_names(self) -> tuple[str, ...]:
        return ("i", "f", "g", "o")

    @property
    def state_names(self) -> tuple[str, ...]:
        return ("h", "c", "h_depth", "c_depth")

    def state_widths(self) -> tuple[int, ...]:
        H = self.hidden_size
        return (H, H, H, H if self.depth == "lstm" else 0)

    def for_layer(self, layer: int) -> CellSpec:
        return dataclasses.replace(self, bottom=True) if layer == 0 else self

    def output(self, state: State) -> Tensor:
        return torch.cat(state[2:], dim=-1)

    @property
    def output_size(self) -> int:
        return sum(self.state_widths()[2:])

    def params(self, input_size: int) -> list[ParamDef]:
        """The bottom layer's input projection and, unless tied above the bottom, the two transforms; ``input_size``
        is the layer's input width (``I`` at the bottom, ``J`` above)."""
        H = self.hidden_size
        defs = []
        if self.bottom:
            defs.append(ParamDef("weight_in", (H, input_size)))
            if self.bias:
                defs.append(ParamDef("bias_in", (H,)))
        elif self.tied:
            return []
        width = H + (H if self.bottom else input_size)
        depth_rows = 4 * H if self.depth == "lstm" else H
        for name, rows in (("time", 4 * H), ("depth", depth_rows)):
            defs.append(ParamDef(f"weight_{name}", (rows, width)))
            if self.bias:
                defs.append(ParamDef(f"bias_{name}", (rows,)))
        return defs

    def input_bias(self, p: Mapping[str, Tensor]) -> Tensor | None:
        return None

    def input_product(self, x: Tensor, p: Mapping[str, Tensor]) -> Tensor:
        """``[W_t^d h^d + b_t | W_d^d h^d + b_d | m^d]`` ``(T, B, 4H + G_d + H_m)`` for every step at once: the parts
        of the two transforms that read the depth input ``h^d`` (``W_in x + b_in`` at the bottom, else ``x``), and
        the depth memory ``m^d`` from below (``cell_below``; zero at the bottom)."""
        H = self.hidden_size
        h_depth = F.linear(x, p["weight_in"], p.get("bias_in")) if self.bottom else x  # (T, B, J)
        parts = [F.linear(h_depth, p["weight_time"][:, H:], p.get("bias_time")),
                 F.linear(h_depth, p["weight_depth"][:, H:], p.get("bias_depth"))]
        if self.depth == "lstm":
            below = p.get("cell_below")
            parts.append(below.to(h_depth.dtype) if below is not None else h_depth.new_zeros(*h_depth.shape[:-1], H))
        return torch.cat(parts, dim=-1)

    def step_with_gates(self, gx: Tensor, state: State, p: Mapping[str, Tensor]) -> tuple[State, Gates, Gates]:
        H = self.hidden_size
        h, m = state[0], state[1]
        depth_rows = 4 * H if self.depth == "lstm" else H
        x_time, x_depth, m_below = gx.split([4 * H, depth_rows, gx.shape[-1] - 4 * H - depth_rows], dim=-1)
        a_time = x_time + F.linear(h, p["weight_time"][:, :H])  # (B, 4H): W_t H + b_t
        a_depth = x_depth + F.linear(h, p["weight_depth"][:, :H])  # (B, 4H or H): W_d H + b_d
        h_new, m_new, gates = grid_lstm_transform(a_time, m)
        pre = dict(zip(("i", "f", "g", "o"), a_time.chunk(4, dim=-1)))
        if self.depth == "lstm":
            h_depth, m_depth, depth_gates = grid_lstm_transform(a_depth, m_below)
            gates.update({f"{k}_depth": v for k, v in depth_gates.items()})
            pre.update({f"{k}_depth": v for k, v in zip(("i", "f", "g", "o"), a_depth.chunk(4, dim=-1))})
        else:
            h_depth = torch.tanh(a_depth) if self.depth == "tanh" else torch.relu(a_depth)
            m_depth = m_below  # (B, 0): no depth memory
            gates["h_depth"] = h_depth
            pre["h_depth"] = a_depth
        return (h_new, m_new, h_depth, m_depth), gates, pre
