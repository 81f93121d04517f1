"""Matplotlib plots of recorded gates (:class:`gatedrnn.inspect.Trace`) and of gradient flow through time.

Every function draws into a new figure of an exact pixel size, or into a given figure or subfigure (to compose a
dashboard), and returns it; :func:`save` writes PNG or SVG. No pyplot: figures are plain ``Figure`` objects, so
plotting works headless and leaves no global state behind.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure, SubFigure
from torch import Tensor

from .. import training
from ..inspect import Trace
from ..training import atomic_write

SIGMOID_GATES = {"lstm": ("i", "f", "o", "d"), "gru": ("r", "z"), "rnn": (), "clockwork": ("active",),
                 "grid": ("i", "f", "o", "i_depth", "f_depth", "o_depth"), "mingru": ("z",),
                 "minlstm": ("f", "i", "f_norm", "i_norm"), "slstm": ("i", "f", "o")}
"""Gates squashed to (0, 1), whose saturation means "fully open" or "fully closed" (Karpathy et al. 2015); the
sLSTM's ``i`` and ``f`` are the stabilised gates, in [0, 1] too."""
UNBOUNDED = {"lstm": ("c",), "mingru": ("h_tilde",), "minlstm": ("h_tilde",), "slstm": ("c", "n", "m")}
"""Signals without a fixed range (cell states, the min cells' candidate, the sLSTM's normaliser and stabiliser),
coloured on a scale of their own."""

FORMATS = (".png", ".svg")

Canvas = Figure | SubFigure


MAX_PIXELS = 2**16 - 1
"""The longest side of an image that matplotlib's renderer draws."""


def check_size(size: tuple[int, int]) -> tuple[int, int]:
    """``(width, height)`` in pixels that can be drawn: each side an int in ``[100, 65535]``, and the image's
    pixels (rendered and encoded: 8 bytes each) within the memory available."""
    width, height = size
    if not (isinstance(width, int) and isinstance(height, int) and 100 <= width <= MAX_PIXELS
            and 100 <= height <= MAX_PIXELS):
        raise ValueError(f"size: expected (width, height) in pixels, each an int >= 100 and <= {MAX_PIXELS} "
                         f"(--width, --height), got {(width, height)!r}")
    training.require_memory(f"image: --width {width} --height {height}", 8 * width * height, torch.device("cpu"))
    return width, height


def new_figure(size: tuple[int, int], dpi: int = 100) -> Figure:
    """A figure of exactly ``size = (width, height)`` pixels when saved as PNG at ``dpi``."""
    width, height = check_size(size)
    return Figure(figsize=(width / dpi, height / dpi), dpi=dpi, layout="constrained")


def check_path(path: str | os.PathLike[str]) -> Path:
    """``path`` if a plot can be saved there (``.png`` or ``.svg`` in an existing directory), else ``ValueError``."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise ValueError(f"out: expected a file name ending in .png or .svg, got {str(path)!r}")
    if not path.parent.is_dir():
        raise ValueError(f"out: directory {str(path.parent)!r} does not exist")
    return training.check_output_file("out", path)


def save(figure: Figure, path: str | os.PathLike[str]) -> Path:
    """Write ``figure`` to ``path`` (``.png`` or ``.svg``), atomically, at the figure's own size and dpi."""
    path = check_path(path)
    buffer = io.BytesIO()
    figure.savefig(buffer, format=path.suffix.lower()[1:], dpi=figure.dpi)
    atomic_write(path, buffer.getvalue())
    return path


def _canvas(figure: Canvas | None, size: tuple[int, int]) -> Canvas:
    return new_figure(size) if figure is None else figure


def _sequence(trace: Trace, name: str, sequence: int) -> np.ndarray:
    """``trace[name]`` of one sequence, valid steps only: ``(T_b, H)`` as NumPy."""
    batch = trace[name].shape[0]
    if not (isinstance(sequence, int) and 0 <= sequence < batch):
        raise ValueError(f"sequence: expected an index in [0, {batch}), got {sequence!r}")
    length = int(trace.lengths[sequence])
    return trace[name][sequence, :length].double().cpu().numpy()


def _char_label(c: str) -> str:
    return {"\n": "↵", " ": "␣", "\t": "⇥"}.get(c, c)


def _time_axis(ax: object, steps: int, text: str | None) -> None:
    """Label the time axis with the characters of ``text`` when they fit, else with step numbers."""
    if text is not None and len(text) >= steps and steps <= 120:
        ax.set_xticks(range(steps))  # type: ignore[attr-defined]
        ax.set_xticklabels([_char_label(c) for c in text[:steps]], fontsize=7, family="monospace")  # type: ignore
        ax.tick_params(axis="x", length=0)  # type: ignore[attr-defined]
    else:
        ax.set_xlabel("step t")  # type: ignore[attr-defined]


