"""``torch.ao.quantization.quantize_dynamic`` on gatedrnn modules is never silent: the configurations torch has an
int8 module for become it (outputs within int8 rounding of float), the others raise an error naming what is
missing and how to keep the module in floating point."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.ao.nn.quantized import dynamic as quantized_dynamic

import gatedrnn

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated in favour of torchao
    from torch.ao.quantization import quantize_dynamic

SUPPORTED = [(gatedrnn.LSTM, {"num_layers": 2, "bidirectional": True}, quantized_dynamic.LSTM),
             (gatedrnn.LSTM, {"forget_bias": 1.0}, quantized_dynamic.LSTM),
             (gatedrnn.GRU, {}, quantized_dynamic.GRU), (gatedrnn.LSTMCell, {}, quantized_dynamic.LSTMCell),
             (gatedrnn.GRUCell, {}, quantized_dynamic.GRUCell), (gatedrnn.RNNCell, {}, quantized_dynamic.RNNCell)]
UNSUPPORTED = [(gatedrnn.LSTM, {"peephole": True}, "peephole"), (gatedrnn.LSTM, {"layer_norm": True}, "layer_norm"),
               (gatedrnn.LSTM, {"coupled": True}, "coupled"), (gatedrnn.GRU, {"reset": "before"}, "reset"),
               (gatedrnn.RNN, {}, "RNN layer"), (gatedrnn.MinGRU, {}, "MinGRU layer"),
               (gatedrnn.MinLSTM, {}, "MinLSTM layer"), (gatedrnn.SLSTM, {}, "SLSTM layer")]


def quantized(module: torch.nn.Module) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return quantize_dynamic(torch.nn.Sequential(module), {type(module)})[0]


@pytest.mark.parametrize(("layer_cls", "options", "target"), SUPPORTED,
                         ids=[f"{c.__name__}{'-' + next(iter(o)) if o else ''}" for c, o, _ in SUPPORTED])
def test_supported_modules_become_torch_int8_modules(layer_cls: type, options: dict, target: type) -> None:
    torch.manual_seed(0)
    module = layer_cls(16, 32, **options)
    q = quantized(module)
    assert type(q) is target
    x = torch.randn(2, 16) if layer_cls.__name__.endswith("Cell") else torch.randn(7, 2, 16)
    with torch.no_grad():
        got, want = q(x), module(x)
    got, want = (got[0], want[0]) if isinstance(got, tuple) else (got, want)
    assert (got - want).abs().max() < 2e-2  # int8 weights: ~1e-3 here


@pytest.mark.parametrize(("layer_cls", "options", "named"), UNSUPPORTED, ids=[n for _, _, n in UNSUPPORTED])
def test_the_others_say_why_and_what_to_do(layer_cls: type, options: dict, named: str) -> None:
    with pytest.raises(NotImplementedError, match=r"^quantize_dynamic: .*" + named.split()[0] + r".*keep it in "
                                                  r"floating point"):
        quantized(layer_cls(16, 32, **options))
