"""What a user installs: the core needs no plotting library, the version has one source, the public API is typed,
and the source distribution carries what its tests need."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import gatedrnn
from gatedrnn import cli
from gatedrnn.viz import results

ROOT = Path(__file__).resolve().parents[1]


def pyproject() -> dict[str, Any]:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_matplotlib_is_an_extra_and_the_core_never_imports_it() -> None:
    project = pyproject()["project"]
    assert not any(d.startswith("matplotlib") for d in project["dependencies"])
    assert any(d.startswith("matplotlib") for d in project["optional-dependencies"]["viz"])
    code = ("import sys, gatedrnn, gatedrnn.cli, gatedrnn.tasks.experiments, gatedrnn.tasks.classify, "
            "gatedrnn.tasks.forecast; print(sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib'))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


@pytest.mark.parametrize("command", [["viz", "gates", "--model", "missing-run"], ["viz", "gradient-flow"]])
def test_drawing_without_matplotlib_is_one_line_naming_the_extra(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    out = tmp_path / "plot.png"
    assert cli.main([*command, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "matplotlib" in err and "pip install 'gatedrnn[viz]'" in err, err
    assert not out.exists()


def test_reports_without_matplotlib_say_the_plot_was_not_drawn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    path = tmp_path / "confusion.png"
    results.confusion_plot(path, np.eye(2, dtype=int), ["a", "b"], "title")
    results.forecast_plot(path, np.zeros(3), {"model": np.ones(3)}, "title", "value")
    assert not path.exists()
    assert results.plot_line(path) == "plot: not drawn (matplotlib is not installed; pip install 'gatedrnn[viz]')"
    monkeypatch.delitem(sys.modules, "matplotlib")
    assert results.plot_line(path) == f"plot: {path}"


def test_one_version_and_an_spdx_licence() -> None:
    config = pyproject()
    assert "version" in config["project"]["dynamic"] and "version" not in config["project"]
    assert config["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "gatedrnn.__version__"}
    assert config["project"]["license"] == "MIT" and (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert gatedrnn.__version__ in (ROOT / "CHANGELOG.md").read_text()
    try:
        installed = importlib.metadata.version("gatedrnn")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("gatedrnn is not installed here (run from a source tree)")
    assert installed == gatedrnn.__version__


def test_no_triton_pin_in_the_extras() -> None:
    """A triton pin in an extra would replace the triton of a user's CUDA build of torch."""
    extras = pyproject()["project"]["optional-dependencies"]
    assert not [d for deps in extras.values() for d in deps if d.startswith("triton")]


USER_FILE = '''
import torch
from torch import Tensor
import gatedrnn

lstm = gatedrnn.LSTM(10, 20, num_layers=2, batch_first=True, peephole=True)
out, (h_n, c_n) = lstm(torch.randn(3, 7, 10))
reveal_type(lstm(torch.randn(3, 7, 10)))
reveal_type(gatedrnn.GRU(10, 20)(torch.randn(7, 3, 10)))
reveal_type(gatedrnn.RNN(10, 20)(torch.randn(7, 3, 10)))
reveal_type(gatedrnn.LSTMCell(10, 20)(torch.randn(3, 10)))
reveal_type(gatedrnn.GRUCell(10, 20)(torch.randn(3, 10)))
reveal_type(gatedrnn.LSTM.from_torch(torch.nn.LSTM(10, 20)))
reveal_type(gatedrnn.engines())
with gatedrnn.inspect.record(lstm) as rec:
    lstm(torch.randn(3, 7, 10))
reveal_type(rec.trace(layer=0)["f"])
'''

REVEALED = [
    "tuple[torch._tensor.Tensor, tuple[torch._tensor.Tensor, torch._tensor.Tensor]]",
    "tuple[torch._tensor.Tensor, torch._tensor.Tensor]",
    "tuple[torch._tensor.Tensor, torch._tensor.Tensor]",
    "tuple[torch._tensor.Tensor, torch._tensor.Tensor]",
    "torch._tensor.Tensor",
    "gatedrnn.layers.LSTM",
    "list[gatedrnn.engine.EngineInfo]",
    "torch._tensor.Tensor",
]


def test_mypy_strict_sees_concrete_types_through_the_public_api(tmp_path: Path) -> None:
    assert (Path(gatedrnn.__file__).parent / "py.typed").is_file()
    pytest.importorskip("mypy")
    user = tmp_path / "user.py"
    user.write_text(USER_FILE)
    # follow-imports=silent: gatedrnn's and torch's own modules are read for their types, not checked themselves.
    run = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", "--no-incremental",
                          "--cache-dir", str(tmp_path / "cache"), str(user)], capture_output=True, text=True,
                         cwd=tmp_path)
    revealed = [line.split('Revealed type is "', 1)[1].rstrip('"') for line in run.stdout.splitlines()
                if "Revealed type is" in line]
    assert revealed == REVEALED, run.stdout + run.stderr
    assert "error" not in run.stdout, run.stdout


def test_sdist_ships_what_its_tests_and_docs_need(tmp_path: Path) -> None:
    """The sdist, built here with setuptools' own backend (no network), holds the tests with their helpers, the
    examples, the docs and the licence."""
    code = ("import sys, setuptools.build_meta as b; "
            "print(b.build_sdist(sys.argv[1]))")
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    name = run.stdout.strip().splitlines()[-1]
    with tarfile.open(tmp_path / name) as sdist:
        files = {Path(*Path(m).parts[1:]).as_posix() for m in sdist.getnames()}
    for needed in ("LICENSE", "CHANGELOG.md", "Makefile", "mkdocs.yml", "tests/conftest.py", "tests/numerics.py",
                   "tests/charlm_runs.py", "tests/test_packaging.py", "examples/replace_torch_lstm.py",
                   "docs/index.md", "scripts/perf_page.py", "src/gatedrnn/py.typed",
                   "src/gatedrnn/engine/cpu/csrc/common.h"):
        assert needed in files, needed
    assert not [f for f in files if "__pycache__" in f or f.startswith("site/")]
