"""``gatedrnn export``: a run directory of ``charlm``, ``classify`` or ``forecast`` as one ONNX file.

The task is read from the run's ``config.json``; its model is loaded as ``sample``/``predict`` load it, wrapped in a
module whose inputs and outputs are plain tensors with names, and exported with :func:`gatedrnn.onnx.export_onnx`.
What a program needs to use the file without the run directory (the vocabulary, labels, scaling) goes into the
model's metadata (``custom_metadata_map`` in onnxruntime), as JSON strings:

=========  ==========================================  ===========================  ==============================
task       inputs                                      outputs                      metadata
=========  ==========================================  ===========================  ==============================
charlm     ``ids`` (B, T) int64, ``h0`` (L, B, H)      ``logits`` (B, T, V),        ``vocab`` (the characters, by
           (and ``c0`` for LSTM)                       ``h_n`` (and ``c_n``)        id)
classify   ``x`` (T, B) int64 token ids or (T, B, C)   ``logits`` (B, K)            ``labels``; ``vocab``,
           float32 scaled values, ``lengths`` (B,)                                  ``tokens`` and
                                                                                    ``token_pattern`` (text) or
                                                                                    ``channel_mean``/``_std``
forecast   ``x`` (window, B, 1) float32 scaled values  ``forecast`` (B, horizon),   ``scaler_mean``,
                                                       scaled                       ``scaler_std``, ``transform``,
                                                                                    ``window``, ``horizon``
=========  ==========================================  ===========================  ==============================

Batch size and sequence length are free (the forecaster's window is fixed: its base forecast reads positions of
it). The file is written next to ``--out`` first and moved into place once complete.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import training
from ..datasets import WORD_PATTERN
from ..onnx import export_onnx
from . import charlm, classify, forecast, supervised

EXPORTERS = ("dynamo", "torchscript")


class _CharLMGraph(nn.Module):
    """``(ids, h0) -> (logits, h_n)``: one call continues text from a state, as a generation loop feeds it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: Tensor, h0: Tensor) -> tuple[Tensor, Tensor]:
        return self.model(ids, h0)


