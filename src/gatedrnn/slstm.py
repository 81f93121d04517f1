"""``SLSTM`` (Beck et al. 2024, xLSTM): sequence layers of the sLSTM cell, with the arguments of ``torch.nn.LSTM``.

The layer runs through the same machinery as :class:`gatedrnn.LSTM` (``num_layers``, ``batch_first``, ``dropout``,
``bidirectional``, ``PackedSequence``, ``lengths``); its state is ``(h, c, n, m)``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .cells.slstm import FORGET_GATES, SLSTMSpec
from .checks import check_choice, check_size
from .layers import _common_options, _from_spec, _Recurrent, _reject_options


class SLSTM(_Recurrent):
    r"""Multi-layer sLSTM over sequences: exponential input gate, normaliser ``n`` and stabiliser ``m``, recurrent
    weights block-diagonal over ``num_heads`` heads. The cell's equations are in :class:`gatedrnn.cells.SLSTMSpec`.

    Args:
        input_size: ``I``, features of each input step.
        hidden_size: ``H``, width of the state; a multiple of ``num_heads``.
        num_layers, bias, batch_first, dropout, bidirectional, device, dtype: as ``torch.nn.LSTM``.
        num_heads: heads of the recurrence (default 1: a full ``R``).
        forget_gate: ``"sigmoid"`` (default) or ``"exp"``.
        engine: ``"auto"`` or an engine's name (the reference engine runs it).

    Inputs: ``input, (h_0, c_0, n_0, m_0)`` (all four ``(L·D, B, H)``; zeros if omitted), shaped otherwise as
    ``torch.nn.LSTM``'s; keyword ``lengths`` ``(B,)`` for padded batches.

    Outputs: ``output, (h_n, c_n, n_n, m_n)``: ``output`` ``(T, B, D·H)`` (zero past each length) and the state after
    each sequence's last step.

    Example:
        >>> rnn = gatedrnn.SLSTM(10, 32, num_heads=4, batch_first=True)
        >>> out, (h, c, n, m) = rnn(torch.randn(3, 5, 10))
    """

    num_heads = _from_spec("num_heads")
    forget_gate = _from_spec("forget_gate")

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, device: Any = None,
                 dtype: Any = None, *, num_heads: int = 1, forget_gate: str = "sigmoid", engine: str = "auto",
                 **options: Any) -> None:
        _reject_options("SLSTM", options)
        hidden_size, bias, _ = _common_options(hidden_size, bias, False, cell=False)
        num_heads = check_size("num_heads", num_heads)
        if hidden_size % num_heads:
            raise ValueError(f"num_heads: expected a divisor of hidden_size ({hidden_size}), got {num_heads}")
        spec = SLSTMSpec(hidden_size, bias, num_heads=num_heads,
                         forget_gate=check_choice("forget_gate", forget_gate, FORGET_GATES))  # type: ignore[arg-type]
        super().__init__(spec, input_size, num_layers, batch_first, dropout, bidirectional, engine, device, dtype)

    def _lowers_on_cpu(self, packed: bool) -> bool:
        return False  # no torch.nn counterpart to follow: CPU autocast leaves it in float32, as torch.nn.GRU

    def extra_repr(self) -> str:
        s = super().extra_repr()
        s += f", num_heads={self.num_heads}" if self.num_heads != 1 else ""
        return s + (f", forget_gate={self.forget_gate!r}" if self.forget_gate != "sigmoid" else "")

    @classmethod
    def from_torch(cls, module: nn.Module, **options: Any) -> Any:
        raise TypeError(f"module: torch.nn has no counterpart of {cls.__name__} to convert from")

    def to_torch(self) -> nn.Module:
        raise ValueError(f"to_torch: torch.nn has no counterpart for {type(self).__name__}")
