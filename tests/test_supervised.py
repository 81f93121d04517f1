"""The shared supervised loop: Ctrl-C saves and stops; the best validation weights are the ones kept."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from gatedrnn import training
from gatedrnn.tasks import supervised

X = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
Y = X @ torch.tensor([1.0, -2.0, 0.5])


def _fit(out: Path, steps: int, interrupt_at: int | None = None, resume: bool = False) -> tuple[nn.Module,
                                                                                              supervised.Result]:
    torch.manual_seed(0)
    model = nn.Linear(3, 1)

    def loss_of(m: nn.Module, batch: Tensor) -> tuple[Tensor, int]:
        if loss_of.calls == interrupt_at:  # type: ignore[attr-defined]
            signal.raise_signal(signal.SIGINT)  # as if the user pressed Ctrl-C during this step
        loss_of.calls += 1  # type: ignore[attr-defined]
        return (m(X[batch]).squeeze(1) - Y[batch]).square().mean(), len(batch)

    loss_of.calls = 0  # type: ignore[attr-defined]

    @torch.no_grad()
    def validate(m: nn.Module) -> tuple[float, str]:
        score = -float((m(X).squeeze(1) - Y).square().mean())
        return score, f"score {score:.4f}"

    result = supervised.fit(
        model, out=out, loop=supervised.Loop(steps=steps, lr=0.05, eval_every=4), seed=0, resume=resume,
        epoch_batches=lambda g: list(torch.randperm(64, generator=g).split(8)), loss_of=loss_of, validate=validate,
        dist=training.setup_distributed("cpu"), unit="row")
    return model, result


def test_ctrl_c_saves_and_resume_finishes_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, result = _fit(tmp_path / "a", steps=20, interrupt_at=6)
    assert result.step == 7  # the step under way finishes, then the loop saves and stops
    assert result.signal == signal.SIGINT and training.exit_status(result.signal) == 130
    assert "interrupted at step 7; continue with --resume" in capsys.readouterr().out
    # No validation at the interrupt: the kept weights are those of step 4, as in a run that stops there.
    _fit(tmp_path / "c", steps=4)
    torch.testing.assert_close(training._read_safetensors(tmp_path / "a" / supervised.WEIGHTS)[0],
                               training._read_safetensors(tmp_path / "c" / supervised.WEIGHTS)[0], rtol=0, atol=0)
    model = nn.Linear(3, 1)
    state = training.load_trainer_state(tmp_path / "a" / supervised.STATE, model=model,
                                        optimizer=torch.optim.AdamW(model.parameters()))
    assert state.step == 7 and state.extra["position"] == 7
    resumed, result = _fit(tmp_path / "a", steps=20, resume=True)
    straight, _ = _fit(tmp_path / "b", steps=20)
    assert result.step == 20
    torch.testing.assert_close(resumed.state_dict(), straight.state_dict(), rtol=0, atol=0)


def test_the_best_validation_weights_are_kept(tmp_path: Path) -> None:
    _, result = _fit(tmp_path, steps=12)
    model = nn.Linear(3, 1)
    training.load_weights(tmp_path / supervised.WEIGHTS, model)
    assert result.best_step in (4, 8, 12)
    with torch.no_grad():
        assert -float((model(X).squeeze(1) - Y).square().mean()) == pytest.approx(result.best_score)
