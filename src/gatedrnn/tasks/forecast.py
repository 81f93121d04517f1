"""Time-series forecasting: data → windows → model → training loop → checkpoint → evaluation against baselines.

One series is read from a CSV (a date column and a value column, optionally filtered, e.g. one ticker of a file
holding several), sorted by date and split chronologically 70/15/15 into training, validation and test spans.
The scaler is fitted on the training span only. Each example is a window of ``window`` past values ending at an
origin ``t`` and the ``horizon`` values after it; the targets of an example lie inside one span.

The model reads a window of the scaled, optionally differenced series ``m`` (``--transform``: ``none``,
``m_t = y_t``; ``log-return``, ``m_t = \\log(y_t / y_{t-1})``; ``seasonal-diff``, ``m_t = y_t - y_{t-s}``)
through a gatedrnn LSTM/GRU/RNN and maps its last state ``h_t`` to all ``horizon`` steps at once (direct
multi-step forecasting), as a correction to a simple base forecast ``b`` read from the window (``--base``):

.. math::

    \\hat m_{t+k} = b_{t+k} + (W h_t + c)_k, \\qquad k = 1 \\dots \\text{horizon},

with ``b_{t+k} = m_t`` (``last``), ``b_{t+k} = m_{t+k-s}`` (``seasonal``: one season ``s`` earlier, for
``k > s`` the latest season before ``t``) or ``0`` (``zero``). The output layer starts at zero, so an untrained
model is its base forecast and training has to earn any improvement over it. Differences are added back up to
levels before scoring, ``\\hat y_{t+k} = y_{t+k-\\text{lag}} + \\hat m_{t+k}`` (log returns in log space),
using a forecast level where the known ones end. For hourly temperatures the preset is ``seasonal-diff`` with
base ``zero``: the model forecasts the change since the same hour of the day before from scratch (its untrained
forecast is "the same hour yesterday plus the training span's mean daily change").

``eval`` scores the forecasts of every origin of the test span with MAE, RMSE and MASE next to two baselines on
the same targets: persistence (``\\hat y_{t+k} = y_t``) and seasonal naive (the value one season earlier, e.g.
24 h for hourly temperatures), and plots forecast against truth.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .. import training
from ..checks import check_choice, check_finite_float, check_positive
from ..datasets import bundled
from ..timeseries import (
    TRANSFORMS,
    Scaler,
    Series,
    apply_transform,
    check_long_enough,
    chronological_split,
    errors,
    invert_transform,
    lag_of,
    mase_scale,
    parse_date,
    persistence,
    read_series_csv,
    seasonal_naive,
    window_origins,
    windows,
)
from ..variants import variant
from ..viz import results as plots
from . import supervised

PRESETS = {
    # data: the bundled file, its columns and the defaults that suit the series
    "seattle": {"csv": "seattle_temps_hourly.csv", "date_column": "date", "value_column": "temp", "filters": {},
                "season": 24, "window": 72, "horizon": 24, "transform": "seasonal-diff", "base": "zero"},
    "stocks": {"csv": "stocks_daily.csv.gz", "date_column": "Date", "value_column": "Close",
               "filters": {"Ticker": "AAPL"}, "season": 5, "window": 30, "horizon": 5, "transform": "none",
               "base": "last"},
}
BASES = ("last", "seasonal", "zero")
FITTED = ("scaler_mean", "scaler_std", "mase_scale")
"""The configuration fields that training fits to the training span."""


@dataclass
class ForecastConfig:
    """Everything that defines a forecaster and its data; saved as ``config.json`` beside the weights."""

    data: str = "seattle"
    csv: str | None = None
    date_column: str = "date"
    value_column: str = "temp"
    filters: dict[str, str] = field(default_factory=dict)
    transform: str = "none"
    base: str = "seasonal"
    window: int = 72
    horizon: int = 24
    season: int = 24
    cell: str = "lstm"
    layers: int = 1
    hidden_size: int = 64
    dropout: float = 0.0
    batch_size: int = 64
    seed: int = 0
    engine: str = "auto"
    # Fitted on the training span when training starts.
    scaler_mean: float = 0.0
    scaler_std: float = 1.0
    mase_scale: float = 1.0

    def check(self) -> None:
        """Raise ``ValueError`` naming the first option with a bad value."""
        check_choice("data", self.data, ("seattle", "stocks", "csv"))
        check_choice("transform", self.transform, TRANSFORMS)
        check_choice("base", self.base, BASES)
        supervised.check_model(self)
        for name in ("window", "horizon", "season"):
            supervised.check_int(f"--{name}", getattr(self, name))
        for name in ("date_column", "value_column"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"--{name.replace('_', '-')}: expected a column name, got {getattr(self, name)!r}")
        if not (isinstance(self.filters, dict) and all(isinstance(k, str) and isinstance(v, str)
                                                       for k, v in self.filters.items())):
            raise ValueError(f"--filter: expected COLUMN=VALUE pairs, got {self.filters!r}")
        if self.base == "seasonal" and self.window < self.season:
            raise ValueError(f"--window: the seasonal base reads one season back; expected a window >= --season "
                             f"{self.season}, got {self.window}")
        if self.data == "csv" and self.csv is None:
            raise ValueError("csv: --data csv needs --csv FILE")

    def check_fitted(self) -> None:
        """What training fitted: a finite mean, and a positive scale and MASE denominator."""
        check_finite_float("scaler_mean", self.scaler_mean)
        check_positive("scaler_std", self.scaler_std)
        check_positive("mase_scale", self.mase_scale)

    def source(self) -> str:
        return self.csv if self.data == "csv" else str(bundled(PRESETS[self.data]["csv"]))  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------------------- data


@dataclass
class Prepared:
    """The series, what the model reads, the spans and the origins of each span's windows."""

    dates: list[str]  # (n,) as in the file
    values: np.ndarray  # (n,) the series, in its own units: what is forecast and scored
    model_values: np.ndarray  # (n,) the scaled transformed series the model reads (NaN for its first lag steps)
    spans: tuple[int, int, int]  # train_end, val_end, n
    origins: dict[str, np.ndarray]


