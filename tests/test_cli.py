"""The command line: ``gatedrnn cells`` (the demo table) and ``gatedrnn engines``."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gatedrnn.cli import main
from gatedrnn.variants import VARIANTS, variant


def test_cells_table_lists_every_variant_with_parameters_and_parity(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cells", "--steps", "5", "--hidden-size", "4", "--input-size", "3"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()[4:] if line.strip()}
    assert set(lines) == set(VARIANTS)
    layer = variant("lstm").build(3, 4, num_layers=2)
    assert f"{sum(p.numel() for p in layer.parameters()):,}" in lines["lstm"]
    for name in ("lstm", "gru", "rnn", "rnn-relu", "lstm-forgetbias"):
        parity = float(lines[name].split()[-1])  # max |diff| against the torch.nn twin
        assert parity < 1e-12, name
    assert lines["lstm-peephole"].endswith("no torch.nn twin")


def test_cells_subset_and_unknown_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cells", "--cells", "gru-before", "--steps", "3"]) == 0
    assert "gru-before" in capsys.readouterr().out
    assert main(["cells", "--cells", "lstm-sideways"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gatedrnn: error: cell: unknown variant 'lstm-sideways'") and err.count("\n") == 1


def test_engines_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["engines"]) == 0
    assert "reference" in capsys.readouterr().out


def test_python_dash_m_entry_point() -> None:
    done = subprocess.run([sys.executable, "-m", "gatedrnn", "engines"], capture_output=True, text=True, check=True)
    assert "reference" in done.stdout
