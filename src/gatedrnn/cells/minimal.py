"""minGRU and minLSTM (Feng et al. 2024): gates that read only the input, so that ``h`` follows a linear recurrence.

Their gates do not depend on ``h_{t-1}``, so every step is ``h_t = a_t ⊙ h_{t-1} + b_t`` with ``a_t`` and ``b_t``
known from the input alone. :meth:`LinearRecurrenceSpec.coefficients` gives ``(a, b)`` for all steps at once, which
the scan engines (``engine/scan.py``) run as a parallel scan; :meth:`~LinearRecurrenceSpec.step_with_gates` is the
same cell one step at a time, the reference engine's definition.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import CellSpec, Gates, ParamDef, State

Mode = Literal["log", "plain"]
MODES: tuple[str, ...] = ("log", "plain")


def g(x: Tensor) -> Tensor:
    """The paper's positive activation of the candidate: ``g(x) = x + 0.5`` for ``x >= 0``, ``σ(x)`` below.

    Continuous at 0 (both 0.5), positive everywhere, linear for large ``x``: with ``h_0 >= 0`` it keeps every
    ``h_t`` positive, which the paper's log-space scan needs (``log h``)."""
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


@dataclass(frozen=True)
class LinearRecurrenceSpec(CellSpec):
    """A cell whose state follows ``h_t = a_t ⊙ h_{t-1} + b_t``, with ``a_t, b_t`` functions of ``x_t`` alone.

    Its parameters are the input projection alone (``weight_ih`` and ``bias_ih``, no recurrent weights), so the one
    GEMM over all steps computes every gate; the scan engines then run the recurrence as a parallel scan.

    Attributes:
        mode: ``"log"`` (default): the paper's stable form, the candidate squashed by :func:`g` to be positive;
            ``"plain"``: the candidate is the linear projection itself. (The paper names the modes by its scan, which
            runs in log space and needs a positive candidate; gatedrnn's scans compose the pairs ``(a, b)`` in
            linear space and are exact for either mode, so ``mode`` chooses the function the cell computes.)
    """

    mode: Mode = "log"

    @property
    def state_names(self) -> tuple[str, ...]:
        return ("h",)

    def params(self, input_size: int) -> list[ParamDef]:
        defs = [ParamDef("weight_ih", (self.gate_size, input_size))]
        return defs + [ParamDef("bias_ih", (self.gate_size,))] if self.bias else defs

    def candidate(self, pre_h: Tensor) -> Tensor:
        """``h̃``: :func:`g` of its pre-activation in log mode, the pre-activation itself in plain mode."""
        return g(pre_h) if self.mode == "log" else pre_h

    def coefficients(self, gx: Tensor) -> tuple[Tensor, Tensor]:
        """``(a, b)`` of ``h_t = a_t ⊙ h_{t-1} + b_t`` from the input projection ``gx`` ``(..., G·H)``, each
        ``(..., H)``: every step at once."""
        raise NotImplementedError

    def step_with_gates(self, gx: Tensor, state: State, p: Mapping[str, Tensor]) -> tuple[State, Gates, Gates]:
        raise NotImplementedError


