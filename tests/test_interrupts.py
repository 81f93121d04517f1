"""Interrupt drills and run directories: a run directory is a complete run or nothing.

- The first Ctrl-C or SIGTERM saves the state an uninterrupted run has at that step (no extra evaluation: it would
  count toward ``--patience`` and could replace ``best.safetensors``), so the resumed run ends bit-identical to an
  uninterrupted one with early stopping on; the command exits 130 (SIGINT) or 143 (SIGTERM).
- A second signal stops at once: one line, no traceback, the same exit status, the last checkpoint intact.
- A directory whose run stopped before its first checkpoint starts over (saying so), with ``--out`` or
  ``--resume``; stale temporary files are removed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gatedrnn import training
from gatedrnn.cli import main
from gatedrnn.tasks import charlm

MACBETH = Path(charlm.__file__).parent.parent / "data" / "macbeth.txt"
# A learning rate this high makes the validation loss worse after a few evaluations: early stopping ends the run.
EARLY = ["--hidden", "8", "--embed", "4", "--seq-len", "8", "--batch", "2", "--warmup", "0", "--quiet",
         "--device", "cpu", "--eval-every", "3", "--patience", "2", "--lr", "0.3", "--clip", "100",
         "--schedule", "constant", "--steps", "300"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("text") / "play.txt"
    path.write_text(MACBETH.read_text()[:3000])
    return path


@pytest.fixture(scope="module")
def straight(text: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The uninterrupted run, and what it printed at the end."""
    out = tmp_path_factory.mktemp("straight") / "run"
    return out, _train(["--text", str(text), *EARLY, "--out", str(out)], 0)


def _train(argv: list[str], status: int) -> str:
    from contextlib import redirect_stdout
    from io import StringIO

    printed = StringIO()
    with redirect_stdout(printed):
        assert main(["charlm", "train", *argv]) == status
    return printed.getvalue()


def _signal_at(monkeypatch: pytest.MonkeyPatch, step: int, *signals: signal.Signals) -> None:
    """Send ``signals`` to this process while step ``step`` is under way (as a user at a terminal would)."""
    schedule = charlm.learning_rate
    pending = list(signals)

    def learning_rate(config: charlm.CharLMConfig, at: int, fraction: float) -> float:
        while at == step and pending:  # (asked once per parameter group: send only once)
            signal.raise_signal(pending.pop(0))
        return schedule(config, at, fraction)

    monkeypatch.setattr(charlm, "learning_rate", learning_rate)


def _same_weights(a: Path, b: Path) -> None:
    """Bit-identical tensors and the same metadata (the step and validation loss of the weights); the header's
    byte order may differ: safetensors writes the metadata in no fixed order."""
    x, y = training._read_safetensors(a), training._read_safetensors(b)
    assert x[1] == y[1], a.name
    assert x[0].keys() == y[0].keys()
    for key in x[0]:
        assert torch.equal(x[0][key], y[0][key]), (a.name, key)


def _same_run(a: Path, b: Path) -> None:
    for name in ("model.safetensors", "best.safetensors"):
        _same_weights(a / name, b / name)
    history = [json.loads((d / "history.json").read_text()) for d in (a, b)]
    for entry in history[0] + history[1]:
        entry.pop("elapsed")  # wall-clock time
    assert history[0] == history[1]


def _summary(printed: str) -> str:
    """The final line without its timings."""
    line = printed.strip().splitlines()[-1]
    return line.split(" (")[0] + ": " + line.split("): ")[1].split("; checkpoints")[0]


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_interrupt_then_resume_ends_bit_identical_with_early_stopping(
        text: Path, straight: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        sig: signal.Signals, status: int) -> None:
    reference, printed = straight
    assert "early stopping after step" in printed
    stopped_at = int(printed.split("early stopping after step ")[1].split()[0])
    assert stopped_at < 300 and stopped_at > 8, "the reference run must stop early, after the interrupt step"
    out = tmp_path / "run"
    _signal_at(monkeypatch, 7, sig)  # between the evaluations of steps 6 and 9
    interrupted = _train(["--text", str(text), *EARLY, "--out", str(out)], status)
    assert "interrupted after step 8" in interrupted
    assert json.loads(training._read_safetensors(out / training.TRAINER_STATE)[1]["state"])["step"] == 8
    assert [h["step"] for h in json.loads((out / "history.json").read_text())] == [3, 6]  # no evaluation at 8
    monkeypatch.undo()
    resumed = _train(["--resume", str(out), "--quiet"], 0)
    assert _summary(resumed) == _summary(printed)
    _same_run(reference, out)


