"""Weights move between gatedrnn and torch.nn unchanged: state dicts, from_torch and to_torch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gatedrnn

PAIRS = [
    (gatedrnn.LSTM, nn.LSTM, dict(num_layers=2, bidirectional=True, proj_size=3)),
    (gatedrnn.LSTM, nn.LSTM, dict(bias=False, batch_first=True)),
    (gatedrnn.GRU, nn.GRU, dict(num_layers=3, dropout=0.25)),
    (gatedrnn.RNN, nn.RNN, dict(nonlinearity="relu", bidirectional=True)),
    (gatedrnn.LSTMCell, nn.LSTMCell, dict()),
    (gatedrnn.GRUCell, nn.GRUCell, dict(bias=False)),
    (gatedrnn.RNNCell, nn.RNNCell, dict(nonlinearity="relu")),
]
IDS = [f"{ours.__name__}-{'-'.join(f'{k}{v}' for k, v in kw.items()) or 'default'}" for ours, _, kw in PAIRS]


def outputs(module: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    result = module(x)
    flat = []
    for item in result if isinstance(result, tuple) else (result,):
        flat.extend(item if isinstance(item, tuple) else (item,))
    return flat


def make_input(module: nn.Module) -> torch.Tensor:
    if isinstance(module, (nn.RNNCellBase, gatedrnn.LSTMCell, gatedrnn.GRUCell, gatedrnn.RNNCell)):
        return torch.randn(3, 5, dtype=torch.float64)
    return torch.randn(4, 3, 5, dtype=torch.float64)


@pytest.mark.parametrize("ours_cls, torch_cls, kwargs", PAIRS, ids=IDS)
def test_state_dict_names_and_shapes_match(ours_cls, torch_cls, kwargs) -> None:
    ours, theirs = ours_cls(5, 6, **kwargs), torch_cls(5, 6, **kwargs)
    ours_shapes = [(k, v.shape) for k, v in ours.state_dict().items()]
    assert ours_shapes == [(k, v.shape) for k, v in theirs.state_dict().items()]
    ours.load_state_dict(theirs.state_dict())  # strict: same keys, same shapes


@pytest.mark.parametrize("ours_cls, torch_cls, kwargs", PAIRS, ids=IDS)
def test_from_torch_and_back(ours_cls, torch_cls, kwargs) -> None:
    theirs = torch_cls(5, 6, **kwargs).double().eval()
    ours = ours_cls.from_torch(theirs)
    assert isinstance(ours, ours_cls) and not ours.training
    assert next(ours.parameters()).dtype == torch.float64
    x = make_input(theirs)
    for a, b in zip(outputs(ours, x), outputs(theirs, x)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    back = ours.to_torch()
    assert type(back) is torch_cls and not back.training
    for name, value in theirs.state_dict().items():
        assert torch.equal(back.state_dict()[name], value)


def test_from_torch_keeps_configuration() -> None:
    theirs = nn.LSTM(5, 6, num_layers=2, batch_first=True, dropout=0.5, bidirectional=True, proj_size=4)
    ours = gatedrnn.LSTM.from_torch(theirs, engine="reference")
    for name in ("input_size", "hidden_size", "num_layers", "batch_first", "dropout", "bidirectional", "proj_size"):
        assert getattr(ours, name) == getattr(theirs, name)
    assert ours.engine == "reference"


@pytest.mark.parametrize("cls", [gatedrnn.LSTM, gatedrnn.LSTMCell])
def test_to_torch_folds_the_forget_bias(cls) -> None:
    ours = cls(5, 6, forget_bias=1.0, dtype=torch.float64)
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_()
    theirs = ours.to_torch()
    x = make_input(ours)
    for a, b in zip(outputs(ours, x), outputs(theirs, x)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert not torch.equal(outputs(cls(5, 6, dtype=torch.float64).to_torch(), x)[0], outputs(theirs, x)[0])


def test_variant_parameters_are_named_like_torch_nn() -> None:
    lstm = gatedrnn.LSTM(5, 6, num_layers=2, bidirectional=True, peephole=True, layer_norm=True)
    names = dict(lstm.named_parameters())
    for suffix in ("_l0", "_l0_reverse", "_l1", "_l1_reverse"):
        for base in ("weight_ci", "weight_cf", "weight_co", "ln_c_weight", "ln_c_bias"):
            assert names[base + suffix].shape == (6,)
        for base in ("ln_ih_weight", "ln_ih_bias", "ln_hh_weight", "ln_hh_bias"):
            assert names[base + suffix].shape == (24,)
    assert names["weight_ih_l1"].shape == (24, 12)  # layer 1 reads both directions of layer 0


def test_coupled_lstm_has_three_gate_blocks_and_no_forget_peephole() -> None:
    lstm = gatedrnn.LSTM(5, 6, coupled=True, peephole=True)
    shapes = {k: tuple(v.shape) for k, v in lstm.named_parameters()}
    assert shapes["weight_ih_l0"] == (18, 5) and shapes["weight_hh_l0"] == (18, 6)
    assert shapes["bias_ih_l0"] == (18,) and "weight_cf_l0" not in shapes
    assert lstm.spec.gate_names == ("i", "g", "o")


def test_initialisation_follows_torch_nn() -> None:
    torch.manual_seed(0)
    lstm = gatedrnn.LSTM(5, 16, peephole=True, layer_norm=True)
    bound = 1 / 16**0.5
    for name, p in lstm.named_parameters():
        if name.startswith("ln_") and "weight" in name:
            assert torch.equal(p, torch.ones_like(p)), name
        elif name.startswith("ln_"):
            assert torch.equal(p, torch.zeros_like(p)), name
        else:
            assert p.abs().max() <= bound and p.std() > bound / 4, name
