"""Every variant against an independent implementation written here from the equations, plus gradcheck.

The implementation below shares no code with the library: it runs one sequence at a time (so ``lengths`` is simply
a slice), one step at a time, on 1-D vectors, slicing each gate's rows out of the ``torch.nn``-named parameters and
writing layer norm out by hand. Variant combinations that make sense (coupled excludes a forget bias) are all
covered, each with random layers, directions, layouts and lengths, in float64 with a relative error <= 1e-12.
Every combination also passes ``torch.autograd.gradcheck`` and ``gradgradcheck`` in float64.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor

import gatedrnn
from numerics import layer_as_function, relative_error

EPS = 1e-5  # layer-norm epsilon, torch.nn.LayerNorm's default
TOLERANCE = 1e-12

LSTM_OPTIONS = [
    dict(peephole=peephole, coupled=coupled, layer_norm=layer_norm, forget_bias=forget_bias, proj_size=proj, bias=bias)
    for peephole, (coupled, forget_bias), layer_norm, proj, bias in itertools.product(
        (False, True), ((False, 0.0), (False, 1.0), (False, -0.7), (True, 0.0)), (False, True), (0, 2), (True, False)
    )
]
GRU_OPTIONS = [
    dict(reset=reset, layer_norm=layer_norm, bias=bias)
    for reset, layer_norm, bias in itertools.product(("after", "before"), (False, True), (True, False))
]
RNN_OPTIONS = [
    dict(nonlinearity=nonlinearity, layer_norm=layer_norm, bias=bias)
    for nonlinearity, layer_norm, bias in itertools.product(("tanh", "relu"), (False, True), (True, False))
]
VARIANT_CASES = (
    [("LSTM", o) for o in LSTM_OPTIONS] + [("GRU", o) for o in GRU_OPTIONS] + [("RNN", o) for o in RNN_OPTIONS]
)


def case_id(case: tuple[str, dict]) -> str:
    kind, options = case
    return kind + "".join(f"-{k}={v}" for k, v in options.items())


# ---------------------------------------------------------------------------------------------------------------
# The independent implementation: one sequence, one step, 1-D vectors.


def ln(v: Tensor, gain: Tensor, shift: Tensor) -> Tensor:
    """Layer norm of a vector: ``(v - mean) / sqrt(var + eps) * gain + shift`` (biased variance)."""
    mean = v.sum() / v.numel()
    var = ((v - mean) ** 2).sum() / v.numel()
    return (v - mean) / torch.sqrt(var + EPS) * gain + shift


def rows(t: Tensor, k: int, H: int) -> Tensor:
    """Gate block ``k`` (``H`` rows) of a stacked weight or bias."""
    return t[k * H : (k + 1) * H]


@dataclass
class Params:
    """One layer and direction's parameters by base name, with the options of the cell."""

    p: dict[str, Tensor]
    options: dict
    H: int


def pre_activations(x: Tensor, h: Tensor, P: Params, gates: list[str]) -> dict[str, Tensor]:
    """``a_k = LN_ih(W_ih x)_k + b_ih_k + LN_hh(W_hh h)_k + b_hh_k`` for each gate ``k`` (LSTM and RNN)."""
    H, p = P.H, P.p
    ax, ah = p["weight_ih"] @ x, p["weight_hh"] @ h
    if P.options.get("layer_norm"):
        ax = ln(ax, p["ln_ih_weight"], p["ln_ih_bias"])
        ah = ln(ah, p["ln_hh_weight"], p["ln_hh_bias"])
    a = {}
    for k, gate in enumerate(gates):
        a[gate] = rows(ax, k, H) + rows(ah, k, H)
        if P.options.get("bias", True):
            a[gate] = a[gate] + rows(p["bias_ih"], k, H) + rows(p["bias_hh"], k, H)
    return a


def lstm_step(x: Tensor, state: tuple[Tensor, Tensor], P: Params) -> tuple[tuple[Tensor, Tensor], dict, dict]:
    h, c = state
    o_ = P.options
    coupled, peephole = o_.get("coupled", False), o_.get("peephole", False)
    a = pre_activations(x, h, P, ["i", "g", "o"] if coupled else ["i", "f", "g", "o"])
    pre = {"i": a["i"] + (P.p["weight_ci"] * c if peephole else 0.0), "g": a["g"]}
    i = torch.sigmoid(pre["i"])
    if coupled:
        f = 1 - i
    else:
        pre["f"] = a["f"] + (P.p["weight_cf"] * c if peephole else 0.0) + o_.get("forget_bias", 0.0)
        f = torch.sigmoid(pre["f"])
    g = torch.tanh(a["g"])
    c_new = f * c + i * g
    pre["o"] = a["o"] + (P.p["weight_co"] * c_new if peephole else 0.0)
    o = torch.sigmoid(pre["o"])
    c_out = ln(c_new, P.p["ln_c_weight"], P.p["ln_c_bias"]) if o_.get("layer_norm") else c_new
    h_new = o * torch.tanh(c_out)
    if o_.get("proj_size"):
        h_new = P.p["weight_hr"] @ h_new
    return (h_new, c_new), {"i": i, "f": f, "g": g, "o": o}, pre


