"""The plots: files exist, are PNG/SVG of the requested pixel size, and show what was recorded; and their CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.image import imread

import gatedrnn
from charlm_runs import tiny_run
from gatedrnn.cli import main
from gatedrnn.viz import plots


def png_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of a PNG file, read back."""
    image = imread(path)
    return image.shape[1], image.shape[0]


@pytest.fixture(scope="module")
def lstm_traces():
    torch.manual_seed(0)
    lstm = gatedrnn.LSTM(3, 6, num_layers=2, peephole=True)
    with gatedrnn.inspect.record(lstm) as rec:
        lstm(torch.randn(12, 2, 3), lengths=torch.tensor([12, 7]))
    return list(rec)


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_every_plot_is_written_at_its_size(tmp_path: Path, lstm_traces, suffix: str) -> None:
    trace = lstm_traces[0]
    figures = {
        "heatmaps": plots.gate_heatmaps(trace, sequence=1, text="abcdefg", size=(640, 480)),
        "cells": plots.cell_traces(trace, [0, 3], size=(500, 300)),
        "saturation": plots.saturation(lstm_traces, size=(700, 400)),
        "flow": plots.gradient_flow({"a": torch.rand(12) + 0.1, "b": torch.rand(12)}, size=(400, 300)),
    }
    sizes = {"heatmaps": (640, 480), "cells": (500, 300), "saturation": (700, 400), "flow": (400, 300)}
    for name, figure in figures.items():
        path = plots.save(figure, tmp_path / f"{name}{suffix}")
        assert path.stat().st_size > 1000
        if suffix == ".png":
            assert png_size(path) == sizes[name]
        else:
            head = path.read_text()[:500]
            assert "<svg" in head and f'width="{sizes[name][0] * 0.72:g}pt"' in head
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{n}{suffix}" for n in figures)  # no temp files


def test_heatmaps_show_the_recorded_values(lstm_traces) -> None:
    trace = lstm_traces[1]
    figure = plots.gate_heatmaps(trace, sequence=1)
    images = [ax.get_images()[0] for ax in figure.axes if ax.get_images()]
    assert len(images) == 5  # i, f, g, o and c
    for image, name in zip(images, ("i", "f", "g", "o", "c")):
        np.testing.assert_array_equal(image.get_array(), trace[name][1, :7].double().numpy().T)  # 7 valid steps
    assert images[0].get_clim() == (0.0, 1.0) and images[2].get_clim() == (-1.0, 1.0)


def test_saturation_counts_each_units_fraction(lstm_traces) -> None:
    figure = plots.saturation(lstm_traces[:1])
    ax = figure.axes[1]  # layer 0, gate f
    values = lstm_traces[0]["f"].numpy()
    closed = np.sum(values < 0.1, axis=(0, 1)) / np.sum(~np.isnan(values), axis=(0, 1))
    counts = [patch.get_height() for patch in ax.patches[:20]]  # the "< 0.1" histogram comes first
    np.testing.assert_array_equal(counts, np.histogram(closed, bins=np.linspace(0, 1, 21))[0])


def test_bad_plot_arguments(tmp_path: Path, lstm_traces) -> None:
    figure = plots.cell_traces(lstm_traces[0], [1])
    with pytest.raises(ValueError, match=r"out: expected a file name ending in .png or .svg, got '.*x.jpg'"):
        plots.save(figure, tmp_path / "x.jpg")
    with pytest.raises(ValueError, match=r"out: directory '.*nowhere' does not exist"):
        plots.save(figure, tmp_path / "nowhere" / "x.png")
    with pytest.raises(ValueError, match=r"units: expected unit indices in \[0, 6\), got \[6\]"):
        plots.cell_traces(lstm_traces[0], [6])
    with pytest.raises(ValueError, match=r"sequence: expected an index in \[0, 2\), got 2"):
        plots.gate_heatmaps(lstm_traces[0], sequence=2)
    with pytest.raises(ValueError, match=r"size: expected \(width, height\) in pixels, each an int >= 100"):
        plots.new_figure((50, 400))
    with pytest.raises(ValueError, match=r"low, high: expected 0 < low < high < 1, got low=0.5, high=0.2"):
        plots.saturation(lstm_traces, low=0.5, high=0.2)
    with pytest.raises(ValueError, match=r"flows: expected at least one labelled curve"):
        plots.gradient_flow({})


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {cell: tiny_run(root / cell, cell=cell, layers=1) for cell in ("rnn", "gru")}


def test_cli_viz_gates(tmp_path: Path, runs, capsys) -> None:
    out = tmp_path / "gates.png"
    assert main(["viz", "gates", "--model", str(runs["gru"]), "--text", "MACBETH.\nIs this a dagger",
                 "--out", str(out), "--width", "900", "--height", "700"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert png_size(out) == (900, 700)
    svg = tmp_path / "cells.svg"
    assert main(["viz", "gates", "--model", str(runs["rnn"]), "--chars", "30", "--plot", "cells", "--units", "1,2",
                 "--out", str(svg)]) == 0
    assert "<svg" in svg.read_text()[:500]


@pytest.mark.parametrize("argv, message", [
    (["--out", "x.gif"], "out: expected a file name ending in .png or .svg, got 'x.gif'"),
    (["--layer", "1"], "layer: expected a layer in [0, 1), got 1"),
    (["--units", "a,b"], "units: expected comma-separated integers, got 'a,b'"),
    (["--text", "Macbeth~"], "text: 1 character(s) not in the model's vocabulary: '~'"),
    (["--chars", "0"], "chars: expected an int >= 1, got 0"),
])
def test_cli_viz_gates_errors(runs, capsys, argv: list[str], message: str) -> None:
    base = ["viz", "gates", "--model", str(runs["rnn"]), "--out", "x.png"]
    assert main(base + argv) == 2
    err = capsys.readouterr().err
    assert err == f"gatedrnn: error: {message}\n"


def test_cli_viz_gradient_flow_of_given_and_trained_models(tmp_path: Path, runs, capsys) -> None:
    out = tmp_path / "flow.png"
    argv = ["viz", "gradient-flow", "--out", str(out), "--seq-len", "20", "--windows", "3"]
    assert main([*argv, "--model", str(runs["rnn"]), "--model", str(runs["gru"])]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("RNN, 1×8: ") and lines[1].startswith("GRU, 1×8: ") and lines[-1] == str(out)
    assert png_size(out) == (1000, 600)
    trained = tmp_path / "trained"
    assert main([*argv, "--cells", "lstm", "--hidden", "4", "--train-steps", "2", "--runs", str(trained),
                 "--quiet"]) == 0
    assert (trained / "lstm" / "model.safetensors").exists()
    assert main([*argv, "--cells", "lstm,tree"]) == 2
    message = "cells: expected a comma-separated list of rnn, lstm, gru, got 'lstm,tree'"
    assert capsys.readouterr().err.endswith(message + "\n")
