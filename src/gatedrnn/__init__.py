"""gatedrnn: gated recurrent networks (RNN, LSTM, GRU and their variants) as ``torch.nn``-compatible layers.

Every gate of the tutorials' equations is visible in :mod:`gatedrnn.cells`; the layers hand the recurrence to an
engine (:func:`engines` lists them).
"""

import torch as _torch

from . import inspect, quantization
from .cells import ClockworkSpec, DepthGatedLSTMSpec, GridLSTMSpec, GRUSpec, LSTMSpec, RNNSpec
from .engine import EngineInfo, engines
from .layers import GRU, LSTM, RNN, ClockworkRNN, GridLSTM, GRUCell, LSTMCell, RNNCell

__version__ = "0.1.0"

# A whole model saved with torch.save(model) loads with torch.load's default (weights_only=True): what a module of
# gatedrnn pickles is these classes, their cell specs (frozen dataclasses of ints, bools, floats and strings) and
# the plain types torch allows anyway.
_torch.serialization.add_safe_globals([GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell, GRUSpec, LSTMSpec, RNNSpec,
                                       ClockworkRNN, ClockworkSpec, DepthGatedLSTMSpec, GridLSTM, GridLSTMSpec])
quantization.register_with_torch()

__all__ = ["GRU", "LSTM", "RNN", "ClockworkRNN", "EngineInfo", "GridLSTM", "GRUCell", "LSTMCell", "RNNCell", "engines",
           "inspect", "__version__"]
