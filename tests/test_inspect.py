"""gatedrnn.inspect: recorded gates equal gates computed by hand; gradient flow equals autograd on an unrolled loop.

The hand computation runs one sequence at a time, one step at a time, on 1-D vectors, with the independent
equations of ``test_variants.py`` (its ``STEPS`` return every gate and pre-activation beside the new state).
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

import gatedrnn
from gatedrnn import engine as engine_registry
from gatedrnn.engine.reference import ReferenceEngine
from test_variants import STEPS, Spec, layer_params

CASES = [
    ("LSTM", {}),
    ("LSTM", {"peephole": True}),
    ("LSTM", {"coupled": True, "peephole": True}),
    ("LSTM", {"layer_norm": True, "forget_bias": 1.0}),
    ("LSTM", {"proj_size": 2, "bias": False}),
    ("GRU", {"reset": "after"}),
    ("GRU", {"reset": "before", "layer_norm": True}),
    ("RNN", {"nonlinearity": "tanh"}),
    ("RNN", {"nonlinearity": "relu", "layer_norm": True}),
]


def case_id(case: tuple[str, dict]) -> str:
    kind, options = case
    return kind + "".join(f"-{k}={v}" for k, v in options.items())


def hand_recording(module: nn.Module, spec: Spec, x: Tensor, lengths: list[int]) -> dict:
    """``{(layer, direction): [per sequence b: (gates (T_b, ·) dict, pre dict, states dict)]}`` by hand."""
    step = STEPS[spec.kind]
    result: dict = {}
    for b, length in enumerate(lengths):
        xs = x[:length, b]  # (T_b, I)
        for layer in range(spec.layers):
            outs = []
            for direction in range(2 if spec.bidirectional else 1):
                P = layer_params(module, layer, bool(direction), spec)
                state = tuple(xs.new_zeros(w) for w in spec.widths)
                seq = xs.flip(0) if direction else xs
                steps = []
                for t in range(length):
                    state, gates, pre = step(seq[t], state, P)
                    names = ("h", "c") if spec.kind == "LSTM" else ("h",)
                    steps.append((gates, pre, dict(zip(names, state))))
                if direction:
                    steps.reverse()
                outs.append(torch.stack([s[2]["h"] for s in steps]))
                stacked = tuple({k: torch.stack([s[part][k] for s in steps]) for k in steps[0][part]}
                                for part in range(3))
                result.setdefault((layer, direction), []).append(stacked)
            xs = torch.cat(outs, dim=1)
    return result


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_recording_equals_hand_computed_gates(case: tuple[str, dict]) -> None:
    kind, options = case
    torch.manual_seed(0)
    H, layers, lengths = 3, 2, [5, 3, 1]
    module = getattr(gatedrnn, kind)(4, H, num_layers=layers, bidirectional=True, dtype=torch.float64, **options)
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    with gatedrnn.inspect.record(module, pre_activations=True) as rec:
        module(x, lengths=torch.tensor(lengths))
    spec = Spec(kind, options, H, layers, bidirectional=True)
    expected = hand_recording(module, spec, x, lengths)
    assert [(t.layer, t.direction) for t in rec] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for (layer, direction), per_sequence in expected.items():
        trace = rec.trace(layer=layer, direction=direction)
        assert trace.family == kind.lower() and trace.key == f"l{layer}" + ("_reverse" if direction else "")
        torch.testing.assert_close(trace.lengths, torch.tensor(lengths))
        for b, (gates, pre, states) in enumerate(per_sequence):
            n = lengths[b]
            for recorded, wanted in ((trace.gates, gates), (trace.pre, pre), (trace.states, states)):
                assert set(recorded) == set(wanted)
                for name, value in wanted.items():
                    torch.testing.assert_close(recorded[name][b, :n], value, rtol=1e-12, atol=1e-12)
                    assert recorded[name][b, n:].isnan().all(), f"{name}: padding must be NaN"


def test_dimensions_and_lookup_by_name() -> None:
    lstm = gatedrnn.LSTM(4, 6, proj_size=2, batch_first=True)
    with gatedrnn.inspect.record(lstm) as rec:
        out, _ = lstm(torch.randn(3, 7, 4))
    trace = rec.trace()
    assert gatedrnn.inspect.DIMS == ("batch", "time", "unit")
    assert trace["f"].shape == (3, 7, 6) and trace["c"].shape == (3, 7, 6) and trace["h"].shape == (3, 7, 2)
    assert trace.names == ("i", "f", "g", "o", "h", "c") and trace.pre == {}
    torch.testing.assert_close(trace["h"], out)  # batch_first output is (B, T, P) too
    with pytest.raises(KeyError, match=r"name: expected one of i, f, g, o, h, c, got 'x'"):
        trace["x"]


class FakeFastEngine(ReferenceEngine):
    """Stands for a fast engine: its outputs differ from the reference by rounding (here: computed in float32)."""

    name = "test-fake-fast"
    priority = 1000

    def run(self, spec, gx, params, state, lengths):
        out, final = super().run(spec, gx.float(), {k: v.float() for k, v in params.items()},
                                 tuple(s.float() for s in state), lengths)
        return out.to(gx.dtype), tuple(s.to(gx.dtype) for s in final)


def test_records_reference_values_on_any_engine_and_never_changes_outputs(monkeypatch) -> None:
    monkeypatch.setitem(engine_registry._REGISTRY, FakeFastEngine.name, FakeFastEngine())
    torch.manual_seed(1)
    gru = gatedrnn.GRU(4, 5, num_layers=2, bidirectional=True, dtype=torch.float64, engine=FakeFastEngine.name)
    x = torch.randn(6, 2, 4, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([6, 4])

    def forward_backward() -> tuple[Tensor, ...]:
        x.grad = None
        gru.zero_grad()
        out, h_n = gru(x, lengths=lengths)
        (out.sin().sum() + h_n.square().sum()).backward()
        return out.detach(), h_n.detach(), x.grad.clone(), *(p.grad.clone() for p in gru.parameters())

    plain = forward_backward()
    with gatedrnn.inspect.record(gru) as rec:
        recorded = forward_backward()
    for a, b in zip(plain, recorded):
        assert torch.equal(a, b)  # bit for bit: recording changes nothing
    gru.engine = "reference"
    with gatedrnn.inspect.record(gru) as reference_rec:
        gru(x, lengths=lengths)
    assert not torch.equal(plain[0], gru(x, lengths=lengths)[0])  # the fake engine does differ from reference
    for fast, ref in zip(rec, reference_rec):
        # Layer 0 receives the same input on both engines, so its recording is the reference engine's bit for bit;
        # layer 1 receives layer 0's outputs, which carry the fast engine's rounding.
        tolerance = 0.0 if fast.layer == 0 else 1e-6
        for name in fast.names:
            torch.testing.assert_close(fast[name], ref[name], rtol=tolerance, atol=tolerance, equal_nan=True)


def test_no_tap_outside_the_block_even_after_an_error() -> None:
    rnn = gatedrnn.RNN(2, 3)
    with pytest.raises(RuntimeError, match="boom"), gatedrnn.inspect.record(rnn):
        assert rnn._tap is not None
        raise RuntimeError("boom")
    assert rnn._tap is None and "_tap" not in rnn.__dict__
    assert "_tap" not in rnn.state_dict()


def test_nested_blocks_and_repeated_calls() -> None:
    rnn = gatedrnn.RNN(2, 3)
    x1, x2 = torch.randn(4, 1, 2), torch.randn(6, 1, 2)
    with gatedrnn.inspect.record(rnn) as outer:
        rnn(x1)
        with gatedrnn.inspect.record(rnn) as inner:
            rnn(x2)
    assert [t.call for t in outer] == [0, 1] and [t.call for t in inner] == [0]
    assert outer.trace(call=0)["h"].shape == (1, 4, 3) and outer.trace()["h"].shape == (1, 6, 3)
    assert outer.trace(call=-2).key == "l0" and outer.trace(call=1).key == "l0@1"
    torch.testing.assert_close(inner.trace()["h"], outer.trace(call=1)["h"])
    with pytest.raises(ValueError, match=r"call: module '' ran 2 time\(s\) while recording, got call=2"):
        outer.trace(call=2)


class Tagger(nn.Module):
    """A user's own model: an embedding, two gatedrnn layers and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.encoder = gatedrnn.LSTM(4, 5, batch_first=True, peephole=True)
        self.decoder = gatedrnn.GRU(5, 6, batch_first=True, reset="before")
        self.head = nn.Linear(6, 3)

    def forward(self, ids: Tensor) -> Tensor:
        h, _ = self.encoder(self.embed(ids))
        h, _ = self.decoder(h)
        return self.head(h)


