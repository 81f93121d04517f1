"""The engine interface: layers hand whole sequences to engines; the registry picks, lists and explains them."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import pytest
import torch
from torch import Tensor

import gatedrnn
from gatedrnn import engine as registry
from gatedrnn.cells import CellSpec, State
from gatedrnn.engine.reference import ReferenceEngine


class SpyEngine(ReferenceEngine):
    """The reference engine, recording every call it gets."""

    def __init__(self, name: str, priority: int, available: bool = True, covers_lstm_only: bool = False) -> None:
        self.name, self.priority, self.available, self.covers_lstm_only = name, priority, available, covers_lstm_only
        self.calls: list[tuple[tuple[int, ...], Tensor | None]] = []

    def status(self) -> tuple[bool, str]:
        return (True, "test engine") if self.available else (False, "needs a flux capacitor")

    def covers(self, spec: CellSpec, x: Tensor) -> bool:
        return spec.family == "lstm" or not self.covers_lstm_only

    def run(self, spec: CellSpec, gx: Tensor, params: Mapping[str, Tensor], state: State,
            lengths: Tensor | None) -> tuple[Tensor, State]:
        self.calls.append((tuple(gx.shape), lengths))
        return super().run(spec, gx, params, state, lengths)


@pytest.fixture
def spy() -> Iterator[SpyEngine]:
    engine = SpyEngine("spy", priority=100)
    registry.register(engine)
    yield engine
    registry._REGISTRY.pop("spy")


def test_layers_hand_whole_sequences_to_the_engine(spy: SpyEngine) -> None:
    lstm = gatedrnn.LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2)
    out, _ = lstm(torch.randn(7, 4, 3))
    # one call per layer and direction, each with the input projection of all 7 steps: (T, B, 4H)
    assert [shape for shape, _ in spy.calls] == [(7, 4, 20)] * 4
    assert out.shape == (7, 4, 4)


def test_lengths_reach_the_engine_only_when_some_sequence_is_shorter(spy: SpyEngine) -> None:
    gru = gatedrnn.GRU(3, 5)
    x = torch.randn(6, 2, 3)
    gru(x, lengths=torch.tensor([6, 6]))
    gru(x, lengths=torch.tensor([6, 2]))
    assert spy.calls[0][1] is None
    assert spy.calls[1][1].tolist() == [6, 2]


def test_auto_picks_the_highest_priority_engine_that_covers_the_call(spy: SpyEngine) -> None:
    spec = gatedrnn.LSTM(2, 3).spec
    x = torch.randn(2, 1, 2)
    assert registry.resolve("auto", spec, x) is spy
    best_other = "cpu" if registry._REGISTRY["cpu"].status()[0] else "reference"
    spy.covers_lstm_only = True
    assert registry.resolve("auto", gatedrnn.GRU(2, 3).spec, x).name == best_other
    spy.available = False
    assert registry.resolve("auto", spec, x).name == best_other


def test_unavailable_engine_named_explicitly_says_why(spy: SpyEngine) -> None:
    spy.available = False
    lstm = gatedrnn.LSTM(2, 3, engine="spy")
    with pytest.raises(RuntimeError, match="engine: 'spy' is not available on this machine: needs a flux capacitor"):
        lstm(torch.randn(2, 1, 2))


def test_engine_that_does_not_cover_the_call_is_refused(spy: SpyEngine) -> None:
    spy.covers_lstm_only = True
    gru = gatedrnn.GRU(2, 3, engine="spy")
    with pytest.raises(ValueError, match="engine: 'spy' does not run GRUSpec"):
        gru(torch.randn(2, 1, 2))


def test_engines_lists_availability_and_reasons(spy: SpyEngine) -> None:
    spy.available = False
    infos = {e.name: e for e in gatedrnn.engines()}
    assert infos["reference"].available and infos["reference"].reason
    assert not infos["spy"].available and infos["spy"].reason == "needs a flux capacitor"
    assert [e.name for e in gatedrnn.engines()][0] == "spy"  # listed by priority


def test_engine_can_be_changed_on_a_built_module(spy: SpyEngine) -> None:
    rnn = gatedrnn.RNN(2, 3, engine="reference")
    x = torch.randn(4, 2, 2)
    before, _ = rnn(x)
    assert not spy.calls
    rnn.engine = "spy"
    after, _ = rnn(x)
    assert len(spy.calls) == 1
    torch.testing.assert_close(after, before, rtol=0, atol=0)
