"""Long-memory experiments: the classic synthetic tasks that show why gates matter, for every cell variant.

Read top to bottom:

1. **tasks**   — the three generators, each exactly as its paper defines it, with its memoryless baseline computed
   exactly and its "solved" criterion:

   - ``adding`` (Hochreiter & Schmidhuber 1997, in the form of Arjovsky, Shah & Bengio 2016): ``T`` steps, each a
     pair ``(value ~ U[0, 1], marker)``; exactly two markers, one in each half; the target is the sum of the two
     marked values. Predicting 1 whatever the input has ``MSE = Var(u_1 + u_2) = 2/12 = 1/6``. Solved: ``MSE < 0.01``.
   - ``copy`` (Arjovsky et al. 2016): 10 symbols drawn from 8 categories, ``T - 1`` blanks, a delimiter, 10 blanks
     (``T + 20`` steps); the target is ``T + 10`` blanks and then the 10 symbols. The memoryless strategy (blank,
     then uniform over the 8) has cross-entropy ``10 ln 8 / (T + 20)`` per step. Solved: below 10 % of that.
   - ``temporal-order`` (Hochreiter & Schmidhuber 1997, experiment 6a): a sequence of ``T`` to ``1.1 T`` symbols
     that starts with ``B``, ends with ``E`` and is noise (``a b c d``) except for two key symbols ``X``/``Y`` at
     positions in ``[T/10, T/5]`` and ``[T/2, 3T/5]``; the class is their order (``XX, XY, YX, YY``). Chance
     accuracy is 1/4. Solved: test accuracy ≥ 99 %.

2. **model**   — :class:`SequenceModel`: one ``gatedrnn`` layer of the named variant (``variants.py``) and a linear
   read-out, of the last valid step (adding, temporal order) or of every step (copy). Its gate biases start either
   as ``torch.nn`` draws them (``init="torch"``) or with the *chrono* initialisation (``init="chrono"``, Tallec &
   Ollivier 2018, the default) that opens the forget/keep gates to time scales up to the sequence length.
3. **loop**    — :func:`train_one`: one cell and seed; Adam, gradient-norm clipping, a fresh batch every step drawn
   from ``(seed, step)`` alone, a fixed test set, evaluation every ``eval_every`` steps, checkpoints there.
4. **run**     — :func:`run_experiment`: every cell × seed, in parallel worker processes with one thread each, one
   progress bar; Ctrl-C saves and a second call with the same ``out`` resumes.
5. **report**  — per-step ``metrics.csv``, ``results.md`` / ``results.json`` and ``plot.png`` (test metric against
   step, one colour per cell, the baseline drawn).

Output directory::

    out/config.json                    the configuration (a resumed run must match it)
    out/runs/<cell>-seed<s>/           metrics.csv, trainer_state.safetensors, result.json (once finished)
    out/metrics.csv                    every run's per-step rows, with cell and seed columns
    out/results.md, out/results.json   the results table
    out/plot.png                       test metric vs step
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import multiprocessing
import os
import platform
import queue
import signal
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import training
from ..engine import check_name, resolve
from ..variants import VARIANTS, variant
from ..viz import INSTALL_VIZ, has_matplotlib

# ----------------------------------------------------------------------------------------------------------------
# 1. Tasks


@dataclass
class Batch:
    """Inputs and targets of one batch, time-major.

    ``x`` is ``(T, B, I)``; ``y`` is ``(B,)`` (adding: float sums; temporal order: class ids) or ``(T, B)``
    (copy: a category per step); ``lengths`` ``(B,)`` is given when sequences differ in length (temporal order).
    """

    x: Tensor
    y: Tensor
    lengths: Tensor | None = None


def adding_batch(batch: int, length: int, generator: torch.Generator) -> Batch:
    """The adding problem: ``x[t] = (u_t, m_t)``, ``u_t ~ U[0, 1]``, ``m_t = 1`` at exactly two steps, one drawn
    uniformly from each half (``[0, T/2)`` and ``[T/2, T)``); ``y = Σ_t u_t m_t``.
    """
    values = torch.rand(length, batch, generator=generator)  # (T, B)
    half = length // 2
    first = torch.randint(0, half, (batch,), generator=generator)
    second = torch.randint(half, length, (batch,), generator=generator)
    markers = torch.zeros(length, batch)
    columns = torch.arange(batch)
    markers[first, columns] = 1.0
    markers[second, columns] = 1.0
    return Batch(torch.stack([values, markers], dim=-1), (values * markers).sum(0))  # (T, B, 2), (B,)


COPY_SYMBOLS = 10
"""Symbols to remember in the copy task (Arjovsky et al. 2016)."""
COPY_CATEGORIES = 8
"""Categories they are drawn from: ids ``0..7``; ``8`` is the blank, ``9`` the delimiter (10 categories in all)."""
BLANK, DELIMITER = COPY_CATEGORIES, COPY_CATEGORIES + 1


def copy_batch(batch: int, length: int, generator: torch.Generator) -> Batch:
    """The copy task with ``T = length``: ``T + 20`` steps, one-hot over 10 categories.

    Input: 10 symbols from ``0..7``, ``T - 1`` blanks, the delimiter, 10 blanks.
    Target: ``T + 10`` blanks, then the 10 symbols in order.
    """
    steps = length + 2 * COPY_SYMBOLS
    symbols = torch.randint(0, COPY_CATEGORIES, (COPY_SYMBOLS, batch), generator=generator)  # (10, B)
    inputs = torch.full((steps, batch), BLANK, dtype=torch.long)
    inputs[:COPY_SYMBOLS] = symbols
    inputs[COPY_SYMBOLS + length - 1] = DELIMITER
    targets = torch.full((steps, batch), BLANK, dtype=torch.long)
    targets[-COPY_SYMBOLS:] = symbols
    return Batch(F.one_hot(inputs, COPY_CATEGORIES + 2).float(), targets)  # (T+20, B, 10), (T+20, B)


ORDER_SYMBOLS = ("E", "B", "a", "b", "c", "d", "X", "Y")
"""The 8 input symbols of experiment 6a (one-hot, in this order)."""
ORDER_CLASSES = ("XX", "XY", "YX", "YY")
"""Class ``k`` is the order of the two key symbols (the paper's Q, R, S, U)."""


def temporal_order_batch(batch: int, length: int, generator: torch.Generator) -> Batch:
    """Temporal order, experiment 6a of Hochreiter & Schmidhuber (1997), with ``length = 100`` as in the paper.

    Each sequence has ``L ~ U{T, …, T + T//10}`` symbols (100–110): ``B`` first, ``E`` last, a key ``X`` or ``Y``
    at 1-based positions ``t1 ~ U{T//10, …, T//5}`` (10–20) and ``t2 ~ U{T//2, …, 6T//10}`` (50–60), and a noise
    symbol from ``a b c d`` everywhere else. Padded to ``T + T//10`` steps with zero vectors; ``lengths`` holds ``L``.
    The class is ``2·[key1 = Y] + [key2 = Y]``.
    """
    index = {s: i for i, s in enumerate(ORDER_SYMBOLS)}
    longest = length + length // 10
    lengths = torch.randint(length, longest + 1, (batch,), generator=generator)
    symbols = torch.randint(index["a"], index["d"] + 1, (longest, batch), generator=generator)  # noise, (T', B)
    keys = torch.randint(0, 2, (2, batch), generator=generator)  # 0: X, 1: Y
    t1 = torch.randint(length // 10, length // 5 + 1, (batch,), generator=generator) - 1  # 0-based
    t2 = torch.randint(length // 2, 6 * length // 10 + 1, (batch,), generator=generator) - 1
    columns = torch.arange(batch)
    symbols[0] = index["B"]
    symbols[lengths - 1, columns] = index["E"]
    symbols[t1, columns] = index["X"] + keys[0]
    symbols[t2, columns] = index["X"] + keys[1]
    x = F.one_hot(symbols, len(ORDER_SYMBOLS)).float()  # (T', B, 8)
    x[torch.arange(longest).unsqueeze(1) >= lengths] = 0.0  # padding
    return Batch(x, 2 * keys[0] + keys[1], lengths)


@dataclass(frozen=True)
class Task:
    """What a task is: its generator, its read-out, its loss and metrics, its baseline and when it counts as solved.

    Subclasses fill in the class attributes and the methods; the defaults are those of the recorded runs (the docs'
    Long-memory experiments page), chosen so that each task finishes within its time budget on a 2-core CPU.
    """

    name: ClassVar[str]
    paper: ClassVar[str]
    input_size: ClassVar[int]
    output_size: ClassVar[int]
    every_step: ClassVar[bool] = False
    """Read out every step (copy) or only the last valid one."""
    metric: ClassVar[str]
    """The test metric of the plot and of the solved criterion."""
    lower_is_better: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]]
    """Defaults of :class:`ExperimentConfig` fields for this task."""

    def sample(self, batch: int, length: int, generator: torch.Generator) -> Batch:
        raise NotImplementedError

    def steps(self, length: int) -> int:
        """Time steps of the longest sequence for this ``length``: the longest memory span there is."""
        return length

    def loss(self, out: Tensor, batch: Batch) -> Tensor:
        """The training loss of the model's output ``out``."""
        raise NotImplementedError

    def metrics(self, out: Tensor, batch: Batch) -> dict[str, float]:
        """Test metrics; ``self.metric`` among them."""
        raise NotImplementedError

    def baseline(self, length: int) -> float:
        """The metric of the best strategy that remembers nothing, computed exactly."""
        raise NotImplementedError

    def solved(self, value: float, length: int) -> bool:
        raise NotImplementedError

    def criterion(self, length: int) -> str:
        """The solved criterion in words."""
        raise NotImplementedError


class Adding(Task):
    name = "adding"
    paper = "Hochreiter & Schmidhuber 1997; Arjovsky, Shah & Bengio 2016"
    input_size, output_size = 2, 1
    metric = "mse"
    defaults = {"length": 200, "hidden": 32, "batch": 64, "lr": 1e-2, "steps": 2000, "eval_every": 50}

    def sample(self, batch: int, length: int, generator: torch.Generator) -> Batch:
        return adding_batch(batch, length, generator)

    def loss(self, out: Tensor, batch: Batch) -> Tensor:
        return F.mse_loss(out.squeeze(-1), batch.y)

    def metrics(self, out: Tensor, batch: Batch) -> dict[str, float]:
        return {"mse": self.loss(out, batch).item()}

    def baseline(self, length: int) -> float:
        # Always predicting 1 = E[u_1 + u_2] leaves the variance of the sum: 2 · Var(U[0, 1]) = 2/12.
        return 1.0 / 6.0

    def solved(self, value: float, length: int) -> bool:
        return value < 0.01

    def criterion(self, length: int) -> str:
        return "test MSE < 0.01"


class Copy(Task):
    name = "copy"
    paper = "Arjovsky, Shah & Bengio 2016"
    input_size, output_size = COPY_CATEGORIES + 2, COPY_CATEGORIES + 2
    every_step = True
    metric = "cross_entropy"
    defaults = {"length": 100, "hidden": 64, "batch": 64, "lr": 1e-2, "steps": 600, "eval_every": 50}

    def sample(self, batch: int, length: int, generator: torch.Generator) -> Batch:
        return copy_batch(batch, length, generator)

    def steps(self, length: int) -> int:
        return length + 2 * COPY_SYMBOLS

    def loss(self, out: Tensor, batch: Batch) -> Tensor:
        return F.cross_entropy(out.flatten(0, 1), batch.y.flatten())  # mean over steps and sequences

    def metrics(self, out: Tensor, batch: Batch) -> dict[str, float]:
        recalled = out[-COPY_SYMBOLS:].argmax(-1) == batch.y[-COPY_SYMBOLS:]  # (10, B)
        return {"cross_entropy": self.loss(out, batch).item(),
                "symbol_accuracy": recalled.float().mean().item(),
                "sequence_accuracy": recalled.all(0).float().mean().item()}

    def baseline(self, length: int) -> float:
        # Certain blanks for T + 10 steps cost nothing; each of the 10 symbols costs ln 8 when guessed uniformly.
        return COPY_SYMBOLS * math.log(COPY_CATEGORIES) / (length + 2 * COPY_SYMBOLS)

    def solved(self, value: float, length: int) -> bool:
        return value < 0.1 * self.baseline(length)

    def criterion(self, length: int) -> str:
        return f"test cross-entropy < 10% of the baseline ({0.1 * self.baseline(length):.4f})"


class TemporalOrder(Task):
    name = "temporal-order"
    paper = "Hochreiter & Schmidhuber 1997, experiment 6a"
    input_size, output_size = len(ORDER_SYMBOLS), len(ORDER_CLASSES)
    metric = "accuracy"
    lower_is_better = False
    defaults = {"length": 100, "hidden": 32, "batch": 64, "lr": 1e-2, "steps": 1000, "eval_every": 50}

    def sample(self, batch: int, length: int, generator: torch.Generator) -> Batch:
        return temporal_order_batch(batch, length, generator)

    def steps(self, length: int) -> int:
        return length + length // 10

    def loss(self, out: Tensor, batch: Batch) -> Tensor:
        return F.cross_entropy(out, batch.y)

    def metrics(self, out: Tensor, batch: Batch) -> dict[str, float]:
        return {"accuracy": (out.argmax(-1) == batch.y).float().mean().item(),
                "cross_entropy": self.loss(out, batch).item()}

    def baseline(self, length: int) -> float:
        return 1.0 / len(ORDER_CLASSES)  # the four classes are equally likely

    def solved(self, value: float, length: int) -> bool:
        return value >= 0.99

    def criterion(self, length: int) -> str:
        return "test accuracy >= 99%"


TASKS: dict[str, Task] = {t.name: t for t in (Adding(), Copy(), TemporalOrder())}


def task(name: str) -> Task:
    """The task called ``name``, or a ``ValueError`` listing the names there are."""
    if name not in TASKS:
        raise ValueError(f"task: unknown task {name!r}; expected one of: {', '.join(TASKS)}")
    return TASKS[name]


# ----------------------------------------------------------------------------------------------------------------
# 2. Model


INITS = ("chrono", "torch")
"""Gate-bias initialisations: ``chrono`` (Tallec & Ollivier 2018) or ``torch`` (``torch.nn``'s uniform draw)."""


def chrono_init_(layer: nn.Module, t_max: int) -> None:
    """Chrono initialisation (Tallec & Ollivier 2018, "Can recurrent neural networks warp time?").

    A gate that keeps the old state with probability ``σ(b)`` keeps information for about ``1 + e^b`` steps, so
    biases ``b ~ log U[1, t_max - 1]`` spread the initial time scales up to ``t_max``:

    - LSTM: ``b_f = log U[1, t_max - 1]``, ``b_i = -b_f`` (coupled, ``f = 1 - i``: ``b_i = -log U[1, t_max - 1]``);
    - GRU: the keep gate ``z`` (``h = (1 - z) * n + z * h``): ``b_z = log U[1, t_max - 1]``;
    - minGRU: its ``z`` is the share of the candidate (``h = (1 - z) * h + z * h̃``): ``b_z = -log U[1, t_max - 1]``;
      minLSTM as LSTM (``f' = f / (f + i)`` keeps with ``σ(log f - log i)``);
    - RNN: it has no gate, so nothing changes — which is the point of the comparison.

    The values go into ``bias_ih``; the matching rows of ``bias_hh`` (where there is one) are set to 0. Other biases
    and all weights keep ``torch.nn``'s initialisation.
    """
    spec = layer.spec
    if spec.family == "rnn":
        return
    H = spec.hidden_size
    with torch.no_grad():
        for name, bias in layer.named_parameters():
            if not name.startswith("bias_"):
                continue
            rows = {g: slice(k * H, (k + 1) * H) for k, g in enumerate(spec.gate_names)}  # gate -> rows of (G·H,)
            keep = torch.log(torch.empty(H).uniform_(1.0, max(t_max - 1.0, 1.0)))  # (H,)
            ih = name.startswith("bias_ih")
            if spec.family == "gru":
                bias[rows["z"]] = keep if ih else 0.0
            elif spec.family == "mingru":  # its z is the share of the candidate: keep with 1 - z = σ(-b_z)
                bias[rows["z"]] = -keep
            else:
                bias[rows["i"]] = -keep if ih else 0.0
                if "f" in rows:
                    bias[rows["f"]] = keep if ih else 0.0


class SequenceModel(nn.Module):
    """A one-layer ``gatedrnn`` recurrent layer of the named variant and a linear read-out.

    ``forward(x (T, B, I), lengths)`` returns ``(T, B, O)`` when the task reads every step, else ``(B, O)`` from the
    hidden state after each sequence's last valid step. ``init="chrono"`` applies :func:`chrono_init_` with
    ``t_max = steps`` (the task's longest sequence).
    """

    def __init__(self, cell: str, task: Task, hidden: int, engine: str = "auto", init: str = "chrono",
                 steps: int = 1) -> None:
        super().__init__()
        self.every_step = task.every_step
        self.rnn = variant(cell).build(task.input_size, hidden, engine=engine)
        if init == "chrono":
            chrono_init_(self.rnn, steps)
        self.head = nn.Linear(hidden, task.output_size)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        out, state = self.rnn(x, lengths=lengths) if lengths is not None else self.rnn(x)
        if self.every_step:
            return self.head(out)
        h_n = state[0] if isinstance(state, tuple) else state  # (layers, B, H)
        return self.head(h_n[-1])


# ----------------------------------------------------------------------------------------------------------------
# 3. Configuration and the loop of one cell and seed

DEFAULT_CELLS = ("rnn", "lstm", "gru", "lstm-peephole", "lstm-coupled", "lstm-layernorm", "gru-before")
"""The default cell set of ``gatedrnn experiment``: the tanh RNN, LSTM, GRU and their variants."""


@dataclass
class ExperimentConfig:
    """Every option of an experiment. Fields left at ``None`` take the task's default (``Task.defaults``).

    The fields in :attr:`TRAJECTORY_FIELDS` decide what each run computes; a resumed run must match them.
    """

    task: str = "adding"
    cells: tuple[str, ...] = DEFAULT_CELLS
    length: int | None = None
    """``T``: sequence length (adding), blanks to bridge (copy), minimum sequence length (temporal order)."""
    hidden: int | None = None
    batch: int | None = None
    lr: float | None = None
    """Adam's learning rate."""
    clip: float = 1.0
    """Gradient norm clipping."""
    steps: int | None = None
    """Optimizer steps per run (the most; see ``stop_when_solved``)."""
    eval_every: int | None = None
    test_size: int = 1000
    """Sequences of the fixed test set (drawn from the seed, the same for every cell)."""
    seeds: int = 1
    """Runs per cell, with seeds ``seed, seed + 1, …``."""
    seed: int = 0
    stop_when_solved: bool = True
    """End a run at the first evaluation that meets the task's solved criterion."""
    init: str = "chrono"
    """Gate biases: ``chrono`` (Tallec & Ollivier 2018) or ``torch`` (see :func:`chrono_init_`)."""
    workers: int | None = None
    """Parallel runs, each a process with one torch thread; None: one per CPU core (at most the number of runs)."""
    engine: str = "auto"

    TRAJECTORY_FIELDS: ClassVar[tuple[str, ...]] = ("task", "length", "hidden", "batch", "lr", "clip", "steps",
                                                    "eval_every", "test_size", "stop_when_solved", "init")

    def __post_init__(self) -> None:
        spec = task(self.task)
        if isinstance(self.cells, str):
            self.cells = tuple(c for c in self.cells.split(",") if c)
        self.cells = tuple(self.cells)
        for name, value in spec.defaults.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first option with a bad value."""
        if not self.cells:
            raise ValueError("cells: expected at least one cell variant name")
        for name in self.cells:
            variant(name)
        if len(set(self.cells)) != len(self.cells):
            raise ValueError(f"cells: each cell at most once, got {','.join(self.cells)}")
        minimum_length = {"adding": 2, "copy": 1, "temporal-order": 10}[self.task]
        _int("length", self.length, minimum_length)
        for name in ("hidden", "batch", "steps", "eval_every", "test_size", "seeds"):
            _int(name, getattr(self, name), 1)
        training.check_seed("seed", self.seed)
        if self.seed + self.seeds > 2**63:
            raise ValueError(f"seeds: the seeds {self.seed} .. {self.seed + self.seeds - 1} go past 2**63 - 1")
        if self.workers is not None:
            _int("workers", self.workers, 1)
        for name in ("lr", "clip"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"{name}: expected a number > 0, got {value!r}")
        if not isinstance(self.stop_when_solved, bool):
            raise ValueError(f"stop_when_solved: expected True or False, got {self.stop_when_solved!r}")
        if self.init not in INITS:
            raise ValueError(f"init: expected one of {', '.join(INITS)}, got {self.init!r}")
        check_name(self.engine)

    def trajectory(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.TRAJECTORY_FIELDS}


def _int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")


METRICS_HEADER = ("step", "elapsed", "train_loss", "test_loss", "test_metric", "test_extra")
"""Columns of a run's ``metrics.csv``: every step has its training loss; evaluation steps also the test columns
(``test_metric`` is the task's metric, ``test_extra`` the copy task's exact-sequence accuracy)."""


@dataclass
class RunResult:
    """The outcome of one cell and seed."""

    cell: str
    seed: int
    steps: int
    """Optimizer steps taken."""
    final: dict[str, float]
    """Test metrics at the last evaluation."""
    best: float
    """Best test value of the task's metric."""
    solved_at: int | None
    """First step at which the solved criterion held, or None."""
    seconds: float
    """Training time (wall clock), over every resumed session."""
    cpu_seconds: float
    """CPU time of the training process over the same span: unlike the wall clock, it does not grow when other
    programs share the cores (with one thread per run it is the run's single-core time)."""
    finished: bool
    """False when interrupted (the run resumes from its checkpoint)."""
    history: list[dict[str, float]] = field(default_factory=list)
    """``{"step", "metric"}`` at every evaluation (what the plot shows)."""


def test_set(config: ExperimentConfig, seed: int) -> Batch:
    """The fixed test set of a seed: the same sequences for every cell."""
    generator = torch.Generator().manual_seed(training.fold_seed(seed, 2))
    return task(config.task).sample(config.test_size, config.length, generator)


def train_batch(config: ExperimentConfig, seed: int, step: int) -> Batch:
    """The training batch of ``step``: a function of ``(seed, step)`` alone, so a resumed run draws the same."""
    generator = torch.Generator().manual_seed(training.fold_seed(seed, 1, step))
    return task(config.task).sample(config.batch, config.length, generator)


def _evaluate(model: SequenceModel, spec: Task, test: Batch) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        metrics = spec.metrics(model(test.x, test.lengths), test)
    model.train()
    return metrics


def train_one(config: ExperimentConfig, cell: str, seed: int, directory: Path, *,
              report: Callable[[dict[str, Any]], None] = lambda message: None,
              should_stop: Callable[[], bool] = lambda: False) -> RunResult:
    """Train ``cell`` with ``seed`` on the task, in ``directory`` (resuming from its checkpoint if there is one).

    ``report`` receives ``{"cell", "seed", "step", "loss"}`` after each step (the progress bar); ``should_stop``
    is asked after each step, and when it says so the run checkpoints and returns unfinished.
    """
    spec = task(config.task)
    done = directory / "result.json"
    if done.is_file():
        return _read_result(done)
    directory.mkdir(parents=True, exist_ok=True)
    checkpoint = directory / "trainer_state.safetensors"
    csv_path = directory / "metrics.csv"

    # The initial weights depend on the seed alone: every engine and resumption starts from the same ones.
    torch.manual_seed(training.fold_seed(seed, 0))
    model = SequenceModel(cell, spec, config.hidden, config.engine, config.init, spec.steps(config.length))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    test = test_set(config, seed)

    step, elapsed, cpu, history, solved_at = 0, 0.0, 0.0, [], None
    if checkpoint.is_file():
        state = training.load_trainer_state(checkpoint, model=model, optimizer=optimizer,
                                            extra_keys=("cpu", "history", "solved_at"))
        step, elapsed = state.step, state.elapsed
        cpu, history, solved_at = state.extra["cpu"], state.extra["history"], state.extra["solved_at"]
        _truncate_csv(csv_path, step)
    else:
        _write_csv(csv_path, [METRICS_HEADER], mode="w")

    def save() -> None:
        training.save_trainer_state(checkpoint, model=model, optimizer=optimizer, step=step, elapsed=elapsed,
                                    extra={"cpu": cpu, "history": history, "solved_at": solved_at})

    def evaluate() -> tuple[Any, ...]:
        """Test the model, record it in the history, and return the test columns of the CSV row."""
        nonlocal final, solved_at
        final = _evaluate(model, spec, test)
        metric = final[spec.metric]
        history.append({"step": step, "metric": metric, "metrics": final})
        if solved_at is None and spec.solved(metric, config.length):
            solved_at = step
        loss_name = "mse" if spec.metric == "mse" else "cross_entropy"
        return f"{final[loss_name]:.6g}", f"{metric:.6g}", _extra(final)

    final: dict[str, float] = history[-1]["metrics"] if history else {}
    if not history:  # step 0: the untrained model, where every curve of the plot starts
        _write_csv(csv_path, [(0, "0.000", "", *evaluate())])
    start, cpu_start = time.perf_counter() - elapsed, time.process_time() - cpu
    rows: list[tuple[Any, ...]] = []
    stopped = False
    while step < config.steps and not (config.stop_when_solved and solved_at is not None):
        if should_stop():
            stopped = True
            break
        batch = train_batch(config, seed, step)
        loss = spec.loss(model(batch.x, batch.lengths), batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), config.clip)
        optimizer.step()
        step += 1
        value = loss.item()
        if not math.isfinite(value):
            raise ValueError(f"lr: the training loss of {cell} (seed {seed}) became {value} at step {step}; "
                             "lower --lr")
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        row: tuple[Any, ...] = (step, f"{elapsed:.3f}", f"{value:.6g}", "", "", "")
        if step % config.eval_every == 0 or step == config.steps:
            rows.append((*row[:3], *evaluate()))
            _write_csv(csv_path, rows)
            rows = []
            save()
        else:
            rows.append(row)
        report({"cell": cell, "seed": seed, "step": step, "loss": value})
    if rows:
        _write_csv(csv_path, rows)
    if stopped:
        save()
    metric_history = [{"step": h["step"], "metric": h["metric"]} for h in history]
    best_values = [h["metric"] for h in history]
    best = min(best_values) if spec.lower_is_better else max(best_values)
    result = RunResult(cell, seed, step, final, best, solved_at, elapsed, cpu, not stopped, metric_history)
    if not stopped:
        training.write_json(done, dataclasses.asdict(result))
    return result


