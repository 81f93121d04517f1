"""gatedrnn's layers and cells behave as ``torch.nn``'s where ``torch.nn`` has the same module: the same
exception types for bad input (messages stay gatedrnn's, naming the argument), the same edge cases (an empty batch,
a cell of hidden size 0, an int ``bias``), ``all_weights``, and the behaviours ``torch.nn``'s own RNN tests check
(dropout between layers, initial states, unbatched input, one-output backward, retained graphs, weight norm,
``to``/meta/``to_empty``, deepcopy and pickling, non-contiguous input). Written here from what those tests check,
run against the installed torch: every case runs on both libraries."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

import gatedrnn

FAMILIES = ["RNN", "LSTM", "GRU"]
ENGINES = ["reference", "cpu"]


def state(family: str, *shape: int) -> Tensor | tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(3)
    if family == "LSTM":
        return torch.randn(*shape, generator=gen), torch.randn(*shape, generator=gen)
    return torch.randn(*shape, generator=gen)


def layer_cases(family: str) -> dict[str, Callable[[type], object]]:
    """Bad (and borderline) uses of a layer class, each a function of the class (torch.nn's or gatedrnn's)."""
    x = torch.randn(4, 2, 3)
    wrong_dtype = state(family, 1, 2, 5)
    wrong_dtype = tuple(s.double() for s in wrong_dtype) if isinstance(wrong_dtype, tuple) else wrong_dtype.double()
    return {
        "hidden_size=0": lambda C: C(3, 0),
        "num_layers=0": lambda C: C(3, 5, 0),
        "input_size=0": lambda C: C(0, 5),
        "input_size=3.0": lambda C: C(3.0, 5),
        "hidden_size=5.0": lambda C: C(3, 5.0),
        "bias=1": lambda C: C(3, 5, bias=1),
        "bias='True'": lambda C: C(3, 5, bias="True"),
        "batch_first=1": lambda C: C(3, 5, batch_first=1),
        "dropout=2": lambda C: C(3, 5, 2, dropout=2.0),
        "input of the wrong size": lambda C: C(3, 5)(torch.randn(4, 2, 4)),
        "4-D input": lambda C: C(3, 5)(torch.randn(4, 2, 3, 1)),
        "1-D input": lambda C: C(3, 5)(torch.randn(3)),
        "empty sequence": lambda C: C(3, 5)(torch.randn(0, 2, 3)),
        "empty batch": lambda C: C(3, 5)(torch.randn(4, 0, 3)),
        "input dtype": lambda C: C(3, 5)(x.double()),
        "integer input": lambda C: C(3, 5)(torch.ones(4, 2, 3, dtype=torch.long)),
        "state batch": lambda C: C(3, 5)(x, state(family, 1, 3, 5)),
        "state width": lambda C: C(3, 5)(x, state(family, 1, 2, 6)),
        "state layers": lambda C: C(3, 5)(x, state(family, 2, 2, 5)),
        "state dtype": lambda C: C(3, 5)(x, wrong_dtype),
        "3-D state for unbatched input": lambda C: C(3, 5)(torch.randn(4, 3), state(family, 1, 2, 5)),
        "state of the wrong kind": lambda C: C(3, 5)(x, torch.randn(1, 2, 5) if family == "LSTM"
                                                     else (torch.randn(1, 2, 5),)),
    }


def cell_cases(family: str) -> dict[str, Callable[[type], object]]:
    return {
        "hidden_size=0": lambda C: C(3, 0)(torch.randn(2, 3)),
        "input_size=0": lambda C: C(0, 5)(torch.randn(2, 0)),
        "bias=1": lambda C: C(3, 5, bias=1)(torch.randn(2, 3)),
        "bias=0": lambda C: C(3, 5, bias=0)(torch.randn(2, 3)),
        "input of the wrong size": lambda C: C(3, 5)(torch.randn(2, 4)),
        "3-D input": lambda C: C(3, 5)(torch.randn(2, 1, 3)),
        "empty batch": lambda C: C(3, 5)(torch.randn(0, 3)),
        "state batch": lambda C: C(3, 5)(torch.randn(2, 3), state(family, 3, 5)),
        "state width": lambda C: C(3, 5)(torch.randn(2, 3), state(family, 2, 6)),
        "4-D state": lambda C: C(3, 5)(torch.randn(2, 3), state(family, 2, 1, 1, 5)),
        "input dtype": lambda C: C(3, 5)(torch.randn(2, 3, dtype=torch.float64)),
    }


def outcome(call: Callable[[], object]) -> BaseException | object:
    try:
        return call()
    except Exception as error:  # noqa: BLE001 - the outcome is what is compared
        return error


def shapes(result: object) -> object:
    if isinstance(result, Tensor):
        return tuple(result.shape)
    if isinstance(result, (tuple, list)):
        return [shapes(r) for r in result]
    return type(result).__name__


CASES = [(f, kind, name, fn) for f in FAMILIES for kind, table in (("", layer_cases(f)), ("Cell", cell_cases(f)))
         for name, fn in table.items()]


@pytest.mark.parametrize(("family", "kind", "name", "call"), CASES, ids=[f"{f}{k}-{n}" for f, k, n, _ in CASES])
def test_same_exception_types_and_edge_cases_as_torch_nn(family: str, kind: str, name: str, call: Callable) -> None:
    theirs = outcome(lambda: call(getattr(nn, family + kind)))
    ours = outcome(lambda: call(getattr(gatedrnn, family + kind)))
    if not isinstance(theirs, BaseException):
        assert not isinstance(ours, BaseException), f"torch.nn accepts this, gatedrnn raised {ours!r}"
        assert shapes(ours) == shapes(theirs)
        return
    assert isinstance(ours, BaseException), f"torch.nn raises {theirs!r}, gatedrnn accepted it"
    if isinstance(theirs, (AttributeError, IndexError)):
        # torch.nn trips over the wrong kind of state inside (e.g. indexing a tensor as (h, c)); gatedrnn says so.
        assert isinstance(ours, TypeError) and str(ours).startswith("hx"), repr(ours)
    else:
        assert isinstance(ours, type(theirs)), f"torch.nn raises {type(theirs).__name__}, gatedrnn {ours!r}"
    argument = str(ours).split(":")[0]
    assert argument.split(" ")[0] in {"input", "hx", "hidden_size", "num_layers", "input_size", "bias",
                                      "batch_first", "dropout"}, f"the message names no argument: {ours}"


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("family", FAMILIES)
def test_empty_batch_forward_and_backward(family: str, engine: str) -> None:
    ours = getattr(gatedrnn, family)(3, 5, num_layers=2, bidirectional=True, engine=engine)
    theirs = getattr(nn, family)(3, 5, num_layers=2, bidirectional=True)
    x = torch.randn(4, 0, 3, requires_grad=True)
    for module in (ours, theirs):
        out, hx = module(x)
        (out.sum() + (hx[0] if isinstance(hx, tuple) else hx).sum()).backward()
    assert shapes(ours(x)) == shapes(theirs(x))
    assert all(p.grad is not None and not p.grad.any() for p in ours.parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_all_weights_has_torch_nn_layout(family: str) -> None:
    options = {"proj_size": 2} if family == "LSTM" else {}
    ours = getattr(gatedrnn, family)(3, 5, num_layers=2, bidirectional=True, **options)
    theirs = getattr(nn, family)(3, 5, num_layers=2, bidirectional=True, **options)
    assert [[tuple(w.shape) for w in ws] for ws in ours.all_weights] == \
        [[tuple(w.shape) for w in ws] for ws in theirs.all_weights]
    assert all(w is getattr(ours, name) for ws, names in zip(ours.all_weights, ours._names)
               for w, name in zip(ws, names.values()))


@pytest.mark.parametrize("family", ["RNN", "GRU"])
def test_cells_of_hidden_size_zero(family: str) -> None:
    """torch's test_RNN_cell_forward_zero_hidden_size: an empty state in, an empty state out."""
    cell = getattr(gatedrnn, family + "Cell")(10, 0)
    assert cell(torch.randn(3, 10), torch.randn(3, 0)).shape == (3, 0)


