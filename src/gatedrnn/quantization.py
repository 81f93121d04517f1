"""gatedrnn's modules under ``torch.ao.quantization.quantize_dynamic``: never left in floating point silently.

Named in ``qconfig_spec`` (``quantize_dynamic(model, {gatedrnn.LSTM})``), a module whose computation ``torch.nn``
has (the standard LSTM, GRU with ``reset="after"``, and the cells, a forget bias folded into ``b_ih``) becomes
torch's dynamically quantised module of its ``to_torch()`` twin: int8 weights, activations quantised per call, the
same outputs up to int8 rounding. A variant torch has no form for (peephole, coupled, layer norm, reset-before,
``proj_size`` cells, the depth gate), the RNN layer (torch has no dynamically quantised ``nn.RNN``) and the layers
without a ``torch.nn`` counterpart (``MinGRU``, ``MinLSTM``, ``SLSTM``, ``ClockworkRNN``, ``GridLSTM``) raise an error
saying so and how to keep that module in
floating point, rather than being skipped.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch.ao.nn.quantized.dynamic as quantized_dynamic
from torch import nn
from torch.ao.quantization import quantization_mappings

from .layers import GRU, LSTM, RNN, ClockworkRNN, GridLSTM, GRUCell, LSTMCell, RNNCell
from .minimal import MinGRU, MinLSTM
from .slstm import SLSTM


class _TorchQuantized:
    """What ``quantize_dynamic`` swaps a gatedrnn module for (its ``from_float``): torch's quantised module of the
    module's ``torch.nn`` twin."""

    target: ClassVar[type[nn.Module] | None]

    @classmethod
    def from_float(cls, mod: nn.Module, use_precomputed_fake_quant: bool = False) -> nn.Module:
        name = type(mod).__name__
        keep = (f"leave gatedrnn.{name} out of quantize_dynamic's qconfig_spec to keep it in floating point, or run "
                f"it in bfloat16 under torch.autocast")
        if cls.target is None:
            raise NotImplementedError(f"quantize_dynamic: torch has no dynamically quantised {name} layer; {keep}")
        try:
            twin = mod.to_torch()  # type: ignore[operator]
        except ValueError as error:
            raise NotImplementedError(f"quantize_dynamic: gatedrnn.{name}({_options(mod)}) has no int8 form in torch "
                                      f"({str(error).removeprefix('to_torch: ')}); {keep}") from None
        twin.qconfig = mod.qconfig
        return cls.target.from_float(twin, use_precomputed_fake_quant=use_precomputed_fake_quant)


def _options(mod: nn.Module) -> str:
    return repr(mod).split("(", 1)[1].rstrip(")")


def _quantized(target: type[nn.Module] | None, name: str) -> type[_TorchQuantized]:
    return type(f"Quantized{name}", (_TorchQuantized,), {"target": target, "__module__": __name__})


TORCH_COUNTERPARTS: dict[type[nn.Module], type[_TorchQuantized]] = {
    LSTM: _quantized(quantized_dynamic.LSTM, "LSTM"),
    GRU: _quantized(quantized_dynamic.GRU, "GRU"),
    RNN: _quantized(None, "RNN"),
    ClockworkRNN: _quantized(None, "ClockworkRNN"),
    GridLSTM: _quantized(None, "GridLSTM"),
    LSTMCell: _quantized(quantized_dynamic.LSTMCell, "LSTMCell"),
    GRUCell: _quantized(quantized_dynamic.GRUCell, "GRUCell"),
    RNNCell: _quantized(quantized_dynamic.RNNCell, "RNNCell"),
    MinGRU: _quantized(None, "MinGRU"),
    MinLSTM: _quantized(None, "MinLSTM"),
    SLSTM: _quantized(None, "SLSTM"),
}


def register_with_torch() -> None:
    """Add gatedrnn's modules to torch's default dynamic-quantisation mapping (done on ``import gatedrnn``)."""
    mapping: dict[Any, Any] = quantization_mappings.DEFAULT_DYNAMIC_QUANT_MODULE_MAPPINGS
    mapping.update(TORCH_COUNTERPARTS)
