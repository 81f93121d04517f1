"""The reference engine: a plain loop over time of the cell spec's ``step``, differentiated by autograd.

It is the definition every fast engine is tested against, so it stays as readable as the equations.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from ..cells import CellSpec, State
from .base import Engine


class ReferenceEngine(Engine):
    """Loops ``spec.step`` over time in plain PyTorch; runs every cell on every device and floating dtype."""

    name = "reference"
    priority = 0

    def status(self) -> tuple[bool, str]:
        return True, "plain PyTorch loop over time; runs everywhere"

    def covers(self, spec: CellSpec, x: Tensor) -> bool:
        return x.is_floating_point()

    def run(
        self, spec: CellSpec, gx: Tensor, params: Mapping[str, Tensor], state: State, lengths: Tensor | None
    ) -> tuple[Tensor, State]:
        outputs = []
        # unbind, not gx[t]: the backward of one unbind stacks the step gradients once, where T separate
        # selections would each scatter into a zero tensor of the whole (T, B, G·H) shape (O(T²) work).
        for t, gx_t in enumerate(gx.unbind(0)):
            new_state = spec.step(gx_t, state, params)
            if lengths is None:
                state = new_state
                outputs.append(state[0])
            else:
                # Sequences that have ended keep their last state, so the final state is taken at their last step.
                active = (t < lengths).unsqueeze(1)  # (B, 1)
                state = tuple(torch.where(active, new, old) for new, old in zip(new_state, state))
                outputs.append(torch.where(active, state[0], 0.0))
        return torch.stack(outputs), state  # (T, B, state_size)
