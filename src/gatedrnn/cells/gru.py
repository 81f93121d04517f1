"""The GRU cell (Cho et al. 2014) with the reset gate applied after (cuDNN, torch.nn) or before the matmul."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import CellSpec, Gates, State, layer_norm


@dataclass(frozen=True)
class GRUSpec(CellSpec):
    r"""Gated recurrent unit with update gate ``z``, reset gate ``r`` and candidate ``n``.

    .. math::
        \begin{aligned}
        a &= \mathrm{LN_{ih}}(W_{ih} x_t) + b_{ih}
             \quad\text{split into } a_r, a_z, a_n \\
        r &= \sigma(a_r + \mathrm{LN_{rz}}(W_{hr} h_{t-1})_r + b_{hr}) \\
        z &= \sigma(a_z + \mathrm{LN_{rz}}(W_{hz} h_{t-1})_z + b_{hz}) \\
        n &= \tanh(a_n + r \odot (\mathrm{LN_n}(W_{hn} h_{t-1}) + b_{hn}))
             &&\text{reset="after" (torch.nn, cuDNN)} \\
        n &= \tanh(a_n + \mathrm{LN_n}(W_{hn} (r \odot h_{t-1})) + b_{hn})
             &&\text{reset="before" (Cho et al. 2014)} \\
        h_t &= (1 - z) \odot n + z \odot h_{t-1}
        \end{aligned}

    The tutorials write ``h = (1-z)*h + z*h~`` with ``h~ = n``: their ``z`` is our ``1 - z``. We keep
    ``torch.nn.GRU``'s convention so that weights move between the two unchanged; a GRU trained here learns the
    same function with ``z`` playing the role of "keep the old state".

    Gate blocks of ``weight_ih``/``weight_hh``/biases are ``r|z|n`` (as ``torch.nn.GRU``); each is ``(3H, ·)``.
    With ``layer_norm=True``, ``LN_ih`` normalises all ``3H`` input pre-activations together, and the recurrent
    part is normalised in two blocks because in the reset-before form ``W_hn (r*h)`` can only be computed after
    ``r``: ``LN_rz`` over the ``2H`` rows of ``r|z`` and ``LN_n`` over the ``H`` rows of ``n``. Their gains and
    shifts are the two halves (``[:2H]`` and ``[2H:]``) of ``ln_hh_weight`` and ``ln_hh_bias``, so both reset
    forms have the same parameters.

    Attributes:
        reset: ``"after"``: ``r`` scales ``W_hn h + b_hn``; ``"before"``: ``r`` scales ``h`` before ``W_hn``.
    """

    reset: Literal["after", "before"] = "after"

    family: ClassVar[str] = "gru"

    @property
    def gate_names(self) -> tuple[str, ...]:
        return ("r", "z", "n")

    def _recurrent_block(self, h: Tensor, p: Mapping[str, Tensor], rows: slice) -> Tensor:
        """``LN(W_hh[rows] h) + b_hh[rows]`` for the ``r|z`` rows or the ``n`` rows of ``weight_hh``."""
        gh = F.linear(h, p["weight_hh"][rows])
        if self.layer_norm:
            gh = layer_norm(gh, p["ln_hh_weight"][rows], p["ln_hh_bias"][rows])
        return gh + p["bias_hh"][rows] if self.bias else gh

    def recurrent_projection(self, h: Tensor, p: Mapping[str, Tensor]) -> Tensor:
        """``[LN_rz(W_h{r,z} h) + b_h{r,z} | LN_n(W_hn h) + b_hn]``: ``(B, H) -> (B, 3H)``."""
        H = self.hidden_size
        if not self.layer_norm:
            return super().recurrent_projection(h, p)
        return torch.cat(
            [self._recurrent_block(h, p, slice(0, 2 * H)), self._recurrent_block(h, p, slice(2 * H, 3 * H))],
            dim=1,
        )

    def step_with_gates(self, gx: Tensor, state: State, p: Mapping[str, Tensor]) -> tuple[State, Gates, Gates]:
        (h,) = state
        H = self.hidden_size
        a_r, a_z, a_n = gx.chunk(3, dim=1)
        if self.reset == "after":
            gh_r, gh_z, gh_n = self.recurrent_projection(h, p).chunk(3, dim=1)
            pre_r, pre_z = a_r + gh_r, a_z + gh_z
            r = torch.sigmoid(pre_r)
            z = torch.sigmoid(pre_z)
            pre_n = a_n + r * gh_n
        else:
            gh_r, gh_z = self._recurrent_block(h, p, slice(0, 2 * H)).chunk(2, dim=1)
            pre_r, pre_z = a_r + gh_r, a_z + gh_z
            r = torch.sigmoid(pre_r)
            z = torch.sigmoid(pre_z)
            pre_n = a_n + self._recurrent_block(r * h, p, slice(2 * H, 3 * H))
        n = torch.tanh(pre_n)
        h = (1 - z) * n + z * h
        return (h,), {"r": r, "z": z, "n": n}, {"r": pre_r, "z": pre_z, "n": pre_n}
