"""Named cell variants (``lstm-peephole``, ``gru-before`` …): one place that maps a name to layer options.

The CLI, the demo table and later the benchmarks and experiments refer to variants by these names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .layers import GRU, LSTM, RNN, ClockworkRNN, GridLSTM
from .minimal import MinGRU, MinLSTM
from .slstm import SLSTM


@dataclass(frozen=True)
class Variant:
    """A cell variant: the layer class, its options and a one-line summary of what sets it apart."""

    name: str
    layer: type[nn.Module]
    options: dict[str, Any] = field(default_factory=dict)
    summary: str = ""

    def build(self, input_size: int, hidden_size: int, **kwargs: Any) -> nn.Module:
        """The layer of this variant; ``kwargs`` are further layer arguments (``num_layers``, ``engine`` …)."""
        return self.layer(input_size, hidden_size, **self.options, **kwargs)


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in [
        Variant("rnn", RNN, {}, "h = tanh(W_ih x + b_ih + W_hh h + b_hh)"),
        Variant("rnn-relu", RNN, {"nonlinearity": "relu"}, "h = relu(W_ih x + b_ih + W_hh h + b_hh)"),
        Variant("rnn-layernorm", RNN, {"layer_norm": True}, "h = tanh(LN(W_ih x) + LN(W_hh h) + b)"),
        Variant("lstm", LSTM, {}, "gates i,f,g,o; c = f*c + i*g; h = o*tanh(c)"),
        Variant("lstm-peephole", LSTM, {"peephole": True}, "i, f read c_{t-1}; o reads c_t"),
        Variant("lstm-coupled", LSTM, {"coupled": True}, "coupled input-forget gate: f = 1 - i"),
        Variant("lstm-layernorm", LSTM, {"layer_norm": True}, "LN on W_ih x, W_hh h and c"),
        Variant("lstm-forgetbias", LSTM, {"forget_bias": 1.0}, "f = sigmoid(a_f + 1)"),
        Variant("lstm-depthgated", LSTM, {"depth_gate": True}, "c += d*c_below: a depth gate to the layer below"),
        Variant("gru", GRU, {}, "reset after the matmul (torch.nn, cuDNN)"),
        Variant("gru-before", GRU, {"reset": "before"}, "reset before the matmul (Cho et al. 2014)"),
        Variant("gru-layernorm", GRU, {"layer_norm": True}, "LN on W_ih x and W_hh h"),
        Variant("mingru", MinGRU, {}, "z = sigmoid(W_z x); h = (1-z)*h + z*g(W_h x); a parallel scan"),
        Variant("minlstm", MinLSTM, {}, "f, i = sigmoid(W x) scaled to f+i = 1; h = f*h + i*g(W_h x); a parallel scan"),
        Variant("slstm", SLSTM, {}, "i = exp, f = sigmoid, normaliser n, stabiliser m; h = o*c/n"),
        Variant("slstm-exp", SLSTM, {"forget_gate": "exp"}, "sLSTM with an exponential forget gate f = exp"),
        Variant("clockwork", ClockworkRNN, {}, "tanh RNN in 4 modules of periods 1,2,4,8; block-triangular W_hh"),
        Variant("grid-lstm", GridLSTM, {}, "2-D grid: an LSTM along time and one along depth in every block"),
    ]
}


def variant(name: str) -> Variant:
    """The variant called ``name``, or a ``ValueError`` listing the names there are."""
    if name not in VARIANTS:
        raise ValueError(f"cell: unknown variant {name!r}; expected one of: {', '.join(VARIANTS)}")
    return VARIANTS[name]