def _read_result(path: Path) -> RunResult:
    """A finished run's ``result.json`` (a ``CheckpointError`` naming it when it is not one)."""
    saved = training.read_json(path)
    try:
        result = RunResult(**saved)
        if not isinstance(result.steps, int):
            raise TypeError(f"steps is {result.steps!r}")
    except TypeError as error:
        raise training.CheckpointError(f"{path}: not a run result ({error})") from None
    return result


def _extra(metrics: dict[str, float]) -> str:
    value = metrics.get("sequence_accuracy")
    return "" if value is None else f"{value:.6g}"


def _write_csv(path: Path, rows: Sequence[Sequence[Any]], mode: str = "a") -> None:
    with open(path, mode, newline="") as f:
        csv.writer(f).writerows(rows)


def _truncate_csv(path: Path, step: int) -> None:
    """Keep the rows up to the checkpoint's step: the steps after it are trained again on resumption."""
    if not path.is_file():
        _write_csv(path, [METRICS_HEADER], mode="w")
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= step]
    training.atomic_write(path, "".join(",".join(r) + "\n" for r in kept))


# ----------------------------------------------------------------------------------------------------------------
# 4. Every cell and seed, in parallel

# A worker process's link to the main one: a queue for progress and an event that asks the run to stop.
_WORKER: dict[str, Any] = {}


