"""gatedrnn: gated recurrent networks (RNN, LSTM, GRU and their variants) as ``torch.nn``-compatible layers.

Every gate of the tutorials' equations is visible in :mod:`gatedrnn.cells`; the layers hand the recurrence to an
engine (:func:`engines` lists them).
"""

from . import inspect
from .engine import EngineInfo, engines
from .layers import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell

__version__ = "0.1.0"

__all__ = ["GRU", "LSTM", "RNN", "EngineInfo", "GRUCell", "LSTMCell", "RNNCell", "engines", "inspect", "__version__"]