@pytest.mark.parametrize("engine", ENGINES)
def test_dropout_between_layers(engine: str) -> None:
    """As torch's test_RNN_dropout: weights of 1, a relu RNN of 1000 units, so every unit of the second layer sums
    the first layer's dropped-out outputs. p = 0 keeps all, p = 1 drops all, others keep about 1 - p, scaled by
    1 / (1 - p); in eval mode nothing is dropped."""
    for p in (0.0, 0.276, 0.731, 1.0):
        rnn = gatedrnn.RNN(1000, 1000, 2, nonlinearity="relu", dropout=p, engine=engine)
        with torch.no_grad():
            for weight in rnn.parameters():
                weight.fill_(1.0 if weight.dim() == 2 else 0.0)
            rnn.weight_ih_l0.fill_(1e-3)  # the first layer's units are all 1 for an input of ones
        x = torch.ones(1, 1, 1000)
        torch.manual_seed(0)
        out, h = rnn(x)
        value = out[0, 0, 0].item()
        assert torch.equal(out, torch.full_like(out, value))  # every unit sums the same dropped-out vector
        kept = value * (1 - p) / 1000 if p < 1 else value
        if p == 0:
            assert value == pytest.approx(1000.0)
        elif p == 1:
            assert value == 0.0
        else:
            assert abs(kept - (1 - p)) < 0.05
        rnn.eval()
        assert rnn(x)[0][0, 0, 0].item() == pytest.approx(1000.0)


