"""Simple features of a play's text, one value per character, to find the units that track them.

Karpathy, Johnson & Fei-Fei (2015) found LSTM cells that count the position in a line or switch on inside quotes.
Each feature here is a function of the text alone; the explorer ranks the recorded units by their correlation
with each. The value at ``t`` describes the model's situation after reading character ``t``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

_SPEAKER = re.compile(r"^[A-Z][A-Z '\-]*[A-Z]\.$")
"""A speaker heading of the Gutenberg plays: a line of capitals ending in a full stop (``FIRST WITCH.``)."""


def inside_quotes(text: str) -> np.ndarray:
    """1 from an opening ``"`` up to its closing ``"`` (both included); a blank line closes an open quote."""
    values = np.zeros(len(text))
    inside = False
    for t, c in enumerate(text):
        if c == '"':
            values[t] = 1.0
            inside = not inside
            continue
        if c == "\n" and text[t - 1 : t] == "\n":
            inside = False
        values[t] = float(inside)
    return values


def position_in_line(text: str) -> np.ndarray:
    """Characters read since the last newline (0 for the newline itself)."""
    values = np.zeros(len(text))
    column = 0
    for t, c in enumerate(text):
        column = 0 if c == "\n" else column + 1
        values[t] = column
    return values


def after_newline(text: str) -> np.ndarray:
    """1 where the character just read is a newline: the next character starts a line."""
    return np.array([float(c == "\n") for c in text])


def _lines(text: str, keep: Callable[[str], bool]) -> np.ndarray:
    """1 on every character (newline excluded) of the lines for which ``keep(line)`` holds."""
    values = np.zeros(len(text))
    start = 0
    for line in text.split("\n"):
        if keep(line):
            values[start : start + len(line)] = 1.0
        start += len(line) + 1
    return values


def speaker_name(text: str) -> np.ndarray:
    """1 inside a speaker heading such as ``LADY MACBETH.`` (a line of capitals ending in a full stop)."""
    return _lines(text, lambda line: bool(_SPEAKER.match(line)))


def stage_direction(text: str) -> np.ndarray:
    """1 inside square brackets, the stage directions of these editions (``[Enter three Witches.]``)."""
    values = np.zeros(len(text))
    depth = 0
    for t, c in enumerate(text):
        if c == "[":
            depth += 1
        values[t] = float(depth > 0)
        if c == "]":
            depth = max(0, depth - 1)
    return values


FEATURES: dict[str, tuple[str, Callable[[str], np.ndarray]]] = {
    "inside quotes": ('between double quotes "…"', inside_quotes),
    "position in line": ("characters since the last newline", position_in_line),
    "after a newline": ("the character just read is a newline", after_newline),
    "speaker name": ("inside a speaker heading such as LADY MACBETH.", speaker_name),
    "stage direction": ("inside [square brackets]", stage_direction),
}
"""Name -> (what it means, function of the text)."""


def correlations(values: np.ndarray, feature: np.ndarray) -> np.ndarray | None:
    """Pearson correlation of each column of ``values`` ``(T, U)`` with ``feature`` ``(T,)``; None if it is constant.

    A constant column (a unit that never changes) correlates 0.
    """
    f = feature - feature.mean()
    f_norm = np.sqrt(np.sum(f * f))
    if f_norm == 0:
        return None
    v = values - values.mean(axis=0)
    v_norm = np.sqrt(np.sum(v * v, axis=0))
    return np.where(v_norm > 0, (f @ v) / (f_norm * np.where(v_norm > 0, v_norm, 1.0)), 0.0)
