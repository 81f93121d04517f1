"""Under ``torch.autocast`` every layer and cell returns the dtypes its ``torch.nn`` counterpart returns (CPU: the
LSTM and RNN layers and RNNCell run in the autocast dtype, the GRU layer, LSTMCell and GRUCell stay float32; CUDA:
all in the autocast dtype), values within the autocast dtype's rounding of the float32 result, and gradients reach
the float32 parameters."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import gatedrnn

CUDA = torch.cuda.is_available()
DEVICES = ["cpu"] + (["cuda"] if CUDA else [])
MODULES = [("LSTM", {}), ("LSTM", {"proj_size": 2}), ("GRU", {}), ("RNN", {}), ("LSTMCell", {}), ("GRUCell", {}),
           ("RNNCell", {})]


def flat(result: object) -> list[Tensor]:
    if isinstance(result, Tensor):
        return [result]
    return [t for r in result for t in flat(r)]


def call(module: nn.Module, name: str, device: str, dtype: torch.dtype) -> list[Tensor] | None:
    torch.manual_seed(5)
    x = torch.randn(2, 3, device=device) if name.endswith("Cell") else torch.randn(4, 2, 3, device=device)
    try:
        with torch.autocast(device, dtype=dtype):
            return flat(module(x))
    except RuntimeError:  # torch.nn.LSTM in float16 on CPU: oneDNN has no such primitive
        return None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("name", "options"), MODULES, ids=[f"{n}{'-proj' if o else ''}" for n, o in MODULES])
def test_output_dtypes_equal_torch_nn(name: str, options: dict, device: str, dtype: torch.dtype) -> None:
    ours = getattr(gatedrnn, name)(3, 5, device=device, **options)
    theirs = getattr(nn, name)(3, 5, device=device, **options)
    theirs.load_state_dict(ours.state_dict())
    got = call(ours, name, device, dtype)
    want = call(theirs, name, device, dtype)
    if want is None:  # torch.nn has no such path here: the module runs in the autocast dtype, as it does elsewhere
        assert all(t.dtype == dtype for t in got)
        return
    assert [t.dtype for t in got] == [t.dtype for t in want]
    for g, w in zip(got, want):
        torch.testing.assert_close(g.float(), w.float(), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("engine", ["auto", "reference"])
def test_gradients_reach_float32_parameters(engine: str) -> None:
    lstm = gatedrnn.LSTM(3, 5, num_layers=2, engine=engine)
    x = torch.randn(4, 2, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = lstm(x)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in lstm.parameters())
    want = gatedrnn.LSTM(3, 5, num_layers=2, engine=engine)
    want.load_state_dict(lstm.state_dict())
    torch.testing.assert_close(out.float(), want(x)[0], rtol=0.05, atol=0.05)