def gru_step(x: Tensor, state: tuple[Tensor], P: Params) -> tuple[tuple[Tensor], dict, dict]:
    (h,) = state
    H, p, o_ = P.H, P.p, P.options
    use_ln, use_bias = o_.get("layer_norm", False), o_.get("bias", True)
    ax = p["weight_ih"] @ x
    if use_ln:
        ax = ln(ax, p["ln_ih_weight"], p["ln_ih_bias"])
    if use_bias:
        ax = ax + p["bias_ih"]

    def recurrent(v: Tensor, lo: int, hi: int) -> Tensor:
        out = p["weight_hh"][lo:hi] @ v
        if use_ln:
            out = ln(out, p["ln_hh_weight"][lo:hi], p["ln_hh_bias"][lo:hi])
        return out + p["bias_hh"][lo:hi] if use_bias else out

    hrz = recurrent(h, 0, 2 * H)
    pre = {"r": rows(ax, 0, H) + hrz[:H], "z": rows(ax, 1, H) + hrz[H:]}
    r, z = torch.sigmoid(pre["r"]), torch.sigmoid(pre["z"])
    if o_.get("reset", "after") == "after":
        pre["n"] = rows(ax, 2, H) + r * recurrent(h, 2 * H, 3 * H)
    else:
        pre["n"] = rows(ax, 2, H) + recurrent(r * h, 2 * H, 3 * H)
    n = torch.tanh(pre["n"])
    return ((1 - z) * n + z * h,), {"r": r, "z": z, "n": n}, pre


def rnn_step(x: Tensor, state: tuple[Tensor], P: Params) -> tuple[tuple[Tensor], dict, dict]:
    (h,) = state
    a = pre_activations(x, h, P, ["h"])["h"]
    h_new = torch.tanh(a) if P.options.get("nonlinearity", "tanh") == "tanh" else torch.relu(a)
    return (h_new,), {"h": h_new}, {"h": a}


STEPS = {"LSTM": lstm_step, "GRU": gru_step, "RNN": rnn_step}
"""Each returns ``(new state, activated gates by name, gate pre-activations by name)`` of one step."""


@dataclass
class Spec:
    kind: str
    options: dict
    H: int
    layers: int = 1
    bidirectional: bool = False

    @property
    def widths(self) -> tuple[int, ...]:
        """Widths of the state tensors: ``(P, H)`` for LSTM (``P`` = proj_size or ``H``), ``(H,)`` otherwise."""
        return ((self.options.get("proj_size") or self.H), self.H) if self.kind == "LSTM" else (self.H,)


def layer_params(module: torch.nn.Module, layer: int, reverse: bool, spec: Spec) -> Params:
    suffix = f"_l{layer}" + ("_reverse" if reverse else "")
    p = {name[: -len(suffix)]: t for name, t in module.named_parameters() if name.endswith(suffix)}
    return Params(p, spec.options, spec.H)


def run_sequence(module: torch.nn.Module, spec: Spec, xs: Tensor, state0: list[tuple[Tensor, ...]]):
    """One sequence ``xs`` ``(T, I)`` through every layer and direction; returns outputs ``(T, D·P)`` and finals."""
    step = STEPS[spec.kind]
    finals = []
    for layer in range(spec.layers):
        outs = []
        for direction in range(2 if spec.bidirectional else 1):
            P = layer_params(module, layer, bool(direction), spec)
            state = state0[len(finals)]
            seq = xs.flip(0) if direction else xs
            ys = []
            for t in range(seq.shape[0]):
                state = step(seq[t], state, P)[0]
                ys.append(state[0])
            y = torch.stack(ys)
            outs.append(y.flip(0) if direction else y)
            finals.append(state)
        xs = torch.cat(outs, dim=1)
    return xs, finals


def expected_forward(module, spec: Spec, x: Tensor, lengths: list[int], hx):
    """``x`` ``(T, B, I)`` time-major; returns padded output ``(T, B, D·P)`` and the state tuple, stacked."""
    T, B = x.shape[0], x.shape[1]
    count = spec.layers * (2 if spec.bidirectional else 1)
    widths = spec.widths
    outputs, finals = [], []
    for b in range(B):
        if hx is None:
            state0 = [tuple(x.new_zeros(w) for w in widths)] * count
        else:
            parts = hx if isinstance(hx, tuple) else (hx,)
            state0 = [tuple(s[k, b] for s in parts) for k in range(count)]
        out, fin = run_sequence(module, spec, x[: lengths[b], b], state0)
        outputs.append(torch.cat([out, out.new_zeros(T - lengths[b], out.shape[1])]))
        finals.append(fin)
    output = torch.stack(outputs, dim=1)
    states = tuple(
        torch.stack([torch.stack([finals[b][k][j] for b in range(B)]) for k in range(count)])
        for j in range(len(widths))
    )
    return output, states