def test_the_interrupt_state_is_the_uninterrupted_state(text: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # Stopped by --steps 8 the run evaluates at step 8; interrupted at step 8 it must not: the patience counter
    # and best weights stay those of step 6.
    _signal_at(monkeypatch, 7, signal.SIGINT)
    _train(["--text", str(text), *EARLY, "--out", str(tmp_path / "a")], 130)
    monkeypatch.undo()
    _train(["--text", str(text), *EARLY[:-1], "6", "--out", str(tmp_path / "b")], 0)
    a = json.loads(training._read_safetensors(tmp_path / "a" / training.TRAINER_STATE)[1]["state"])["extra"]
    b = json.loads(training._read_safetensors(tmp_path / "b" / training.TRAINER_STATE)[1]["state"])["extra"]
    assert (a["best_val"], a["best_step"], a["stale"]) == (b["best_val"], b["best_step"], b["stale"])
    assert [h["step"] for h in a["history"]] == [h["step"] for h in b["history"]] == [3, 6]
    _same_weights(tmp_path / "a" / "best.safetensors", tmp_path / "b" / "best.safetensors")


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_second_signal_stops_at_once_without_a_traceback(text: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str], sig: signal.Signals,
                                                           status: int) -> None:
    out = tmp_path / "run"
    _signal_at(monkeypatch, 7, sig, sig)
    assert main(["charlm", "train", "--text", str(text), *EARLY, "--out", str(out)]) == status
    err = capsys.readouterr().err
    assert err == f"gatedrnn: interrupted ({sig.name}); stopped at once\n"
    # The last checkpoint (step 6) is whole, and resuming from it ends as the uninterrupted run.
    assert json.loads(training._read_safetensors(out / training.TRAINER_STATE)[1]["state"])["step"] == 6
    assert not list(out.glob(".*.tmp"))
    monkeypatch.undo()
    _train(["--resume", str(out), "--quiet"], 0)


def test_sigterm_twice_to_a_real_process_exits_143_without_a_traceback(text: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [sys.executable, "-m", "gatedrnn", "charlm", "train", "--text", str(text), *EARLY[:-1], "100000",
            "--patience", "0", "--out", str(out)]
    run = subprocess.Popen(args, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (out / "history.json").exists():
        time.sleep(0.05)
    run.send_signal(signal.SIGTERM)
    run.send_signal(signal.SIGTERM)
    stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 143, stderr
    assert "Traceback" not in stderr and "Traceback" not in stdout
    # Whichever came first — the save of the first signal or the stop of the second — the directory resumes.
    step = json.loads(training._read_safetensors(out / training.TRAINER_STATE)[1]["state"])["step"]
    done = subprocess.run([sys.executable, "-m", "gatedrnn", "charlm", "train", "--resume", str(out), "--steps",
                           str(step + 3), "--quiet"], env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------------------------------------- run directories


def _killed_before_first_checkpoint(finished: Path, out: Path, names: tuple[str, ...]) -> None:
    """What a run killed before its first checkpoint leaves: its first files and a half-written temporary."""
    out.mkdir()
    for name in names:
        shutil.copy(finished / name, out / name)
    (out / ".model.safetensors.x1y2.tmp").write_bytes(b"half")


@pytest.mark.parametrize("how", ["--out", "--resume"])
def test_charlm_dir_without_trainer_state_starts_over(text: Path, straight: tuple[Path, str], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str], how: str) -> None:
    out = tmp_path / "run"
    _killed_before_first_checkpoint(straight[0], out, ("config.json", "vocab.json"))
    if how == "--out":
        _train(["--text", str(text), *EARLY, "--out", str(out)], 0)
    else:
        _train(["--resume", str(out), "--quiet"], 0)
    assert "stopped before its first checkpoint left config.json, vocab.json; starting it over" in \
        capsys.readouterr().err
    assert not list(out.glob(".*.tmp"))
    _same_run(straight[0], out)


@pytest.mark.parametrize("how", [[], ["--resume"]], ids=["out", "resume"])
def test_classify_dir_without_trainer_state_starts_over(tmp_path: Path, how: list[str],
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    csv = tmp_path / "reviews.csv"
    rows = [f"word{i % 7} plot {'great' if i % 2 else 'dull'},{'good' if i % 2 else 'bad'}\n" for i in range(60)]
    csv.write_text("review,verdict\n" + "".join(rows))
    command = ["classify", "train", "--csv", str(csv), "--text-column", "review", "--label-column", "verdict",
               "--min-count", "1", "--embedding-size", "4", "--hidden-size", "4", "--batch-size", "16", "--device",
               "cpu", "--steps", "2", "--eval-every", "2"]
    assert main([*command, "--out", str(tmp_path / "done")]) == 0
    out = tmp_path / "run"
    _killed_before_first_checkpoint(tmp_path / "done", out, ("config.json", "vocab.json"))
    capsys.readouterr()
    assert main([*command, "--out", str(out), *how]) == 0
    assert "starting it over" in capsys.readouterr().err
    assert not list(out.glob(".*.tmp"))
    _same_weights(out / "model.safetensors", tmp_path / "done" / "model.safetensors")


def test_a_diverged_run_can_be_started_again(text: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["charlm", "train", "--text", str(text), *EARLY, "--lr", "1e30", "--out", str(out)]) == 2
    assert "the training loss became" in capsys.readouterr().err
    assert not (out / training.TRAINER_STATE).exists()
    _train(["--text", str(text), *EARLY, "--out", str(out)], 0)
    assert "starting it over" in capsys.readouterr().err
    assert (out / training.TRAINER_STATE).is_file()
