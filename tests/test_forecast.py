"""``gatedrnn forecast train|eval|predict``: a small series end to end, no leakage, stocks, bad input."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from gatedrnn.cli import main
from gatedrnn.tasks import forecast

SMALL = ["--window", "24", "--horizon", "6", "--season", "24", "--hidden-size", "8", "--eval-every", "10",
         "--batch-size", "32"]


def _series_csv(path: Path, values: np.ndarray) -> Path:
    start = datetime(2021, 3, 1)
    rows = [f"{(start + timedelta(hours=i)).strftime('%Y-%m-%d %H:%M')},{v:.6f}" for i, v in enumerate(values)]
    path.write_text("when,load\n" + "\n".join(rows) + "\n")
    return path


def _daily_cycle(n: int = 400, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return 20 + 5 * np.sin(2 * np.pi * t / 24) + 0.01 * t + rng.normal(0, 0.3, n)


def _train(tmp_path: Path, csv: Path, *extra: str) -> Path:
    out = tmp_path / "run"
    assert main(["forecast", "train", "--csv", str(csv), "--date-column", "when", "--value-column", "load",
                 *SMALL, "--out", str(out), *extra]) == 0
    return out


def test_train_eval_predict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = _series_csv(tmp_path / "load.csv", _daily_cycle())
    out = _train(tmp_path, csv, "--steps", "20", "--base", "seasonal", "--cell", "gru")
    capsys.readouterr()
    assert main(["forecast", "eval", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[-4:] for line in text.splitlines()
            if line[:4] in ("gru ", "pers", "seas", "base")}
    assert set(rows) == {"gru", "persistence", "seasonal", "base"}
    assert rows["base"] == rows["seasonal"]  # the untrained model is its base forecast, here seasonal naive
    # 15% of 400 steps = 60 test targets → 60 - 6 + 1 origins whose 6 targets all lie in the test span
    assert "55 origins, horizon 6" in text and (out / "forecast_test.png").stat().st_size > 1000
    assert main(["forecast", "predict", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    last = datetime(2021, 3, 1) + timedelta(hours=399)
    assert [line.split("\t")[0] for line in lines] == [
        (last + timedelta(hours=k)).strftime("%Y-%m-%d %H:%M") for k in range(1, 7)]
    assert all(5 < float(line.split("\t")[1]) < 40 for line in lines)


def test_the_model_starts_at_its_base_forecast(tmp_path: Path) -> None:
    """An untrained model is exactly the base forecast (here seasonal naive), so any gain is learned."""
    csv = _series_csv(tmp_path / "load.csv", _daily_cycle())
    config = forecast.ForecastConfig(data="csv", csv=str(csv), date_column="when", value_column="load", window=24,
                                     horizon=6, season=24, base="seasonal", hidden_size=4)
    data = forecast.prepare(config, fit=True)
    model = forecast.Forecaster(config)
    origins = data.origins["test"]
    predicted = forecast.forecast(model, data.model_values, data.values, origins, config, forecast.torch.device("cpu"))
    np.testing.assert_allclose(predicted, forecast.seasonal_naive(data.values, origins, 6, 24), rtol=1e-5)


def test_no_leakage_from_later_spans(tmp_path: Path) -> None:
    """Scaling, MASE scale and training windows depend on the training span only."""
    values = _daily_cycle()
    changed = values.copy()
    changed[280:] *= 10  # 280 = 70% of 400: everything after the training span
    configs, data = [], []
    for name, series in (("a.csv", values), ("b.csv", changed)):
        config = forecast.ForecastConfig(data="csv", csv=str(_series_csv(tmp_path / name, series)),
                                         date_column="when", value_column="load", window=24, horizon=6, season=24,
                                         transform="seasonal-diff", base="last")
        data.append(forecast.prepare(config, fit=True))
        configs.append(config)
    for name in forecast.FITTED:
        assert getattr(configs[0], name) == getattr(configs[1], name), name
    train = data[0].origins["train"]
    assert train.max() + 6 < 280  # the last training target is inside the training span
    inputs = [forecast.windows(d.model_values, train, 24, 6)[0] for d in data]
    np.testing.assert_array_equal(inputs[0], inputs[1])
    assert data[0].origins["validation"][0] + 1 == 280 and data[0].origins["test"][0] + 1 == 340


def test_stocks_log_returns_and_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ibm"
    args = ["forecast", "train", "--data", "stocks", "--ticker", "IBM", "--transform", "log-return", "--window", "10",
            "--horizon", "3", "--hidden-size", "8", "--eval-every", "5", "--out", str(out)]
    assert main([*args, "--steps", "5"]) == 0
    config = forecast.load_config(out)
    assert (config.filters, config.base, config.value_column) == ({"Ticker": "IBM"}, "zero", "Close")
    assert main([*args, "--steps", "10", "--resume"]) == 0
    assert "trained 10 steps" in capsys.readouterr().out
    assert main(["forecast", "eval", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Close (Ticker=IBM), test span 20" in text and "transform log-return" in text


def _error(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("gatedrnn: error: ") and err.count("\n") == 1, err
    return err


def test_bad_input_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = _series_csv(tmp_path / "load.csv", _daily_cycle())
    base = ["forecast", "train", "--csv", str(csv), "--date-column", "when", "--value-column", "load", *SMALL,
            "--steps", "1", "--out", str(tmp_path / "x")]
    assert "--value-column: no column 'temp' in " in _error(capsys, [*base, "--value-column", "temp"])
    assert "--date-column: no column 'date'" in _error(capsys, [*base, "--date-column", "date"])
    assert "csv: give --date-column and --value-column with --csv" in _error(
        capsys, ["forecast", "train", "--csv", str(csv), "--out", str(tmp_path / "x")])
    text = csv.read_text().splitlines()
    for name, line, value, message in (("nan.csv", 5, "nan", "load is 'nan'; expected a finite number"),
                                       ("text.csv", 7, "n/a", "load 'n/a' is not a number")):
        bad = text.copy()
        bad[line - 1] = bad[line - 1].split(",")[0] + "," + value
        (tmp_path / name).write_text("\n".join(bad) + "\n")
        assert f"csv: line {line} of {tmp_path / name}: {message}" in _error(capsys, [*base[:3], str(tmp_path / name),
                                                                                    *base[4:]])
    short = _series_csv(tmp_path / "short.csv", _daily_cycle(25))
    assert "has 25 steps, shorter than --window + --horizon = 24 + 6" in _error(capsys, [
        *base[:3], str(short), *base[4:]])
    assert "--filter: expected COLUMN=VALUE, got 'Ticker'" in _error(capsys, [*base, "--filter", "Ticker"])
    assert "csv: no rows matching Ticker=ZZZZ in " in _error(capsys, [
        "forecast", "train", "--data", "stocks", "--ticker", "ZZZZ", "--out", str(tmp_path / "x")])
    assert "transform: expected 'none' or 'log-return' or 'seasonal-diff', got 'log'" in _error(
        capsys, [*base, "--transform", "log"])
    assert "--window: the seasonal base reads one season back; expected a window >= --season 24, got 12" in _error(
        capsys, [*base, "--base", "seasonal", "--window", "12"])
    assert "--horizon: expected an int >= 1, got 0" in _error(capsys, [*base, "--horizon", "0"])
    assert "nothing is not a directory" in _error(capsys, ["forecast", "predict", "--out", str(tmp_path / "nothing")])
