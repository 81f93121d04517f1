"""The shared training machinery: seeding, placement, checkpoints, trainer state, budget, progress, interrupts."""

from __future__ import annotations

import gc
import os
import random
import signal
import weakref

import numpy as np
import pytest
import torch
from torch import nn

from gatedrnn import training
from gatedrnn.training import Budget, CheckpointError


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Dropout(0.3), nn.Linear(5, 2))


def _train(model: nn.Module, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler,
           steps: int) -> None:
    for _ in range(steps):
        # Every global generator is drawn from (torch also by the dropout masks), so each must be restored.
        x = torch.randn(4, 3) * (1 + random.random()) + float(np.random.rand())
        loss = model(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def _setup(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    model = _model(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=20)
    return model, opt, sched


def test_seed_everything_and_fold_seed() -> None:
    training.seed_everything(3)
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    training.seed_everything(3)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a
    assert training.fold_seed(1, 2, 3) == training.fold_seed(1, 2, 3)
    assert len({training.fold_seed(1, 0, s) for s in range(100)} | {training.fold_seed(2, 0, 0)}) == 101
    assert 0 <= training.fold_seed(0) < 2**63
    with pytest.raises(ValueError, match=r"seed: expected an int in \[0, 2\*\*63\), got -1"):
        training.seed_everything(-1)


def test_resolve_device_and_dtype() -> None:
    assert training.resolve_device("cpu") == torch.device("cpu")
    assert training.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert training.resolve_dtype("float64") is torch.float64
    with pytest.raises(ValueError, match="dtype: expected one of float32, float64, bfloat16, float16, got 'int8'"):
        training.resolve_dtype("int8")
    with pytest.raises(ValueError, match="device: expected 'auto', 'cpu'"):
        training.resolve_device("toaster")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device: 'cuda' requested but CUDA is not available"):
            training.resolve_device("cuda")


def test_atomic_write_leaves_no_temporary_and_keeps_old_file_on_failure(tmp_path, monkeypatch) -> None:
    path = tmp_path / "sub" / "a.json"
    training.write_json(path, {"x": 1})
    assert training.read_json(path) == {"x": 1}

    def fail(fd: int) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="disk on fire"):
        training.write_json(path, {"x": 2})
    assert training.read_json(path) == {"x": 1}
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.json"]


def test_weights_round_trip_and_every_mismatch_is_named(tmp_path) -> None:
    model = _model(0)
    training.save_weights(tmp_path / "model.safetensors", model, {"note": "hi"})
    other = _model(1)
    assert training.load_weights(tmp_path / "model.safetensors", other) == {"note": "hi"}
    for a, b in zip(model.parameters(), other.parameters()):
        assert torch.equal(a, b)
    wider = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Dropout(0.3), nn.Linear(6, 2))
    with pytest.raises(CheckpointError, match=r"0.weight has shape \(5, 3\), the model expects \(6, 3\)"):
        training.load_weights(tmp_path / "model.safetensors", wider)
    with pytest.raises(CheckpointError, match=r"the weights do not fit this model \(missing 2.bias, 2.weight\)"):
        training.load_weights(tmp_path / "model.safetensors", nn.Sequential(nn.Linear(3, 5), nn.Tanh(),
                                                                            nn.Linear(5, 2), nn.Linear(2, 2)))
    with pytest.raises(CheckpointError, match="is torch.float32, the model expects torch.float64"):
        training.load_weights(tmp_path / "model.safetensors", _model(0).double())
    with pytest.raises(CheckpointError, match="missing"):
        training.load_weights(tmp_path / "nothing.safetensors", model)
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(CheckpointError, match="corrupt safetensors file"):
        training.load_weights(tmp_path / "bad.safetensors", model)
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 7])
    with pytest.raises(CheckpointError, match="corrupt safetensors file"):
        training.load_weights(tmp_path / "cut.safetensors", model)


def test_check_config_names_every_difference() -> None:
    training.check_config({"a": 1, "b": "x", "c": 2}, {"a": 1, "b": "x"}, "resume")
    with pytest.raises(CheckpointError, match=r"resume: .*different configuration: a=1 \(asked 2\), d='<absent>'"):
        training.check_config({"a": 1}, {"a": 2, "d": 3}, "resume")


def test_flatten_state_round_trip() -> None:
    state = {"a": (1, 2.5, None), "b": [torch.arange(3), {"c": "s"}], 0: {"t": torch.ones(2)}, "np": np.arange(4)}
    tree, tensors = training.flatten_state(state)
    back = training.unflatten_state(tree, tensors)
    assert back["a"] == (1, 2.5, None) and back["b"][1] == {"c": "s"}
    assert torch.equal(back["b"][0], torch.arange(3)) and torch.equal(back[0]["t"], torch.ones(2))
    assert torch.equal(back["np"], torch.arange(4))
    with pytest.raises(TypeError, match="x.y: cannot store a set in a checkpoint"):
        training.flatten_state({"x": {"y": {1, 2}}})


