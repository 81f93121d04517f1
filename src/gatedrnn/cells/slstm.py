"""sLSTM (Beck et al. 2024, xLSTM): exponential input gate, normaliser and stabiliser states, recurrence in heads."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import CellSpec, Gates, ParamDef, State

ForgetGate = Literal["sigmoid", "exp"]
FORGET_GATES: tuple[str, ...] = ("sigmoid", "exp")


@dataclass(frozen=True)
class SLSTMSpec(CellSpec):
    r"""sLSTM: an LSTM with an exponential input gate, a normaliser ``n`` and a stabiliser ``m``.

    .. math::
        \begin{aligned}
        a &= W x_t + R\, h_{t-1} + b \quad\text{split into } \tilde\imath, \tilde f, \tilde z, \tilde o \\
        \log i_t &= \tilde\imath, \qquad
            \log f_t = \log\sigma(\tilde f) \ \text{(forget_gate="sigmoid")} \ \text{or}\ \tilde f \ \text{("exp")} \\
        m_t &= \max(\log f_t + m_{t-1},\ \log i_t) \\
        i'_t &= \exp(\log i_t - m_t), \qquad f'_t = \exp(\log f_t + m_{t-1} - m_t) \\
        z_t &= \tanh(\tilde z), \qquad o_t = \sigma(\tilde o) \\
        c_t &= f'_t \odot c_{t-1} + i'_t \odot z_t, \qquad n_t = f'_t \odot n_{t-1} + i'_t \\
        h_t &= o_t \odot c_t / n_t
        \end{aligned}

    ``i' = i e^{-m}`` and ``f' = f e^{m_{t-1} - m_t}`` are the gates scaled by the stabiliser, so ``c`` and ``n`` are
    those of the unstabilised cell times ``e^{-m_t}``: ``h`` is the same, and ``exp`` never overflows (both scaled
    gates are at most 1). A normaliser of 0 (the zero initial state) is an empty memory: that step starts the
    stabiliser at ``m_t = log i_t`` and keeps nothing of ``c``, as xLSTM's implementation does.

    ``R`` is block-diagonal over ``num_heads`` heads of ``D = H / num_heads`` units: head ``k``'s gates read only
    head ``k``'s units of ``h_{t-1}``. Parameters: ``weight_ih`` ``(4H, I)``, ``weight_hh`` ``(num_heads, 4D, D)``
    (head ``k``'s block, rows ``i|f|z|o``), ``bias_ih`` ``(4H,)`` (the one bias ``b``); gate blocks of ``weight_ih``
    and ``bias_ih`` are ``i|f|z|o``, each ``H`` rows. State: ``(h, c, n, m)``, each ``(B, H)``.

    Attributes:
        num_heads: heads of the block-diagonal recurrence; ``H`` must be a multiple of it.
        forget_gate: ``"sigmoid"`` (default) or ``"exp"`` (``f = exp(f̃)``).
    """

    num_heads: int = 1
    forget_gate: ForgetGate = "sigmoid"

    family: ClassVar[str] = "slstm"

    @property
    def gate_names(self) -> tuple[str, ...]:
        return ("i", "f", "z", "o")

    @property
    def state_names(self) -> tuple[str, ...]:
        return ("h", "c", "n", "m")

    def state_widths(self) -> tuple[int, ...]:
        return (self.hidden_size,) * 4

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_heads

    def params(self, input_size: int) -> list[ParamDef]:
        D = self.head_size
        defs = [ParamDef("weight_ih", (self.gate_size, input_size)),
                ParamDef("weight_hh", (self.num_heads, 4 * D, D))]
        return defs + [ParamDef("bias_ih", (self.gate_size,))] if self.bias else defs

    def recurrent_projection(self, h: Tensor, p: Mapping[str, Tensor]) -> Tensor:
        """``R h``: each head's ``(4D, D)`` block times its ``D`` units, laid out as the gate blocks ``i|f|z|o``:
        ``(B, H) -> (B, 4H)``."""
        B, D = h.shape[0], self.head_size
        per_head = torch.einsum("bkd,ked->bke", h.view(B, self.num_heads, D), p["weight_hh"])  # (B, NH, 4D)
        return per_head.view(B, self.num_heads, 4, D).transpose(1, 2).reshape(B, 4 * self.hidden_size)

    def log_forget(self, pre_f: Tensor) -> Tensor:
        """``log f``: ``log σ(f̃) = -softplus(-f̃)`` or ``f̃`` itself for the exponential forget gate."""
        return -F.softplus(-pre_f) if self.forget_gate == "sigmoid" else pre_f

    def step_with_gates(self, gx: Tensor, state: State, p: Mapping[str, Tensor]) -> tuple[State, Gates, Gates]:
        h, c, n, m = state
        pre_i, pre_f, pre_z, pre_o = (gx + self.recurrent_projection(h, p)).chunk(4, dim=1)
        log_i, log_f = pre_i, self.log_forget(pre_f)
        empty = n == 0  # nothing in memory yet: the stabiliser starts at log i
        m_new = torch.where(empty, log_i, torch.maximum(log_f + m, log_i))
        i = torch.exp(log_i - m_new)
        # exp(-inf) = 0 where empty, rather than where(empty, 0, exp(·)): an unused exp(·) = inf would still send
        # 0 · inf = NaN back through where's backward
        f = torch.exp(torch.where(empty, -torch.inf, log_f + m - m_new))
        z = torch.tanh(pre_z)
        o = torch.sigmoid(pre_o)
        c = f * c + i * z
        n = f * n + i
        h = o * (c / n)
        return (h, c, n, m_new), {"i": i, "f": f, "z": z, "o": o}, {"i": pre_i, "f": pre_f, "z": pre_z, "o": pre_o}
