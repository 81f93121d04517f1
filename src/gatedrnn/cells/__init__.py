"""Cell specs: the math of each cell family, written once (see ``base.py`` for the contract)."""

from .base import CellSpec, Gates, ParamDef, State
from .gru import GRUSpec
from .lstm import LSTMSpec
from .minimal import LinearRecurrenceSpec, MinGRUSpec, MinLSTMSpec
from .rnn import RNNSpec
from .slstm import SLSTMSpec

__all__ = ["CellSpec", "Gates", "GRUSpec", "LinearRecurrenceSpec", "LSTMSpec", "MinGRUSpec", "MinLSTMSpec", "ParamDef",
           "RNNSpec", "SLSTMSpec", "State"]
