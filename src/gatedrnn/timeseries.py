"""One time series for forecasting: CSV loading with validation, chronological split, scaling, windows, baselines.

The no-leakage rules live here, in one place:

- the split is chronological: training span, then validation span, then test span (:func:`chronological_split`);
- the scaler is fitted on the training span only (:meth:`Scaler.fit`);
- a window's targets all lie inside one span; its inputs may reach back into earlier spans (the past is known at
  forecast time), never forward (:func:`window_origins`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from .datasets import read_csv_rows


@dataclass
class Series:
    """A univariate series sorted by time: ``dates`` (strings as in the file) and ``values`` float64."""

    dates: list[str]
    values: np.ndarray


def parse_date(text: str) -> datetime:
    """ISO dates and date-times, also with ``/`` as the date separator (``2010/01/01 00:00``)."""
    return datetime.fromisoformat(text.strip().replace("/", "-"))


def read_series_csv(
    path: str | Path, date_column: str, value_column: str, filters: Mapping[str, str] | None = None
) -> Series:
    """The rows of ``path`` that match every ``filters`` column=value, sorted by date.

    A missing column, a date that does not parse, a duplicate date, or a value that is empty, not a number or not
    finite is an error naming the line of the file.
    """
    filters = dict(filters or {})
    columns = [("--date-column", date_column), ("--value-column", value_column)]
    columns += [("--filter", column) for column in filters]
    found: dict[datetime, tuple[str, float]] = {}
    zoned: tuple[int, bool] | None = None  # the first date's line and whether it has a time zone
    for line, row in read_csv_rows(path, columns):
        if any(row[column] != wanted for column, wanted in filters.items()):
            continue
        raw_date, raw_value = row[date_column] or "", (row[value_column] or "").strip()
        try:
            date = parse_date(raw_date)
        except ValueError:
            raise ValueError(f"csv: line {line} of {path}: {date_column} {raw_date!r} is not a date") from None
        try:
            value = float(raw_value)
        except ValueError:
            raise ValueError(
                f"csv: line {line} of {path}: {value_column} {raw_value!r} is not a number"
            ) from None
        if not math.isfinite(value):
            raise ValueError(f"csv: line {line} of {path}: {value_column} is {raw_value!r}; expected a finite number")
        aware = date.utcoffset() is not None
        if zoned is None:
            zoned = (line, aware)
        elif aware != zoned[1]:
            raise ValueError(f"csv: line {line} of {path}: {date_column} {raw_date!r} "
                             f"{'has' if aware else 'has no'} time zone, the date on line {zoned[0]} "
                             f"{'has none' if aware else 'has one'}; expected all dates alike")
        if date in found:
            raise ValueError(f"csv: line {line} of {path}: duplicate date {raw_date!r}")
        found[date] = (raw_date.strip(), value)
    if not found:
        where = " matching " + ", ".join(f"{c}={v}" for c, v in filters.items()) if filters else ""
        raise ValueError(f"csv: no rows{where} in {path}")
    ordered = [found[d] for d in sorted(found)]
    return Series([d for d, _ in ordered], np.array([v for _, v in ordered], dtype=np.float64))


TRANSFORMS = ("none", "log-return", "seasonal-diff")


def lag_of(transform: str, season: int) -> int:
    """How many steps back a transform's difference reaches (0: none)."""
    return {"none": 0, "log-return": 1, "seasonal-diff": season}[transform]


def apply_transform(values: np.ndarray, transform: str, season: int) -> np.ndarray:
    """What the model reads and predicts, on the series' own time index (the first ``lag`` steps are NaN):

    - ``none``: ``m_t = y_t``;
    - ``log-return``: ``m_t = log(y_t / y_{t-1})`` (prices must be positive);
    - ``seasonal-diff``: ``m_t = y_t - y_{t-s}``, the change since one season ``s`` earlier.
    """
    if transform == "none":
        return values.astype(np.float64)
    if transform == "log-return" and (values <= 0).any():
        raise ValueError("transform: log returns need positive values; this series has values <= 0")
    level = np.log(values) if transform == "log-return" else values
    lag = lag_of(transform, season)
    out = np.full(len(values), np.nan)
    out[lag:] = level[lag:] - level[:-lag]
    return out


