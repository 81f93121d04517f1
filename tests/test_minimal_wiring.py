"""minGRU and minLSTM wherever a cell is chosen: the variants, every task's ``--cell``, the benchmark, gate recording
and the explorer page. Tiny sizes: these check the wiring; the numerics are in ``test_minimal.py``."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

import gatedrnn
from gatedrnn import bench
from gatedrnn.cli import main
from gatedrnn.tasks import charlm
from gatedrnn.tasks import experiments as ex
from gatedrnn.variants import VARIANTS
from gatedrnn.viz import explorer, plots
from test_charlm import TINY
from test_classify import _train as classify_train
from test_forecast import _daily_cycle, _series_csv
from test_forecast import _train as forecast_train

MINIMAL = ["mingru", "minlstm"]
GATES = {"mingru": {"z", "h_tilde"}, "minlstm": {"f", "i", "f_norm", "i_norm", "h_tilde"}}


def test_variants_build_the_layers() -> None:
    assert isinstance(VARIANTS["mingru"].build(3, 4), gatedrnn.MinGRU)
    layer = VARIANTS["minlstm"].build(3, 4, num_layers=2, engine="reference")
    assert isinstance(layer, gatedrnn.MinLSTM) and layer.num_layers == 2 and layer.mode == "log"


@pytest.mark.parametrize("cell", MINIMAL)
def test_charlm_trains_samples_and_refuses_layer_norm(cell: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "play.txt"
    text.write_text((Path(charlm.__file__).parent.parent / "data" / "macbeth.txt").read_text()[:4000])
    out = tmp_path / "run"
    args = ["charlm", "train", "--text", str(text), *TINY, "--steps", "2", "--out", str(out), "--quiet", "--cell", cell]
    assert main(args) == 0
    lm = charlm.load(out)
    assert isinstance(lm.model.rnn, gatedrnn.MinGRU if cell == "mingru" else gatedrnn.MinLSTM)
    assert len(lm.sample("M", 5)) >= 5
    capsys.readouterr()
    assert main([*args[:-2], "--cell", cell, "--layer-norm", "--out", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gatedrnn: error: ") and f"layer_norm: cell={cell!r} has no layer-norm variant" in err
    assert not (tmp_path / "other").exists()


def test_charlm_sampling_step_by_step_continues_the_whole_text() -> None:
    torch.manual_seed(0)
    config = dataclasses.replace(charlm.CharLMConfig(), cell="minlstm", layers=2, hidden=6, embed=4, dropout=0.0)
    model = charlm.CharLM(9, config).double().eval()
    ids = torch.randint(0, 9, (2, 12))
    with torch.no_grad():
        whole, _ = model(ids)
        state, steps = None, []
        for t in range(12):
            logits, state = model(ids[:, t : t + 1], state)
            steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), whole, rtol=1e-12, atol=1e-12)


def test_classify_with_a_minimal_cell(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = classify_train(tmp_path, "--steps", "4", "--cell", "mingru")  # bidirectional by default
    capsys.readouterr()
    assert main(["classify", "eval", "--out", str(out)]) == 0
    assert "accuracy" in capsys.readouterr().out


def test_forecast_with_a_minimal_cell(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = _series_csv(tmp_path / "load.csv", _daily_cycle())
    out = forecast_train(tmp_path, csv, "--steps", "3", "--cell", "minlstm")
    capsys.readouterr()
    assert main(["forecast", "predict", "--out", str(out)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 6


def test_experiment_runs_the_minimal_cells(tmp_path: Path) -> None:
    config = ex.ExperimentConfig(task="adding", cells=("mingru", "minlstm"), length=4, hidden=8, batch=16,
                                 steps=3, eval_every=3, test_size=20, workers=1)
    result = ex.run_experiment(config, tmp_path, progress=False, log=open(tmp_path / "log.txt", "w"))
    assert [r.cell for r in result.runs] == ["mingru", "minlstm"]
    assert all(math.isfinite(r.final["mse"]) for r in result.runs)


@pytest.mark.parametrize("cell", MINIMAL)
def test_chrono_init_sets_the_keep_share(cell: str) -> None:
    H, t_max = 16, 120
    torch.manual_seed(5)
    layer = ex.SequenceModel(cell, ex.task("copy"), H, init="chrono", steps=t_max).rnn
    bias = layer.bias_ih_l0.detach()
    rows = {g: bias[k * H : (k + 1) * H] for k, g in enumerate(layer.spec.gate_names)}
    # the share kept of the old state, 1 - z (minGRU) or f' (minLSTM), spans time scales up to t_max
    keep_logit = -rows["z"] if cell == "mingru" else rows["f"] - rows["i"]
    top = math.log(t_max - 1) * (1 if cell == "mingru" else 2)
    assert bool(((keep_logit >= 0) & (keep_logit <= top)).all()) and keep_logit.std() > 0.3
    torch.manual_seed(5)
    plain = ex.SequenceModel(cell, ex.task("copy"), H, init="torch").rnn
    torch.testing.assert_close(rows["h_tilde"], plain.bias_ih_l0.detach()[-H:])  # the candidate's rows untouched
    torch.testing.assert_close(layer.weight_ih_l0, plain.weight_ih_l0)


@pytest.mark.parametrize("cell", MINIMAL)
def test_record_shows_the_gates_and_the_candidate(cell: str) -> None:
    torch.manual_seed(1)
    layer = VARIANTS[cell].build(3, 4, num_layers=2, bidirectional=True, dtype=torch.float64)
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    with gatedrnn.inspect.record(layer, pre_activations=True) as rec:
        out, _ = layer(x, lengths=torch.tensor([6, 3]))
    trace = rec.trace(layer=1)
    assert trace.family == cell and set(trace.gates) == GATES[cell]
    assert trace["h_tilde"].shape == (2, 6, 4) and torch.isnan(trace["h_tilde"][1, 3:]).all()
    torch.testing.assert_close(trace["h"][0], out[:, 0, :4])  # the recorded state is the layer's output
    pre = trace.pre["z" if cell == "mingru" else "f"]
    gate = trace["z" if cell == "mingru" else "f"]
    torch.testing.assert_close(gate[0], torch.sigmoid(pre[0]))
    assert (trace["h_tilde"][0] > 0).all()  # log mode: g keeps the candidate positive
    if cell == "minlstm":
        torch.testing.assert_close(trace["f_norm"][0] + trace["i_norm"][0], torch.ones(6, 4, dtype=torch.float64))
        torch.testing.assert_close(trace["f_norm"][0], trace["f"][0] / (trace["f"][0] + trace["i"][0]))


@pytest.mark.parametrize("cell", MINIMAL)
def test_explorer_page_data_and_gate_heatmaps(cell: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    text = "When shall we three meet again?"
    config = dataclasses.replace(charlm.CharLMConfig(), cell=cell, layers=1, hidden=6, embed=4)
    vocab = charlm.Vocab.of(text)
    lm = charlm.LanguageModel(charlm.CharLM(len(vocab), config), vocab, config)
    data = explorer.explorer_data(lm, text)
    [layer] = data["layers"]
    assert layer["family"] == cell and set(layer["signals"]) == GATES[cell] | {"h"}
    kinds = {name: signal["kind"] for name, signal in layer["signals"].items()}
    assert kinds["h_tilde"] == "signed" and kinds["h"] == "signed"
    assert all(kinds[g] == "gate" for g in GATES[cell] - {"h_tilde"})
    with gatedrnn.inspect.record(lm.model) as rec:
        lm.model(vocab.encode(text, "text").unsqueeze(0))
    figure = plots.gate_heatmaps(rec.trace(), text=text)
    assert len(figure.axes) >= len(GATES[cell])


def test_bench_times_the_scan_beside_the_sequential_loop() -> None:
    config = bench.BenchConfig(shapes=[(2, 5, 3, 4)], variants=["mingru", "minlstm", "gru"],
                               implementations=["torch.nn", "reference", "scan", "cpu", "gemms"], modes=["fwd+bwd"],
                               repeats=1, warmup=0, block_ms=0)
    rows = bench.run(config)
    timed = {(r.variant, r.implementation) for r in rows}
    for cell in MINIMAL:
        assert {(cell, "reference"), (cell, "scan"), (cell, "cpu")} <= timed
        assert (cell, "torch.nn") not in timed and (cell, "gemms") not in timed
    assert ("gru", "scan") not in timed  # the scan runs linear recurrences only
    entries = {(e["variant"], e["implementation"]): e for e in bench.ratios(rows)}
    assert entries[("mingru", "cpu")]["family_baseline"] == "gru"
    assert entries[("minlstm", "scan")]["family_baseline"] == "lstm"
    assert entries[("mingru", "cpu")]["vs_torch_nn_family"] > 0
