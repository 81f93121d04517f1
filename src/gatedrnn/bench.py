"""``gatedrnn bench``: time named implementations of every cell variant, side by side, as ratios.

For each shape ``(B, T, I, H)`` of the grid, every (variant, implementation) pair is built once with the same
weights; then ``repeats`` rounds each time every pair once per mode (forward, forward+backward), interleaved so
that a change in the machine's load hits all of them alike. Each round runs the calls in a fresh random order
(:func:`round_order`, seeded): a call's time depends on what ran just before it, and a fixed order would charge
that to the same implementation in every round.

One timing is a block of back-to-back calls of the same pair lasting at least ``block_ms`` (how many calls is
measured once, after the warm-up), as ``torch.utils.benchmark`` times a statement: the time per call is the
block's time over its calls, the cost of a call inside a training or inference loop. The block's first call is
also timed alone (``first_ms``): the latency of a call right after other work. On the 2-core development VM a
batch-1 forward's first call cost 0.2-0.5 ms more than the calls after it, for ``torch.nn`` as for the engines:
after a millisecond or more of other work, even a no-op ATen call took 7-9 µs instead of 1.2.
``--block-ms 0`` times single calls only.

The table reports the median of the rounds and two ratios: against ``torch.nn.LSTM`` at the same shape, and
against the ``torch.nn`` module of the variant's own family (``torch.nn.GRU`` for both GRU reset forms, ...).

Implementations are a registry (:data:`IMPLEMENTATIONS`) and timing goes through a :class:`Timer` chosen by
device, so another device's engine and its timer plug in without touching the loop. One of them, ``gemms``, times
the variant's matrix products alone (:mod:`gatedrnn.gemm_floor`): its ratio to ``torch.nn`` is the least any engine
that runs those products with torch's BLAS can reach.

With ``--device cuda`` the defaults become the GPU grid (:data:`CUDA_SHAPES`) and the implementations
``torch.nn`` (cuDNN), ``reference`` and ``gpu``; times come from CUDA events, float32 runs with TF32 off everywhere
(cuDNN included), and ``--dtype bfloat16`` times bfloat16 weights and inputs.

Also ``python -m gatedrnn.bench``. ``--memory`` measures the peak memory of one forward+backward instead, each in
a fresh child process (peak resident set size above the process's size before the call).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import random
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__, training
from .cells import GRUSpec, LinearRecurrenceSpec, LSTMSpec, RNNSpec
from .gemm_floor import GemmFloor
from .layers import GRUCell, LSTMCell, RNNCell
from .variants import VARIANTS, Variant

Shape = tuple[int, int, int, int]
"""``(B, T, I, H)``: batch, time steps, input size, hidden size."""

DEFAULT_SHAPES: tuple[Shape, ...] = ((1, 256, 64, 128), (32, 100, 65, 256), (64, 100, 256, 512))
CUDA_SHAPES: tuple[Shape, ...] = (
    (1, 512, 256, 256), (16, 256, 512, 512), (64, 256, 1024, 1024), (256, 128, 1024, 1024))
"""The GPU grid, from one sequence to a batch of 256: the default with ``--device cuda``."""
CUDA_IMPLEMENTATIONS = ["torch.nn", "reference", "gpu"]
MODES = ("fwd", "fwd+bwd")
PROJ_VARIANT = "lstm-proj"
"""The projected LSTM (``proj_size = H // 2``), timed beside the named variants of :mod:`gatedrnn.variants`."""


CELL_VARIANTS: dict[str, Variant] = {
    f"{family}-cell": Variant(f"{family}-cell", cls, {}, f"one step of {cls.__name__} (T is ignored)")
    for family, cls in (("lstm", LSTMCell), ("gru", GRUCell), ("rnn", RNNCell))
}
"""Single-step cells, timed one call at a time (a generation loop's or an LBFGS closure's cost). Not in the default
list: ``--variants lstm-cell,gru-cell,rnn-cell --impls torch.nn,gatedrnn``."""


def bench_variants() -> dict[str, Variant]:
    """Every named variant plus the projected LSTM, whose ``proj_size`` depends on the shape, and the cells."""
    lstm = VARIANTS["lstm"]
    return {**VARIANTS, PROJ_VARIANT: Variant(PROJ_VARIANT, lstm.layer, {}, "h = W_hr (o*tanh(c)), P = H/2"),
            **CELL_VARIANTS}


def default_variants() -> list[str]:
    return [name for name in bench_variants() if name not in CELL_VARIANTS]


def _variant_kwargs(name: str, hidden_size: int) -> dict[str, Any]:
    return {"proj_size": hidden_size // 2} if name == PROJ_VARIANT else {}


# ---------------------------------------------------------------------------------------------------------- timers
class Timer:
    """Measures the wall time of one call of ``fn`` on a device. Subclasses know how to wait for the device."""

    def time(self, fn: Callable[[], object]) -> float:
        """Seconds taken by ``fn()``."""
        raise NotImplementedError


class WallTimer(Timer):
    """CPU work is synchronous: the wall clock around the call is its time."""

    def time(self, fn: Callable[[], object]) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start


class CudaTimer(Timer):
    """CUDA events recorded around the call on the current stream; waits for the GPU to finish."""

    def time(self, fn: Callable[[], object]) -> float:
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        return start.elapsed_time(stop) / 1e3


TIMERS: dict[str, Callable[[], Timer]] = {"cpu": WallTimer, "cuda": CudaTimer}
"""Device type -> timer factory."""


def timer_for(device: torch.device) -> Timer:
    if device.type not in TIMERS:
        raise ValueError(f"device: no timer for {device.type!r}; expected one of: {', '.join(TIMERS)}")
    return TIMERS[device.type]()


# ------------------------------------------------------------------------------------------------ implementations
@dataclass(frozen=True)
class Implementation:
    """A named way to run a variant: builds a module from the reference-weighted gatedrnn layer, or None when it
    has no such variant (``torch.nn`` has no peephole LSTM) or does not run on the device."""

    name: str
    devices: tuple[str, ...]
    build: Callable[[nn.Module], nn.Module | None]


def _torch_twin(layer: nn.Module) -> nn.Module | None:
    try:
        return layer.to_torch()  # type: ignore[operator]
    except ValueError:
        return None


def _is_cell(module: nn.Module) -> bool:
    return isinstance(module, (LSTMCell, GRUCell, RNNCell, nn.RNNCellBase))


def _gemm_floor(layer: nn.Module) -> nn.Module | None:
    """The variant's matrix products alone, where :class:`GemmFloor` knows them: the LSTM, GRU and RNN layers. None
    for cells, for linear-recurrence layers (minGRU, minLSTM: their one product is the input's, with no recurrent
    product to set a floor) and for the other families (sLSTM, the Clockwork RNN, the depth-gated and Grid LSTMs)."""
    if _is_cell(layer) or isinstance(getattr(layer, "spec", None), LinearRecurrenceSpec):
        return None
    return GemmFloor(layer) if type(layer.spec) in (LSTMSpec, GRUSpec, RNNSpec) else None  # type: ignore[attr-defined]


def _as_called(layer: nn.Module) -> nn.Module:
    """The module as users call it (``engine="auto"`` for a layer; a cell, which has no engine, itself)."""
    return layer


def _compiled(layer: nn.Module) -> nn.Module | None:
    """The layer on the device's fused engine under ``torch.compile(fullgraph=True)`` (inductor); compiled during
    the warm-up calls, so the timings are of the compiled code."""
    if _is_cell(layer):
        return None
    engine = "gpu" if next(layer.parameters()).is_cuda else "cpu"
    module = _engine(engine)(layer)
    return None if module is None else torch.compile(module, fullgraph=True)


def _engine(name: str) -> Callable[[nn.Module], nn.Module | None]:
    def build(layer: nn.Module) -> nn.Module | None:
        from . import engine as registry

        if _is_cell(layer):
            return None  # cells have no engine: "gatedrnn" times them

        try:
            registry.resolve(name, layer.spec, next(layer.parameters()))  # type: ignore[arg-type]
        except ValueError:
            return None  # the engine does not run this variant (the gpu engine has no layer-norm kernels …)
        layer.engine = name
        return layer

    return build


IMPLEMENTATIONS: dict[str, Implementation] = {
    impl.name: impl
    for impl in [
        Implementation("torch.nn", ("cpu", "cuda"), _torch_twin),
        Implementation("reference", ("cpu", "cuda"), _engine("reference")),
        Implementation("cpu", ("cpu",), _engine("cpu")),
        Implementation("scan", ("cpu", "cuda"), _engine("scan")),
        Implementation("gpu", ("cuda",), _engine("gpu")),
        Implementation("gemms", ("cpu",), _gemm_floor),
        Implementation("compiled", ("cpu", "cuda"), _compiled),
        Implementation("gatedrnn", ("cpu", "cuda"), _as_called),
    ]
}
"""``reference`` loops the cell over time (for minGRU and minLSTM, the sequential form of their scan); ``scan`` is
the plain-PyTorch parallel scan of those two (the cpu engine runs it in C++). ``gemms`` is no engine: the variant's
matrix products alone (:mod:`gatedrnn.gemm_floor`), the floor under any engine that runs them with torch's BLAS. Not
in the default list; ``--impls torch.nn,cpu,gemms`` adds it. ``compiled`` is the fused engine's module under
``torch.compile``; ``gatedrnn`` the module as users call it (the one way to time cells)."""


def _family_baseline(name: str) -> str:
    """The variant whose ``torch.nn`` module a variant is compared with: itself if it has one, else its family's."""
    layer = bench_variants()[name].layer.__name__.lower()
    baselines = {"rnn": "rnn", "lstm": "lstm", "gru": "gru", "mingru": "gru", "minlstm": "lstm", "slstm": "lstm",
                 "clockworkrnn": "rnn", "gridlstm": "lstm"}
    return baselines.get(layer, f"{layer.removesuffix('cell')}-cell")


# ------------------------------------------------------------------------------------------------------ the runs
@dataclass
class BenchConfig:
    """What to time. The defaults are the CPU grid: batch 1, a small and a training-sized batch."""

    shapes: list[Shape] = field(default_factory=lambda: list(DEFAULT_SHAPES))
    variants: list[str] = field(default_factory=default_variants)
    implementations: list[str] = field(default_factory=lambda: ["torch.nn", "reference", "cpu"])
    modes: list[str] = field(default_factory=lambda: list(MODES))
    repeats: int = 5
    warmup: int = 1
    device: str = "cpu"
    dtype: str = "float32"
    threads: int = 0
    """``torch.set_num_threads``; 0 keeps torch's default."""
    seed: int = 0
    block_ms: float = 20.0
    """Least duration of one timing's block of back-to-back calls; 0: one call per timing."""


@dataclass
class Row:
    shape: Shape
    variant: str
    implementation: str
    mode: str
    times_ms: list[float]
    """Per round: the time per call of its block."""
    first_ms: list[float]
    """Per round: the block's first call alone."""
    calls: int
    """Calls per block."""

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def first_median_ms(self) -> float:
        return statistics.median(self.first_ms)


def _call(module: nn.Module, x: torch.Tensor, mode: str) -> Callable[[], object]:
    if _is_cell(getattr(module, "_orig_mod", module)):
        return _call_cell(module, x[0], mode)
    if mode == "fwd":
        def forward() -> object:
            with torch.no_grad():
                return module(x)

        return forward

    params = list(module.parameters())

    def forward_backward() -> object:
        for p in params:
            p.grad = None
        out, _ = module(x)
        out.sum().backward()
        return out

    return forward_backward


def _call_cell(cell: nn.Module, x: torch.Tensor, mode: str) -> Callable[[], object]:
    """One step from a given state: ``x`` (B, I), as a generation loop calls a cell."""
    H = cell.hidden_size
    h = torch.zeros(x.shape[0], H, dtype=x.dtype, device=x.device)
    state = (h, h.clone()) if isinstance(cell, (LSTMCell, nn.LSTMCell)) else h
    params = list(cell.parameters())

    def step() -> object:
        if mode == "fwd":
            with torch.no_grad():
                return cell(x, state)
        for p in params:
            p.grad = None
        out = cell(x, state)
        (out[0] if isinstance(out, tuple) else out).sum().backward()
        return out

    return step


def _modules(config: BenchConfig, shape: Shape) -> dict[tuple[str, str], nn.Module]:
    """Every (variant, implementation) module for one shape, each variant's modules with the same weights."""
    B, T, I, H = shape
    device, dtype = torch.device(config.device), getattr(torch, config.dtype)
    modules = {}
    for name in config.variants:
        for impl_name in config.implementations:
            impl = IMPLEMENTATIONS[impl_name]
            if device.type not in impl.devices:
                continue
            torch.manual_seed(config.seed)  # the same weights for every implementation of a variant
            layer = bench_variants()[name].build(I, H, device=device, dtype=dtype, **_variant_kwargs(name, H))
            module = impl.build(layer)
            if module is not None:
                modules[(name, impl_name)] = module
    return modules


def round_order(keys: Sequence[Any], seed: int, round_index: int) -> list[Any]:
    """The order in which round ``round_index`` runs the calls ``keys``: a permutation drawn from ``seed`` and the
    round, so that runs repeat and rounds differ."""
    order = list(keys)
    random.Random(f"{seed}:{round_index}").shuffle(order)
    return order


def run(config: BenchConfig, progress: Callable[[str], None] = lambda _: None) -> list[Row]:
    """Time every (shape, variant, implementation, mode) of ``config``; see the module docstring for how."""
    if config.threads:
        torch.set_num_threads(config.threads)
    device = torch.device(config.device)
    timer = timer_for(device)
    rows: list[Row] = []
    for shape in config.shapes:
        B, T, I, H = shape
        modules = _modules(config, shape)
        torch.manual_seed(config.seed)
        x = torch.randn(T, B, I, device=device, dtype=getattr(torch, config.dtype))
        calls = {(key, mode): _call(m, x, mode) for key, m in modules.items() for mode in config.modes}
        for call in calls.values():
            for _ in range(config.warmup):
                call()
        sizes = {key: block_size(timer.time(call), config.block_ms) if config.block_ms > 0 else 1
                 for key, call in calls.items()}
        per_call: dict[tuple, list[float]] = {key: [] for key in calls}
        first: dict[tuple, list[float]] = {key: [] for key in calls}
        for r in range(config.repeats):
            progress(f"shape {shape}: round {r + 1}/{config.repeats}")
            for key in round_order(list(calls), config.seed, r):
                call, n = calls[key], sizes[key]
                first[key].append(timer.time(call) * 1e3)
                rest = timer.time(_repeat(call, n - 1)) * 1e3 if n > 1 else 0.0
                per_call[key].append((first[key][-1] + rest) / n)
        for key in calls:
            (name, impl), mode = key
            rows.append(Row(shape, name, impl, mode, per_call[key], first[key], sizes[key]))
    return rows


def _repeat(call: Callable[[], object], times: int) -> Callable[[], None]:
    def calls() -> None:
        for _ in range(times):
            call()

    return calls


def block_size(call_seconds: float, block_ms: float, most: int = 1000) -> int:
    """Calls in one timing's block: enough for ``block_ms`` at ``call_seconds`` a call, 1 to ``most``."""
    if block_ms <= 0 or call_seconds <= 0:
        return 1
    return max(1, min(most, math.ceil(block_ms / (call_seconds * 1e3))))


def ratios(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Each row as a dict with its median and its ratios to torch.nn.LSTM and to its family's torch.nn module."""
    medians = {(r.shape, r.variant, r.implementation, r.mode): r.median_ms for r in rows}
    result = []
    for r in rows:
        lstm = medians.get((r.shape, "lstm", "torch.nn", r.mode))
        twin_variant = r.variant if (r.shape, r.variant, "torch.nn", r.mode) in medians else _family_baseline(r.variant)
        twin = medians.get((r.shape, twin_variant, "torch.nn", r.mode))
        result.append({
            "B": r.shape[0], "T": r.shape[1], "I": r.shape[2], "H": r.shape[3], "variant": r.variant,
            "implementation": r.implementation, "mode": r.mode, "median_ms": r.median_ms, "times_ms": r.times_ms,
            "first_median_ms": r.first_median_ms, "first_ms": r.first_ms, "calls_per_block": r.calls,
            "us_per_step": 1e3 * r.median_ms / r.shape[1],
            "vs_torch_nn_lstm": r.median_ms / lstm if lstm else None,
            "vs_torch_nn_family": r.median_ms / twin if twin else None, "family_baseline": f"{twin_variant}",
        })
    return result


def format_table(entries: Sequence[dict[str, Any]]) -> str:
    header = ["B,T,I,H", "variant", "impl", "mode", "median ms", "us/step", "/nn.LSTM", "/nn.family", "first ms"]
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    lines = [[f"{e['B']},{e['T']},{e['I']},{e['H']}", e["variant"], e["implementation"], e["mode"],
              f"{e['median_ms']:.2f}", f"{e['us_per_step']:.2f}", fmt(e["vs_torch_nn_lstm"]),
              fmt(e["vs_torch_nn_family"]), f"{e['first_median_ms']:.2f}"] for e in entries]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines)]
    line = lambda cells: "  ".join(str(c).rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in lines)])