def test_a_users_module_with_several_layers() -> None:
    model = Tagger()
    ids = torch.randint(0, 10, (2, 7))
    with gatedrnn.inspect.record(model) as rec:
        model(ids)
    assert [t.key for t in rec] == ["encoder_l0", "decoder_l0"] and len(rec) == 2
    assert rec.trace("decoder")["z"].shape == (2, 7, 6)
    torch.testing.assert_close(rec.trace("encoder")["h"], model.encoder(model.embed(ids))[0])
    with pytest.raises(ValueError, match=r"module: the recording holds several modules, name one of"):
        rec.trace()
    with pytest.raises(ValueError, match=r"module: expected one of \['encoder', 'decoder'\], got 'head'"):
        rec.trace("head")
    with pytest.raises(ValueError, match=r"layer/direction: module 'encoder' has no layer 1 direction 0"):
        rec.trace("encoder", layer=1)


def test_unbatched_and_packed_inputs() -> None:
    gru = gatedrnn.GRU(3, 4, dtype=torch.float64)
    x = torch.randn(5, 3, dtype=torch.float64)
    with gatedrnn.inspect.record(gru) as rec:
        out, _ = gru(x)
    torch.testing.assert_close(rec.trace()["h"][0], out)
    padded = torch.randn(5, 2, 3, dtype=torch.float64)
    packed = pack_padded_sequence(padded, torch.tensor([2, 5]), enforce_sorted=False)
    with gatedrnn.inspect.record(gru) as rec:
        gru(packed)
    with gatedrnn.inspect.record(gru) as by_lengths:
        gru(padded, lengths=torch.tensor([2, 5]))
    torch.testing.assert_close(rec.trace()["z"], by_lengths.trace()["z"], equal_nan=True)
    assert rec.trace()["z"][0, 2:].isnan().all()


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match=r"model: expected a torch.nn.Module, got str"):
        with gatedrnn.inspect.record("lstm"):
            pass
    with pytest.raises(ValueError, match=r"model: Sequential contains no gatedrnn.LSTM, GRU or RNN layer"):
        with gatedrnn.inspect.record(nn.Sequential(nn.LSTM(2, 3))):
            pass
    with pytest.raises(LookupError, match=r"recording: nothing was recorded"):
        with gatedrnn.inspect.record(gatedrnn.RNN(2, 3)) as rec:
            pass
        rec.trace()