def _init_worker(progress: Any, stop: Any) -> None:
    torch.set_num_threads(1)  # the runs share the cores; one thread each avoids oversubscription
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the main process, which sets ``stop``
    _WORKER.update(progress=progress, stop=stop)


def _worker_job(config: ExperimentConfig, cell: str, seed: int, directory: str) -> RunResult:
    return train_one(config, cell, seed, Path(directory), report=_WORKER["progress"].put,
                     should_stop=_WORKER["stop"].is_set)


@dataclass
class ExperimentResult:
    """What :func:`run_experiment` returns: the runs, their table, and where the files are."""

    config: ExperimentConfig
    runs: list[RunResult]
    seconds: float
    out: Path
    finished: bool
    table: str
    """The results table in markdown."""
    signal: int | None = None
    """The signal that interrupted the runs (see :func:`training.exit_status`)."""


def run_experiment(config: ExperimentConfig, out: str | os.PathLike[str], *, progress: bool = True,
                   log: Any = None) -> ExperimentResult:
    """Train every cell of ``config`` with every seed, write the reports into ``out``, return the results.

    A run interrupted by Ctrl-C (or SIGTERM) checkpoints; calling again with the same ``out`` and configuration
    resumes it. ``out`` may already hold runs of other cells or seeds of the same configuration.
    """
    log = log if log is not None else sys.stdout
    out = training.check_output_dir("--out", out)
    training.check_engine(config.engine)
    config_path = out / "config.json"
    if config_path.is_file():
        saved = training.read_json(config_path)
        if not (isinstance(saved, dict) and isinstance(saved.get("trajectory"), dict)):
            raise training.CheckpointError(f"{config_path}: not an experiment configuration")
        training.check_config(saved["trajectory"], config.trajectory(), str(config_path))
    workers = min(config.seeds * len(config.cells), config.workers or os.cpu_count() or 1)
    training.require_memory(f"experiment: --length {config.length} --hidden {config.hidden} --batch {config.batch} "
                            f"--test-size {config.test_size} ({workers} worker{'s' if workers > 1 else ''})",
                            workers * memory_bytes(config), torch.device("cpu"))
    jobs = [(cell, seed) for cell in config.cells for seed in range(config.seed, config.seed + config.seeds)]
    directories = {job: str(out / "runs" / f"{job[0]}-seed{job[1]}") for job in jobs}
    for directory in directories.values():  # finished runs are read back: a damaged one is found before any write
        if (Path(directory) / "result.json").is_file():
            _read_result(Path(directory) / "result.json")
    out.mkdir(parents=True, exist_ok=True)
    training.remove_stale_temporaries(out)
    wanted = {"config": dataclasses.asdict(config), "trajectory": config.trajectory()}
    if not config_path.is_file() or training.read_json(config_path) != json.loads(json.dumps(wanted)):
        training.write_json(config_path, wanted)

    budget = training.Budget(steps=config.steps * len(jobs))
    bar = training.Progress(budget, unit="seq", enabled=progress, desc=config.task)
    steps_done = {job: _steps_done(Path(directories[job])) for job in jobs}
    losses: dict[tuple[str, int], float] = {}

    def show(message: dict[str, Any]) -> None:
        job = (message["cell"], message["seed"])
        units = (message["step"] - steps_done[job]) * config.batch
        steps_done[job], losses[job] = message["step"], message["loss"]
        summary = " ".join(f"{c}={losses[(c, s)]:.3g}" for c, s in jobs if (c, s) in losses and config.seeds == 1)
        bar.update(sum(steps_done.values()), units, loss=summary or f"{statistics.mean(losses.values()):.3g}")

    start = time.perf_counter()
    with training.GracefulInterrupt() as interrupt:
        if workers <= 1:
            runs = [train_one(config, cell, seed, Path(directories[(cell, seed)]), report=show,
                              should_stop=lambda: interrupt.requested) for cell, seed in jobs]
        else:
            runs = _run_parallel(config, jobs, directories, workers, show, interrupt)
    bar.close()
    seconds = time.perf_counter() - start
    finished = all(r.finished for r in runs)
    table = results_table(config, runs)
    write_reports(config, runs, out, seconds)
    cpu = sum(r.cpu_seconds for r in runs)
    no_plot = "" if has_matplotlib() else f" (no plot.png: matplotlib is not installed; {INSTALL_VIZ})"
    print(f"{config.task}: {'finished' if finished else 'interrupted (run again to resume)'} in {seconds:.0f} s "
          f"wall clock ({workers} worker{'s' if workers > 1 else ''}; {cpu:.0f} CPU seconds of training over all "
          f"runs); reports in {out}{no_plot}\n\n{table}", file=log)
    return ExperimentResult(config, runs, seconds, out, finished, table,
                            None if finished else interrupt.signum or signal.SIGINT)