def invert_transform(values: np.ndarray, origins: np.ndarray, m: np.ndarray, transform: str,
                     season: int) -> np.ndarray:
    """Forecasts ``(N, horizon)`` of ``y`` from forecasts ``m`` of the transformed series at each origin ``t``.

    A difference adds up from the last known level: ``y_{t+k} = y_{t+k-lag} + m_{t+k}``, where ``y_{t+k-lag}`` is
    known when ``k <= lag`` and is itself a forecast otherwise (log returns add up in log space).
    """
    if transform == "none":
        return m
    lag = lag_of(transform, season)
    level = np.log(values) if transform == "log-return" else values
    out = np.empty_like(m)
    for k in range(1, m.shape[1] + 1):
        previous = level[origins + k - lag] if k <= lag else out[:, k - 1 - lag]
        out[:, k - 1] = previous + m[:, k - 1]
    return np.exp(out) if transform == "log-return" else out


def chronological_split(n: int, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)) -> tuple[int, int]:
    """``(train_end, val_end)``: steps ``[0, train_end)`` train, ``[train_end, val_end)`` validate, the rest test."""
    if len(fractions) != 3 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"fractions: expected three positive fractions summing to 1, got {fractions}")
    train_end = int(round(fractions[0] * n))
    return train_end, train_end + int(round(fractions[1] * n))


@dataclass
class Scaler:
    """``z = (y - mean) / std`` with ``mean`` and ``std`` of the training span."""

    mean: float
    std: float

    @classmethod
    def fit(cls, train_values: np.ndarray) -> Scaler:
        """Fit on the training span only: statistics of later spans would leak into the inputs.

        A constant span has no scale (and nothing to learn): a ``ValueError``.
        """
        std = float(np.std(train_values))
        if not std > 0:
            raise ValueError(f"the training span is constant ({float(train_values[0]):g} throughout); "
                             f"there is nothing to learn from it")
        return cls(float(np.mean(train_values)), std)

    def transform(self, values: np.ndarray) -> np.ndarray:
        return (values - self.mean) / self.std

    def inverse(self, z: np.ndarray) -> np.ndarray:
        return z * self.std + self.mean


def window_origins(start: int, end: int, window: int, horizon: int, lag: int = 0) -> np.ndarray:
    """Forecast origins ``t`` whose targets ``y[t+1 .. t+horizon]`` lie in ``[start, end)``.

    The inputs of origin ``t`` are ``m[t-window+1 .. t]``; the first ``lag`` steps of a differenced series ``m``
    have no value, so an origin needs ``t >= lag + window - 1``.
    """
    first = max(start - 1, lag + window - 1)
    return np.arange(first, end - horizon, dtype=np.int64)


def windows(values: np.ndarray, origins: np.ndarray, window: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs ``(N, window)`` and targets ``(N, horizon)`` for each origin."""
    inputs = origins[:, None] + np.arange(-window + 1, 1)  # (N, window) indices up to the origin
    targets = origins[:, None] + np.arange(1, horizon + 1)  # (N, horizon) indices after it
    return values[inputs], values[targets]


def check_long_enough(n: int, window: int, horizon: int, what: str) -> None:
    if n < window + horizon:
        raise ValueError(
            f"{what} has {n} steps, shorter than --window + --horizon = {window} + {horizon}; "
            "use a longer series or a smaller window/horizon"
        )


def persistence(values: np.ndarray, origins: np.ndarray, horizon: int) -> np.ndarray:
    """Naive forecast ``y_hat[t+h] = y[t]`` for every step ``h`` of the horizon: ``(N, horizon)``."""
    return np.repeat(values[origins][:, None], horizon, axis=1)


def seasonal_naive(values: np.ndarray, origins: np.ndarray, horizon: int, season: int) -> np.ndarray:
    """``y_hat[t+h] = y[t+h-k*season]`` with the smallest ``k >= 1`` that reaches a known value (``<= t``)."""
    h = np.arange(1, horizon + 1)
    back = season * ((h - 1) // season + 1)  # (horizon,) how far back each step looks
    return values[origins[:, None] + h - back]


def mase_scale(train_values: np.ndarray, season: int) -> float:
    """The in-sample MAE of the (seasonal) naive forecast on the training span: MASE's denominator."""
    if len(train_values) <= season:
        raise ValueError(f"season: the training span ({len(train_values)} steps) must be longer than {season}")
    scale = float(np.mean(np.abs(train_values[season:] - train_values[:-season])))
    if not scale > 0:
        raise ValueError(f"--season: the training span repeats exactly every {season} steps, so the seasonal naive "
                         f"forecast is perfect there and MASE (its error as the unit) is undefined")
    return scale


def errors(forecast: np.ndarray, truth: np.ndarray, scale: float) -> dict[str, float]:
    """MAE, RMSE and MASE (MAE / ``scale``) over every origin and every step of the horizon."""
    diff = forecast - truth
    mae = float(np.mean(np.abs(diff)))
    return {"MAE": mae, "RMSE": float(np.sqrt(np.mean(diff**2))), "MASE": mae / scale}
