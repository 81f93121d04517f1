"""``torch.func`` on gatedrnn layers, every engine: ``grad``, per-sample gradients (``vmap(grad)``) equal to a loop
of single gradients, ``jacrev``, ``jacfwd``, ``hessian`` and ``vmap`` of the forward, each equal to the reference
engine's; plain forward-mode AD (``torch.autograd.forward_ad``); and second derivatives through ``create_graph=True``
equal to the reference engine's. (``gradgradcheck`` of every variant combination through the cpu engine is in
test_engine_cpu.py.)"""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor
from torch.func import functional_call, grad, hessian, jacfwd, jacrev, vmap

import gatedrnn
from gatedrnn.engine.cpu import build

pytestmark = pytest.mark.skipif(not build.status()[0], reason="cpu engine not available")

CASES = [(gatedrnn.LSTM, {}), (gatedrnn.LSTM, dict(layer_norm=True, proj_size=2, peephole=True)),
         (gatedrnn.LSTM, dict(coupled=True)), (gatedrnn.GRU, {}), (gatedrnn.GRU, dict(reset="before", layer_norm=True)),
         (gatedrnn.RNN, {}), (gatedrnn.RNN, dict(nonlinearity="relu", layer_norm=True))]
IDS = [f"{c.__name__}-{'-'.join(f'{k}={v}' for k, v in o.items()) or 'plain'}" for c, o in CASES]


def layer(layer_cls: type, options: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    return layer_cls(3, 4, num_layers=2, bidirectional=True, dtype=torch.float64, **options)


def samples() -> Tensor:
    """Five unbatched sequences (T = 6, I = 3), as per-sample gradient code vmaps over."""
    return torch.randn(5, 6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def on(module: torch.nn.Module, engine: str) -> torch.nn.Module:
    module.engine = engine
    return module


def close(a: object, b: object) -> None:
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_per_sample_gradients_equal_a_loop_and_the_reference(case: tuple[type, dict]) -> None:
    module = layer(*case)
    params = {k: v.detach() for k, v in module.named_parameters()}
    X = samples()

    def loss(p: dict[str, Tensor], x: Tensor) -> Tensor:
        out, _ = functional_call(module, p, (x,))
        return out.square().sum()

    results = {}
    for engine in ("cpu", "reference"):
        on(module, engine)
        per_sample = vmap(grad(loss), in_dims=(None, 0))(params, X)
        for i in range(X.shape[0]):
            one = grad(loss)(params, X[i])
            close({k: v[i] for k, v in per_sample.items()}, one)
        results[engine] = per_sample
    close(results["cpu"], results["reference"])


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_jacobians_and_hessian_equal_the_reference(case: tuple[type, dict]) -> None:
    module = layer(*case)
    params = {k: v.detach() for k, v in module.named_parameters()}
    x = samples()[0]

    def output(x: Tensor) -> Tensor:
        return functional_call(module, params, (x,))[0]

    results = {}
    for engine in ("cpu", "reference"):
        on(module, engine)
        results[engine] = (jacrev(output)(x), jacfwd(output)(x), hessian(lambda x: output(x).square().sum())(x),
                           vmap(output)(samples()))
    close(results["cpu"], results["reference"])


def test_plain_forward_mode_ad() -> None:
    module = layer(gatedrnn.LSTM, {"peephole": True})
    x, v = samples()[0], samples()[1]
    tangents = {}
    for engine in ("cpu", "reference"):
        on(module, engine)
        with fwAD.dual_level():
            out, _ = module(fwAD.make_dual(x, v))
            tangents[engine] = fwAD.unpack_dual(out).tangent
    close(tangents["cpu"], tangents["reference"])


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gradient_penalty_equals_the_reference(case: tuple[type, dict]) -> None:
    """A gradient penalty (WGAN-GP style): the norm of the input gradient, differentiated again."""
    module = layer(*case)
    x = samples().transpose(0, 1)  # (T, B, I)
    lengths = torch.tensor([6, 3, 6, 1, 4])
    results = {}
    for engine in ("cpu", "reference"):
        on(module, engine)
        module.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_()
        out, _ = module(xi, lengths=lengths)
        (dx,) = torch.autograd.grad(out.tanh().sum(), xi, create_graph=True)
        penalty = dx.square().sum()
        penalty.backward()
        results[engine] = [penalty.detach(), xi.grad, *(p.grad for p in module.parameters())]
    close(results["cpu"], results["reference"])
