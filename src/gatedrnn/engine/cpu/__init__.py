"""The cpu engine: the whole recurrence, forward and backward, in fused C++ kernels.

Layout, one layer per file: ``csrc/{lstm,gru,rnn,clockwork}.cpp`` (the kernels, one fused pass over the gates per step
around one recurrent product), ``csrc/activations.h`` (σ, tanh and relu, right for every input, ±inf included, in
strict IEEE arithmetic, and vectorisable; ``csrc/activations.cpp`` makes σ and tanh ops for the tests),
``csrc/common.h`` (what they share; each weight is prepared once per call: packed for its own matrix-vector kernel at
batch 1, for MKL's packed GEMM above; the cache of large buffers),
``csrc/team.h`` (the forward at batch 1: a team of threads that split the hidden units, each with its own rows of
W_hh, meeting once per step), ``csrc/rules.h`` and ``csrc/rules.cpp`` (the measured rules that choose a call's path:
direct products for calls of few steps, the batch split among the threads, the team; their defaults, how they were
measured, and ops that set them), ``csrc/memory.cpp`` (memory on huge pages: the input projection of all steps, one
GEMM into such a block, and the block cache's ops), ``build.py`` (compile once into a private cache, check the
library's hash before loading it, explain failures), ``ops.py`` (the kernels as ``torch.library`` custom ops with
fake implementations and vmap rules, what ``torch.compile``, ``torch.export`` and ``torch.func`` see),
``functions.py`` (their derivatives, ``RecurrenceFunction``), ``clockwork.py`` (the Clockwork RNN's ops and their
derivatives), ``csrc/scan.cpp`` and ``scan.py`` (the parallel scan of the linear-recurrence cells and its op), and the
engine here. Each ``.cpp`` is one translation
unit; every unit parses ATen's headers, which cost more compile time than most units' own code, so small pieces
share a unit with their kind rather than having their own.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import torch
from torch import Tensor

from ...cells import (
    CellSpec,
    ClockworkSpec,
    DepthGatedLSTMSpec,
    GridLSTMSpec,
    GRUSpec,
    LinearRecurrenceSpec,
    LSTMSpec,
    RNNSpec,
    State,
)
from .. import scan as linear
from ..base import Engine
from . import build, clockwork, ops  # noqa: F401 - registers the custom ops (torch.export.load finds them)
from . import scan as scan_op


def cached_bytes() -> int:
    """Bytes the cpu engine keeps between calls: blocks of its large buffers (2 MiB and more: the input projection,
    saved gates and states, gradients), reused by the next call instead of fresh memory from the OS, at most
    512 MiB (``csrc/common.h``, BlockCache). 0 if the engine is not available."""
    return int(torch.ops.gatedrnn_cpu.cached_bytes()) if build.status()[0] else 0


def empty_cache() -> None:
    """Free the blocks the cpu engine keeps between calls (see :func:`cached_bytes`); tensors still alive keep theirs
    until they are freed, and their blocks are then kept again."""
    if build.status()[0]:
        torch.ops.gatedrnn_cpu.empty_cache()


class CPUEngine(Engine):
    """Fused C++ kernels for every cell family and variant on CPU tensors, float32 and float64; the
    linear-recurrence cells (minGRU, minLSTM) run as a parallel scan (``csrc/scan.cpp``). (The sLSTM runs on the
    reference engine.)

    If the kernels cannot be built or loaded, :meth:`status` says why, ``engine="auto"`` falls back to the
    reference engine with one warning, and ``engine="cpu"`` raises that reason.
    """

    name = "cpu"
    priority = 5

    def __init__(self) -> None:
        self._warned = False

    def status(self) -> tuple[bool, str]:
        available, reason = build.status()
        if not available and not self._warned:
            self._warned = True
            warnings.warn(f"gatedrnn: the cpu engine is not available, so the slower reference engine runs "
                          f"instead: {reason}", RuntimeWarning, stacklevel=2)
        return available, reason

    def covers(self, spec: CellSpec, x: Tensor) -> bool:
        # The depth-gated LSTM and the Grid LSTM hand their cell states to the layer above, which the kernels do not
        # return; sLSTM has no kernels here.
        return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
                and isinstance(spec, (LSTMSpec, GRUSpec, RNNSpec, LinearRecurrenceSpec, ClockworkSpec))
                and not isinstance(spec, (DepthGatedLSTMSpec, GridLSTMSpec)))

    def run_input(self, spec: CellSpec, x: Tensor, params: Mapping[str, Tensor], state: State,
                  lengths: Tensor | None) -> tuple[Tensor, State]:
        if isinstance(spec, LinearRecurrenceSpec):
            return super().run_input(spec, x, params, state, lengths)
        from .functions import recurrence

        if isinstance(spec, ClockworkSpec):
            return self.run(spec, spec.input_projection(x, params), params, state, lengths)
        return recurrence(spec, x, params, state, lengths, from_input=True, fused_norm=spec.layer_norm)

    def run(self, spec: CellSpec, gx: Tensor, params: Mapping[str, Tensor], state: State,
            lengths: Tensor | None) -> tuple[Tensor, State]:
        if isinstance(spec, LinearRecurrenceSpec):
            return linear.run(spec, gx, state, lengths, scan_op.linear_scan)
        from .functions import recurrence

        if isinstance(spec, ClockworkSpec):
            return clockwork.recurrence(spec, gx, params, state, lengths)
        return recurrence(spec, gx, params, state, lengths, from_input=False, fused_norm=False)

    def run_product(self, spec: CellSpec, a: Tensor, params: Mapping[str, Tensor], state: State,
                    lengths: Tensor | None) -> tuple[Tensor, State]:
        if isinstance(spec, LinearRecurrenceSpec):
            return super().run_product(spec, a, params, state, lengths)
        from .functions import recurrence

        if isinstance(spec, ClockworkSpec):
            return self.run(spec, a, params, state, lengths)  # no LN_ih: a is gx
        # LN_ih in the kernels' pass over each step
        return recurrence(spec, a, params, state, lengths, from_input=False, fused_norm=spec.layer_norm)
