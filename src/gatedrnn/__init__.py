"""gatedrnn: gated recurrent networks (RNN, LSTM, GRU and their variants) as ``torch.nn``-compatible layers.

Every gate of the tutorials' equations is visible in :mod:`gatedrnn.cells`; the layers hand the recurrence to an
engine (:func:`engines` lists them).
"""

import torch as _torch

from . import inspect, quantization
from .cells import (
                    ClockworkSpec,
                    DepthGatedLSTMSpec,
                    GridLSTMSpec,
                    GRUSpec,
                    LSTMSpec,
                    MinGRUSpec,
                    MinLSTMSpec,
                    RNNSpec,
                    SLSTMSpec,
)
from .engine import EngineInfo, engines
from .layers import GRU, LSTM, RNN, ClockworkRNN, GridLSTM, GRUCell, LSTMCell, RNNCell
from .minimal import MinGRU, MinLSTM
from .onnx import export_onnx
from .slstm import SLSTM

__version__ = "0.1.0"

# A whole model saved with torch.save(model) loads with torch.load's default (weights_only=True): what a module of
# gatedrnn pickles is these classes, their cell specs (frozen dataclasses of ints, bools, floats and strings) and
# the plain types torch allows anyway.
_torch.serialization.add_safe_globals([GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell, MinGRU, MinLSTM, SLSTM, GRUSpec,
                                       LSTMSpec, RNNSpec, MinGRUSpec, MinLSTMSpec, SLSTMSpec, ClockworkRNN,
                                       ClockworkSpec, DepthGatedLSTMSpec, GridLSTM, GridLSTMSpec])
quantization.register_with_torch()

__all__ = ["GRU", "LSTM", "RNN", "ClockworkRNN", "EngineInfo", "GridLSTM", "GRUCell", "LSTMCell", "MinGRU", "MinLSTM",
           "RNNCell", "SLSTM", "engines", "export_onnx", "inspect", "__version__"]
