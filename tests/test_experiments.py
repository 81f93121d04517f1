"""The long-memory experiments: generators exactly as the papers define them, exact baselines, training end to end,
reproducibility and resumption, reports, the CLI, and bad input."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from gatedrnn.cli import main
from gatedrnn.tasks import experiments as ex
from gatedrnn.tasks.experiments import ExperimentConfig


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------------------------------
# Generators


@pytest.mark.parametrize("T", [2, 7, 200], ids=lambda T: f"T{T}")
def test_adding_two_markers_one_per_half_and_the_target_is_their_sum(T: int) -> None:
    batch = ex.adding_batch(500, T, gen())
    assert batch.x.shape == (T, 500, 2) and batch.y.shape == (500,) and batch.lengths is None
    values, markers = batch.x[..., 0], batch.x[..., 1]
    assert ((values >= 0) & (values < 1)).all()
    assert set(markers.unique().tolist()) <= {0.0, 1.0}
    half = T // 2
    assert (markers[:half].sum(0) == 1).all() and (markers[half:].sum(0) == 1).all()
    first, second = markers[:half].argmax(0), half + markers[half:].argmax(0)
    columns = torch.arange(500)
    torch.testing.assert_close(batch.y, values[first, columns] + values[second, columns])
    if T == 200:  # marker positions cover each half uniformly
        assert first.min() < 10 and first.max() >= 90 and second.min() < 110 and second.max() >= 190


@pytest.mark.parametrize("T", [1, 5, 100], ids=lambda T: f"T{T}")
def test_copy_layout(T: int) -> None:
    batch = ex.copy_batch(300, T, gen(1))
    assert batch.x.shape == (T + 20, 300, 10) and batch.y.shape == (T + 20, 300)
    assert (batch.x.sum(-1) == 1).all()  # one-hot
    inputs = batch.x.argmax(-1)  # (T+20, B)
    symbols = inputs[:10]
    assert ((symbols >= 0) & (symbols < 8)).all()
    assert set(symbols.unique().tolist()) == set(range(8))
    assert (inputs[10 : 10 + T - 1] == ex.BLANK).all()
    assert (inputs[10 + T - 1] == ex.DELIMITER).all()
    assert (inputs[10 + T :] == ex.BLANK).all()
    assert (batch.y[: T + 10] == ex.BLANK).all()
    assert torch.equal(batch.y[T + 10 :], symbols)


def test_temporal_order_as_in_the_paper() -> None:
    """Experiment 6a: length 100-110, B first, E last, keys at 10-20 and 50-60 (1-based), noise a-d elsewhere."""
    n = 4000
    batch = ex.temporal_order_batch(n, 100, gen(2))
    symbols = {s: i for i, s in enumerate(ex.ORDER_SYMBOLS)}
    assert batch.x.shape == (110, n, 8) and batch.y.shape == (n,)
    assert batch.lengths.min() == 100 and batch.lengths.max() == 110
    for b in range(0, n, 97):
        L = int(batch.lengths[b])
        seq = batch.x[:L, b]
        assert (seq.sum(-1) == 1).all() and (batch.x[L:, b] == 0).all()
        ids = seq.argmax(-1).tolist()
        assert ids[0] == symbols["B"] and ids[-1] == symbols["E"]
        keys = [t + 1 for t, s in enumerate(ids) if s in (symbols["X"], symbols["Y"])]  # 1-based positions
        assert len(keys) == 2 and 10 <= keys[0] <= 20 and 50 <= keys[1] <= 60
        assert all(symbols["a"] <= s <= symbols["d"] for t, s in enumerate(ids[1:-1], 2) if t not in keys)
        order = "".join(ex.ORDER_SYMBOLS[ids[t - 1]] for t in keys)
        assert ex.ORDER_CLASSES[int(batch.y[b])] == order
    counts = torch.bincount(batch.y, minlength=4).float() / n
    assert (counts - 0.25).abs().max() < 0.03  # the four classes equally likely: chance is 1/4


def test_batches_depend_on_seed_and_step_alone() -> None:
    config = ExperimentConfig(task="adding", length=20, batch=8)
    a, b = ex.train_batch(config, 3, 5), ex.train_batch(config, 3, 5)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.x, ex.train_batch(config, 3, 6).x)
    assert not torch.equal(a.x, ex.train_batch(config, 4, 5).x)
    assert not torch.equal(ex.test_set(config, 3).x[:, :8], a.x)


# ----------------------------------------------------------------------------------------------------------------
# Baselines


def test_adding_baseline_is_one_sixth_and_predicting_one_attains_it() -> None:
    spec = ex.task("adding")
    assert spec.baseline(200) == 1 / 6
    batch = ex.adding_batch(200_000, 10, gen(3))
    mse = spec.metrics(torch.ones(200_000, 1), batch)["mse"]
    assert abs(mse - 1 / 6) < 0.002  # standard error about 0.0005


@pytest.mark.parametrize("T", [1, 100, 500])
def test_copy_baseline_is_the_memoryless_strategy_exactly(T: int) -> None:
    spec = ex.task("copy")
    assert spec.baseline(T) == pytest.approx(10 * math.log(8) / (T + 20), rel=1e-15)
    batch = ex.copy_batch(64, T, gen(4))
    # Blank with certainty for T + 10 steps, then uniform over the 8 symbols: no memory of the input at all.
    logits = torch.full((T + 20, 64, 10), -math.inf)
    logits[: T + 10, :, ex.BLANK] = 0.0
    logits[T + 10 :, :, :8] = 0.0
    metrics = spec.metrics(logits, batch)
    assert metrics["cross_entropy"] == pytest.approx(spec.baseline(T), rel=1e-6)
    assert metrics["sequence_accuracy"] < 0.05
    assert spec.solved(0.099 * spec.baseline(T), T) and not spec.solved(0.101 * spec.baseline(T), T)


def test_temporal_order_and_adding_criteria() -> None:
    order, adding = ex.task("temporal-order"), ex.task("adding")
    assert order.baseline(100) == 0.25
    assert order.solved(0.99, 100) and not order.solved(0.989, 100)
    assert adding.solved(0.0099, 200) and not adding.solved(0.01, 200)
    y = torch.tensor([0, 1, 2, 3])
    logits = torch.eye(4)[[0, 1, 2, 0]] * 10
    assert order.metrics(logits, ex.Batch(torch.zeros(1), y))["accuracy"] == 0.75


# ----------------------------------------------------------------------------------------------------------------
# Chrono initialisation


@pytest.mark.parametrize("cell", ["lstm", "lstm-peephole", "lstm-layernorm", "lstm-coupled", "gru", "gru-before",
                                  "rnn"])
def test_chrono_init_opens_the_keep_gates_and_leaves_the_rest(cell: str) -> None:
    H, t_max = 16, 120
    spec = ex.task("copy")
    torch.manual_seed(5)
    plain = ex.SequenceModel(cell, spec, H, init="torch").rnn
    torch.manual_seed(5)
    chrono = ex.SequenceModel(cell, spec, H, init="chrono", steps=t_max).rnn
    gates = {g: slice(k * H, (k + 1) * H) for k, g in enumerate(chrono.spec.gate_names)}
    changed = {"lstm": ["i", "f"], "gru": ["z"], "rnn": []}[chrono.spec.family]
    if cell == "lstm-coupled":
        changed = ["i"]
    top = math.log(t_max - 1)
    for name, p in chrono.named_parameters():
        before = dict(plain.named_parameters())[name]
        for gate, rows in gates.items():
            if gate in changed and name == "bias_ih_l0":
                keep = -p[rows] if gate == "i" else p[rows]
                assert ((keep >= 0) & (keep <= top)).all() and keep.std() > 0.3, (name, gate)
                if gate == "i" and "f" in changed:
                    torch.testing.assert_close(p[gates["i"]], -p[gates["f"]])
            elif gate in changed and name == "bias_hh_l0":
                assert (p[rows] == 0).all()
            elif p.shape[0] == len(gates) * H:
                torch.testing.assert_close(p[rows], before[rows], msg=f"{name} {gate}")
    if cell == "rnn":
        for (_, a), (_, b) in zip(plain.named_parameters(), chrono.named_parameters()):
            assert torch.equal(a, b)


# ----------------------------------------------------------------------------------------------------------------
# Training


def tiny(**overrides: object) -> ExperimentConfig:
    options: dict[str, object] = dict(task="adding", cells=("gru",), length=4, hidden=8, batch=32, lr=3e-2,
                                      steps=100, eval_every=20, test_size=200, workers=1)
    options.update(overrides)
    return ExperimentConfig(**options)


def test_a_tiny_run_learns_and_writes_every_report(tmp_path: Path) -> None:
    config = tiny(cells=("rnn", "gru"), stop_when_solved=False)
    result = ex.run_experiment(config, tmp_path, progress=False, log=open(tmp_path / "log.txt", "w"))
    assert result.finished and [r.cell for r in result.runs] == ["rnn", "gru"]
    gru = result.runs[1]
    assert gru.steps == 100 and [h["step"] for h in gru.history] == [0, 20, 40, 60, 80, 100]
    assert gru.history[0]["metric"] > 0.5 and gru.final["mse"] < 0.02  # learned to add at T=4
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 101 and {r["cell"] for r in rows} == {"rnn", "gru"}
    evaluated = [r for r in rows if r["test_metric"]]
    assert [int(r["step"]) for r in evaluated if r["cell"] == "gru"] == [0, 20, 40, 60, 80, 100]
    assert float(evaluated[-1]["test_metric"]) == pytest.approx(gru.final["mse"], rel=1e-5)
    summary = json.loads((tmp_path / "results.json").read_text())
    assert summary["baseline"] == 1 / 6 and [row["cell"] for row in summary["summary"]] == ["rnn", "gru"]
    table = (tmp_path / "results.md").read_text()
    assert "| rnn |" in table and "| gru |" in table and "baseline mse = 0.1667" in table
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_several_seeds_are_different_runs_summarised_together(tmp_path: Path) -> None:
    config = tiny(cells=("rnn",), seeds=2, seed=7, steps=4, eval_every=2, test_size=20)
    result = ex.run_experiment(config, tmp_path, progress=False, log=open(tmp_path / "log.txt", "w"))
    assert [(r.cell, r.seed) for r in result.runs] == [("rnn", 7), ("rnn", 8)]
    assert result.runs[0].final != result.runs[1].final
    row = ex.summarize(config, result.runs)[0]
    finals = [r.final["mse"] for r in result.runs]
    assert row["seeds"] == 2 and row["final"] == pytest.approx(sum(finals) / 2)
    assert f"{row['final']:.4f} ± {row['final_std']:.4f}" in result.table and "seeds 7..8" in result.table


def test_stop_when_solved(tmp_path: Path) -> None:
    run = ex.train_one(tiny(steps=400), "gru", 0, tmp_path)
    assert run.solved_at is not None and run.steps == run.solved_at < 400 and run.final["mse"] < 0.01


def test_interrupted_run_resumes_bit_identically(tmp_path: Path) -> None:
    config = tiny(task="copy", length=3, steps=30, eval_every=10, test_size=50, stop_when_solved=False)
    whole = ex.train_one(config, "lstm-peephole", 1, tmp_path / "whole")
    calls = iter(range(10**6))
    first = ex.train_one(config, "lstm-peephole", 1, tmp_path / "cut", should_stop=lambda: next(calls) == 17)
    assert not first.finished and first.steps == 17
    assert not (tmp_path / "cut" / "result.json").exists()
    second = ex.train_one(config, "lstm-peephole", 1, tmp_path / "cut")
    assert second.finished and second.steps == 30
    assert second.final == whole.final and second.history == whole.history
    assert (tmp_path / "cut" / "metrics.csv").read_text().count("\n") == 32
    assert ex.train_one(config, "lstm-peephole", 1, tmp_path / "cut").final == whole.final  # done: read back


def test_temporal_order_runs_with_variable_lengths(tmp_path: Path) -> None:
    run = ex.train_one(tiny(task="temporal-order", length=10, steps=2, eval_every=1), "lstm-coupled", 0, tmp_path)
    assert run.steps == 2 and 0 <= run.final["accuracy"] <= 1 and "cross_entropy" in run.final


def test_cli_runs_in_parallel_workers_and_refuses_a_different_configuration(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["experiment", "copy", "--cells", "rnn,gru-before", "--length", "2", "--hidden", "4", "--steps", "3",
            "--eval-every", "3", "--test-size", "10", "--workers", "2", "--out", str(tmp_path), "--quiet"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| rnn |" in out and "| gru-before |" in out and "exact-sequence acc." in out
    assert json.loads((tmp_path / "results.json").read_text())["config"]["workers"] == 2
    assert main([*args[:-3], "--lr", "0.5", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gatedrnn: error: ") and "lr=0.01 (asked 0.5)" in err and err.count("\n") == 1


# ----------------------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("options, message", [
    ({"task": "juggling"}, "task: unknown task 'juggling'; expected one of: adding, copy, temporal-order"),
    ({"cells": "lstm,lstm-sideways"}, "cell: unknown variant 'lstm-sideways'"),
    ({"cells": "gru,gru"}, "cells: each cell at most once"),
    ({"cells": ""}, "cells: expected at least one cell variant name"),
    ({"length": 1}, "length: expected an int >= 2, got 1"),
    ({"task": "temporal-order", "length": 5}, "length: expected an int >= 10, got 5"),
    ({"hidden": 0}, "hidden: expected an int >= 1, got 0"),
    ({"steps": 2.5}, "steps: expected an int >= 1, got 2.5"),
    ({"seeds": 0}, "seeds: expected an int >= 1, got 0"),
    ({"lr": -1.0}, "lr: expected a number > 0, got -1.0"),
    ({"clip": math.inf}, "clip: expected a number > 0, got inf"),
    ({"workers": 0}, "workers: expected an int >= 1, got 0"),
    ({"engine": "warp"}, "engine: unknown engine 'warp'"),
    ({"init": "xavier"}, "init: expected one of chrono, torch, got 'xavier'"),
], ids=lambda v: str(v)[:30] if isinstance(v, dict) else "")
def test_bad_configuration(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        ExperimentConfig(**options)


def test_cli_bad_input_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["experiment", "adding", "--length", "0", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == "gatedrnn: error: length: expected an int >= 2, got 0\n"
    assert main(["experiment", "sorting", "--out", str(tmp_path)]) == 2
    assert "task: unknown task 'sorting'" in capsys.readouterr().err
