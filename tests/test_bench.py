"""``gatedrnn bench``: the table, its ratios, the JSON file, the memory mode and bad options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import gatedrnn
from gatedrnn import bench
from gatedrnn.cli import main


def test_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bench.json"
    argv = ["bench", "--shapes", "2x5x3x4", "--variants", "lstm,lstm-peephole,gru-before,lstm-proj", "--repeats", "2",
            "--json", str(path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    result = json.loads(path.read_text())
    entries = {(e["variant"], e["implementation"], e["mode"]): e for e in result["results"]}
    # torch.nn has no peephole LSTM and no reset-before GRU; every other pair is timed in both modes
    assert ("lstm-peephole", "torch.nn", "fwd") not in entries and ("gru-before", "torch.nn", "fwd") not in entries
    for variant in ("lstm", "lstm-peephole", "gru-before", "lstm-proj"):
        for impl in ("reference", "cpu"):
            for mode in bench.MODES:
                e = entries[(variant, impl, mode)]
                assert len(e["times_ms"]) == 2 and e["median_ms"] > 0
                assert e["vs_torch_nn_lstm"] == pytest.approx(
                    e["median_ms"] / entries[("lstm", "torch.nn", mode)]["median_ms"])
    assert entries[("lstm", "torch.nn", "fwd")]["vs_torch_nn_lstm"] == 1.0
    assert entries[("gru-before", "cpu", "fwd")]["family_baseline"] == "gru"
    assert entries[("gru-before", "cpu", "fwd")]["vs_torch_nn_family"] is None  # no torch.nn.GRU timed here
    assert entries[("lstm-proj", "torch.nn", "fwd")]["vs_torch_nn_family"] == 1.0
    assert result["config"]["shapes"] == [[2, 5, 3, 4]]
    # what the Performance page names: the version, the processor, no GPU on a CPU run
    assert result["gatedrnn"] == gatedrnn.__version__ and result["cpu_model"] == bench.cpu_model() != ""
    assert result["device_name"] is None
    rows = [line.split() for line in out.splitlines() if line.startswith("2,5,3,4")]
    assert len(rows) == len(entries)
    assert "median of 2 interleaved rounds (random order)" in out
    assert rows[0][-1] == f"{entries[tuple(rows[0][1:4])]['first_median_ms']:.2f}"  # the 'first ms' column


def test_each_round_runs_every_call_once_in_its_own_order(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[tuple[int, str]] = []
    monkeypatch.setattr(bench, "_call", lambda module, x, mode: lambda: ran.append((id(module), mode)))
    config = bench.BenchConfig(shapes=[(2, 5, 3, 4)], variants=["lstm", "gru"], repeats=4, warmup=0, block_ms=0)
    bench.run(config)
    calls = 2 * 3 * len(bench.MODES)  # variants x implementations x modes
    rounds = [ran[r * calls:(r + 1) * calls] for r in range(config.repeats)]
    assert len(ran) == config.repeats * calls
    assert all(sorted(r) == sorted(rounds[0]) and len(set(r)) == calls for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1  # not one fixed order
    keys = list(range(calls))
    assert bench.round_order(keys, 0, 3) == bench.round_order(keys, 0, 3) != bench.round_order(keys, 1, 3)


def test_memory_mode(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--memory", "--shapes", "2x8x3x16", "--variants", "gru", "--impls", "cpu"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("2,8,3,16") and "gru" in line and line.endswith("MiB")


@pytest.mark.parametrize("argv, message", [
    (["--shapes", "2x5x3"], "expected BxTxIxH with positive integers"),
    (["--variants", "lstm,sideways"], "unknown variant sideways"),
    (["--impls", "fortran"], "unknown implementation fortran"),
])
def test_bad_options(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["bench", *argv])
    assert exit.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_repeats_is_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--repeats", "0", "--shapes", "1x2x2x2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gatedrnn: error: repeats:") and err.count("\n") == 1


def test_python_dash_m_bench_help() -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "gatedrnn.bench", "--help"], capture_output=True, text=True,
                          check=True)
    assert "--json FILE" in done.stdout and "1x256x64x128" in done.stdout


def test_a_timing_is_a_block_of_calls_reported_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    ran: list[str] = []

    def call(module: object, x: object, mode: str) -> object:
        def sleep_then_count() -> None:
            time.sleep(0.002)
            ran.append(mode)

        return sleep_then_count

    monkeypatch.setattr(bench, "_call", call)
    config = bench.BenchConfig(shapes=[(2, 5, 3, 4)], variants=["rnn"], implementations=["cpu"], modes=["fwd"],
                               repeats=3, warmup=1, block_ms=9)
    [row] = bench.run(config)
    assert 2 <= row.calls <= 5  # 9 ms of 2 ms calls (sleeps may run long on a busy machine)
    assert len(ran) == 1 + 1 + config.repeats * row.calls  # warm-up, block sizing, the rounds' blocks
    assert len(row.times_ms) == len(row.first_ms) == config.repeats
    assert all(2.0 <= t < 200 for t in row.times_ms + row.first_ms)


def test_block_size() -> None:
    assert bench.block_size(0.001, 20) == 20
    assert bench.block_size(0.0007, 20) == 29
    assert bench.block_size(0.05, 20) == 1
    assert bench.block_size(1e-9, 20) == 1000
    assert bench.block_size(0.001, 0) == 1