def gate_heatmaps(trace: Trace, *, sequence: int = 0, text: str | None = None, figure: Canvas | None = None,
                  size: tuple[int, int] = (1200, 900)) -> Canvas:
    """One heat map per gate (and the states ``c`` of an LSTM, ``c, n, m`` of an sLSTM): unit (rows) × step
    (columns), one sequence.

    Sigmoid gates are coloured on [0, 1]; ``tanh`` gates (``g``, ``n``, the RNN's ``h``) on [-1, 1]; ``c``, the
    min cells' candidate ``h_tilde`` and the sLSTM's ``n`` and ``m`` on a scale symmetric around 0. ``text``, the
    characters that were read, labels the steps when at most 120.
    """
    canvas = _canvas(figure, size)
    names = [*trace.gates, *(name for name in ("c", "n", "m") if name in UNBOUNDED.get(trace.family, ()))]
    axes = canvas.subplots(len(names), 1, sharex=True, squeeze=False)[:, 0]
    for ax, name in zip(axes, names):
        values = _sequence(trace, name, sequence).T  # (H, T)
        if name in SIGMOID_GATES[trace.family]:
            limits, cmap = (0.0, 1.0), "viridis"
        else:
            unbounded = name in UNBOUNDED.get(trace.family, ())
            bound = max(float(np.abs(values).max()), 1e-6) if unbounded else 1.0
            limits, cmap = (-bound, bound), "RdBu_r"
        image = ax.imshow(values, aspect="auto", interpolation="nearest", cmap=cmap, vmin=limits[0],
                          vmax=limits[1], origin="lower")
        ax.set_ylabel(f"{name}\nunit")
        canvas.colorbar(image, ax=ax, pad=0.01, fraction=0.03)
    _time_axis(axes[-1], values.shape[1], text)
    canvas.suptitle(f"{trace.family.upper()} gates, {trace.key}, sequence {sequence}")
    return canvas


def cell_traces(trace: Trace, units: Sequence[int], *, state: str | None = None, sequence: int = 0,
                text: str | None = None, figure: Canvas | None = None,
                size: tuple[int, int] = (1200, 500)) -> Canvas:
    """The values over time of chosen ``units`` of a state (default ``c`` for LSTM, else ``h``), one sequence."""
    state = state or ("c" if "c" in trace.states else "h")
    values = _sequence(trace, state, sequence)  # (T, H)
    width = values.shape[1]
    if not units or any(not isinstance(u, int) or not 0 <= u < width for u in units):
        raise ValueError(f"units: expected unit indices in [0, {width}), got {list(units)!r}")
    canvas = _canvas(figure, size)
    ax = canvas.subplots()
    for unit in units:
        ax.plot(values[:, unit], label=f"unit {unit}", linewidth=1.2)
    ax.axhline(0.0, color="0.6", linewidth=0.6)
    ax.set_ylabel(f"{state}_t")
    ax.legend(loc="upper right", fontsize=8, ncols=min(len(units), 4))
    _time_axis(ax, values.shape[0], text)
    ax.set_title(f"{state} of chosen units, {trace.key}, sequence {sequence}")
    return canvas


def saturation(traces: Sequence[Trace], *, low: float = 0.1, high: float = 0.9, figure: Canvas | None = None,
               size: tuple[int, int] = (1200, 600)) -> Canvas:
    """Histograms over units of how often each sigmoid gate is saturated: ``< low`` (closed) or ``> high`` (open).

    One panel per layer (row) and gate (column); each unit counts once, with the fraction of its (valid) steps
    over all sequences spent below ``low`` and above ``high`` — the left/right saturation of Karpathy et al. 2015.
    """
    if not traces:
        raise ValueError("traces: expected at least one trace")
    if not 0.0 < low < high < 1.0:
        raise ValueError(f"low, high: expected 0 < low < high < 1, got low={low!r}, high={high!r}")
    # the gates some layer has (the depth-gated LSTM's bottom layer has no depth gate d)
    gates = [g for g in SIGMOID_GATES[traces[0].family] if any(g in trace.gates for trace in traces)]
    if not gates:
        raise ValueError(f"traces: a {traces[0].family.upper()} has no sigmoid gates to saturate")
    canvas = _canvas(figure, size)
    axes = canvas.subplots(len(traces), len(gates), squeeze=False, sharex=True)
    bins = np.linspace(0.0, 1.0, 21)
    for row, trace in zip(axes, traces):
        for ax, gate in zip(row, gates):
            if gate not in trace.gates:
                ax.set_axis_off()
                continue
            values = trace[gate].double().cpu().numpy()  # (B, T, H), NaN past each length
            steps = np.sum(~np.isnan(values), axis=(0, 1))  # (H,)
            closed = np.sum(values < low, axis=(0, 1)) / steps
            opened = np.sum(values > high, axis=(0, 1)) / steps
            ax.hist(closed, bins=bins, alpha=0.6, label=f"< {low}", color="tab:blue")
            ax.hist(opened, bins=bins, alpha=0.6, label=f"> {high}", color="tab:orange")
            ax.set_title(f"{trace.key}: {gate}", fontsize=9)
        row[0].set_ylabel("units")
    for ax in axes[-1]:
        ax.set_xlabel("fraction of steps")
    axes[0][-1].legend(fontsize=8)
    canvas.suptitle("Gate saturation")
    return canvas


def gradient_flow(flows: Mapping[str, Tensor], *, title: str = "Gradient flow through time",
                  figure: Canvas | None = None, size: tuple[int, int] = (1000, 600)) -> Canvas:
    """``‖∂L/∂h_t‖`` of each labelled curve on one log-scale plot, against the distance ``T-1-t`` from the end."""
    if not flows:
        raise ValueError("flows: expected at least one labelled curve")
    canvas = _canvas(figure, size)
    ax = canvas.subplots()
    for label, norms in flows.items():
        values = norms.detach().double().cpu().numpy()[::-1]  # index k = k steps before the last
        ax.plot(np.arange(len(values)), np.where(values > 0, values, np.nan), label=label, linewidth=1.5)
    ax.set_yscale("log")
    ax.set_xlabel("steps before the last step (T - 1 - t)")
    ax.set_ylabel("‖∂L/∂h_t‖")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title(title)
    return canvas
