"""The engine contract: what a layer hands over for one layer and direction, and what comes back."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping

from torch import Tensor

from ..cells import CellSpec, State


class Engine(ABC):
    """Runs the recurrence of one layer and direction over a whole sequence, forward and backward.

    Contract of :meth:`run` (the layer has already done the input GEMM and any time reversal):

    ========  ==================  ===========================================================
    argument  shape               meaning
    ========  ==================  ===========================================================
    gx        ``(T, B, G·H)``     input projection ``LN_ih(W_ih x_t) + b_ih`` of every step
    params    name -> tensor      this layer/direction's parameters by base name (``weight_hh`` …)
    state     ``((B, ·), …)``     initial state, ``h`` first (``(h, c)`` for LSTM)
    lengths   ``(B,)`` int64      valid steps of each sequence (``1 <= lengths <= T``), or None
    ========  ==================  ===========================================================

    Returns ``(out, state)``: ``out`` ``(T, B, output_size)`` holds ``spec.output`` of every step (``h_t``; ``[h_t |
    c_t]`` for a depth-gated LSTM, whose layer above reads ``c_t``), zero at
    ``t >= lengths[b]``; ``state`` is the state after each sequence's last valid step. The result must be
    differentiable with respect to ``gx``, every tensor in ``params`` and ``state``, and equal (up to rounding)
    to looping ``spec.step`` over time.

    Layers call :meth:`run_input` with their input ``x``, which by default calls :meth:`run_product` with
    ``a = self.input_product(spec, x)`` (``spec.input_product(x)``): ``W_ih x`` for a layer-norm spec
    (``spec.normalise_input`` applies LN_ih and ``b_ih``), else ``gx`` itself. Its default normalises ``a`` and
    calls :meth:`run`; an engine that fuses LN_ih into its kernels overrides it and then also returns the
    gradient of ``a`` and of LN_ih's parameters. ``run`` itself always receives the normalised ``gx``, which is
    what :mod:`gatedrnn.inspect`'s taps replay the cells from.
    """

    name: str
    priority: int
    """Higher wins when ``engine="auto"`` chooses among engines that cover a call."""

    @abstractmethod
    def status(self) -> tuple[bool, str]:
        """``(available, reason)``: whether the engine can run on this machine, and why not if it cannot."""

    @abstractmethod
    def covers(self, spec: CellSpec, x: Tensor) -> bool:
        """Whether this engine runs ``spec`` for inputs of ``x``'s device and dtype."""

    @abstractmethod
    def run(
        self, spec: CellSpec, gx: Tensor, params: Mapping[str, Tensor], state: State, lengths: Tensor | None
    ) -> tuple[Tensor, State]:
        """Run the recurrence (see the class docstring for the contract)."""

    def input_product(self, spec: CellSpec, x: Tensor, params: Mapping[str, Tensor]) -> Tensor:
        """``spec.input_product(x, params)`` ``(T, B, G·H)``, the one GEMM over all steps; an engine may place it in
        memory of its choosing (same values, same gradients)."""
        return spec.input_product(x, params)

    def run_input(
        self, spec: CellSpec, x: Tensor, params: Mapping[str, Tensor], state: State, lengths: Tensor | None
    ) -> tuple[Tensor, State]:
        """:meth:`run_product` from the layer's input ``x`` ``(T, B, I)``: what layers call. An engine that forms the
        input projection inside its kernels overrides it."""
        return self.run_product(spec, self.input_product(spec, x, params), params, state, lengths)

    def run_product(
        self, spec: CellSpec, a: Tensor, params: Mapping[str, Tensor], state: State, lengths: Tensor | None
    ) -> tuple[Tensor, State]:
        """:meth:`run` from ``a = spec.input_product(x)`` ``(T, B, G·H)``, before LN_ih (see the class docstring)."""
        return self.run(spec, spec.normalise_input(a, params), params, state, lengths)