def test_trainer_state_resumes_bit_identically(tmp_path) -> None:
    training.seed_everything(0)
    model, opt, sched = _setup()
    _train(model, opt, sched, 12)
    straight = [p.detach().clone() for p in model.parameters()]

    training.seed_everything(0)
    model, opt, sched = _setup()
    _train(model, opt, sched, 5)
    extra = {"position": 17, "hidden": torch.linspace(-1, 1, 6).view(2, 3), "best": 1.5}
    training.save_trainer_state(tmp_path / "t.safetensors", model=model, optimizer=opt, scheduler=sched, step=5,
                                elapsed=3.25, extra=extra)
    torch.manual_seed(999)  # the RNG state must come back from the file, not from here
    model, opt, sched = _setup(seed=7)
    state = training.load_trainer_state(tmp_path / "t.safetensors", model=model, optimizer=opt, scheduler=sched)
    assert (state.step, state.elapsed, state.extra["position"], state.extra["best"]) == (5, 3.25, 17, 1.5)
    assert torch.equal(state.extra["hidden"], extra["hidden"])
    assert sched.last_epoch == 5
    _train(model, opt, sched, 7)
    for a, b in zip(straight, model.parameters()):
        assert torch.equal(a, b)


def test_trainer_state_errors(tmp_path) -> None:
    model, opt, sched = _setup()
    training.save_weights(tmp_path / "w.safetensors", model)
    with pytest.raises(CheckpointError, match="not a gatedrnn trainer state"):
        training.load_trainer_state(tmp_path / "w.safetensors", model=model, optimizer=opt)
    training.save_trainer_state(tmp_path / "t.safetensors", model=model, optimizer=opt, step=0)
    with pytest.raises(CheckpointError, match="saved without a learning-rate scheduler"):
        training.load_trainer_state(tmp_path / "t.safetensors", model=model, optimizer=opt, scheduler=sched)
    sgd = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1)
    with pytest.raises(CheckpointError, match="optimizer state does not fit"):
        training.load_trainer_state(tmp_path / "t.safetensors", model=model, optimizer=sgd)


def test_budget_by_steps_and_minutes() -> None:
    b = Budget(steps=10)
    assert not b.done(9) and b.done(10) and b.fraction(5) == 0.5
    t = Budget(minutes=1, elapsed=30.0)
    assert 0.5 <= t.fraction(0) < 0.6 and not t.done(10**9)
    assert Budget(steps=100, minutes=1, elapsed=60.0).done(1)
    for kwargs, message in [({}, "give steps, minutes or both"), ({"steps": 0}, "steps: expected an int >= 1"),
                            ({"minutes": -1.0}, "minutes: expected a number > 0")]:
        with pytest.raises(ValueError, match=message):
            Budget(**kwargs)


def test_progress_shows_step_metrics_and_throughput(capsys: pytest.CaptureFixture[str]) -> None:
    bar = training.Progress(Budget(steps=4), unit="char")
    bar.update(1, 100, loss=2.5, val="-")
    bar.write("a sample line")
    bar.close()
    out, err = capsys.readouterr()
    assert "step=1/4" in err and "loss=2.5000" in err and "char/s=" in err and "a sample line" in out
    resumed = training.Progress(Budget(steps=10), start_step=5)
    resumed.update(6, 10)
    resumed.close()
    assert " 50%|" in capsys.readouterr().err  # the bar starts where the resumed run stands, not at 0%
    quiet = training.Progress(Budget(steps=4), enabled=False)
    quiet.update(1, 10)
    quiet.write("nothing")
    quiet.close()
    assert capsys.readouterr() == ("", "")


def test_graceful_interrupt_sets_flag_then_raises() -> None:
    before = signal.getsignal(signal.SIGINT)
    with training.GracefulInterrupt() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


def test_single_process_distributed_helpers_are_identities() -> None:
    info = training.setup_distributed("cpu")
    assert (info.rank, info.world_size, info.is_main, info.distributed) == (0, 1, True, False)
    model = nn.Linear(2, 2)
    assert training.wrap_ddp(model, info) is model
    x = torch.arange(3.0)
    assert training.all_reduce_mean(x, info) is x and training.all_gather(x, info) is x
    assert training.all_reduce_max(x, info) is x
    training.teardown_distributed(info)


def test_collectives_keep_their_tensors_referenced_from_python(monkeypatch: pytest.MonkeyPatch) -> None:
    # Gloo's worker thread may drop its reference to a collective's tensors after the caller has dropped its own;
    # the helpers keep them, so that the worker never frees a Python tensor (at shutdown that aborts the process).
    handed: list[weakref.ref[torch.Tensor]] = []

    def all_reduce(tensor: torch.Tensor, op: object) -> None:
        handed.append(weakref.ref(tensor))
        tensor.mul_(2)  # the SUM of two equal ranks; for MAX it shows that the helper returns the reduced copy

    def all_gather(parts: list[torch.Tensor], tensor: torch.Tensor) -> None:
        handed.extend(weakref.ref(t) for t in (tensor, *parts))
        for part in parts:
            part.copy_(tensor)

    monkeypatch.setattr(training.dist, "all_reduce", all_reduce)
    monkeypatch.setattr(training.dist, "all_gather", all_gather)
    info = training.DistInfo(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"))
    x = torch.tensor([1.0, -2.0])
    torch.testing.assert_close(training.all_reduce_mean(x, info), x)
    torch.testing.assert_close(training.all_reduce_max(x, info), 2 * x)
    torch.testing.assert_close(training.all_gather(x, info), torch.cat([x, x]))
    gc.collect()
    assert len(handed) == 5 and all(ref() is not None for ref in handed)
    for _ in range(training.KEPT_TENSORS):  # later collectives release the earlier ones: no growth
        training.all_reduce_mean(x, info)
    gc.collect()
    assert all(ref() is None for ref in handed[:5]) and all(ref() is not None for ref in handed[5:])
