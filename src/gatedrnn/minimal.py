"""``MinGRU`` and ``MinLSTM`` (Feng et al. 2024): sequence layers of the minimal cells, trained by a parallel scan.

They take the arguments, inputs and outputs of ``torch.nn.GRU`` (``num_layers``, ``batch_first``, ``dropout``,
``bidirectional``, ``h_0``, ``PackedSequence`` and ``lengths``) and run through the same layer machinery as
:class:`gatedrnn.GRU`; the engines run their recurrence as a scan (``engine/scan.py``).
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from .cells.minimal import MODES, LinearRecurrenceSpec, MinGRUSpec, MinLSTMSpec
from .checks import check_choice
from .layers import _common_options, _from_spec, _Recurrent, _reject_options


class _MinimalRecurrent(_Recurrent):
    """A stack of linear-recurrence cells; subclasses name the spec."""

    _spec_class: ClassVar[type[LinearRecurrenceSpec]]
    mode = _from_spec("mode")

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, device: Any = None,
                 dtype: Any = None, *, mode: str = "log", engine: str = "auto", **options: Any) -> None:
        _reject_options(type(self).__name__, options)
        hidden_size, bias, _ = _common_options(hidden_size, bias, False, cell=False)
        spec = self._spec_class(hidden_size, bias, mode=check_choice("mode", mode, MODES))  # type: ignore[arg-type]
        super().__init__(spec, input_size, num_layers, batch_first, dropout, bidirectional, engine, device, dtype)

    def _lowers_on_cpu(self, packed: bool) -> bool:
        return False  # no torch.nn counterpart to follow: CPU autocast leaves it in float32, as torch.nn.GRU

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", mode={self.mode!r}" if self.mode != "log" else "")

    @classmethod
    def from_torch(cls, module: nn.Module, **options: Any) -> Any:
        raise TypeError(f"module: torch.nn has no counterpart of {cls.__name__} to convert from")

    def to_torch(self) -> nn.Module:
        raise ValueError(f"to_torch: torch.nn has no counterpart for {type(self).__name__}")


class MinGRU(_MinimalRecurrent):
    r"""Multi-layer minGRU over sequences: update gate and candidate from the input alone, so that training runs the
    recurrence as a parallel scan. The cell's equations are in :class:`gatedrnn.cells.MinGRUSpec`.

    Args:
        input_size: ``I``, features of each input step.
        hidden_size: ``H``, width of the state.
        num_layers, bias, batch_first, dropout, bidirectional, device, dtype: as ``torch.nn.GRU``.
        mode: ``"log"`` (default, the paper's stable form: candidate ``h̃ = g(W_h x + b_h) > 0``) or ``"plain"``
            (``h̃ = W_h x + b_h``).
        engine: ``"auto"`` (best available, see :func:`gatedrnn.engines`) or an engine's name; ``"reference"``
            loops over time, ``"scan"`` and ``"cpu"`` run the parallel scan.

    Inputs: ``input, h_0`` as ``torch.nn.GRU`` (``(T, B, I)``, ``(B, T, I)`` if batch_first, ``(T, I)`` unbatched, or a
    ``PackedSequence``; ``h_0`` ``(L·D, B, H)``, zeros if omitted); keyword ``lengths`` ``(B,)`` for padded batches.

    Outputs: ``output, h_n``: ``output`` ``(T, B, D·H)`` (zero past each length), ``h_n`` ``(L·D, B, H)``, the state
    after each sequence's last step. Feeding ``h_n`` back with the next steps continues the sequence exactly (generation
    one step at a time).

    Parameters per layer and direction: ``weight_ih_l{k}`` ``(2H, I)`` (rows ``z|h_tilde``) and ``bias_ih_l{k}``
    ``(2H,)``.

    Example:
        >>> rnn = gatedrnn.MinGRU(10, 20, num_layers=2, batch_first=True)
        >>> out, h_n = rnn(torch.randn(3, 5, 10))
    """

    _spec_class = MinGRUSpec


class MinLSTM(_MinimalRecurrent):
    r"""Multi-layer minLSTM over sequences: forget and input gates from the input alone, normalised to sum to 1, so
    that training runs the recurrence as a parallel scan. The cell's equations are in
    :class:`gatedrnn.cells.MinLSTMSpec`.

    Args, inputs and outputs: as :class:`MinGRU` (its state is ``h`` alone, so ``h_0`` and ``h_n`` are single
    tensors). Parameters per layer and direction: ``weight_ih_l{k}`` ``(3H, I)`` (rows ``f|i|h_tilde``) and
    ``bias_ih_l{k}`` ``(3H,)``.

    Example:
        >>> rnn = gatedrnn.MinLSTM(10, 20, mode="plain")
        >>> out, h_n = rnn(torch.randn(5, 3, 10))
    """

    _spec_class = MinLSTMSpec