# ---------------------------------------------------------------------------------------------------------------


def randomize_(module: torch.nn.Module, gen: torch.Generator) -> None:
    """Fresh random values for every parameter, layer-norm gains and peepholes included (not their 1/0 init)."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.rand(p.shape, generator=gen, dtype=p.dtype) * 1.6 - 0.8)


def build(kind: str, options: dict, I: int, H: int, **layer_kwargs) -> torch.nn.Module:
    return getattr(gatedrnn, kind)(I, H, **options, **layer_kwargs, dtype=torch.float64, engine="reference")


@pytest.mark.parametrize("case", VARIANT_CASES, ids=case_id)
def test_layer_matches_independent_equations(case: tuple[str, dict]) -> None:
    kind, options = case
    rng = random.Random(case_id(case))
    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    for _ in range(3):
        T, B, I, H = rng.choice([1, 3, 5]), rng.choice([1, 2, 3]), rng.choice([2, 3]), rng.choice([3, 4])
        layers, bidirectional, batch_first = rng.choice([1, 2]), rng.random() < 0.5, rng.random() < 0.5
        spec = Spec(kind, options, H, layers, bidirectional)
        module = build(kind, options, I, H, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first)
        randomize_(module, gen)
        x = torch.randn(T, B, I, generator=gen, dtype=torch.float64, requires_grad=True)
        lengths = [rng.randint(1, T) for _ in range(B)]
        count = layers * (2 if bidirectional else 1)
        hx = None
        if rng.random() < 0.5:
            widths = spec.widths
            parts = tuple(
                torch.randn(count, B, w, generator=gen, dtype=torch.float64, requires_grad=True) for w in widths
            )
            hx = parts if kind == "LSTM" else parts[0]
        want_out, want_states = expected_forward(module, spec, x, lengths, hx)
        got_out, got_hx = module(x.transpose(0, 1) if batch_first else x, hx, lengths=torch.tensor(lengths))
        got_out = got_out.transpose(0, 1) if batch_first else got_out
        got_states = got_hx if isinstance(got_hx, tuple) else (got_hx,)
        assert relative_error(got_out, want_out) <= TOLERANCE
        for got, want in zip(got_states, want_states):
            assert got.shape == want.shape
            assert relative_error(got, want) <= TOLERANCE
        # Gradients of the input, the initial state and every parameter through output and final states.
        weights = [torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in (want_out, *want_states)]
        named = [("input", x), *(("hx", s) for s in (hx if isinstance(hx, tuple) else (hx,)) if s is not None)]
        named += list(module.named_parameters())
        tensors = [t for _, t in named]
        want_grads = torch.autograd.grad((want_out, *want_states), tensors, weights)
        got_grads = torch.autograd.grad((got_out, *got_states), tensors, weights)
        for (name, _), got, want in zip(named, got_grads, want_grads):
            assert relative_error(got, want) <= TOLERANCE, name


CELLS = {"LSTM": gatedrnn.LSTMCell, "GRU": gatedrnn.GRUCell, "RNN": gatedrnn.RNNCell}


@pytest.mark.parametrize("case", VARIANT_CASES, ids=case_id)
def test_cell_matches_independent_equations(case: tuple[str, dict]) -> None:
    kind, options = case
    rng = random.Random("cell-" + case_id(case))
    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    I, H, B = 3, 4, 3
    cell = CELLS[kind](I, H, **options, dtype=torch.float64)
    randomize_(cell, gen)
    P = Params(dict(cell.named_parameters()), options, H)
    x = torch.randn(B, I, generator=gen, dtype=torch.float64)
    widths = Spec(kind, options, H).widths
    state = tuple(torch.randn(B, w, generator=gen, dtype=torch.float64) for w in widths)
    got = cell(x, state if kind == "LSTM" else state[0])
    got = got if isinstance(got, tuple) else (got,)
    for b in range(B):
        want = STEPS[kind](x[b], tuple(s[b] for s in state), P)[0]
        for g, w in zip(got, want):
            assert relative_error(g[b], w) <= TOLERANCE
    # unbatched input gives the same as a batch of one
    single = cell(x[0], tuple(s[0] for s in state) if kind == "LSTM" else state[0][0])
    single = single if isinstance(single, tuple) else (single,)
    for s, g in zip(single, got):
        assert relative_error(s, g[0]) <= TOLERANCE


@pytest.mark.parametrize("case", VARIANT_CASES, ids=case_id)
def test_gradcheck_and_gradgradcheck(case: tuple[str, dict]) -> None:
    """Input, initial state and every parameter, through a bidirectional layer with uneven lengths."""
    kind, options = case
    gen = torch.Generator().manual_seed(random.Random("grad-" + case_id(case)).randrange(2**31))
    T, B, I, H = 3, 2, 2, 3
    module = build(kind, options, I, H, bidirectional=True)
    randomize_(module, gen)
    f, inputs = layer_as_function(module, Spec(kind, options, H).widths, T, B, I, gen)
    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)