# ----------------------------------------------------------------------------------------------------- memory
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _memory_child(config: BenchConfig, shape: Shape, name: str, impl: str, queue: Any) -> None:
    torch.set_num_threads(config.threads or torch.get_num_threads())
    one = BenchConfig(shapes=[shape], variants=[name], implementations=[impl], device=config.device,
                      dtype=config.dtype, seed=config.seed)
    modules = _modules(one, shape)
    if not modules:
        queue.put(None)
        return
    module = modules[(name, impl)]
    B, T, I, H = shape
    x = torch.randn(T, B, I, dtype=getattr(torch, config.dtype))
    _call(module, x[:1], "fwd+bwd")()  # one short step: loads kernels and libraries before the baseline
    before = _rss_bytes()
    _call(module, x, "fwd+bwd")()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    queue.put(max(0, peak - before))


def peak_memory(config: BenchConfig) -> list[dict[str, Any]]:
    """Peak memory above the baseline of one forward+backward, per (shape, variant, implementation), on CPU."""
    if config.device != "cpu":
        raise ValueError("memory: --memory measures CPU memory; use the device's own tools for other devices")
    if not sys.platform.startswith("linux"):
        raise ValueError("memory: --memory reads /proc and ru_maxrss, which needs Linux")
    context = multiprocessing.get_context("spawn")
    result = []
    for shape in config.shapes:
        for name in config.variants:
            for impl in config.implementations:
                queue = context.Queue()
                child = context.Process(target=_memory_child, args=(config, shape, name, impl, queue))
                child.start()
                peak = queue.get()
                child.join()
                if peak is not None:
                    result.append({"B": shape[0], "T": shape[1], "I": shape[2], "H": shape[3], "variant": name,
                                   "implementation": impl, "peak_mib": peak / 2**20})
    return result


