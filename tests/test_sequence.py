"""Sequence handling: time reversal within lengths, layouts in and out, lengths= against packing."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import gatedrnn
from gatedrnn.sequence import reverse_padded


def test_reverse_padded_reverses_each_sequence_within_its_length() -> None:
    x = torch.arange(1, 13, dtype=torch.float64).reshape(4, 3, 1)  # (T=4, B=3, F=1)
    lengths = torch.tensor([4, 2, 1])
    rev = reverse_padded(x, lengths)
    assert rev[:, 0, 0].tolist() == [10, 7, 4, 1]
    assert rev[:, 1, 0].tolist() == [5, 2, 8, 11]  # padding (8, 11) stays where it is
    assert rev[:, 2, 0].tolist() == [3, 6, 9, 12]
    assert torch.equal(reverse_padded(rev, lengths), x)  # its own inverse
    assert torch.equal(reverse_padded(x, None), x.flip(0))


@pytest.mark.parametrize("layer", ["LSTM", "GRU", "RNN"])
def test_lengths_zero_outputs_and_take_the_last_valid_state(layer: str) -> None:
    torch.manual_seed(3)
    module = getattr(gatedrnn, layer)(3, 4, num_layers=2, bidirectional=True, dtype=torch.float64)
    x = torch.randn(6, 3, 3, dtype=torch.float64)
    lengths = torch.tensor([2, 6, 4])
    out, state = module(x, lengths=lengths)
    h_n = state[0] if isinstance(state, tuple) else state
    assert torch.all(out[2:, 0] == 0) and torch.all(out[4:, 2] == 0)
    assert torch.all(out[:2, 0] != 0)
    for b, n in enumerate(lengths.tolist()):  # each sequence alone, cut to its length, gives the same result
        alone, alone_state = module(x[:n, b : b + 1])
        alone_h = alone_state[0] if isinstance(alone_state, tuple) else alone_state
        torch.testing.assert_close(out[:n, b], alone[:, 0], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(h_n[:, b], alone_h[:, 0], rtol=1e-12, atol=1e-14)


def test_padding_values_do_not_leak_into_results() -> None:
    torch.manual_seed(4)
    lstm = gatedrnn.LSTM(2, 3, bidirectional=True, dtype=torch.float64)
    x = torch.randn(5, 2, 2, dtype=torch.float64)
    lengths = torch.tensor([5, 3])
    noisy = x.clone()
    noisy[3:, 1] = 1e3 * torch.randn(2, 2, dtype=torch.float64)
    a, (h_a, c_a) = lstm(x, lengths=lengths)
    b, (h_b, c_b) = lstm(noisy, lengths=lengths)
    for u, v in ((a, b), (h_a, h_b), (c_a, c_b)):
        torch.testing.assert_close(u, v, rtol=0, atol=0)


def test_packed_output_keeps_the_input_packing() -> None:
    torch.manual_seed(5)
    gru = gatedrnn.GRU(2, 3, batch_first=True)
    x = torch.randn(4, 6, 2)
    packed = pack_padded_sequence(x, torch.tensor([3, 6, 1, 6]), batch_first=True, enforce_sorted=False)
    out, h_n = gru(packed)
    assert torch.equal(out.batch_sizes, packed.batch_sizes)
    assert torch.equal(out.sorted_indices, packed.sorted_indices)
    assert torch.equal(out.unsorted_indices, packed.unsorted_indices)
    padded, lengths = pad_packed_sequence(out, batch_first=True)
    assert lengths.tolist() == [3, 6, 1, 6]
    same, h_same = gru(x, lengths=torch.tensor([3, 6, 1, 6]))
    torch.testing.assert_close(padded, same)
    torch.testing.assert_close(h_n, h_same)


def test_unbatched_input_matches_a_batch_of_one() -> None:
    torch.manual_seed(6)
    lstm = gatedrnn.LSTM(3, 4, num_layers=2, proj_size=2)
    x = torch.randn(5, 3)
    out, (h, c) = lstm(x)
    assert out.shape == (5, 2) and h.shape == (2, 2) and c.shape == (2, 4)
    batched, (hb, cb) = lstm(x.unsqueeze(1))
    torch.testing.assert_close(out, batched[:, 0])
    torch.testing.assert_close(h, hb[:, 0])
    torch.testing.assert_close(c, cb[:, 0])
