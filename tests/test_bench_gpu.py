"""``gatedrnn bench`` for CUDA: the issue's grid and implementations as defaults, time per step, clear refusals."""

from __future__ import annotations

import pytest
import torch

from gatedrnn import bench
from gatedrnn import engine as registry
from gatedrnn.cells import CellSpec
from gatedrnn.engine.reference import ReferenceEngine


def test_time_per_step_is_reported() -> None:
    rows = [bench.Row((4, 200, 3, 8), "lstm", "torch.nn", "fwd", [2.0, 4.0, 3.0], [2.0, 4.0, 3.0], 1),
            bench.Row((4, 200, 3, 8), "lstm", "reference", "fwd", [6.0, 6.0, 6.0], [6.0, 6.0, 6.0], 1)]
    entries = bench.ratios(rows)
    assert [e["us_per_step"] for e in entries] == [15.0, 30.0]  # 3 ms and 6 ms over 200 steps
    assert entries[1]["vs_torch_nn_lstm"] == 2.0
    assert "us/step" in bench.format_table(entries).splitlines()[0]


def test_cuda_defaults_are_the_gpu_grid_and_engines() -> None:
    assert bench.CUDA_SHAPES == ((1, 512, 256, 256), (16, 256, 512, 512), (64, 256, 1024, 1024),
                                 (256, 128, 1024, 1024))
    assert bench.CUDA_IMPLEMENTATIONS == ["torch.nn", "reference", "gpu"]
    assert bench.IMPLEMENTATIONS["gpu"].devices == ("cuda",)
    assert isinstance(bench.timer_for(torch.device("cuda")), bench.CudaTimer)


class PlainLSTMOnly(ReferenceEngine):
    name = "plain-lstm-only"

    def covers(self, spec: CellSpec, x: torch.Tensor) -> bool:
        return spec.family == "lstm" and not spec.layer_norm


def test_engine_without_the_variant_is_left_out() -> None:
    registry.register(PlainLSTMOnly())
    try:
        build = bench._engine("plain-lstm-only")
        assert build(bench.bench_variants()["lstm-layernorm"].build(3, 4)) is None
        layer = bench.bench_variants()["lstm-peephole"].build(3, 4)
        assert build(layer) is layer and layer.engine == "plain-lstm-only"
    finally:
        registry._REGISTRY.pop("plain-lstm-only")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_without_a_device_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--device", "cuda", "--repeats", "1"]) == 2
    assert capsys.readouterr().err == ("gatedrnn: error: device: 'cuda' requested but CUDA is not available on this "
                                       "machine\n")