def cpu_model() -> str:
    """The processor's name (``/proc/cpuinfo`` on Linux, else what ``platform`` knows): the machine a result names."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# --------------------------------------------------------------------------------------------------------- CLI
def _shape(text: str) -> Shape:
    parts = text.lower().split("x")
    if len(parts) != 4 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected BxTxIxH with positive integers, e.g. 1x256x64x128, got {text!r}")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


def _names(kind: str, known: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [n for n in text.split(",") if n]
        unknown = [n for n in names if n not in known]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"unknown {kind} {', '.join(unknown) or '(none)'}; "
                                             f"expected some of: {', '.join(known)}")
        return names

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = BenchConfig()
    parser.add_argument("--shapes", type=lambda s: [_shape(p) for p in s.split(",") if p],
                        default=None, help="comma-separated BxTxIxH shapes (default: "
                        + ",".join("x".join(map(str, s)) for s in d.shapes) + "; with --device cuda: "
                        + ",".join("x".join(map(str, s)) for s in CUDA_SHAPES) + ")")
    parser.add_argument("--variants", type=_names("variant", list(bench_variants())), default=d.variants,
                        help="comma-separated variants (default: all but the cells): " + ", ".join(bench_variants()))
    parser.add_argument("--impls", type=_names("implementation", list(IMPLEMENTATIONS)),
                        default=None, help="comma-separated implementations (default: "
                        + ",".join(d.implementations) + "; with --device cuda: " + ",".join(CUDA_IMPLEMENTATIONS)
                        + "; known: " + ", ".join(IMPLEMENTATIONS) + ")")
    parser.add_argument("--modes", type=_names("mode", MODES), default=d.modes,
                        help="fwd, fwd+bwd or both (default: both)")
    parser.add_argument("--repeats", type=int, default=d.repeats, help="timed rounds; the median is reported")
    parser.add_argument("--warmup", type=int, default=d.warmup, help="untimed calls of each pair first")
    parser.add_argument("--device", default=d.device, help="device to run on")
    parser.add_argument("--dtype", choices=("float32", "float64", "bfloat16", "float16"), default=d.dtype,
                        help="floating dtype")
    parser.add_argument("--threads", type=int, default=d.threads, help="torch.set_num_threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=d.seed, help="seed of the weights and inputs")
    parser.add_argument("--block-ms", type=float, default=d.block_ms,
                        help="each timing is a block of back-to-back calls of at least this many ms, reported per "
                        "call; its first call is also reported alone ('first ms'); 0: single calls")
    parser.add_argument("--memory", action="store_true",
                        help="measure the peak memory of one forward+backward instead of timing")
    parser.add_argument("--json", metavar="FILE", type=Path, help="also write the results as JSON to FILE")


def main_args(args: argparse.Namespace) -> int:
    if args.repeats < 1 or args.warmup < 0 or args.threads < 0:
        raise ValueError("repeats: expected >= 1 (and --warmup, --threads >= 0)")
    if not 0 <= args.block_ms < math.inf:
        raise ValueError(f"block-ms: expected a duration >= 0, got {args.block_ms}")
    training.check_seed("seed", args.seed)
    if args.json:
        training.check_output_file("json", args.json)  # before the benchmark, not after
    device = training.resolve_device(args.device)  # a bad --device fails here, before anything is built
    cuda = device.type == "cuda"
    d = BenchConfig()
    config = BenchConfig(shapes=args.shapes or list(CUDA_SHAPES if cuda else d.shapes), variants=args.variants,
                         implementations=args.impls or (CUDA_IMPLEMENTATIONS if cuda else d.implementations),
                         modes=args.modes, repeats=args.repeats, warmup=args.warmup, device=args.device,
                         dtype=args.dtype, threads=args.threads, seed=args.seed, block_ms=args.block_ms)
    dtype = training.resolve_dtype(config.dtype)
    largest = max(training.recurrent_bytes(layers=1, hidden=H, inputs=I, batch=B, steps=T, dtype=dtype, training=True)
                  + 2 * B * T * I * dtype.itemsize for B, T, I, H in config.shapes)
    training.require_memory("shapes: the largest --shapes entry", largest, device)
    if cuda:
        # float32 means IEEE float32 for every implementation: cuDNN would otherwise use TF32.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    meta = {"gatedrnn": __version__, "torch": torch.__version__, "threads": config.threads or torch.get_num_threads(),
            "machine": platform.machine(), "cpus": os.cpu_count(), "cpu_model": cpu_model(),
            "device_name": torch.cuda.get_device_name(args.device) if cuda else None,
            "date": time.strftime("%Y-%m-%d", time.gmtime()), "config": asdict(config)}
    if args.memory:
        entries = peak_memory(config)
        print("\n".join(f"{e['B']},{e['T']},{e['I']},{e['H']}  {e['variant']:>16}  {e['implementation']:>10}  "
                        f"peak {e['peak_mib']:.1f} MiB" for e in entries))
        result = {**meta, "memory": entries}
    else:
        start = time.perf_counter()
        rows = run(config, progress=lambda msg: print(msg, file=sys.stderr, flush=True))
        entries = ratios(rows)
        print(format_table(entries))
        print(f"\n{config.dtype}, {meta['threads']} thread(s), median of {config.repeats} interleaved rounds (random "
              f"order); each a block of back-to-back calls of at least {config.block_ms:g} ms, per call; 'first ms': "
              f"the block's first call alone; wall {time.perf_counter() - start:.0f} s")
        result = {**meta, "results": entries}
    if args.json:
        training.atomic_write(args.json, json.dumps(result, indent=1))
    return 0


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    from .cli import Parser  # cli imports this module for `gatedrnn bench`

    parser = parser or Parser(prog="python -m gatedrnn.bench", description=__doc__.splitlines()[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(run=main_args)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .cli import run as run_command  # cli imports this module for `gatedrnn bench`

    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
