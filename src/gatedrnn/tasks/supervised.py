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

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import training
from ..variants import VARIANTS

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


@dataclass
class Result:
    step: int
    best_score: float
    best_step: int
    elapsed: float


def check_fresh(out: Path, what: str) -> None:
    """A new run must not overwrite a saved one."""
    if (out / STATE).exists():
        raise ValueError(f"out: {out} already holds a {what} run; pass --resume to continue it or choose another --out")


def check_resume(out: Path, wanted: Mapping[str, Any]) -> dict[str, Any]:
    """The saved configuration of the run in ``out``, after checking that ``wanted`` (the options given now,
    without what training fits to the data) asks for the same."""
    saved = training.read_json(out / CONFIG)
    training.check_config(saved, wanted, f"--resume {out}")
    if not (out / STATE).is_file():
        raise training.CheckpointError(f"--resume: {out / STATE} is missing; the run never saved its state")
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
        state = training.load_trainer_state(out / STATE, model=model, optimizer=optimizer)
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
        if dist.is_main:
            training.save_trainer_state(
                out / STATE, model=model, optimizer=optimizer, step=step, elapsed=budget.elapsed(),
                extra={"epoch": epoch, "position": position, "best_score": best_score, "best_step": best_step})

    def finished() -> bool:
        """Whether to stop; in a distributed run every rank stops at the same step (a budget in minutes or a
        Ctrl-C may come to one rank first), or the others would wait for it forever."""
        flag = torch.tensor([float(budget.done(step) or interrupt.requested)], device=dist.device)
        return bool(training.all_reduce_max(flag, dist).item() > 0)

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
            checkpoint()
    if interrupt.requested:
        progress.write(f"interrupted at step {step}; continue with --resume")
    progress.close()
    return Result(step, best_score, best_step, budget.elapsed())


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
    for name in ("steps", "eval_every", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')}: expected an int >= 1, got {value}")
    if args.lr <= 0:
        raise ValueError(f"--lr: expected a number > 0, got {args.lr}")
    return Loop(args.steps, args.minutes, args.lr, args.weight_decay, args.eval_every)
