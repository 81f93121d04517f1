"""One series for forecasting: CSV validation, chronological split, windows, scaling, baselines, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gatedrnn.datasets import bundled
from gatedrnn.timeseries import (
    Scaler,
    apply_transform,
    check_long_enough,
    chronological_split,
    errors,
    invert_transform,
    mase_scale,
    persistence,
    read_series_csv,
    seasonal_naive,
    window_origins,
    windows,
)


def _csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "series.csv"
    path.write_text(text)
    return path


def test_bundled_series() -> None:
    seattle = read_series_csv(bundled("seattle_temps_hourly.csv"), "date", "temp")
    assert len(seattle.values) == 8759 and seattle.dates[0] == "2010/01/01 00:00" and seattle.values[0] == 39.4
    aapl = read_series_csv(bundled("stocks_daily.csv.gz"), "Date", "Close", {"Ticker": "AAPL"})
    assert len(aapl.values) == 3270
    assert aapl.dates == sorted(aapl.dates)  # the file lists the newest day first; the series is chronological


def test_filters_and_sorting(tmp_path: Path) -> None:
    path = _csv(tmp_path, "t,d,v\nA,2020-01-03,3\nB,2020-01-01,9\nA,2020-01-01,1\nA,2020-01-02,2\n")
    series = read_series_csv(path, "d", "v", {"t": "A"})
    assert series.dates == ["2020-01-01", "2020-01-02", "2020-01-03"]
    np.testing.assert_array_equal(series.values, [1, 2, 3])


@pytest.mark.parametrize(("text", "filters", "message"), [
    ("day,v\n2020-01-01,1\n", {}, r"^--date-column: no column 'd' in .*; its columns are: day, v$"),
    ("d,value\n2020-01-01,1\n", {}, r"^--value-column: no column 'v'"),
    ("d,v\n2020-01-01,1\n", {"Ticker": "X"}, r"^--filter: no column 'Ticker'"),
    ("d,v\n2020-01-01,1\n2020-01-02,abc\n", {}, r"^csv: line 3 of .*: v 'abc' is not a number$"),
    ("d,v\n2020-01-01,1\n2020-01-02,\n", {}, r"^csv: line 3 of .*: v '' is not a number$"),
    ("d,v\n2020-01-01,NaN\n", {}, r"^csv: line 2 of .*: v is 'NaN'; expected a finite number$"),
    ("d,v\n2020-01-01,inf\n", {}, r"^csv: line 2 of .*: v is 'inf'; expected a finite number$"),
    ("d,v\nyesterday,1\n", {}, r"^csv: line 2 of .*: d 'yesterday' is not a date$"),
    ("d,v\n2020-01-01,1\n2020-01-01,2\n", {}, r"^csv: line 3 of .*: duplicate date '2020-01-01'$"),
    ("t,d,v\nA,2020-01-01,1\n", {"t": "B"}, r"^csv: no rows matching t=B in "),
], ids=["no-date-column", "no-value-column", "no-filter-column", "non-numeric", "empty-value", "nan", "inf",
        "bad-date", "duplicate-date", "no-match"])
def test_read_series_csv_rejects_bad_files(tmp_path: Path, text: str, filters: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        read_series_csv(_csv(tmp_path, text), "d", "v", filters)


def test_chronological_split_and_windows_never_cross_forward() -> None:
    n, window, horizon = 200, 12, 5
    train_end, val_end = chronological_split(n)
    assert (train_end, val_end) == (140, 170)
    values = np.arange(n, dtype=np.float64)  # value == time index, so windows show which steps they read
    spans = {"train": (0, train_end), "validation": (train_end, val_end), "test": (val_end, n)}
    for start, end in spans.values():
        origins = window_origins(start, end, window, horizon)
        x, y = windows(values, origins, window, horizon)
        # every target of the span is covered (after the first full window), none outside it
        assert y.min() == max(start, window) and y.max() == end - 1
        assert (x.max(1) == origins).all() and (y.min(1) == origins + 1).all()  # inputs end at the origin
        assert (np.diff(x, axis=1) == 1).all() and x.shape[1] == window and y.shape[1] == horizon
    # a difference reaching 24 steps back has no value for the first 24 steps: no window may read them
    assert window_origins(0, train_end, window, horizon, lag=24)[0] == 24 + window - 1
    train_x, train_y = windows(values, window_origins(0, train_end, window, horizon), window, horizon)
    assert train_x.max() < train_end and train_y.max() < train_end  # training never sees a later value
    with pytest.raises(ValueError, match=r"^fractions: expected three positive fractions summing to 1"):
        chronological_split(n, (0.7, 0.3, 0.0))


def test_scaler_is_fitted_on_the_training_span_only() -> None:
    values = np.concatenate([np.tile([9.0, 11.0], 35), np.full(30, 1000.0)])
    train_end, _ = chronological_split(len(values))
    scaler = Scaler.fit(values[:train_end])
    assert (scaler.mean, scaler.std) == (10.0, 1.0)
    np.testing.assert_allclose(scaler.inverse(scaler.transform(values)), values)
    with pytest.raises(ValueError, match=r"^the training span is constant \(10 throughout\)"):
        Scaler.fit(np.full(70, 10.0))
    with pytest.raises(ValueError, match=r"^--season: the training span repeats exactly every 2 steps"):
        mase_scale(np.tile([9.0, 11.0], 35), 2)


def test_baselines_and_errors() -> None:
    values = np.arange(30, dtype=np.float64) * 10
    origins = np.array([9, 20])
    np.testing.assert_array_equal(persistence(values, origins, 3), [[90, 90, 90], [200, 200, 200]])
    # season 2: step 1 reads t-1, step 2 reads t, step 3 reads t-1 again (the latest season before t)
    np.testing.assert_array_equal(seasonal_naive(values, origins, 3, 2), [[80, 90, 80], [190, 200, 190]])
    truth = np.array([[1.0, 2.0], [3.0, 4.0]])
    result = errors(truth + np.array([[1.0, -1.0], [3.0, -3.0]]), truth, scale=2.0)
    assert result == pytest.approx({"MAE": 2.0, "RMSE": np.sqrt(5.0), "MASE": 1.0})
    assert mase_scale(np.array([1.0, 2.0, 4.0, 7.0]), 1) == pytest.approx(2.0)


@pytest.mark.parametrize("transform", ["none", "log-return", "seasonal-diff"])
def test_transforms_invert_exactly(transform: str) -> None:
    values = np.exp(np.sin(np.arange(40) / 3.0)) + 1
    m = apply_transform(values, transform, season=4)
    lag = {"none": 0, "log-return": 1, "seasonal-diff": 4}[transform]
    assert np.isnan(m[:lag]).all() and np.isfinite(m[lag:]).all()
    origins = np.array([10, 20, 30])
    _, true_m = windows(m, origins, 1, 9)  # the true future differences, horizon 9 > season 4
    np.testing.assert_allclose(invert_transform(values, origins, true_m, transform, 4),
                               windows(values, origins, 1, 9)[1])


def test_log_returns_need_positive_values() -> None:
    np.testing.assert_allclose(apply_transform(np.array([1.0, np.e, 1.0]), "log-return", 1)[1:], [1.0, -1.0])
    with pytest.raises(ValueError, match=r"^transform: log returns need positive values"):
        apply_transform(np.array([1.0, 0.0]), "log-return", 1)


def test_series_shorter_than_window_and_horizon() -> None:
    with pytest.raises(ValueError, match=r"^the series has 10 steps, shorter than --window \+ --horizon = 8 \+ 3; "):
        check_long_enough(10, 8, 3, "the series")


def test_series_csv_with_a_byte_order_mark_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    path.write_bytes("\ufeffdate,value\r\n2021-01-02,2\r\n2021-01-01,1\r\n".encode())
    series = read_series_csv(path, "date", "value")
    assert series.dates == ["2021-01-01", "2021-01-02"] and series.values.tolist() == [1.0, 2.0]


def test_series_csv_mixing_zoned_and_plain_dates_or_naming_a_column_twice(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    path.write_text("date,value\n2021-01-01 00:00,1\n2021-01-01 01:00+02:00,2\n")
    with pytest.raises(ValueError, match=r"^csv: line 3 of .*: date '2021-01-01 01:00\+02:00' has time zone, the "
                                         r"date on line 2 has none; expected all dates alike$"):
        read_series_csv(path, "date", "value")
    path.write_text("date,value,value\n2021-01-01,1,2\n")
    with pytest.raises(ValueError, match=r"^--value-column: the header of .* names the column 'value' 2 times"):
        read_series_csv(path, "date", "value")
