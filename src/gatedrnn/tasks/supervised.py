"""The training loop that classification and forecasting share: minibatches of (input, target) pairs, early
stopping on a validation score, resumable checkpoints, DDP under ``torchrun``.

A checkpoint directory (``--out``) holds:

- ``config.json`` — the task's configuration (data, model, training options, fitted label names or scaling);
- ``model.safetensors`` — the weights with the best validation score so far (what ``eval``/``predict`` load);
- ``trainer_state.safetensors`` — the latest weights, optimizer, random generators, step, elapsed time and the
  data position, so that ``--resume`` continues the same run (the task may add files such as ``vocab.json``).

Batches come from the task as a list of index tensors per epoch, drawn with a generator seeded from
``(seed, epoch)``; the state stores the epoch and the position in it, so a resumed run sees the same batches.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from .. import training
from ..checks import check_fraction, check_positive, check_size
from ..engine import check_name
from ..variants import VARIANTS, variant

CONFIG, WEIGHTS, STATE = "config.json", "model.safetensors", "trainer_state.safetensors"


@dataclass
class Loop:
    """How to train: the step/minute budget, optimizer settings and how often to validate."""

    steps: int | None = 2000
    minutes: float | None = None
    lr: float = 3e-3
    weight_decay: float = 0.0
    eval_every: int = 100
    clip: float = 1.0
    """Largest gradient norm: recurrent nets occasionally produce exploding gradients."""

    def check(self) -> None:
        """Raise ``ValueError`` naming the first option with a bad value."""
        if self.steps is None and self.minutes is None:
            raise ValueError("--steps: give --steps, --minutes or both")
        for name in ("steps", "eval_every"):
            if getattr(self, name) is not None:
                check_int(f"--{name.replace('_', '-')}", getattr(self, name))
        if self.minutes is not None:
            check_positive("--minutes", self.minutes)
        check_positive("--lr", self.lr)
        check_positive("--weight-decay", self.weight_decay, zero=True)
        check_positive("clip", self.clip)


@dataclass
class Result:
    step: int
    best_score: float
    best_step: int
    elapsed: float
    signal: int | None = None
    """The signal that interrupted the run (see :func:`training.exit_status`)."""


def check_int(name: str, value: object) -> int:
    """An int ``>= 1`` (a ``ValueError`` also for a value of another type, as from an edited ``config.json``)."""
    try:
        return check_size(name, value)
    except TypeError as error:
        raise ValueError(str(error)) from None


def check_model(config: Any) -> None:
    """The options every supervised task's configuration shares (``config.json`` holds them too)."""
    variant(config.cell)
    for name in ("layers", "hidden_size", "batch_size"):
        check_int(f"--{name.replace('_', '-')}", getattr(config, name))
    check_fraction("--dropout", config.dropout)
    training.check_seed("--seed", config.seed)
    if not isinstance(config.engine, str):
        raise ValueError(f"--engine: expected a name, got {config.engine!r}")
    check_name(config.engine)


RUN_FILES = (CONFIG, WEIGHTS, "vocab.json")
"""What a run writes besides its trainer state (cleared when a run that never saved one starts over)."""


def check_resume(out: Path, wanted: Mapping[str, Any]) -> dict[str, Any]:
    """The saved configuration of the run in ``out``, after checking that ``wanted`` (the options given now,
    without what training fits to the data) asks for the same."""
    saved = training.read_json(out / CONFIG)
    if not isinstance(saved, dict):
        raise training.CheckpointError(f"{out / CONFIG}: not a run configuration")
    training.check_config(saved, wanted, f"--resume {out}")
    return saved


