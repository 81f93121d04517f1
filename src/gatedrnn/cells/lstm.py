"""The LSTM cell and its variants: peephole, coupled input-forget gate (CIFG), layer norm, forget bias, projection."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import CellSpec, Gates, ParamDef, State, layer_norm


@dataclass(frozen=True)
class LSTMSpec(CellSpec):
    r"""Long short-term memory (Hochreiter & Schmidhuber 1997, with the forget gate of Gers et al. 2000).

    .. math::
        \begin{aligned}
        a &= \mathrm{LN_{ih}}(W_{ih} x_t) + b_{ih} + \mathrm{LN_{hh}}(W_{hh} h_{t-1}) + b_{hh}
             \quad\text{split into } a_i, a_f, a_g, a_o \\
        i &= \sigma(a_i + p_i \odot c_{t-1}) \\
        f &= \sigma(a_f + p_f \odot c_{t-1} + \text{forget\_bias}) \qquad (f = 1 - i \text{ if coupled}) \\
        g &= \tanh(a_g) \\
        c_t &= f \odot c_{t-1} + i \odot g \\
        o &= \sigma(a_o + p_o \odot c_t) \\
        h_t &= o \odot \tanh(\mathrm{LN_c}(c_t)) \qquad (h_t = W_{hr}\, h_t \text{ if proj\_size} > 0)
        \end{aligned}

    The peephole terms ``p_i, p_f, p_o`` (Gers & Schmidhuber 2000; parameters ``weight_ci``, ``weight_cf``,
    ``weight_co``) exist only with ``peephole=True``; the ``LN`` terms only with ``layer_norm=True`` (without it
    each ``LN`` is the identity). Gate blocks of ``weight_ih``/``weight_hh`` are ``i|f|g|o`` as in ``torch.nn.LSTM``;
    a coupled LSTM has no forget-gate rows, so its blocks are ``i|g|o`` and it has no ``weight_cf``.

    ======================  =====================
    parameter               shape
    ======================  =====================
    ``weight_ih``           ``(G·H, I)``, G = 4 (3 if coupled)
    ``weight_hh``           ``(G·H, P)``, P = proj_size or H
    ``bias_ih, bias_hh``    ``(G·H,)``
    ``weight_hr``           ``(P, H)``, only if proj_size > 0
    ``weight_c{i,f,o}``     ``(H,)``, only if peephole
    ``ln_ih_*, ln_hh_*``    ``(G·H,)``, only if layer_norm
    ``ln_c_*``              ``(H,)``, only if layer_norm
    ======================  =====================

    Attributes:
        proj_size: ``P``; when > 0 the output ``h`` is projected by ``weight_hr`` (as ``torch.nn.LSTM``).
        peephole: gates read the cell state through diagonal peephole weights.
        coupled: coupled input-forget gate, ``f = 1 - i`` (no forget-gate weights).
        forget_bias: constant added to the forget-gate pre-activation (Jozefowicz et al. 2015 use 1.0).
    """

    proj_size: int = 0
    peephole: bool = False
    coupled: bool = False
    forget_bias: float = 0.0

    family: ClassVar[str] = "lstm"

    @property
    def gate_names(self) -> tuple[str, ...]:
        return ("i", "g", "o") if self.coupled else ("i", "f", "g", "o")

    @property
    def state_size(self) -> int:
        return self.proj_size or self.hidden_size

    @property
    def state_names(self) -> tuple[str, ...]:
        return ("h", "c")

    def state_widths(self) -> tuple[int, ...]:
        return (self.state_size, self.hidden_size)

    def _extra_params(self) -> list[ParamDef]:
        H = self.hidden_size
        defs = []
        if self.proj_size:
            defs.append(ParamDef("weight_hr", (self.proj_size, H)))
        if self.peephole:
            defs += [ParamDef("weight_ci", (H,))]
            if not self.coupled:
                defs += [ParamDef("weight_cf", (H,))]
            defs += [ParamDef("weight_co", (H,))]
        defs += super()._extra_params()
        if self.layer_norm:
            defs += [ParamDef("ln_c_weight", (H,), "ones"), ParamDef("ln_c_bias", (H,), "zeros")]
        return defs

    def step_with_gates(self, gx: Tensor, state: State, p: Mapping[str, Tensor]) -> tuple[State, Gates, Gates]:
        h, c = state
        gates, pre, a_o = self.cell_gates(gx + self.recurrent_projection(h, p), c, p)
        c = gates["f"] * c + gates["i"] * gates["g"]
        h, o, a_o = self.hidden_output(a_o, c, p)
        return (h, c), {**gates, "o": o}, {**pre, "o": a_o}

    def cell_gates(self, a: Tensor, c: Tensor, p: Mapping[str, Tensor]) -> tuple[Gates, Gates, Tensor]:
        """The gates that update the cell, from the pre-activations ``a`` ``(B, G·H)`` and ``c_{t-1}``:
        ``({"i", "f", "g"}, their pre-activations, a_o)``; ``a_o`` waits for ``c_t`` (its peephole reads it)."""
        if self.coupled:
            a_i, a_g, a_o = a.chunk(3, dim=1)
        else:
            a_i, a_f, a_g, a_o = a.chunk(4, dim=1)
        if self.peephole:
            a_i = a_i + p["weight_ci"] * c
        i = torch.sigmoid(a_i)
        pre = {"i": a_i}
        if self.coupled:
            f = 1 - i
        else:
            if self.peephole:
                a_f = a_f + p["weight_cf"] * c
            pre["f"] = a_f = a_f + self.forget_bias
            f = torch.sigmoid(a_f)
        g = torch.tanh(a_g)
        return {"i": i, "f": f, "g": g}, {**pre, "g": a_g}, a_o

    def hidden_output(self, a_o: Tensor, c: Tensor, p: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """``(h_t, o, a_o)`` from the output gate's pre-activation and the new cell state ``c_t`` (``a_o`` with its
        peephole term, the argument of ``o``'s sigmoid)."""
        if self.peephole:
            a_o = a_o + p["weight_co"] * c
        o = torch.sigmoid(a_o)
        c_norm = layer_norm(c, p["ln_c_weight"], p["ln_c_bias"]) if self.layer_norm else c
        h = o * torch.tanh(c_norm)
        if self.proj_size:
            h = F.linear(h, p["weight_hr"])
        return h, o, a_o
