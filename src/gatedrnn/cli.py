"""``gatedrnn <command>``: the command-line entry point.

Commands today: ``cells`` (build, run and compare every cell variant), ``engines``, ``build`` (compile the cpu
engine ahead of time) and ``charlm`` (the
character-level language model: ``train``, ``sample``, ``eval``; the demo), ``viz`` (``gates``,
``gradient-flow``: plots), ``explore`` (the explorer page), ``classify`` and ``forecast`` (``train``, ``eval``,
``predict``), ``experiment`` (the long-memory tasks: adding, copy, temporal order) and ``bench``.
"""

from __future__ import annotations

import argparse
import errno
import signal
import sys
import time
from collections.abc import Sequence
from typing import NoReturn

import torch

from . import training
from .engine import engines, resolve
from .tasks import charlm, classify, experiments, export, forecast
from .variants import VARIANTS, variant
from .viz import commands as viz_commands


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def cells(args: argparse.Namespace) -> int:
    """Build each cell variant, run it forward and backward in float64, and compare it with torch.nn."""
    names = args.cells.split(",") if args.cells else list(VARIANTS)
    for name in names:
        variant(name)
    B, T, I, H, L = args.batch, args.steps, args.input_size, args.hidden_size, args.layers
    for option, value in (("batch", B), ("steps", T), ("input-size", I), ("hidden-size", H), ("layers", L)):
        if value < 1:
            raise ValueError(f"{option}: expected an int >= 1, got {value}")
    training.check_seed("seed", args.seed)
    # Two models (gatedrnn's and its torch.nn twin) of the largest cell, 4 gates, trained on one batch.
    training.require_memory(f"cells: --layers {L} --hidden-size {H} --input-size {I} --batch {B} --steps {T}",
                            8 * training.recurrent_bytes(layers=L, hidden=H, inputs=I, batch=B, steps=T,
                                                         dtype=torch.float64, training=True), torch.device("cpu"))
    torch.manual_seed(args.seed)
    x = torch.randn(T, B, I, dtype=torch.float64)
    rows = []
    for name in names:
        v = variant(name)
        layer = v.build(I, H, num_layers=L, dtype=torch.float64)
        start = time.perf_counter()
        out, state = layer(x)
        h_n = state[0] if isinstance(state, tuple) else state
        (out.square().mean() + h_n.square().mean()).backward()
        millis = (time.perf_counter() - start) * 1e3
        try:
            twin = layer.to_torch()
            reference, _ = twin(x)
            parity = f"{(out - reference).abs().max().item():.1e}"
        except ValueError:
            parity = "no torch.nn twin"
        params = sum(p.numel() for p in layer.parameters())
        engine = layer.engine if layer.engine != "auto" else f"auto: {resolve('auto', layer.spec, x).name}"
        rows.append([name, v.summary, f"{params:,}", "x".join(map(str, out.shape)),
                     "x".join(map(str, h_n.shape)), engine, f"{millis:.1f}", parity])
    print(f"Every cell variant, {L} layer(s), input (T={T}, B={B}, I={I}), hidden {H}, float64, seed {args.seed}:\n")
    print(_table(["cell", "what it computes", "params", "output", "h_n", "engine", "fwd+bwd ms",
                  "max |diff| vs torch.nn"], rows))
    return 0


def list_engines(args: argparse.Namespace) -> int:
    """Print every engine, whether it is available here, and why."""
    rows = [[e.name, "yes" if e.available else "no", str(e.priority), e.reason] for e in engines()]
    print(_table(["engine", "available", "priority", "why"], rows))
    return 0


def build_engine(args: argparse.Namespace) -> int:
    """Compile the cpu engine's kernels now (once per cache: for images and CI), and say where the library is."""
    from .engine.cpu import build

    try:
        library = build.load()
    except build.BuildError as error:
        raise ValueError(f"cpu engine: {error}") from None
    if not library.kept:
        raise ValueError(f"cpu engine: built in {library.path.parent}, which is removed when this process exits: there "
                         f"is no private cache directory to keep it in; set GATEDRNN_CACHE to a directory only you can "
                         f"write")
    done = "already cached" if library.cached else f"compiled in {library.seconds:.0f} s"
    print(f"cpu engine: {done}: {library.path}")
    return 0


def _add_bench(commands: argparse._SubParsersAction) -> None:
    """``gatedrnn bench``: the benchmark table (all of it lives in ``bench.py``)."""
    from . import bench

    bench.build_parser(commands.add_parser("bench", help="time every variant and implementation as ratios",
                                           formatter_class=argparse.ArgumentDefaultsHelpFormatter))


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (the command, the option and what was expected), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="gatedrnn", description="Gated recurrent networks: RNN, LSTM, GRU.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = commands.add_parser("cells", help="build, run and compare every cell variant",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--cells", default="", help="comma-separated variant names (default: all): " + ", ".join(VARIANTS))
    p.add_argument("--input-size", type=int, default=16, help="I, features per step")
    p.add_argument("--hidden-size", type=int, default=32, help="H, hidden units")
    p.add_argument("--layers", type=int, default=2, help="stacked layers")
    p.add_argument("--batch", type=int, default=4, help="B, sequences per batch")
    p.add_argument("--steps", type=int, default=50, help="T, time steps")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.set_defaults(run=cells)
    p = commands.add_parser("engines", help="list the engines and whether they are available here")
    p.set_defaults(run=list_engines)
    p = commands.add_parser("build", help="compile the cpu engine's kernels now (once per cache), for images and CI")
    p.set_defaults(run=build_engine)
    charlm.add_commands(commands)
    viz_commands.add_commands(commands)
    classify.register(commands)
    forecast.register(commands)
    _add_bench(commands)
    experiments.add_command(commands)
    export.register(commands)
    return parser


def _os_error(error: OSError) -> str:
    """An operating-system error as the file it concerns and what went wrong ("Permission denied" …)."""
    reason = error.strerror or errno.errorcode.get(error.errno or 0, "") or str(error)
    where = error.filename if error.filename is not None else ""
    if error.filename2 is not None:
        where = f"{where} -> {error.filename2}"
    return f"{where}: {reason}" if where else reason


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command: the one error path of the command line.

    Whatever a user can cause — a bad option or file (``ValueError``, checkpoint errors included), an operating
    system error (permission, read-only file system, name too long, no space), memory running out — is one line on
    stderr and exit code 2. An interrupt exits with ``128 + signal`` (130 for Ctrl-C, 143 for SIGTERM) without a
    traceback. Anything else is a bug and keeps its traceback.
    """
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ValueError as error:
        message = str(error)
    except OSError as error:
        message = _os_error(error)
    except (MemoryError, torch.OutOfMemoryError) as error:
        message = f"out of memory ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
    except KeyboardInterrupt as error:
        signum = error.signum if isinstance(error, training.Interrupted) else signal.SIGINT
        print(f"gatedrnn: interrupted ({signal.Signals(signum).name}); stopped at once", file=sys.stderr)
        return training.exit_status(signum)
    print(f"gatedrnn: error: {' '.join(message.splitlines())}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
