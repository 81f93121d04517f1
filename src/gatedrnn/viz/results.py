"""Plots of the tasks' results (confusion matrix, forecast against truth): PNG files written with matplotlib's
file-only backend (no display needed). Without matplotlib (the ``viz`` extra) no plot is drawn and the report's
plot line says so (:func:`plot_line`); the scores do not need it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from . import INSTALL_VIZ, has_matplotlib


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")  # write files only; a headless machine has no display
    import matplotlib.pyplot as plt

    return plt


def plot_line(path: Path) -> str:
    """The report's line about its plot: where it is, or why it was not drawn."""
    if has_matplotlib():
        return f"plot: {path}"
    return f"plot: not drawn (matplotlib is not installed; {INSTALL_VIZ})"


def confusion_plot(path: Path, matrix: np.ndarray, labels: Sequence[str], title: str) -> None:
    """A confusion-matrix heat map with the count in each cell (rows: true class, columns: predicted); nothing
    without matplotlib."""
    if not has_matplotlib():
        return
    plt = _pyplot()
    size = 2.5 + 0.5 * len(labels)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ticks = range(len(labels))
    ax.set_xticks(ticks, labels, rotation=45, ha="right")
    ax.set_yticks(ticks, labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    high = matrix.max() / 2 if matrix.size else 0
    for (i, j), n in np.ndenumerate(matrix):
        ax.text(j, i, str(n), ha="center", va="center", color="white" if n > high else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def forecast_plot(path: Path, truth: np.ndarray, forecasts: Mapping[str, np.ndarray], title: str,
                  ylabel: str) -> None:
    """The true series and each named forecast over the same target steps; nothing without matplotlib."""
    if not has_matplotlib():
        return
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(11, 4))
    ax.plot(truth, color="black", linewidth=1.2, label="truth")
    for name, values in forecasts.items():
        ax.plot(values, linewidth=0.9, alpha=0.85, label=name)
    ax.set_xlabel("step of the test span")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