def memory_bytes(config: ExperimentConfig) -> int:
    """A lower bound of the memory one run takes: its test set, a training batch with the activations kept for
    the backward pass, and the test set's outputs (computed before anything is allocated)."""
    spec = task(config.task)
    steps = spec.steps(config.length)
    data = (config.test_size + config.batch) * steps * spec.input_size * 4
    return data + training.recurrent_bytes(layers=1, hidden=config.hidden, inputs=spec.input_size,
                                           batch=max(config.batch, config.test_size), steps=steps, training=True)


def _steps_done(directory: Path) -> int:
    """Steps a run already has (from its result or checkpoint): the progress bar starts there."""
    if (directory / "result.json").is_file():
        return _read_result(directory / "result.json").steps
    path = directory / "metrics.csv"
    if not (directory / "trainer_state.safetensors").is_file() or not path.is_file():
        return 0
    rows = path.read_text().splitlines()
    return int(rows[-1].split(",")[0]) if len(rows) > 1 else 0


def _run_parallel(config: ExperimentConfig, jobs: list[tuple[str, int]], directories: dict[tuple[str, int], str],
                  workers: int, show: Callable[[dict[str, Any]], None],
                  interrupt: training.GracefulInterrupt) -> list[RunResult]:
    # spawn, not fork: a forked child would inherit the parent's torch thread pool in an undefined state.
    context = multiprocessing.get_context("spawn")
    progress, stop = context.Queue(), context.Event()
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                             initargs=(progress, stop)) as pool:
        futures = [pool.submit(_worker_job, config, cell, seed, directories[(cell, seed)]) for cell, seed in jobs]
        while not all(f.done() for f in futures):
            if interrupt.requested:
                stop.set()
            try:
                show(progress.get(timeout=0.2))
            except queue.Empty:
                pass
        while not progress.empty():
            show(progress.get())
        return [f.result() for f in futures]


