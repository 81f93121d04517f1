"""The gpu engine's Triton scan (minGRU, minLSTM) against the plain-PyTorch scan and the sequential loop.

Without CUDA the kernel runs in Triton's CPU interpreter (``TRITON_INTERPRET=1``, set in conftest.py) on CPU tensors,
through a test copy of the engine that accepts them; with CUDA the same tests run on the device.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

pytest.importorskip("triton")

import gatedrnn  # noqa: E402
from gatedrnn import engine as registry  # noqa: E402
from gatedrnn.cells import CellSpec, LinearRecurrenceSpec  # noqa: E402
from gatedrnn.engine.gpu import DTYPES, GPUEngine  # noqa: E402
from gatedrnn.engine.scan import linear_scan_reference  # noqa: E402
from numerics import relative_error  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
pytestmark = pytest.mark.skipif(not CUDA and os.environ.get("TRITON_INTERPRET") != "1",
                                reason="needs CUDA or Triton's interpreter")


class InterpretedScanEngine(GPUEngine):
    """The gpu engine's scan, also for CPU tensors (Triton's interpreter)."""

    name = "gpu-scan-test"
    priority = -1

    def covers(self, spec: CellSpec, x: torch.Tensor) -> bool:
        return x.dtype in DTYPES and isinstance(spec, LinearRecurrenceSpec)


@pytest.fixture(scope="module")
def engine_name() -> Iterator[str]:
    registry.register(InterpretedScanEngine())
    yield "gpu-scan-test"
    registry._REGISTRY.pop("gpu-scan-test")


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("shape", [(1, 1, 1), (31, 2, 3), (33, 3, 50), (70, 1, 65)],
                         ids=lambda s: "T{}-B{}-H{}".format(*s))
def test_triton_scan_equals_the_reference_scan_values_and_gradients(shape: tuple[int, int, int],
                                                                     reverse: bool) -> None:
    from gatedrnn.engine.gpu.scan import gpu_linear_scan

    T, B, H = shape
    gen = torch.Generator().manual_seed(T + B + H)
    a = torch.rand(T, B, H, generator=gen).to(DEVICE).requires_grad_()
    b = torch.randn(T, B, H, generator=gen).to(DEVICE).requires_grad_()
    h0 = torch.randn(B, H, generator=gen).to(DEVICE).requires_grad_()
    weight = torch.randn(T, B, H, generator=gen).to(DEVICE)
    results = []
    for scan in (lambda: gpu_linear_scan(a, b, h0, reverse), lambda: linear_scan_reference(a, b, h0, reverse)):
        h = scan()
        results.append([h, *torch.autograd.grad((h * weight).sum(), (a, b, h0))])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layer_cls", [gatedrnn.MinGRU, gatedrnn.MinLSTM], ids=lambda c: c.__name__)
def test_layers_on_the_gpu_engine_equal_the_sequential_loop(layer_cls: type, engine_name: str) -> None:
    torch.manual_seed(3)
    loop = layer_cls(3, 8, num_layers=2, bidirectional=True, engine="reference", dtype=torch.float64, device=DEVICE)
    fast = layer_cls(3, 8, num_layers=2, bidirectional=True, engine=engine_name, device=DEVICE)
    fast.load_state_dict(loop.state_dict())
    x = torch.randn(40, 3, 3, device=DEVICE)
    lengths = torch.tensor([40, 17, 1])
    results = []
    for module, dtype in ((fast, torch.float32), (loop, torch.float64)):
        xi = x.to(dtype).requires_grad_()
        out, h_n = module(xi, lengths=lengths)
        grads = torch.autograd.grad(out.sin().sum() + h_n.square().sum(), [xi, *module.parameters()])
        results.append([out, h_n, *grads])
    for got, want in zip(*results):
        assert relative_error(got.double(), want) <= 1e-5
