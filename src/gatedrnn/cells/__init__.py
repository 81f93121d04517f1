"""Cell specs: the math of each cell family, written once (see ``base.py`` for the contract)."""

from .base import CellSpec, Gates, ParamDef, State
from .clockwork import ClockworkSpec
from .depth_gated import DepthGatedLSTMSpec
from .grid import GridLSTMSpec
from .gru import GRUSpec
from .lstm import LSTMSpec
from .minimal import LinearRecurrenceSpec, MinGRUSpec, MinLSTMSpec
from .rnn import RNNSpec
from .slstm import SLSTMSpec

__all__ = ["CellSpec", "ClockworkSpec", "DepthGatedLSTMSpec", "Gates", "GridLSTMSpec", "GRUSpec",
           "LinearRecurrenceSpec", "LSTMSpec", "MinGRUSpec", "MinLSTMSpec", "ParamDef", "RNNSpec", "SLSTMSpec", "State"]