def read_series(config: ForecastConfig, path: str | None = None) -> Series:
    return read_series_csv(path or config.source(), config.date_column, config.value_column, config.filters)


def prepare(config: ForecastConfig, fit: bool) -> Prepared:
    """Read, split and scale the series; with ``fit``, fit the scaler and MASE scale on the training span."""
    series = read_series(config)
    values, n, lag = series.values, len(series.values), lag_of(config.transform, config.season)
    check_long_enough(n - lag, config.window, config.horizon, f"the series in {config.source()}"
                      + (f" (less {lag} steps of the first difference)" if lag else ""))
    train_end, val_end = chronological_split(n)
    check_long_enough(train_end - lag, config.window, config.horizon, "the training span (70% of the series)")
    for name, length in (("validation", val_end - train_end), ("test", n - val_end)):
        if length < config.horizon:
            raise ValueError(f"--horizon: the {name} span has {length} steps, fewer than --horizon {config.horizon}")
    raw = apply_transform(values, config.transform, config.season)
    if fit:
        try:
            scaler = Scaler.fit(raw[lag:train_end])
        except ValueError as error:
            what = "" if config.transform == "none" else f" (after the {config.transform} transform)"
            raise ValueError(f"csv: {config.source()}: {error}{what}") from None
        config.scaler_mean, config.scaler_std = scaler.mean, scaler.std
        config.mase_scale = mase_scale(values[:train_end], config.season)
    model_values = Scaler(config.scaler_mean, config.scaler_std).transform(raw)
    origins = {
        "train": window_origins(0, train_end, config.window, config.horizon, lag),
        "validation": window_origins(train_end, val_end, config.window, config.horizon, lag),
        "test": window_origins(val_end, n, config.window, config.horizon, lag),
    }
    return Prepared(series.dates, values, model_values, (train_end, val_end, n), origins)


# --------------------------------------------------------------------------------------------------------- model