@dataclass(frozen=True)
class MinGRUSpec(LinearRecurrenceSpec):
    r"""minGRU: a GRU whose update gate and candidate read only the input.

    .. math::
        \begin{aligned}
        z_t &= \sigma(W_z x_t + b_z) \\
        \tilde h_t &= g(W_h x_t + b_h) \quad\text{(mode="log")}, \qquad
            \tilde h_t = W_h x_t + b_h \quad\text{(mode="plain")} \\
        h_t &= (1 - z_t) \odot h_{t-1} + z_t \odot \tilde h_t
        \end{aligned}

    so ``a_t = 1 - z_t = σ(-(W_z x_t + b_z))`` and ``b_t = z_t ⊙ h̃_t``. ``z`` is the paper's: the share of the
    new candidate (``torch.nn.GRU``'s ``z`` is the share of the old state). Gate blocks of ``weight_ih`` and
    ``bias_ih`` are ``z|h_tilde``, each ``(H, I)`` / ``(H,)``.
    """

    family: ClassVar[str] = "mingru"

    @property
    def gate_names(self) -> tuple[str, ...]:
        return ("z", "h_tilde")

    def coefficients(self, gx: Tensor) -> tuple[Tensor, Tensor]:
        pre_z, pre_h = gx.chunk(2, dim=-1)
        # σ(-x) rather than 1 - σ(x): exact where z rounds to 1
        return torch.sigmoid(-pre_z), torch.sigmoid(pre_z) * self.candidate(pre_h)

    def step_with_gates(self, gx: Tensor, state: State, p: Mapping[str, Tensor]) -> tuple[State, Gates, Gates]:
        (h,) = state
        pre_z, pre_h = gx.chunk(2, dim=1)
        z = torch.sigmoid(pre_z)
        h_tilde = self.candidate(pre_h)
        h = (1 - z) * h + z * h_tilde
        return (h,), {"z": z, "h_tilde": h_tilde}, {"z": pre_z, "h_tilde": pre_h}


@dataclass(frozen=True)
class MinLSTMSpec(LinearRecurrenceSpec):
    r"""minLSTM: an LSTM without output gate whose forget and input gates read only the input, normalised to sum to 1.

    .. math::
        \begin{aligned}
        f_t &= \sigma(W_f x_t + b_f), \qquad i_t = \sigma(W_i x_t + b_i) \\
        f'_t &= \frac{f_t}{f_t + i_t}, \qquad i'_t = \frac{i_t}{f_t + i_t} \\
        \tilde h_t &= g(W_h x_t + b_h) \quad\text{(mode="log")}, \qquad
            \tilde h_t = W_h x_t + b_h \quad\text{(mode="plain")} \\
        h_t &= f'_t \odot h_{t-1} + i'_t \odot \tilde h_t
        \end{aligned}

    so ``a_t = f'_t`` and ``b_t = i'_t ⊙ h̃_t``. ``f' = σ(log f - log i)`` and ``i' = σ(log i - log f)`` compute
    the same ratios without dividing, so they stay defined where both gates round to 0. Gate blocks of ``weight_ih``
    and ``bias_ih`` are ``f|i|h_tilde``; recorded gates are ``f``, ``i`` (before normalising), ``f_norm``,
    ``i_norm`` and ``h_tilde``.
    """

    family: ClassVar[str] = "minlstm"

    @property
    def gate_names(self) -> tuple[str, ...]:
        return ("f", "i", "h_tilde")

    @staticmethod
    def _normalised(pre_f: Tensor, pre_i: Tensor) -> tuple[Tensor, Tensor]:
        """``(f', i')`` from the pre-activations: ``σ(±(log f - log i))`` with ``log σ(x) = -softplus(-x)``."""
        diff = F.softplus(-pre_i) - F.softplus(-pre_f)  # log f - log i
        return torch.sigmoid(diff), torch.sigmoid(-diff)

    def coefficients(self, gx: Tensor) -> tuple[Tensor, Tensor]:
        pre_f, pre_i, pre_h = gx.chunk(3, dim=-1)
        f_norm, i_norm = self._normalised(pre_f, pre_i)
        return f_norm, i_norm * self.candidate(pre_h)

    def step_with_gates(self, gx: Tensor, state: State, p: Mapping[str, Tensor]) -> tuple[State, Gates, Gates]:
        (h,) = state
        pre_f, pre_i, pre_h = gx.chunk(3, dim=1)
        f, i = torch.sigmoid(pre_f), torch.sigmoid(pre_i)
        f_norm, i_norm = self._normalised(pre_f, pre_i)
        h_tilde = self.candidate(pre_h)
        h = f_norm * h + i_norm * h_tilde
        gates = {"f": f, "i": i, "f_norm": f_norm, "i_norm": i_norm, "h_tilde": h_tilde}
        return (h,), gates, {"f": pre_f, "i": pre_i, "h_tilde": pre_h}
