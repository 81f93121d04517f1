"""The scripts of examples/ run as a user runs them (a fresh process, from the repository root), on tiny sizes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

EXAMPLES = {
    "replace_torch_lstm.py": (["--steps", "3"], ["same outputs", "peephole LSTM", "torch.nn.modules.rnn.LSTM"]),
    "custom_variant.py": (["--steps", "3"], ["coupled=True, layer_norm=True", "same predictions"]),
    "record_gates.py": (["--steps", "3", "--out", "{tmp}/gates.png"], ["encoder_l1: gates ['n', 'r', 'z']",
                                                                         "‖∂L/∂h_t‖", "gates.png"]),
}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_runs(name: str, tmp_path: Path) -> None:
    args, expected = EXAMPLES[name]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    run = subprocess.run([sys.executable, str(ROOT / "examples" / name), *(a.format(tmp=tmp_path) for a in args)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    for text in expected:
        assert text in run.stdout, run.stdout
    if name == "record_gates.py":
        assert (tmp_path / "gates.png").stat().st_size > 0
