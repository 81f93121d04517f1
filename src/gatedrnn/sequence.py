"""Sequence handling shared by every layer: input layouts in and out, and time reversal within each length.

Inside the library a batch of sequences is always time-major and padded, ``(T, B, F)``, with an optional
``lengths`` tensor ``(B,)``. This module converts the layouts ``torch.nn`` accepts (batch-first, unbatched,
``PackedSequence``) to and from that form.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .checks import ShapeError, check_input, check_lengths, check_tensor


@dataclass
class Layout:
    """How the caller's input was laid out, to give the output back the same way."""

    batched: bool
    batch_first: bool
    packed: PackedSequence | None
    sorted_lengths: Tensor | None = None
    """A ``PackedSequence``'s lengths in its sorted order (CPU int64), to pack the output the same way."""


def to_padded(
    input: Tensor | PackedSequence, lengths: object, batch_first: bool, input_size: int, weight: Tensor
) -> tuple[Tensor, Tensor | None, Layout]:
    """Return ``(x, lengths, layout)`` with ``x`` of shape ``(T, B, I)`` and ``lengths`` int64 ``(B,)`` or None."""
    if isinstance(input, PackedSequence):
        if lengths is not None:
            raise ValueError("lengths: not allowed with a PackedSequence input, which carries its own lengths")
        check_input(input.data, input_size, weight, "(sum of lengths, I)")
        x, packed_lengths = pad_packed_sequence(input)  # (T, B, I), batch in the caller's original order
        sorted_indices = input.sorted_indices
        sorted_lengths = packed_lengths if sorted_indices is None else packed_lengths[sorted_indices.cpu()]
        return x, packed_lengths.to(x.device), Layout(True, False, input, sorted_lengths)
    x = check_tensor("input", input)
    if x.dim() == 2:
        if lengths is not None:
            raise ValueError("lengths: not supported for an unbatched (2-D) input; add a batch dimension")
        check_input(x, input_size, weight, "(T, I) for unbatched input")
        x = x.unsqueeze(1)
        layout = Layout(False, False, None)
    elif x.dim() == 3:
        check_input(x, input_size, weight, "(B, T, I)" if batch_first else "(T, B, I)")
        if batch_first:
            x = x.transpose(0, 1)
        layout = Layout(True, batch_first, None)
    else:
        expected = "(B, T, I)" if batch_first else "(T, B, I)"
        raise ShapeError(
            f"input: expected a 3-D tensor {expected} or a 2-D unbatched tensor (T, I), "
            f"got a {x.dim()}-D tensor of shape {tuple(x.shape)}"
        )
    if x.shape[0] == 0:
        raise ShapeError(f"input: empty sequence (T=0) in input of shape {tuple(input.shape)}")
    if lengths is not None:
        lengths = check_lengths(lengths, x.shape[1], x.shape[0], x.device)
    return x, lengths, layout


def from_padded(out: Tensor, layout: Layout) -> Tensor | PackedSequence:
    """Give ``out`` ``(T, B, F)`` back in the caller's layout."""
    if layout.packed is not None:
        packed = layout.packed
        sorted_indices = packed.sorted_indices
        if sorted_indices is not None:
            out = out.index_select(1, sorted_indices)
        # The output's own batch sizes (equal to the input's): an ONNX export pairs each packing with the unpacking
        # of its own result, and removes both.
        result = pack_padded_sequence(out, layout.sorted_lengths, enforce_sorted=True)
        return PackedSequence(result.data, result.batch_sizes, sorted_indices, packed.unsorted_indices)
    if not layout.batched:
        return out.squeeze(1)
    return out.transpose(0, 1) if layout.batch_first else out


def reverse_padded(x: Tensor, lengths: Tensor | None) -> Tensor:
    """Reverse each sequence of ``x`` ``(T, B, F)`` within its own length; padding stays where it is.

    The map is its own inverse, so the same call turns a reversed output back to the original time order.
    """
    if lengths is None:
        return x.flip(0)
    t = torch.arange(x.shape[0], device=x.device).unsqueeze(1)  # (T, 1)
    index = torch.where(t < lengths, lengths - 1 - t, t)  # (T, B)
    return x.gather(0, index.unsqueeze(2).expand_as(x))
