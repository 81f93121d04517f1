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
        return loop(spec, gx, params, state, lengths)


def loop(spec: CellSpec, gx: Tensor, params: Mapping[str, Tensor], state: State, lengths: Tensor | None,
         probe: Tensor | None = None) -> tuple[Tensor, State]:
    """``spec.step_at`` over the T steps of ``gx`` (T, B, G·H); outputs past ``lengths`` are 0 and final states are
    taken at each sequence's last step.

    With ``probe`` (T, B, H), ``h_t + probe_t`` stands in for ``h_t``: the values are unchanged for a zero probe, and
    ``∂L/∂probe_t = ∂L/∂h_t``, the gradient that flows back through time to step t (``gatedrnn.inspect``).
    """
    outputs = []
    probes = probe.unbind(0) if probe is not None else [None] * gx.shape[0]
    # unbind, not gx[t]: the backward of one unbind stacks the step gradients once, where T separate
    # selections would each scatter into a zero tensor of the whole (T, B, G·H) shape (O(T²) work).
    for t, (gx_t, probe_t) in enumerate(zip(gx.unbind(0), probes)):
        new_state = spec.step_at(t, gx_t, state, params)
        if probe_t is not None:
            new_state = (new_state[0] + probe_t, *new_state[1:])
        if lengths is None:
            state = new_state
            outputs.append(spec.output(state))
        else:
            # Sequences that have ended keep their last state, so the final state is taken at their last step.
            active = (t < lengths).unsqueeze(1)  # (B, 1)
            state = tuple(torch.where(active, new, old) for new, old in zip(new_state, state))
            outputs.append(torch.where(active, spec.output(state), 0.0))
    return torch.stack(outputs), state  # (T, B, output_size)