# ----------------------------------------------------------------------------------------------------------------
# 5. Reports


def summarize(config: ExperimentConfig, runs: Sequence[RunResult]) -> list[dict[str, Any]]:
    """One row per cell: seeds solved, final and best test metric (mean and spread over seeds), first solved step."""
    spec = task(config.task)
    rows = []
    for cell in config.cells:
        mine = [r for r in runs if r.cell == cell]
        finals = [r.final[spec.metric] for r in mine]
        solved = [r.solved_at for r in mine if r.solved_at is not None]
        row: dict[str, Any] = {
            "cell": cell,
            "seeds": len(mine),
            "solved": len(solved),
            "final": statistics.mean(finals),
            "final_std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
            "best": statistics.mean(r.best for r in mine),
            "solved_at_median": statistics.median(solved) if solved else None,
            "steps": statistics.mean(r.steps for r in mine),
            "seconds": statistics.mean(r.seconds for r in mine),
            "cpu_seconds": statistics.mean(r.cpu_seconds for r in mine),
        }
        if spec.name == "copy":
            row["sequence_accuracy"] = statistics.mean(r.final["sequence_accuracy"] for r in mine)
        if spec.metric != "mse":
            row["vs_baseline"] = None
        else:
            row["vs_baseline"] = spec.baseline(config.length) / row["final"] if row["final"] > 0 else math.inf
        rows.append(row)
    return rows