def test_dropout_follows_the_random_state_and_attribute_changes() -> None:
    rnn = gatedrnn.LSTM(8, 16, num_layers=3, dropout=0.5)
    x = torch.randn(5, 2, 8)
    torch.manual_seed(1)
    a = rnn(x)[0]
    torch.manual_seed(1)
    b = rnn(x)[0]
    torch.manual_seed(2)
    c = rnn(x)[0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    rnn.dropout = 0.0  # as torch's test_RNN_change_dropout: the attribute is read at every call
    assert torch.equal(rnn(x)[0], rnn(x)[0])


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("family", FAMILIES)
def test_initial_state_none_is_zeros_and_unbatched_is_batch_of_one(family: str, engine: str) -> None:
    module = getattr(gatedrnn, family)(3, 5, num_layers=2, engine=engine)
    x = torch.randn(6, 1, 3)
    zeros = state(family, 2, 1, 5)
    zeros = tuple(torch.zeros_like(s) for s in zeros) if isinstance(zeros, tuple) else torch.zeros_like(zeros)
    torch.testing.assert_close(module(x)[0], module(x, zeros)[0])
    unbatched, batched = module(x[:, 0])[0], module(x)[0][:, 0]
    torch.testing.assert_close(unbatched, batched)


@pytest.mark.parametrize("engine", ENGINES)
def test_backward_from_one_output_and_with_a_retained_graph(engine: str) -> None:
    lstm = gatedrnn.LSTM(3, 5, engine=engine)
    cell = gatedrnn.LSTMCell(3, 5)
    x = torch.randn(4, 2, 3, requires_grad=True)
    out, (h, c) = lstm(x)
    c.sum().backward(retain_graph=True)  # only c_n
    first = x.grad.clone()
    c.sum().backward()  # the retained graph, again
    torch.testing.assert_close(x.grad, 2 * first)
    h1, c1 = cell(torch.randn(2, 3))
    h1.sum().backward()  # only h of a cell, as torch's test_lstmcell_backward_only_one_output_grad
    assert cell.weight_hh.grad is not None


def test_nonlinearity_positional_and_projection_checks() -> None:
    assert gatedrnn.RNN(3, 5, 1, "relu").nonlinearity == "relu"
    with pytest.raises(ValueError, match="proj_size"):
        gatedrnn.LSTM(3, 5, proj_size=5)
    with pytest.raises(ValueError, match="proj_size"):
        gatedrnn.LSTM(3, 5, proj_size=-1)
    lstm = gatedrnn.LSTM(3, 5, proj_size=2)
    with pytest.raises(RuntimeError, match="hx"):  # h_0 is proj_size wide
        lstm(torch.randn(4, 2, 3), (torch.randn(1, 2, 5), torch.randn(1, 2, 5)))


@pytest.mark.parametrize("engine", ENGINES)
def test_weight_norm_parametrization(engine: str) -> None:
    lstm = gatedrnn.LSTM(3, 5, engine=engine)
    nn.utils.parametrizations.weight_norm(lstm, "weight_hh_l0")
    out, _ = lstm(torch.randn(4, 2, 3))
    out.sum().backward()
    assert lstm.parametrizations.weight_hh_l0.original0.grad is not None


@pytest.mark.parametrize("family", FAMILIES)
def test_to_meta_to_empty_deepcopy_pickle_and_non_contiguous_input(family: str) -> None:
    module = getattr(gatedrnn, family)(3, 5, num_layers=2, bidirectional=True)
    x = torch.randn(2, 6, 3).transpose(0, 1)  # (T, B, I), not contiguous
    want = module(x.contiguous())[0]
    torch.testing.assert_close(module(x)[0], want)
    for clone in (copy.deepcopy(module), pickle.loads(pickle.dumps(module))):
        torch.testing.assert_close(clone(x)[0], want)
    double = copy.deepcopy(module).double()
    assert double(x.double())[0].dtype == torch.float64
    meta = getattr(gatedrnn, family)(3, 5, device="meta")
    assert all(p.is_meta for p in meta.parameters())
    real = meta.to_empty(device="cpu")
    real.reset_parameters()
    assert real(torch.randn(4, 2, 3))[0].shape == (4, 2, 5)
    assert repr(module).startswith(f"{family}(3, 5, num_layers=2, bidirectional=True")