# ---------------------------------------------------------------------------------------------------------------
# Gradient flow against autograd through an unrolled loop of torch.nn cells with retain_grad on every h_t.


def unrolled_lstm_flow(module: nn.LSTM, x: Tensor, weights: Tensor) -> list[Tensor]:
    """Two stacked torch.nn.LSTMCell loops; ``L = Σ weights * output``; ``‖∂L/∂h_t‖`` per layer, by retain_grad."""
    cells, hs = [], []
    for layer in range(module.num_layers):
        cell = nn.LSTMCell(module.input_size if layer == 0 else module.hidden_size, module.hidden_size,
                           dtype=x.dtype)
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).data.copy_(getattr(module, f"{name}_l{layer}"))
        cells.append(cell)
    inputs = list(x)
    for cell in cells:
        h = c = x.new_zeros(x.shape[1], module.hidden_size)
        layer_hs = []
        for x_t in inputs:
            h, c = cell(x_t, (h, c))
            h.retain_grad()
            layer_hs.append(h)
        hs.append(layer_hs)
        inputs = layer_hs
    loss = (torch.stack(inputs) * weights).sum()
    loss.backward()
    return [torch.stack([h.grad.norm() for h in layer_hs]) for layer_hs in hs]


def test_gradient_flow_equals_autograd_lstm() -> None:
    torch.manual_seed(2)
    reference = nn.LSTM(3, 4, num_layers=2, dtype=torch.float64)
    lstm = gatedrnn.LSTM.from_torch(reference)
    x = torch.randn(9, 2, 3, dtype=torch.float64)
    weights = torch.randn(9, 2, 4, dtype=torch.float64)
    flow = gatedrnn.inspect.gradient_flow(lstm, x, lambda out: (out[0] * weights).sum())
    expected = unrolled_lstm_flow(reference, x, weights)
    assert list(flow) == ["l0", "l1"]
    for key, wanted in zip(flow, expected):
        torch.testing.assert_close(flow[key], wanted, rtol=1e-12, atol=1e-15)
    assert all(p.grad is None for p in lstm.parameters())  # parameter gradients untouched