def results_table(config: ExperimentConfig, runs: Sequence[RunResult]) -> str:
    """The markdown table of :func:`summarize` with the task, its baseline and its solved criterion above it."""
    spec = task(config.task)
    baseline = spec.baseline(config.length)
    header = ["cell", "solved", f"final test {spec.metric}", f"best test {spec.metric}", "first solved at step",
              "steps run", "train s", "CPU s"]
    if spec.name == "copy":
        header.insert(4, "exact-sequence acc.")
    if spec.metric == "mse":
        header.insert(4, "baseline / final")
    lines = [f"**{spec.name}** (T={config.length}, {spec.paper}): baseline {spec.metric} = {baseline:.4f}; "
             f"solved: {spec.criterion(config.length)}. Hidden {config.hidden}, batch {config.batch}, Adam lr "
             f"{config.lr:g}, clip {config.clip:g}, {config.init} gate init, at most {config.steps} steps, seeds "
             f"{config.seed}..{config.seed + config.seeds - 1}, test set {config.test_size}.", "",
             "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in summarize(config, runs):
        spread = f" ± {row['final_std']:.4f}" if row["seeds"] > 1 else ""
        cells = [row["cell"], f"{row['solved']}/{row['seeds']}", f"{row['final']:.4f}{spread}", f"{row['best']:.4f}",
                 "-" if row["solved_at_median"] is None else f"{row['solved_at_median']:g}",
                 f"{row['steps']:g}", f"{row['seconds']:.0f}", f"{row['cpu_seconds']:.0f}"]
        if spec.name == "copy":
            cells.insert(4, f"{row['sequence_accuracy']:.3f}")
        if spec.metric == "mse":
            cells.insert(4, f"{row['vs_baseline']:.1f}×")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_reports(config: ExperimentConfig, runs: Sequence[RunResult], out: Path, seconds: float) -> None:
    """``metrics.csv`` (every run's rows), ``results.md``, ``results.json`` and ``plot.png`` in ``out``."""
    spec = task(config.task)
    lines = [",".join(("cell", "seed", *METRICS_HEADER)) + "\n"]
    for run in runs:
        path = out / "runs" / f"{run.cell}-seed{run.seed}" / "metrics.csv"
        lines += [f"{run.cell},{run.seed},{line}\n" for line in path.read_text().splitlines()[1:]]
    training.atomic_write(out / "metrics.csv", "".join(lines))
    engine = resolve(config.engine, variant(config.cells[0]).build(1, 1).spec, torch.zeros(1)).name
    environment = {"torch": torch.__version__, "python": platform.python_version(), "cpus": os.cpu_count(),
                   "machine": platform.machine(), "engine": engine}
    training.atomic_write(out / "results.md", results_table(config, runs) + "\n")
    training.write_json(out / "results.json", {
        "task": spec.name, "paper": spec.paper, "metric": spec.metric, "baseline": spec.baseline(config.length),
        "criterion": spec.criterion(config.length), "config": dataclasses.asdict(config),
        "wall_seconds": round(seconds, 1), "cpu_seconds": round(sum(r.cpu_seconds for r in runs), 1),
        "environment": environment, "summary": summarize(config, runs),
        "runs": [dataclasses.asdict(r) for r in runs]})
    plot(config, runs, out / "plot.png")


def plot(config: ExperimentConfig, runs: Sequence[RunResult], path: Path) -> None:
    """Test metric against training step, one colour per cell (a line per seed), the baseline dashed; nothing
    without matplotlib (the ``viz`` extra: the tables and metrics do not need it)."""
    if not has_matplotlib():
        return
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    spec = task(config.task)
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    colours = plt.get_cmap("tab10")
    for k, cell in enumerate(config.cells):
        for j, run in enumerate(r for r in runs if r.cell == cell):
            steps = [h["step"] for h in run.history]
            values = [h["metric"] for h in run.history]
            ax.plot(steps, values, color=colours(k % 10), lw=1.5, alpha=0.9 if config.seeds == 1 else 0.6,
                    label=cell if j == 0 else None)
    ax.axhline(spec.baseline(config.length), color="black", ls="--", lw=1, label="baseline (no memory)")
    threshold = {"adding": 0.01, "copy": 0.1 * spec.baseline(config.length), "temporal-order": 0.99}[spec.name]
    ax.axhline(threshold, color="grey", ls=":", lw=1, label="solved")
    if spec.lower_is_better:
        ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel(f"test {spec.metric.replace('_', '-')}")
    ax.set_title(f"{spec.name}, T={config.length} ({spec.paper})", fontsize=10)
    ax.legend(fontsize=8, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------------------
# 6. Command line: ``gatedrnn experiment TASK``


def add_command(commands: Any) -> None:
    """Register ``experiment`` on the ``gatedrnn`` sub-command parser."""
    p = commands.add_parser(
        "experiment", help="long-memory experiments: adding, copy, temporal order, for every cell variant",
        description="Train each cell on a classic long-memory task and report the test metric against the "
                    "memoryless baseline. Task defaults: " + "; ".join(
                        f"{t.name}: " + ", ".join(f"{k}={v:g}" for k, v in t.defaults.items()) for t in TASKS.values()))
    p.add_argument("task", metavar="TASK", help=f"one of: {', '.join(TASKS)}")
    p.add_argument("--cells", default=",".join(DEFAULT_CELLS),
                   help=f"comma-separated variant names (default: %(default)s); any of: {', '.join(VARIANTS)}")
    p.add_argument("--length", type=int, help="T: sequence length / delay (default: the task's)")
    p.add_argument("--hidden", type=int, help="hidden units (default: the task's)")
    p.add_argument("--batch", type=int, help="sequences per step (default: the task's)")
    p.add_argument("--lr", type=float, help="Adam learning rate (default: the task's)")
    p.add_argument("--clip", type=float, default=1.0, help="gradient norm clipping (default: %(default)s)")
    p.add_argument("--steps", type=int, help="most optimizer steps per run (default: the task's)")
    p.add_argument("--eval-every", type=int, help="steps between test evaluations and checkpoints")
    p.add_argument("--test-size", type=int, default=1000, help="test sequences (default: %(default)s)")
    p.add_argument("--seeds", type=int, default=1, help="runs per cell (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="first seed (default: %(default)s)")
    p.add_argument("--full", action="store_true", help="train every run for all --steps, also once solved")
    p.add_argument("--init", default="chrono", choices=INITS,
                   help="gate biases: chrono (Tallec & Ollivier 2018: forget/keep gates open to time scales up to "
                        "the sequence length) or torch (torch.nn's uniform draw) (default: %(default)s)")
    p.add_argument("--workers", type=int, default=None, help="parallel runs, one thread each (default: one per core)")
    p.add_argument("--engine", default="auto", help="recurrence engine (default: %(default)s; see `gatedrnn engines`)")
    p.add_argument("--out", default=None, help="output directory (default: experiments/TASK)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_cli)


def _cli(args: Any) -> int:
    config = ExperimentConfig(
        task=args.task, cells=args.cells, length=args.length, hidden=args.hidden, batch=args.batch, lr=args.lr,
        clip=args.clip, steps=args.steps, eval_every=args.eval_every, test_size=args.test_size, seeds=args.seeds,
        seed=args.seed, stop_when_solved=not args.full, init=args.init, workers=args.workers, engine=args.engine)
    result = run_experiment(config, args.out or Path("experiments") / args.task, progress=not args.quiet)
    return training.exit_status(result.signal)