class Forecaster(nn.Module):
    """Window ``(T, B, 1)`` → gatedrnn layer → last state → ``horizon`` steps ``(B, horizon)`` (scaled units),
    added to the base forecast read from the window (see the module docstring)."""

    def __init__(self, config: ForecastConfig) -> None:
        super().__init__()
        k = torch.arange(1, config.horizon + 1)
        if config.base == "seasonal":
            back = config.season * ((k - 1) // config.season + 1)
            base = config.window - 1 + k - back  # (horizon,) window position of the value one season back
        else:
            base = torch.full_like(k, config.window - 1)  # the last value
        self.register_buffer("base_index", base, persistent=False)
        self.base = config.base
        self.rnn = variant(config.cell).build(1, config.hidden_size, num_layers=config.layers,
                                              dropout=config.dropout if config.layers > 1 else 0.0,
                                              engine=config.engine)
        width = getattr(self.rnn, "proj_size", 0) or config.hidden_size
        self.head = nn.Linear(width, config.horizon)
        nn.init.zeros_(self.head.weight)  # start at persistence (levels) or at a zero return
        nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor) -> Tensor:
        _, state = self.rnn(x)
        h_n = state[0] if isinstance(state, tuple) else state  # (L, B, H)
        out = self.head(h_n[-1])  # (B, horizon)
        if self.base == "zero":
            return out
        return out + x[self.base_index, :, 0].T  # base (horizon, B) → (B, horizon)


def build_batch(values: np.ndarray, origins: np.ndarray, config: ForecastConfig) -> tuple[Tensor, Tensor]:
    """Inputs ``(window, B, 1)`` and targets ``(B, horizon)`` as float32 tensors."""
    x, y = windows(values, origins, config.window, config.horizon)  # (B, window), (B, horizon)
    return torch.from_numpy(x.T[:, :, None].astype(np.float32)), torch.from_numpy(y.astype(np.float32))


@torch.no_grad()
def forecast(model: Forecaster, model_values: np.ndarray, values: np.ndarray, origins: np.ndarray,
             config: ForecastConfig, device: torch.device, batch_size: int = 512) -> np.ndarray:
    """Forecasts ``(N, horizon)`` in the series' own units for each origin (only values up to it are read)."""
    model.eval()
    scaled = []
    for start in range(0, len(origins), batch_size):
        chunk = origins[start : start + batch_size]
        x = model_values[chunk[:, None] + np.arange(-config.window + 1, 1)]  # (B, window) up to each origin
        scaled.append(model(torch.from_numpy(x.T[:, :, None].astype(np.float32)).to(device)).cpu().numpy())
    z = np.concatenate(scaled).astype(np.float64) if scaled else np.zeros((0, config.horizon))
    m = Scaler(config.scaler_mean, config.scaler_std).inverse(z)
    return invert_transform(values, origins, m, config.transform, config.season)


# ------------------------------------------------------------------------------------------------------ training


def train(config: ForecastConfig, loop: supervised.Loop, out: Path, *, resume: bool = False,
          device: str = "auto") -> supervised.Result:
    """Train a forecaster into ``out``; the weights with the lowest validation RMSE are kept.

    Every option, the data and the memory the model needs are checked before anything is written.
    """
    config.check()
    loop.check()
    training.check_engine(config.engine)
    placement = training.resolve_device(device)
    resume = training.open_run_dir("--out", out, resume=resume, what="forecast")
    dist = training.setup_distributed(device)
    try:
        training.seed_everything(config.seed)
        if resume:  # the scaling comes from the saved run, fitted on its training span
            supervised.check_resume(out, {k: v for k, v in asdict(config).items() if k not in FITTED})
            config = load_config(out)
        data = prepare(config, fit=not resume)
        training.require_memory(
            f"model: --layers {config.layers} --hidden-size {config.hidden_size} --batch-size {config.batch_size} "
            f"--window {config.window}", model_bytes(config, train=True), placement)
        if not resume and dist.is_main:
            training.begin_run(out, supervised.RUN_FILES)
            training.write_json(out / supervised.CONFIG, asdict(config))
        model = Forecaster(config).to(dist.device)
        train_origins = torch.from_numpy(data.origins["train"])
        truth = {k: windows(data.values, o, config.window, config.horizon)[1] for k, o in data.origins.items()}

        def epoch_batches(generator: torch.Generator) -> list[Tensor]:
            return list(train_origins[torch.randperm(len(train_origins), generator=generator)].split(config.batch_size))

        def loss_of(m: nn.Module, batch: Tensor) -> tuple[Tensor, int]:
            x, y = build_batch(data.model_values, batch.numpy(), config)
            return F.mse_loss(m(x.to(dist.device)), y.to(dist.device)), len(batch)

        def validate(m: nn.Module) -> tuple[float, str]:
            predicted = forecast(m, data.model_values, data.values, data.origins["validation"], config,  # type: ignore[arg-type]
                                 dist.device)
            scores = errors(predicted, truth["validation"], config.mase_scale)
            return -scores["RMSE"], f"validation RMSE {scores['RMSE']:.4f}, MAE {scores['MAE']:.4f}"

        return supervised.fit(model, out=out, loop=loop, seed=config.seed, resume=resume,
                              epoch_batches=epoch_batches, loss_of=loss_of, validate=validate, dist=dist,
                              unit="window")
    finally:
        training.teardown_distributed(dist)


