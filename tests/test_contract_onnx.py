"""ONNX: models holding gatedrnn layers export with both of torch.onnx's exporters, run in onnxruntime at any batch
size and sequence length equal to eager, as ONNX's recurrent ops where those compute the cell and as one Scan/Loop
over time otherwise; the ``export`` command and the onnxruntime example."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from gatedrnn import LSTM
from gatedrnn.cli import main
from gatedrnn.onnx import EXPORTED_SPECS, export_onnx, native_op
from gatedrnn.variants import VARIANTS

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

ROOT = Path(__file__).resolve().parents[1]
EXPORTERS = ("dynamo", "torchscript")
RECURRENT_OPS = {"LSTM", "GRU", "RNN"}
LOOP_OPS = {"Scan", "Loop"}
SHAPES = [(1, 1), (7, 3), (12, 1), (1, 3), (7, 1), (12, 3)]
"""(T, B) pairs run in onnxruntime: three sequence lengths at two batch sizes."""


@pytest.fixture(autouse=True)
def _quiet_and_seeded() -> Any:
    """Layers' weights drawn from one seed in every test, whatever ran before in the process: a layer-normalised
    cell started from a zero state normalises near-constant vectors, where float32 rounding is amplified, and the
    eager engines themselves differ by more than 1e-5 for some draws of the weights."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings on input checks, exporter deprecation notes
        yield


def _session(path: Path) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _nodes(graph: Any) -> list[Any]:
    """Every node of ``graph`` and of its subgraphs (a Scan's or Loop's body)."""
    nodes = []
    for node in graph.node:
        nodes.append(node)
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                nodes += _nodes(attribute.g)
    return nodes


def _top_ops(path: Path) -> list[str]:
    return [node.op_type for node in onnx.load(str(path)).graph.node]


def _run(session: Any, names: list[str], args: tuple[Tensor, ...]) -> list[np.ndarray]:
    feeds = {i.name for i in session.get_inputs()}
    return session.run(None, {name: a.numpy() for name, a in zip(names, args) if name in feeds})


def _assert_equal_to_eager(session: Any, model: nn.Module, names: list[str], args: tuple[Tensor, ...]) -> None:
    with torch.no_grad():
        expected = model(*args)
    expected = expected if isinstance(expected, tuple) else (expected,)
    for got, want in zip(_run(session, names, args), expected, strict=True):
        torch.testing.assert_close(torch.from_numpy(got), want, atol=1e-5, rtol=1e-5)


def _lengths(T: int, B: int, generator: torch.Generator) -> Tensor:
    lengths = torch.randint(1, T + 1, (B,), generator=generator)
    lengths[0] = T  # one sequence is full, so that the output has T steps
    return lengths


def _flat(out: Tensor, state: Any) -> tuple[Tensor, ...]:
    return (out, *state) if isinstance(state, tuple) else (out, state)


