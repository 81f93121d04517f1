"""``torch.compile`` of gatedrnn layers on the cpu engine: one graph (``fullgraph=True``, no graph break counted by
Dynamo), one custom op per layer and direction, and the eager results, forward and backward.

The inductor backend (what users get by default) runs for one layer (a minute of C++ compilation on two cores);
every named variant runs with ``aot_eager``, which traces the same forward and backward graphs through
AOTAutograd and the ops' fake implementations without generating code.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
from torch._dynamo.backends.common import aot_autograd
from torch._dynamo.utils import counters

import gatedrnn
from gatedrnn.engine.cpu import CPUEngine, build
from gatedrnn.variants import VARIANTS

pytestmark = pytest.mark.skipif(not build.status()[0], reason="cpu engine not available")

CASES = {**{name: (v.layer, v.options) for name, v in VARIANTS.items()}, "lstm-proj": (gatedrnn.LSTM, {"proj_size": 3})}
SCAN_LAYERS = (gatedrnn.MinGRU, gatedrnn.MinLSTM)
"""Linear-recurrence layers: their one op per layer and direction is the scan, forward and backward."""
OPS = {gatedrnn.ClockworkRNN: "gatedrnn.cpu_clockwork"}
"""The cpu engine's op of each layer class other than ``gatedrnn.cpu_recurrence`` (and its ``_backward``)."""


def fused(layer_cls: type, options: dict) -> bool:
    """Whether the cpu engine runs the layer (sLSTM, the depth-gated and Grid LSTMs run on the reference engine,
    whose loop is traced as plain ops into the same one graph)."""
    return CPUEngine().covers(layer_cls(4, 4, num_layers=2, **options).spec, torch.zeros(1))


def engine_of(layer_cls: type, options: dict) -> str:
    return "cpu" if fused(layer_cls, options) else "reference"


def ops_of(layer_cls: type, options: dict) -> tuple[list[str], list[str]]:
    """The custom ops of one layer and direction: forward, backward."""
    if not fused(layer_cls, options):
        return [], []
    if layer_cls in SCAN_LAYERS:
        return ["gatedrnn.cpu_linear_scan.default"], ["gatedrnn.cpu_linear_scan.default"]
    op = OPS.get(layer_cls, "gatedrnn.cpu_recurrence")
    return [f"{op}.default"], [f"{op}_backward.default"]


def fresh(layer_cls: type, options: dict, **kwargs: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return layer_cls(4, 6, num_layers=2, bidirectional=True, engine=engine_of(layer_cls, options), **options, **kwargs)


def run(module: torch.nn.Module, x: Tensor, lengths: Tensor) -> list[Tensor]:
    """Output, final states and the gradients of the input and every parameter."""
    module.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    out, state = module(x, lengths=lengths)
    states = state if isinstance(state, tuple) else (state,)
    (out.square().sum() + sum(s.sum() for s in states)).backward()
    return [out.detach(), *(s.detach() for s in states), x.grad, *(p.grad for p in module.parameters())]


class OpCounter:
    """An ``aot_autograd`` backend that records the forward and backward graphs' custom ops and runs them as
    they are (no code generation)."""

    def __init__(self) -> None:
        self.forward: list[str] = []
        self.backward: list[str] = []
        self.backend = aot_autograd(fw_compiler=self._compiler(self.forward), bw_compiler=self._compiler(self.backward))

    @staticmethod
    def _compiler(into: list[str]):  # noqa: ANN205
        def compile_graph(gm: torch.fx.GraphModule, _inputs: object) -> torch.fx.GraphModule:
            into.extend(str(n.target) for n in gm.graph.nodes if str(n.target).startswith("gatedrnn."))
            return gm

        return compile_graph


def assert_same(got: list[Tensor], want: list[Tensor]) -> None:
    for k, (g, w) in enumerate(zip(got, want)):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6, msg=lambda m, k=k: f"result {k}: {m}")


@pytest.mark.parametrize("name", list(CASES))
def test_every_variant_traces_into_one_graph_with_one_op_per_layer_and_direction(name: str) -> None:
    layer_cls, options = CASES[name]
    module = fresh(layer_cls, options)
    x, lengths = torch.randn(5, 3, 4), torch.tensor([5, 2, 4])
    want = run(module, x, lengths)
    counter = OpCounter()
    counters.clear()
    torch._dynamo.reset()
    compiled = torch.compile(module, backend=counter.backend, fullgraph=True)
    got = run(compiled, x, lengths)
    assert not counters["graph_break"], dict(counters["graph_break"])
    forward, backward = ops_of(layer_cls, options)
    assert counter.forward == forward * 4  # 2 layers x 2 directions
    assert counter.backward == backward * 4  # the kernels, not a recompute
    assert_same(got, want)


def test_inductor_fullgraph_forward_and_backward() -> None:
    layer_cls, options = CASES["lstm-layernorm"]
    module = fresh(layer_cls, options, batch_first=True)
    x, lengths = torch.randn(3, 5, 4), torch.tensor([5, 2, 4])
    want = run(module, x, lengths)
    counters.clear()
    torch._dynamo.reset()
    compiled = torch.compile(module, fullgraph=True)  # inductor
    got = run(compiled, x, lengths)
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert_same(got, want)
    # Another batch and length: the same compiled module, recompiled at most once for dynamic shapes.
    x2, lengths2 = torch.randn(6, 7, 4), torch.tensor([7, 1, 3, 7, 2, 5])
    assert_same(run(compiled, x2, lengths2), run(module, x2, lengths2))
    assert not counters["graph_break"]


def test_inference_under_no_grad_runs_the_op_without_saving() -> None:
    module = fresh(gatedrnn.LSTM, {"peephole": True})
    x = torch.randn(5, 3, 4)
    counter = OpCounter()
    torch._dynamo.reset()
    compiled = torch.compile(module, backend=counter.backend, fullgraph=True)
    with torch.no_grad():
        out, (h, c) = compiled(x)
        want, (h_want, c_want) = module(x)
    assert counter.forward == ["gatedrnn.cpu_recurrence.default"] * 4 and not counter.backward
    assert_same([out, h, c], [want, h_want, c_want])