def load_config(out: Path) -> ForecastConfig:
    """The configuration of the run in ``out``, every field checked (a ``CheckpointError`` naming the file)."""
    return supervised.load_config(out, ForecastConfig, "forecast")


def model_bytes(config: ForecastConfig, *, train: bool = False, overhead: bool = True) -> int:
    """A lower bound of the memory the forecaster takes (training: with gradients, optimizer state and the
    activations of one batch of windows), computed before anything is allocated."""
    return training.recurrent_bytes(layers=config.layers, hidden=config.hidden_size, inputs=1,
                                    batch=config.batch_size if train else 0, steps=config.window, training=train,
                                    overhead=overhead)


def load(out: Path, device: torch.device) -> tuple[ForecastConfig, Forecaster]:
    if not out.is_dir():
        raise ValueError(f"--out: {out} is not a directory (expected a run directory from forecast train)")
    config = load_config(out)
    model = training.build_and_load(
        out / supervised.WEIGHTS, lambda: Forecaster(config), device=device, nbytes=model_bytes(config),
        weights=model_bytes(config, overhead=False),
        what=f"model: {out / supervised.CONFIG} (layers {config.layers}, hidden_size {config.hidden_size})")
    return config, model.eval()


# ---------------------------------------------------------------------------------------------- evaluation, use


def evaluate(out: Path, device: torch.device, split: str = "test") -> tuple[ForecastConfig, dict[str, object]]:
    """The model's and both baselines' forecasts and errors on every origin of ``split``."""
    check_choice("split", split, ("validation", "test"))
    config, model = load(out, device)
    data = prepare(config, fit=False)
    origins = data.origins[split]
    truth = windows(data.values, origins, config.window, config.horizon)[1]
    forecasts = {
        f"{config.cell}": forecast(model, data.model_values, data.values, origins, config, device),
        "persistence": persistence(data.values, origins, config.horizon),
        f"seasonal naive ({config.season})": seasonal_naive(data.values, origins, config.horizon, config.season),
    }
    # The model's own starting point (its output layer at zero), to show what training added to it.
    untrained = Forecaster(config).to(device)
    forecasts[f"base only ({config.base})"] = forecast(untrained, data.model_values, data.values, origins, config,
                                                      device)
    scores = {name: errors(f, truth, config.mase_scale) for name, f in forecasts.items()}
    last = {name: errors(f[:, -1], truth[:, -1], config.mase_scale) for name, f in forecasts.items()}
    first, final = data.dates[origins[0] + 1], data.dates[origins[-1] + config.horizon]
    return config, {"forecasts": forecasts, "truth": truth, "scores": scores, "last_step": last,
                    "targets": len(origins), "span": (first, final)}