class _Layer(nn.Module):
    """A layer with ``lengths`` and an initial state ``h0`` (``c0``) as graph inputs."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: Tensor, lengths: Tensor, h0: Tensor) -> tuple[Tensor, ...]:
        return _flat(*self.layer(x, h0, lengths=lengths))


class _LSTMLayer(_Layer):
    def forward(self, x: Tensor, lengths: Tensor, h0: Tensor, c0: Tensor) -> tuple[Tensor, ...]:  # type: ignore[override]
        return _flat(*self.layer(x, (h0, c0), lengths=lengths))


class _StatesLayer(_Layer):
    """A layer whose state has four parts (sLSTM's ``h, c, n, m``)."""

    def forward(self, x: Tensor, lengths: Tensor, h0: Tensor, c0: Tensor, n0: Tensor,  # type: ignore[override]
                m0: Tensor) -> tuple[Tensor, ...]:
        return _flat(*self.layer(x, (h0, c0, n0, m0), lengths=lengths))


def _wrap(layer: nn.Module) -> tuple[nn.Module, list[str]]:
    names = [f"{name}0" for name in layer.spec.state_names]
    wrapper = {1: _Layer, 2: _LSTMLayer, 4: _StatesLayer}[len(names)]
    return wrapper(layer), ["x", "lengths", *names]


def _inputs(layer: nn.Module, T: int, B: int, generator: torch.Generator) -> tuple[Tensor, ...]:
    D = 2 if layer.bidirectional else 1
    shape = (B, T, layer.input_size) if layer.batch_first else (T, B, layer.input_size)
    x = torch.randn(shape, generator=generator)
    states = [torch.randn(layer.num_layers * D, B, w, generator=generator) for w in layer.spec.state_widths()]
    return (x, _lengths(T, B, generator), *states)


def _dynamic(names: list[str], batch_first: bool) -> dict[str, dict[int, str]]:
    dynamic = {"x": {0: "B", 1: "T"} if batch_first else {0: "T", 1: "B"}, "lengths": {0: "B"}}
    return {**dynamic, **{name: {1: "B"} for name in names[2:]}}


def _export(model: nn.Module, args: tuple[Tensor, ...], names: list[str], path: Path, exporter: str,
            batch_first: bool = False) -> None:
    """``torch.onnx.export`` itself, as a user calls it, with dynamic batch and time."""
    dynamic = _dynamic(names, batch_first)
    if exporter == "dynamo":
        dims = {"T": torch.export.Dim("T"), "B": torch.export.Dim("B")}
        shapes = {name: {axis: dims[dim] for axis, dim in dynamic[name].items()} for name in names}
        program = torch.onnx.export(model, args, dynamo=True, input_names=names, dynamic_shapes=shapes)
        program.save(str(path))
    else:
        torch.onnx.export(model, args, str(path), dynamo=False, input_names=names, dynamic_axes=dynamic,
                          opset_version=18)


# ------------------------------------------------------------------------------------------------- every variant


DYNAMO_SKIPS = {"rnn-layernorm", "lstm-layernorm"}
"""Variants left to the TorchScript exporter here: torch.export's scan is slow to trace, and the dynamo exporter's
Scan is tested with ``gru-layernorm`` here and with ``lstm-layernorm`` in ``test_a_loop_over_time_is_not_unrolled``."""


EXPORTED = [name for name in VARIANTS if type(VARIANTS[name].build(5, 6).spec) in EXPORTED_SPECS]
"""The variants of the families that export; the others raise an error naming the cell
(``test_other_families_are_refused_with_a_clear_error``)."""


@pytest.mark.parametrize(("name", "exporter"), [(name, exporter) for name in EXPORTED for exporter in EXPORTERS
                                                if exporter == "torchscript" or name not in DYNAMO_SKIPS])
def test_every_variant_runs_in_onnxruntime_at_any_shape(name: str, exporter: str, tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    layer = VARIANTS[name].build(5, 6).eval()
    model, names = _wrap(layer)
    path = tmp_path / f"{name}.onnx"
    _export(model, _inputs(layer, 4, 2, generator), names, path, exporter)
    ops = _top_ops(path)
    op = native_op(layer.spec)
    if op is not None:
        assert ops.count(op) == 1 and not LOOP_OPS & set(ops), ops
    else:
        assert len(LOOP_OPS & set(ops)) == 1 and not RECURRENT_OPS & set(ops), ops
    session = _session(path)
    for T, B in SHAPES:
        _assert_equal_to_eager(session, model, names, _inputs(layer, T, B, generator))


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_a_loop_over_time_is_not_unrolled(exporter: str, tmp_path: Path) -> None:
    """The graph of a layer-norm cell has as many nodes whatever the sequence length it was exported at, and runs
    at any other."""
    generator = torch.Generator().manual_seed(1)
    layer = VARIANTS["lstm-layernorm"].build(3, 4).eval()
    model, names = _wrap(layer)
    counts = []
    for T in (2, 9):
        path = tmp_path / f"T{T}.onnx"
        _export(model, _inputs(layer, T, 2, generator), names, path, exporter)
        counts.append(len(_nodes(onnx.load(str(path)).graph)))
    assert counts[0] == counts[1]
    session = _session(path)
    for T, B in SHAPES:
        _assert_equal_to_eager(session, model, names, _inputs(layer, T, B, generator))


# -------------------------------------------------------------------------------------- stacks, layouts, packing


LAYOUTS = {
    "lstm-peephole-L2-bidirectional": ("lstm-peephole", dict(num_layers=2, bidirectional=True), EXPORTERS),
    "gru-before-batch_first-bidirectional": ("gru-before", dict(batch_first=True, bidirectional=True), EXPORTERS),
    "lstm-forgetbias-nobias-L2": ("lstm-forgetbias", dict(num_layers=2, bias=False), EXPORTERS),
    "rnn-relu-L2-bidirectional": ("rnn-relu", dict(num_layers=2, bidirectional=True), ("torchscript",)),
    "lstm-coupled-proj_size-bidirectional": ("lstm-coupled", dict(proj_size=3, bidirectional=True), ("torchscript",)),
    "lstm-proj_size-batch_first": ("lstm", dict(proj_size=3, batch_first=True), ("dynamo",)),
    "gru-layernorm-L2-batch_first": ("gru-layernorm", dict(num_layers=2, batch_first=True), ("torchscript",)),
}
"""Each case with the exporters it runs with (a Scan costs the dynamo exporter much time to trace: one per case)."""


@pytest.mark.parametrize(("case", "exporter"), [(case, exporter) for case, (_, _, exporters) in LAYOUTS.items()
                                                for exporter in exporters])
def test_stacks_directions_and_layouts(case: str, exporter: str, tmp_path: Path) -> None:
    name, options, _ = LAYOUTS[case]
    generator = torch.Generator().manual_seed(2)
    layer = VARIANTS[name].build(4, 5, **options).eval()
    model, names = _wrap(layer)
    path = tmp_path / "model.onnx"
    _export(model, _inputs(layer, 3, 2, generator), names, path, exporter, batch_first=layer.batch_first)
    runs = layer.num_layers * (2 if layer.bidirectional else 1)
    ops = _top_ops(path)
    op = native_op(layer.spec)
    assert ops.count(op) == runs if op else sum(ops.count(o) for o in LOOP_OPS) == runs, ops
    session = _session(path)
    for T, B in SHAPES[1:3] + SHAPES[5:]:
        _assert_equal_to_eager(session, model, names, _inputs(layer, T, B, generator))


class _Plain(nn.Module):
    """A layer called on its input alone: no lengths, zero initial state."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return _flat(*self.layer(x))


@pytest.mark.parametrize(("name", "exporter"), [("lstm", "torchscript"), ("gru", "dynamo"),
                                                ("gru-layernorm", "torchscript"), ("rnn-layernorm", "dynamo")])
def test_without_lengths_or_initial_state(name: str, exporter: str, tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(8)
    layer = VARIANTS[name].build(3, 4, num_layers=2).eval()
    model, path = _Plain(layer), tmp_path / "plain.onnx"
    export_onnx(model, (torch.randn(3, 2, 3),), path, dynamo=exporter == "dynamo", input_names=["x"],
                dynamic={"x": {0: "T", 1: "B"}})
    op = native_op(layer.spec)
    assert set(_top_ops(path)) & ({op} if op else LOOP_OPS)
    session = _session(path)
    for T, B in SHAPES:
        _assert_equal_to_eager(session, model, ["x"], (torch.randn(T, B, 3, generator=generator),))


class _Packed(nn.Module):
    """Padded input and lengths → ``PackedSequence`` → layer → padded output, all inside the graph."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, ...]:
        packed = pack_padded_sequence(x, lengths, batch_first=self.layer.batch_first, enforce_sorted=False)
        out, state = self.layer(packed)
        total = x.shape[1 if self.layer.batch_first else 0]
        return _flat(pad_packed_sequence(out, batch_first=self.layer.batch_first, total_length=total)[0], state)


@pytest.mark.parametrize("name", ["lstm-coupled", "rnn-layernorm"])
def test_packed_sequence_maps_to_sequence_lens(name: str, tmp_path: Path) -> None:
    """A ``PackedSequence`` (TorchScript exporter: torch.export cannot trace packing, whose sizes depend on the
    lengths' values, for torch.nn's layers either) becomes the lengths the recurrence reads."""
    generator = torch.Generator().manual_seed(3)
    layer = VARIANTS[name].build(4, 5, num_layers=2, batch_first=True, bidirectional=True).eval()
    model, names = _Packed(layer), ["x", "lengths"]
    path = tmp_path / "packed.onnx"
    _export(model, _inputs(layer, 3, 2, generator)[:2], names, path, "torchscript", batch_first=True)
    ops = _top_ops(path)
    recurrent = [node for node in onnx.load(str(path)).graph.node if node.op_type in RECURRENT_OPS]
    assert all(node.input[4] for node in recurrent), "sequence_lens is given to every recurrent node"
    assert len(recurrent) == 4 or sum(ops.count(o) for o in LOOP_OPS) == 4, ops
    session = _session(path)
    for T, B in SHAPES[1:3] + SHAPES[5:]:
        _assert_equal_to_eager(session, model, names, _inputs(layer, T, B, generator)[:2])


def test_native_nodes_take_lengths_as_sequence_lens(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(4)
    layer = LSTM(3, 4, peephole=True).eval()
    model, names = _wrap(layer)
    path = tmp_path / "lstm.onnx"
    _export(model, _inputs(layer, 3, 2, generator), names, path, "torchscript")
    (node,) = [n for n in onnx.load(str(path)).graph.node if n.op_type == "LSTM"]
    assert len(node.input) == 8 and all(node.input), "X, W, R, B, sequence_lens, initial_h, initial_c, P"
    assert {a.name: a.i for a in node.attribute if a.name in ("hidden_size", "input_forget")} == {
        "hidden_size": 4, "input_forget": 0}


def test_export_onnx_names_what_is_wrong(tmp_path: Path) -> None:
    model, _ = _wrap(LSTM(3, 4))
    args = _inputs(model.layer, 2, 2, torch.Generator().manual_seed(5))
    with pytest.raises(ValueError, match="input_names: expected 4 names"):
        export_onnx(model, args, tmp_path / "m.onnx", input_names=["x"])
    with pytest.raises(ValueError, match="dynamic: no input named 'y'"):
        export_onnx(model, args, tmp_path / "m.onnx", input_names=["x", "lengths", "h0", "c0"], dynamic={"y": {0: "T"}})
    assert not (tmp_path / "m.onnx").exists()


# ---------------------------------------------------------------------------------------- the export command


@pytest.fixture(scope="module")
def charlm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sys.path.insert(0, str(Path(__file__).parent))
    from charlm_runs import tiny_run

    return tiny_run(tmp_path_factory.mktemp("charlm") / "run", cell="lstm", layers=2, hidden=8)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_export_command_charlm(charlm_run: Path, exporter: str, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    from gatedrnn.tasks import charlm

    out = tmp_path / "lm.onnx"
    assert main(["export", "--model", str(charlm_run), "--out", str(out), "--exporter", exporter]) == 0
    assert "charlm" in capsys.readouterr().out
    lm = charlm.load(charlm_run)
    session = _session(out)
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["vocab"]) == lm.vocab.chars
    generator = torch.Generator().manual_seed(6)
    state = None
    for B, T in ((1, 9), (3, 1), (3, 4)):
        ids = torch.randint(0, len(lm.vocab), (B, T), generator=generator)
        if state is None or state[0].shape[1] != B:
            state = tuple(torch.randn(2, B, 8, generator=generator) for _ in range(2))
        with torch.no_grad():
            logits, (h, c) = lm.model(ids, state)
        got = session.run(None, {"ids": ids.numpy(), "h0": state[0].numpy(), "c0": state[1].numpy()})
        for value, want in zip(got, (logits, h, c), strict=True):
            torch.testing.assert_close(torch.from_numpy(value), want, atol=1e-5, rtol=1e-5)
        state = (h, c)


def test_export_command_classify_and_forecast(tmp_path: Path) -> None:
    from gatedrnn.tasks import classify, forecast

    rows = ["review,verdict"] + [f"{'great film' if i % 2 else 'dull plot'} {i % 7},{'good' if i % 2 else 'bad'}"
                                 for i in range(40)]
    (tmp_path / "reviews.csv").write_text("\n".join(rows) + "\n")
    run = tmp_path / "classify"
    assert main(["classify", "train", "--csv", str(tmp_path / "reviews.csv"), "--text-column", "review",
                 "--label-column", "verdict", "--min-count", "1", "--embedding-size", "4", "--hidden-size", "4",
                 "--cell", "gru-layernorm", "--steps", "2", "--eval-every", "2", "--out", str(run)]) == 0
    assert main(["export", "--model", str(run), "--out", str(tmp_path / "classify.onnx"), "--exporter",
                 "torchscript"]) == 0
    config, vocab, model = classify.load(run, torch.device("cpu"))
    session = _session(tmp_path / "classify.onnx")
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["labels"]) == config.labels and json.loads(meta["vocab"]) == vocab.tokens
    generator = torch.Generator().manual_seed(7)
    for T, B in ((6, 3), (2, 1)):
        x = torch.randint(0, len(vocab), (T, B), generator=generator)
        _assert_equal_to_eager(session, model, ["x", "lengths"], (x, _lengths(T, B, generator)))
    texts = ["A great film, 3!", "dull", "the plot was dull and unknown-words abound"]
    printed = _without_torch(ROOT / "examples" / "onnx_classify.py", tmp_path / "classify.onnx", *texts)
    expected = classify.predict_texts(run, texts, torch.device("cpu"))
    for line, text, (label, probability) in zip(printed.splitlines(), texts, expected, strict=True):
        got_label, got_probability, got_text = line.split("\t")
        assert (got_label, got_text) == (label, text) and abs(float(got_probability) - probability) < 1e-4

    values = 20 + 5 * np.sin(2 * np.pi * np.arange(200) / 24) + np.random.default_rng(0).normal(0, 0.3, 200)
    (tmp_path / "load.csv").write_text("when,load\n" + "\n".join(
        f"2021-03-{1 + i // 24:02d} {i % 24:02d}:00,{v:.4f}" for i, v in enumerate(values)) + "\n")
    run = tmp_path / "forecast"
    assert main(["forecast", "train", "--csv", str(tmp_path / "load.csv"), "--date-column", "when", "--value-column",
                 "load", "--window", "24", "--horizon", "6", "--season", "24", "--hidden-size", "4", "--steps", "2",
                 "--eval-every", "2", "--cell", "lstm-peephole", "--out", str(run)]) == 0
    assert main(["export", "--model", str(run), "--out", str(tmp_path / "forecast.onnx")]) == 0
    config, model = forecast.load(run, torch.device("cpu"))
    session = _session(tmp_path / "forecast.onnx")
    assert json.loads(session.get_modelmeta().custom_metadata_map["horizon"]) == 6
    for B in (1, 5):
        _assert_equal_to_eager(session, model, ["x"], (torch.randn(24, B, 1, generator=generator),))


def test_export_command_bad_input_is_one_line(charlm_run: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    cases = [
        (["--model", str(tmp_path / "missing"), "--out", str(tmp_path / "a.onnx")], "model: "),
        (["--model", str(tmp_path), "--out", str(tmp_path / "a.onnx")], "model: "),
        (["--model", str(charlm_run), "--out", str(tmp_path / "a.txt")], "out: expected a file name ending in .onnx"),
        (["--model", str(charlm_run), "--out", str(tmp_path / "no" / "a.onnx")], "out: the directory"),
    ]
    for args, message in cases:
        assert main(["export", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"gatedrnn: error: {message}") and "\n" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- the examples


def _without_torch(example: Path, *args: object) -> str:
    """What ``example`` prints, run with ``args`` in a process where ``import torch`` fails."""
    block_torch = ("import runpy, sys; sys.modules['torch'] = None; sys.argv = sys.argv[1:]; "
                   "runpy.run_path(sys.argv[0], run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", block_torch, str(example), *map(str, args)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_example_generates_with_onnxruntime_alone(charlm_run: Path, tmp_path: Path) -> None:
    """The example runs where torch cannot be imported, and samples what the torch model samples."""
    from gatedrnn.tasks import charlm

    path = tmp_path / "lm.onnx"
    assert main(["export", "--model", str(charlm_run), "--out", str(path), "--exporter", "torchscript"]) == 0
    text = _without_torch(ROOT / "examples" / "onnx_generate.py", path, "--prime", "MACBETH.", "--length", "40",
                          "--seed", "3").rstrip("\n")

    lm = charlm.load(charlm_run)
    rng = np.random.default_rng(3)
    ids = lm.vocab.encode("MACBETH.").unsqueeze(0)  # (1, T)
    expected, state = "MACBETH.", None
    with torch.no_grad():
        for _ in range(40):
            logits, state = lm.model(ids, state)
            z = logits[0, -1].double().numpy() / 0.8
            p = np.exp(z - z.max())
            k = int(rng.choice(len(lm.vocab), p=p / p.sum()))
            expected += lm.vocab.chars[k]
            ids = torch.tensor([[k]])
    assert text == expected


class _Outputs(nn.Module):
    """A layer called on its input alone (its own zero state), returning its output."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)[0]


@pytest.mark.parametrize("name", [name for name in VARIANTS if name not in EXPORTED])
def test_other_families_are_refused_with_a_clear_error(name: str, tmp_path: Path) -> None:
    layer = VARIANTS[name].build(5, 6).eval()
    model, x = _Outputs(layer), torch.randn(4, 2, 5)
    message = rf"^ONNX export: {type(layer.spec).__name__} .* has no ONNX form"
    with pytest.raises(NotImplementedError, match=message):
        torch.onnx.export(model, (x,), str(tmp_path / "x.onnx"), dynamo=False, input_names=["x"])
    with pytest.raises(NotImplementedError, match=message):
        export_onnx(model, (x,), tmp_path / "x.onnx", input_names=["x"])
    assert not (tmp_path / "x.onnx").exists()
