"""The Clockwork RNN cell (Koutník et al. 2014): an Elman RNN whose hidden units run at different clock rates."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import CellSpec, Gates, State


@dataclass(frozen=True)
class ClockworkSpec(CellSpec):
    r"""Clockwork RNN: the ``H`` hidden units split into ``g`` modules of ``k = H / g`` units, module ``i`` with
    clock period ``T_i`` (``T_1 < … < T_g``). At step ``t`` a module is *active* if ``t mod T_i = 0``; only
    active modules compute a new state, the others keep theirs:

    .. math::
        \begin{aligned}
        a &= W_{ih} x_t + b_{ih} + (M \odot W_{hh})\, h_{t-1} + b_{hh} \\
        h_t^{(i)} &= \begin{cases} \mathrm{act}(a^{(i)}) & t \bmod T_i = 0 \\ h_{t-1}^{(i)} & \text{otherwise}
                     \end{cases}
        \end{aligned}

    ``h^{(i)}``, ``a^{(i)}`` are the units ``[i·k, (i+1)·k)`` of module ``i`` (modules sorted by increasing
    period). Where ``g`` does not divide ``H`` the modules are as equal as they can be: the first ``H mod g`` have
    ``⌊H/g⌋ + 1`` units, the others ``⌊H/g⌋`` (as ``torch.tensor_split``). ``M`` is the block-upper-triangular
    mask: block ``(i, j)`` of ``W_hh`` is used only for ``j >= i``, so a module reads its own state and those of the
    slower modules, never a faster one (the paper's ``W_H``). The other blocks of ``weight_hh`` are never read
    and get a zero gradient. ``act`` is ``tanh`` (the paper's) or ``relu``.

    Time is counted from ``t = 0`` at each sequence's first step, so every module is active at the first step
    and reads the first input; the paper's ``t mod T_i = 0`` leaves where counting starts open. A reverse
    direction (bidirectional layers) runs the same clocks in its own processing order: its ``t = 0`` is each
    sequence's last step.

    ======================  =====================
    parameter               shape
    ======================  =====================
    ``weight_ih``           ``(H, I)``
    ``weight_hh``           ``(H, H)``, block upper-triangular (``M``)
    ``bias_ih, bias_hh``    ``(H,)``
    ======================  =====================

    Attributes:
        periods: ``(T_1, …, T_g)``, strictly increasing positive integers.
        nonlinearity: ``"tanh"`` or ``"relu"``.
    """

    periods: tuple[int, ...] = (1,)
    nonlinearity: Literal["tanh", "relu"] = "tanh"
    start: int = 0
    """The clocks' time at the first step of the call: step ``t`` of the call is step ``start + t`` of the clocks (a
    sequence fed on in pieces, e.g. one character at a time when sampling, continues its clocks)."""

    family: ClassVar[str] = "clockwork"

    @property
    def gate_names(self) -> tuple[str, ...]:
        return ("h",)

    def module_sizes(self) -> list[int]:
        """The units of each module, in order: ``⌊H/g⌋ + 1`` for the first ``H mod g``, ``⌊H/g⌋`` for the others."""
        g = len(self.periods)
        return [self.hidden_size // g + (i < self.hidden_size % g) for i in range(g)]

    def unit_modules(self, like: Tensor) -> Tensor:
        """``(H,)`` int64 on ``like``'s device: the module of each unit."""
        # From a list, not repeat_interleave: a model is also built on the meta device (to check a checkpoint's
        # shapes before allocating), where repeat_interleave cannot size its output.
        units = [module for module, size in enumerate(self.module_sizes()) for _ in range(size)]
        return torch.tensor(units, dtype=torch.int64, device=like.device)

    def recurrent_mask(self, like: Tensor) -> Tensor:
        """``M`` ``(H, H)`` bool, on ``like``'s device: True where module ``i`` (rows) reads module ``j >= i``."""
        module = self.unit_modules(like)
        return module.unsqueeze(1) <= module.unsqueeze(0)

    def active(self, t: int, like: Tensor) -> Tensor:
        """``(H,)`` bool: the units of the modules active at step ``t`` of the call (``(start + t) mod T_i = 0``)."""
        modules = torch.tensor([(self.start + t) % period == 0 for period in self.periods], device=like.device)
        return modules[self.unit_modules(like)]

    def recurrent_projection(self, h: Tensor, p: Mapping[str, Tensor]) -> Tensor:
        """``(M ⊙ W_hh) h + b_hh``; the masked blocks are left out (``where``, not a product, so that a value
        there, even an infinite one, never reaches the result or its gradient)."""
        w = torch.where(self.recurrent_mask(h), p["weight_hh"], 0.0)
        gh = F.linear(h, w)
        return gh + p["bias_hh"] if self.bias else gh

    def step_with_gates(self, gx: Tensor, state: State, p: Mapping[str, Tensor]) -> tuple[State, Gates, Gates]:
        raise TypeError("a Clockwork RNN's step depends on the step's index: call step_with_gates_at(t, …)")

    def step_with_gates_at(self, t: int, gx: Tensor, state: State,
                           p: Mapping[str, Tensor]) -> tuple[State, Gates, Gates]:
        """Step ``t``; the gates are the new state ``h`` and ``active``, 1 for the units of the modules that
        updated at this step and 0 for those that kept their state; ``pre`` holds ``a`` (used where active)."""
        (h,) = state
        a = gx + self.recurrent_projection(h, p)  # (B, H)
        new = torch.tanh(a) if self.nonlinearity == "tanh" else torch.relu(a)
        active = self.active(t, a)  # (H,)
        h = torch.where(active, new, h)
        return (h,), {"h": h, "active": active.to(h.dtype).expand_as(h)}, {"h": a}