def report(config: ForecastConfig, result: dict[str, object], split: str, plot: Path) -> str:
    scores, last = result["scores"], result["last_step"]
    forecasts, truth = result["forecasts"], result["truth"]
    assert isinstance(scores, dict) and isinstance(last, dict) and isinstance(forecasts, dict)
    assert isinstance(truth, np.ndarray)
    what = f"{config.value_column}" + (f" ({', '.join(f'{k}={v}' for k, v in config.filters.items())})"
                                       if config.filters else "")
    h = config.horizon
    plots.forecast_plot(plot, truth[:, -1], {name: f[:, -1] for name, f in forecasts.items()},
                        f"{what}: {h}-step-ahead forecasts on the {split} span", config.value_column)
    first, final = result["span"]  # type: ignore[misc]
    lines = [f"{what}, {split} span {first} .. {final}: {result['targets']} origins, horizon {h}, "
             f"window {config.window}, transform {config.transform}",
             f"MASE scale: in-sample MAE of the seasonal naive forecast (season {config.season}) on the training "
             f"span = {config.mase_scale:.4f}", "",
             f"{'forecast':<24}{'MAE':>10}{'RMSE':>10}{'MASE':>8}   {'step ' + str(h) + ' RMSE':>12}"]
    for name, s in scores.items():
        lines.append(f"{name:<24}{s['MAE']:>10.4f}{s['RMSE']:>10.4f}{s['MASE']:>8.3f}   {last[name]['RMSE']:>12.4f}")
    model_rmse = scores[config.cell]["RMSE"]
    for name in list(scores)[1:3]:  # the two baselines
        ratio = model_rmse / scores[name]["RMSE"]
        verdict = "beats" if ratio < 1 else "does NOT beat"
        lines.append(f"the model {verdict} {name}: RMSE ratio {ratio:.3f}")
    lines.append(plots.plot_line(plot))
    return "\n".join(lines)


def next_steps(out: Path, device: torch.device, csv: str | None = None) -> list[tuple[str, float]]:
    """Forecasts of the ``horizon`` steps after the end of the series (the training file, or ``csv``)."""
    config, model = load(out, device)
    series = read_series(config, csv)
    lag = lag_of(config.transform, config.season)
    if len(series.values) < lag + config.window:
        raise ValueError(f"csv: the series has {len(series.values)} steps; the model reads --window "
                         f"{config.window}" + (f" steps of a difference reaching {lag} steps back" if lag else ""))
    raw = apply_transform(series.values, config.transform, config.season)
    model_values = Scaler(config.scaler_mean, config.scaler_std).transform(raw)
    origin = np.array([len(series.values) - 1])
    values = forecast(model, model_values, series.values, origin, config, device)[0]
    return list(zip(future_dates(series.dates, config.horizon), values.tolist()))


def future_dates(dates: list[str], horizon: int) -> list[str]:
    """Dates of the next steps when the series is regular (every step the same length), else ``+k``."""
    parsed = [parse_date(d) for d in dates[-50:]]
    steps = {b - a for a, b in zip(parsed, parsed[1:])}
    if len(steps) != 1:
        return [f"+{k}" for k in range(1, horizon + 1)]
    step: timedelta = steps.pop()
    last: datetime = parsed[-1]
    text = "%Y-%m-%d" if step % timedelta(days=1) == timedelta(0) else "%Y-%m-%d %H:%M"
    return [(last + k * step).strftime(text) for k in range(1, horizon + 1)]


# --------------------------------------------------------------------------------------------------- command line


def config_from(args: argparse.Namespace) -> ForecastConfig:
    """The options of ``forecast train``: the data's preset, then whatever the user gave explicitly."""
    data = "csv" if args.csv is not None else args.data
    check_choice("data", data, ("seattle", "stocks", "csv"))
    preset = dict(PRESETS.get(data, {"filters": {}, "season": 1, "window": 30, "horizon": 1, "transform": "none",
                                     "base": "last"}))
    preset.pop("csv", None)
    filters = dict(preset.pop("filters"))
    for item in args.filter:
        column, sep, value = item.partition("=")
        if not sep or not column:
            raise ValueError(f"--filter: expected COLUMN=VALUE, got {item!r}")
        filters[column] = value
    if args.ticker is not None:
        filters["Ticker"] = args.ticker
    given = {name: getattr(args, name) for name in ("date_column", "value_column", "window", "horizon", "season",
                                                    "transform", "base") if getattr(args, name) is not None}
    if given.get("transform") == "log-return":
        given.setdefault("base", "zero")
    if data == "csv" and not {"date_column", "value_column"} <= set(given):
        raise ValueError("csv: give --date-column and --value-column with --csv")
    chosen = {**preset, **given}
    csv = str(Path(args.csv).resolve()) if args.csv is not None else None  # eval may run from elsewhere
    return ForecastConfig(data=data, csv=csv, filters=filters, cell=args.cell, layers=args.layers,
                          hidden_size=args.hidden_size, dropout=args.dropout, batch_size=args.batch_size,
                          seed=args.seed, engine=args.engine, **chosen)