class _CharLSTMGraph(_CharLMGraph):
    """``(ids, h0, c0) -> (logits, h_n, c_n)``."""

    def forward(self, ids: Tensor, h0: Tensor, c0: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # type: ignore[override]
        logits, (h_n, c_n) = self.model(ids, (h0, c0))
        return logits, h_n, c_n


def _task(run: Path) -> str:
    """``charlm``, ``classify`` or ``forecast``, from the run's ``config.json``."""
    if not run.is_dir():
        raise ValueError(f"model: {run} is not a directory (expected a run directory of charlm, classify or forecast)")
    if not (run / supervised.CONFIG).is_file():
        raise ValueError(f"model: {run} has no {supervised.CONFIG}; expected a run directory of charlm, classify or "
                         f"forecast")
    saved = training.read_json(run / supervised.CONFIG)
    if isinstance(saved, dict) and isinstance(saved.get("config"), dict):
        return "charlm"
    if isinstance(saved, dict) and "labels" in saved:
        return "classify"
    if isinstance(saved, dict) and "horizon" in saved:
        return "forecast"
    raise ValueError(f"model: {run / supervised.CONFIG} is not the configuration of a charlm, classify or forecast run")


def _charlm(run: Path) -> tuple[nn.Module, tuple[Tensor, ...], list[str], list[str], dict, dict[str, Any]]:
    lm = charlm.load(run)
    model, config = lm.model, lm.config
    weight = next(model.parameters())
    B, T = 2, 5
    ids = torch.zeros(B, T, dtype=torch.int64)
    widths = model.rnn.spec.state_widths()
    states = tuple(torch.zeros(config.layers, B, w, dtype=weight.dtype) for w in widths)
    lstm = len(widths) == 2
    graph = _CharLSTMGraph(model) if lstm else _CharLMGraph(model)
    state_in, state_out = (["h0", "c0"], ["h_n", "c_n"]) if lstm else (["h0"], ["h_n"])
    dynamic = {"ids": {0: "B", 1: "T"}, **{name: {1: "B"} for name in state_in}}
    return (graph, (ids, *states), ["ids", *state_in], ["logits", *state_out], dynamic,
            {"task": "charlm", "vocab": lm.vocab.chars})


def _classify(run: Path) -> tuple[nn.Module, tuple[Tensor, ...], list[str], list[str], dict, dict[str, Any]]:
    config, vocab, model = classify.load(run, torch.device("cpu"))
    T, B = 5, 2
    if vocab is not None:
        x = torch.ones(T, B, dtype=torch.int64)
        # word tokens: the lower-cased text's matches of token_pattern (Python's re), as training read them
        meta: dict[str, Any] = {"vocab": vocab.tokens, "tokens": config.tokens, "token_pattern": WORD_PATTERN}
        dynamic = {"x": {0: "T", 1: "B"}, "lengths": {0: "B"}}
    else:
        x = torch.zeros(T, B, len(config.channel_mean))
        meta = {"channel_mean": config.channel_mean, "channel_std": config.channel_std}
        dynamic = {"x": {0: "T", 1: "B"}, "lengths": {0: "B"}}
    lengths = torch.full((B,), T, dtype=torch.int64)
    return (model, (x, lengths), ["x", "lengths"], ["logits"], dynamic,
            {"task": "classify", "labels": config.labels, **meta})


def _forecast(run: Path) -> tuple[nn.Module, tuple[Tensor, ...], list[str], list[str], dict, dict[str, Any]]:
    config, model = forecast.load(run, torch.device("cpu"))
    x = torch.zeros(config.window, 2, 1)
    meta = {"task": "forecast", "scaler_mean": config.scaler_mean, "scaler_std": config.scaler_std,
            "transform": config.transform, "window": config.window, "horizon": config.horizon,
            "season": config.season}
    return model, (x,), ["x"], ["forecast"], {"x": {1: "B"}}, meta


_LOADERS = {"charlm": _charlm, "classify": _classify, "forecast": _forecast}


def export_run(run: Path, out: Path, *, exporter: str = "dynamo") -> str:
    """Export the model of the run directory ``run`` to the ONNX file ``out``; returns the task's name."""
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter: expected one of {', '.join(EXPORTERS)}, got {exporter!r}")
    missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(f"export: needs the packages {', '.join(missing)}; install them with "
                         f"pip install 'gatedrnn[onnx]'")
    if out.suffix != ".onnx":
        raise ValueError(f"out: expected a file name ending in .onnx, got {out}")
    if not out.parent.is_dir():
        raise ValueError(f"out: the directory {out.parent} does not exist")
    task = _task(run)
    model, args, inputs, outputs, dynamic, meta = _LOADERS[task](run)
    import onnx

    handle, partial = tempfile.mkstemp(suffix=".onnx", dir=out.parent, prefix=f".{out.stem}-")
    os.close(handle)
    try:
        # The exporters' notes (tracer warnings about the layers' input checks, progress lines) are not the user's
        # concern here: the result is checked by the tests, and an error still raises.
        logger = logging.getLogger("torch.onnx")
        level = logger.level
        logger.setLevel(logging.ERROR)
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                export_onnx(model, args, partial, dynamo=exporter == "dynamo", input_names=inputs,
                            output_names=outputs, dynamic=dynamic)
        finally:
            logger.setLevel(level)
        proto = onnx.load(partial)
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
        onnx.save(proto, partial)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(partial, 0o666 & ~umask)  # as a file created directly (mkstemp makes it private)
        os.replace(partial, out)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return task


def _export_command(args: argparse.Namespace) -> int:
    task = export_run(args.model, args.out, exporter=args.exporter)
    print(f"{task} model of {args.model} exported to {args.out} (onnx, {args.exporter} exporter)")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``gatedrnn export`` to the CLI."""
    p = commands.add_parser("export", help="export a charlm, classify or forecast run to ONNX",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                            description="Export the model of a run directory to one ONNX file that onnxruntime runs "
                                        "at any batch size and sequence length; what the program that uses it needs "
                                        "(vocabulary, labels, scaling) is in the file's metadata.")
    p.add_argument("--model", type=Path, required=True, help="run directory of charlm, classify or forecast train")
    p.add_argument("--out", type=Path, required=True, help="the ONNX file to write (.onnx)")
    p.add_argument("--exporter", default="dynamo", choices=EXPORTERS,
                   help="torch.onnx's exporter: dynamo (torch.export) or torchscript (the legacy tracer)")
    p.set_defaults(run=_export_command)
