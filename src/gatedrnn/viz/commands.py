"""``gatedrnn viz gates|gradient-flow`` and ``gatedrnn explore``: the plots and the explorer from the command line."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import training
from ..inspect import record
from ..tasks import charlm
from . import require_matplotlib

PLOTS = ("all", "heatmaps", "cells", "saturation")


def add_commands(commands: Any) -> None:
    """Register ``viz`` (verbs ``gates``, ``gradient-flow``) and ``explore`` on the ``gatedrnn`` parser."""
    formatter = argparse.ArgumentDefaultsHelpFormatter
    p = commands.add_parser("viz", help="plots of the gates and of gradient flow through time (PNG or SVG)")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    g = verbs.add_parser("gates", formatter_class=formatter,
                         help="gate heat maps, cell-state traces and saturation of a trained character model")
    g.add_argument("--model", required=True, metavar="DIR", help="run directory written by charlm train")
    g.add_argument("--text", help="text the model reads (default: the start of its held-out text)")
    g.add_argument("--chars", type=int, default=100, help="characters of the held-out text when --text is not given")
    g.add_argument("--out", required=True, metavar="FILE", help="image to write: .png or .svg")
    g.add_argument("--layer", type=int, default=0, help="recurrent layer of the heat maps and traces")
    g.add_argument("--units", help="comma-separated units for the cell-state traces (default: the 4 that vary most)")
    g.add_argument("--plot", default="all", choices=PLOTS, help="one plot, or all of them in one figure")
    g.add_argument("--width", type=int, default=1600, help="image width in pixels")
    g.add_argument("--height", type=int, default=1200, help="image height in pixels")
    g.add_argument("--weights", default="best", help="best (lowest validation loss) or latest")
    g.set_defaults(run=_gates)

    f = verbs.add_parser("gradient-flow", formatter_class=formatter,
                         help="‖∂L/∂h_t‖ of RNN, LSTM and GRU character models on one log-scale plot")
    f.add_argument("--out", required=True, metavar="FILE", help="image to write: .png or .svg")
    f.add_argument("--model", action="append", metavar="DIR",
                   help="trained charlm run directory to measure (repeatable); without it, --cells are trained")
    f.add_argument("--cells", default="rnn,lstm,gru", help="cells to train, each a one-layer model on Macbeth")
    f.add_argument("--hidden", type=int, default=64, help="hidden units of the trained models")
    f.add_argument("--train-steps", type=int, default=200, help="training steps of each model (batch 32)")
    f.add_argument("--seq-len", type=int, default=100, help="T: steps of training windows and of the measurement")
    f.add_argument("--windows", type=int, default=16, help="held-out windows the loss is averaged over")
    f.add_argument("--runs", metavar="DIR", help="keep the trained runs here (default: a temporary directory)")
    f.add_argument("--seed", type=int, default=0, help="random seed of training and of the windows")
    f.add_argument("--quiet", action="store_true", help="no training progress bars")
    f.set_defaults(run=_gradient_flow)

    e = commands.add_parser("explore", formatter_class=formatter,
                            help="write (and serve) the explorer page of a trained character model")
    e.add_argument("--model", required=True, metavar="DIR", help="run directory written by charlm train")
    e.add_argument("--text", metavar="FILE", help="UTF-8 text file to read (default: the model's held-out text)")
    e.add_argument("--chars", type=int, default=2000, help="characters of the text shown (from its start)")
    e.add_argument("--out", default="explorer.html", metavar="FILE", help="page to write")
    e.add_argument("--screenshot", metavar="FILE.png",
                   help="also save a screenshot of the page in headless Chromium (needs chromium and playwright)")
    e.add_argument("--serve", action="store_true", help="also serve the page until Ctrl-C")
    e.add_argument("--host", default="127.0.0.1", help="address to serve on")
    e.add_argument("--port", type=int, default=8000, help="port to serve on (0: any free port)")
    e.add_argument("--weights", default="best", help="best (lowest validation loss) or latest")
    e.set_defaults(run=_explore)


def _positive(name: str, value: int) -> int:
    if value < 1:
        raise ValueError(f"{name}: expected an int >= 1, got {value}")
    return value


def _held_out(lm: charlm.LanguageModel, chars: int) -> str:
    return lm.validation_text()[: _positive("chars", chars)]


def _gates(args: argparse.Namespace) -> int:
    require_matplotlib("viz gates")
    from . import plots  # matplotlib loads only for the commands that draw

    plots.check_path(args.out)
    plots.check_size((args.width, args.height))
    _positive("chars", args.chars)
    lm = charlm.load(args.model, weights=args.weights)
    text = _held_out(lm, args.chars) if args.text is None else args.text
    if len(text) < 2:
        raise ValueError(f"text: expected at least 2 characters, got {len(text)}")
    if not 0 <= args.layer < lm.config.layers:
        raise ValueError(f"layer: expected a layer in [0, {lm.config.layers}), got {args.layer}")
    ids = lm.vocab.encode(text, "text").unsqueeze(0).to(lm.device)
    with torch.no_grad(), record(lm.model.eval()) as rec:
        lm.model(ids)
    traces = list(rec)
    trace = rec.trace(layer=args.layer)
    state = "c" if "c" in trace.states else "h"
    if args.units:
        try:
            units = [int(u) for u in args.units.split(",")]
        except ValueError:
            raise ValueError(f"units: expected comma-separated integers, got {args.units!r}") from None
    else:
        spread = np.nanstd(trace[state][0].double().cpu().numpy(), axis=0)  # (H,)
        units = [int(u) for u in np.argsort(-spread)[:4]]
    figure = plots.new_figure((args.width, args.height))
    if args.plot == "heatmaps":
        plots.gate_heatmaps(trace, text=text, figure=figure)
    elif args.plot == "cells":
        plots.cell_traces(trace, units, state=state, text=text, figure=figure)
    elif args.plot == "saturation":
        plots.saturation(traces, figure=figure)
    else:
        top, bottom = figure.subfigures(2, 1, height_ratios=[3, 2])
        plots.gate_heatmaps(trace, text=text, figure=top)
        left, right = bottom.subfigures(1, 2, width_ratios=[3, 2])
        plots.cell_traces(trace, units, state=state, text=text, figure=left)
        if plots.SIGMOID_GATES[trace.family]:
            plots.saturation(traces, figure=right)
    print(plots.save(figure, args.out))
    return 0


def _gradient_flow(args: argparse.Namespace) -> int:
    require_matplotlib("viz gradient-flow")
    from . import flow, plots

    plots.check_path(args.out)
    for name in ("hidden", "train_steps", "seq_len", "windows"):
        _positive(name.replace("_", "-"), getattr(args, name))
    training.check_seed("seed", args.seed)
    if args.runs:
        training.check_output_dir("runs", args.runs)
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory(prefix="gatedrnn-flow-") as temp:
        if args.model:
            models = [charlm.load(directory) for directory in args.model]
        else:
            cells = [c.strip() for c in args.cells.split(",") if c.strip()]
            bad = [c for c in cells if c not in ("rnn", "lstm", "gru")]
            if bad or not cells:
                raise ValueError(f"cells: expected a comma-separated list of rnn, lstm, gru, got {args.cells!r}")
            runs = Path(args.runs or temp)
            runs.mkdir(parents=True, exist_ok=True)
            models = [flow.train_brief(cell, runs / cell, hidden=args.hidden, steps=args.train_steps,
                                       seq_len=args.seq_len, seed=args.seed, progress=not args.quiet)
                      for cell in cells]
        curves = {}
        for lm in models:
            text = lm.validation_text()
            curves[flow.label(lm, text)] = flow.last_prediction_flow(lm, text=text, windows=args.windows,
                                                                     seq_len=args.seq_len, seed=args.seed)
    title = (f"Gradient flow through time: bottom layer, L = loss of the last prediction\n"
             f"({args.windows} held-out windows of {args.seq_len} characters, measured in float64)")
    figure = plots.gradient_flow(curves, title=title)
    for name, norms in curves.items():
        print(f"{name}: ‖∂L/∂h_t‖ at the last step {norms[-1]:.3g}, {args.seq_len - 1} steps earlier {norms[0]:.3g}")
    print(plots.save(figure, args.out))
    return 0


def _explore(args: argparse.Namespace) -> int:
    from . import explorer

    explorer.check_path(args.out)
    if args.screenshot:
        explorer.check_screenshot_path(args.screenshot)
    if not 0 <= args.port <= 65535:
        raise ValueError(f"port: expected a port number in [0, 65535] (0: any free port), got {args.port}")
    _positive("chars", args.chars)
    lm = charlm.load(args.model, weights=args.weights)
    if args.text is None:
        text = _held_out(lm, args.chars)
    else:
        text, _ = charlm.read_text(args.text)
        text = text[: _positive("chars", args.chars)]
    page = explorer.render(explorer.explorer_data(lm, text))
    print(explorer.write(page, args.out))
    if args.screenshot:
        print(explorer.screenshot(args.out, args.screenshot))
    if args.serve:
        try:
            server = explorer.serve(page, args.host, args.port)
        except OSError as error:
            raise ValueError(f"port: cannot serve on {args.host}:{args.port}: {error.strerror or error}") from None
        host, port = server.server_address[:2]
        print(f"serving the explorer on http://{host}:{port}/ (Ctrl-C to stop)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
    return 0