def test_gradient_flow_equals_autograd_bidirectional_gru_with_lengths() -> None:
    torch.manual_seed(3)
    gru = gatedrnn.GRU(3, 4, bidirectional=True, dtype=torch.float64, reset="before")
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    lengths = [6, 4]
    flow = gatedrnn.inspect.gradient_flow(gru, x, lambda out: out[1].sum() + out[0][2].square().sum(),
                                          lengths=torch.tensor(lengths))
    cell = gatedrnn.GRUCell(3, 4, dtype=torch.float64, reset="before")
    grads = {}
    for direction, key in ((0, "l0"), (1, "l0_reverse")):
        suffix = "_l0" + ("_reverse" if direction else "")
        cell.load_state_dict({k: getattr(gru, k + suffix) for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")})
        squares = torch.zeros(6, dtype=torch.float64)
        for b, n in enumerate(lengths):
            order = list(range(n))[::-1] if direction else list(range(n))
            h, hs = x.new_zeros(4), {}
            for t in order:
                h = cell(x[t, b], h)
                h.retain_grad()
                hs[t] = h
            # The layer's output at t=2 and its final state h_n of this direction, as in the loss above.
            (h.sum() + (hs[2].square().sum() if 2 < n else 0)).backward()
            for t, h_t in hs.items():
                squares[t] += h_t.grad.square().sum()
        grads[key] = squares.sqrt()
    for key in ("l0", "l0_reverse"):
        torch.testing.assert_close(flow[key], grads[key], rtol=1e-12, atol=1e-15)
    short = gatedrnn.inspect.gradient_flow(gru, x[:, 1:], lambda out: out[1].sum(), lengths=torch.tensor([4]))
    assert all(norms[:4].gt(0).all() and norms[4:].eq(0).all() for norms in short.values())  # padding: 0


def test_gradient_flow_vanishes_in_a_contracting_rnn() -> None:
    rnn = gatedrnn.RNN(2, 8, dtype=torch.float64)
    with torch.no_grad():
        rnn.weight_hh_l0.mul_(0.3)  # a contraction: ‖∂h_{t+1}/∂h_t‖ < 1, so the gradient must shrink going back
    flow = gatedrnn.inspect.gradient_flow(rnn, torch.randn(30, 4, 2, dtype=torch.float64),
                                          lambda out: out[0][-1].sum())["l0"]
    assert (flow[:-1] < flow[1:]).all() and flow[0] < 1e-6 * flow[-1]


def test_gradient_flow_bad_arguments() -> None:
    rnn = gatedrnn.RNN(2, 3)
    x = torch.randn(4, 1, 2)
    with pytest.raises(TypeError, match=r"loss_fn: expected a callable taking the model's output, got int"):
        gatedrnn.inspect.gradient_flow(rnn, x, 3)
    with pytest.raises(ValueError, match=r"loss_fn: expected it to return a scalar tensor, got a tensor of shape"):
        gatedrnn.inspect.gradient_flow(rnn, x, lambda out: out[0])
    with pytest.raises(ValueError, match=r"loss_fn: the loss does not depend on the model's output"):
        gatedrnn.inspect.gradient_flow(rnn, x, lambda out: torch.tensor(1.0))
    assert rnn._tap is None