def _train_command(args: argparse.Namespace) -> int:
    result = train(config_from(args), supervised.loop_from(args), args.out, resume=args.resume, device=args.device)
    if os.environ.get("RANK", "0") != "0":
        return training.exit_status(result.signal)  # under torchrun only rank 0 reports
    print(f"trained {result.step} steps in {result.elapsed:.0f} s; best validation RMSE {-result.best_score:.4f} "
          f"at step {result.best_step}; weights in {args.out / supervised.WEIGHTS}")
    return training.exit_status(result.signal)


def _eval_command(args: argparse.Namespace) -> int:
    device = training.resolve_device(args.device)
    plot = args.plot or args.out / f"forecast_{args.split}.png"
    training.check_output_file("--plot", plot)
    config, result = evaluate(args.out, device, args.split)
    print(report(config, result, args.split, plot))
    return 0


def _predict_command(args: argparse.Namespace) -> int:
    for date, value in next_steps(args.out, training.resolve_device(args.device), args.csv):
        print(f"{date}\t{value:.4f}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``gatedrnn forecast train|eval|predict`` to the CLI."""
    task = commands.add_parser("forecast", help="time-series forecasting: temperatures, prices, your CSV")
    verbs = task.add_subparsers(dest="verb", required=True, metavar="VERB")
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = verbs.add_parser("train", help="train a forecaster", formatter_class=fmt)
    p.add_argument("--data", default="seattle", help="bundled series (seattle: hourly °F; stocks: daily prices) or csv")
    p.add_argument("--csv", default=None, help="your CSV (implies --data csv; give --date-column, --value-column)")
    p.add_argument("--date-column", default=None, help="date column (preset: date / Date)")
    p.add_argument("--value-column", default=None, help="value column (preset: temp / Close)")
    p.add_argument("--ticker", default=None, help="keep rows with this Ticker (stocks preset: AAPL)")
    p.add_argument("--filter", action="append", default=[], metavar="COLUMN=VALUE",
                   help="keep rows where COLUMN equals VALUE (repeatable)")
    p.add_argument("--transform", default=None, help="what the model reads: none (levels), log-return or "
                   "seasonal-diff (preset: seasonal-diff hourly / none daily)")
    p.add_argument("--base", default=None, help="forecast the model corrects: last, seasonal or zero (preset: "
                   "zero hourly and for log returns / last daily)")
    p.add_argument("--window", type=int, default=None, help="input steps (preset: 72 hourly / 30 daily)")
    p.add_argument("--horizon", type=int, default=None, help="steps to forecast (preset: 24 hourly / 5 daily)")
    p.add_argument("--season", type=int, default=None, help="seasonal-naive period (preset: 24 hourly / 5 daily)")
    p.add_argument("--hidden-size", type=int, default=64, help="H, hidden units")
    p.add_argument("--dropout", type=float, default=0.0, help="dropout between stacked layers")
    supervised.add_options(p, steps=300, eval_every=100, lr=3e-3, batch_size=64)
    p.set_defaults(run=_train_command)
    p = verbs.add_parser("eval", help="MAE, RMSE, MASE against persistence and seasonal naive; plot",
                         formatter_class=fmt)
    p.add_argument("--out", type=Path, required=True, help="checkpoint directory")
    p.add_argument("--split", default="test", help="validation or test")
    p.add_argument("--plot", type=Path, default=None, help="forecast-vs-truth PNG (default: in --out)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.set_defaults(run=_eval_command)
    p = verbs.add_parser("predict", help="forecast the --horizon steps after the end of a file", formatter_class=fmt)
    p.add_argument("--out", type=Path, required=True, help="checkpoint directory")
    p.add_argument("--csv", default=None, help="series to continue, with the training columns (default: the "
                   "training file)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.set_defaults(run=_predict_command)