def fit(
    model: nn.Module,
    *,
    out: Path,
    loop: Loop,
    seed: int,
    resume: bool,
    epoch_batches: Callable[[torch.Generator], list[Tensor]],
    loss_of: Callable[[nn.Module, Tensor], tuple[Tensor, int]],
    validate: Callable[[nn.Module], tuple[float, str]],
    dist: training.DistInfo,
    unit: str,
) -> Result:
    """Train ``model`` until the budget is spent or Ctrl-C, keeping the weights with the best validation score.

    ``loss_of(model, batch)`` returns the mean loss and the number of ``unit`` (e.g. sequences) in the batch;
    ``validate(model)`` returns a score (higher is better) and a one-line report of it.
    """
    ddp_model = training.wrap_ddp(model, dist)
    optimizer = torch.optim.AdamW(model.parameters(), lr=loop.lr, weight_decay=loop.weight_decay)
    step, epoch, position, elapsed = 0, 0, 0, 0.0
    best_score, best_step = float("-inf"), 0
    if resume:
        training.remove_stale_temporaries(out)
        state = training.load_trainer_state(out / STATE, model=model, optimizer=optimizer,
                                            extra_keys=("epoch", "position", "best_score", "best_step"))
        step, elapsed = state.step, state.elapsed
        epoch, position = state.extra["epoch"], state.extra["position"]
        best_score, best_step = state.extra["best_score"], state.extra["best_step"]
    budget = training.Budget(loop.steps, loop.minutes, elapsed=elapsed)
    progress = training.Progress(budget, unit=unit, enabled=dist.is_main)
    if budget.done(step):
        progress.write(f"the budget is already spent at step {step}; nothing to train")

    def shard() -> list[Tensor]:
        """This rank's batches of the current epoch (every rank the same number)."""
        generator = torch.Generator().manual_seed(training.fold_seed(seed, epoch))
        batches = epoch_batches(generator)
        usable = len(batches) - len(batches) % dist.world_size
        return batches[dist.rank : usable : dist.world_size]

    def save() -> None:
        if dist.is_main:
            training.save_trainer_state(
                out / STATE, model=model, optimizer=optimizer, step=step, elapsed=budget.elapsed(),
                extra={"epoch": epoch, "position": position, "best_score": best_score, "best_step": best_step})

    def checkpoint() -> None:
        """Validate; keep the weights if they are the best so far; save the trainer state."""
        nonlocal best_score, best_step
        model.eval()
        score, report = validate(model)
        if score > best_score:
            best_score, best_step = score, step
            if dist.is_main:
                training.save_weights(out / WEIGHTS, model)
        progress.write(f"step {step}: {report} (best at step {best_step})")
        save()

    interrupted = False

    def finished() -> bool:
        """Whether to stop; in a distributed run every rank stops at the same step (a budget in minutes or a
        Ctrl-C may come to one rank first), or the others would wait for it forever."""
        nonlocal interrupted
        flags = torch.tensor([float(budget.done(step)), float(interrupt.requested)], device=dist.device)
        done, interrupted = (v > 0 for v in training.all_reduce_max(flags, dist).tolist())
        return done or interrupted

    batches = shard()
    last_saved = step if resume else -1
    with training.GracefulInterrupt() as interrupt:
        budget.start()
        while not finished():
            if position >= len(batches):
                epoch, position = epoch + 1, 0
                batches = shard()
            batch = batches[position]
            position += 1
            ddp_model.train()
            loss, units = loss_of(ddp_model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), loop.clip)
            optimizer.step()
            step += 1
            progress.update(step, units * dist.world_size, loss=float(training.all_reduce_mean(loss.detach(), dist)))
            if step % loop.eval_every == 0:
                checkpoint()
                last_saved = step
        if last_saved != step:
            # An interrupt saves the state an uninterrupted run has at this step: a validation here could
            # replace the best weights, which the uninterrupted run would not.
            if interrupted:
                save()
            else:
                checkpoint()
    if interrupted:
        progress.write(f"interrupted at step {step}; continue with --resume")
    progress.close()
    return Result(step, best_score, best_step, budget.elapsed(), (interrupt.signum or signal.SIGINT)
                  if interrupted else None)


def add_options(p: Any, *, steps: int, eval_every: int, lr: float, batch_size: int) -> None:
    """The options every supervised task's ``train`` takes (argparse), with the task's defaults."""
    p.add_argument("--out", type=Path, required=True, help="checkpoint directory")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--steps", type=int, default=steps, help="optimizer steps to train (total, over resumes)")
    p.add_argument("--minutes", type=float, default=None, help="stop after this much training time (total)")
    p.add_argument("--eval-every", type=int, default=eval_every, help="validate and save every this many steps")
    p.add_argument("--batch-size", type=int, default=batch_size, help="sequences per batch")
    p.add_argument("--lr", type=float, default=lr, help="AdamW learning rate")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the initial weights and the batches")
    p.add_argument("--cell", default="lstm",
                   help="cell variant: " + ", ".join(VARIANTS))
    p.add_argument("--layers", type=int, default=1, help="stacked recurrent layers")
    p.add_argument("--engine", default="auto", help="recurrence engine (see `gatedrnn engines`)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")


def loop_from(args: Any) -> Loop:
    loop = Loop(args.steps, args.minutes, args.lr, args.weight_decay, args.eval_every)
    loop.check()
    return loop


_Config = TypeVar("_Config")


def load_config(out: Path, config_class: type[_Config], task: str) -> _Config:
    """The ``config_class`` of the run in ``out`` (``CONFIG``), every field there and checked (``check()`` and
    ``check_fitted()``): a ``CheckpointError`` naming the file otherwise. ``task`` names the run's kind in it."""
    path = out / CONFIG
    saved = training.read_json(path)
    known = {f.name for f in fields(config_class)}  # type: ignore[arg-type]
    if not isinstance(saved, dict) or set(saved) - known:
        raise training.CheckpointError(f"{path}: not a {task} configuration")
    if known - set(saved):
        raise training.CheckpointError(f"{path}: missing {', '.join(sorted(known - set(saved)))}")
    try:
        config = config_class(**saved)
        config.check()  # type: ignore[attr-defined]
        config.check_fitted()  # type: ignore[attr-defined]
    except (TypeError, ValueError) as error:
        raise training.CheckpointError(f"{path}: invalid configuration ({error})") from None
    return config
