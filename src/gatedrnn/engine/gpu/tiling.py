"""Tile sizes and launch mode of the gpu engine's kernels (no triton needed: the engine asks it what it covers)."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def _multiprocessors(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


@dataclass(frozen=True)
class Tiling:
    """Tile sizes and launch mode. ``persistent``: one launch for all steps with grid-wide barriers."""

    block_b: int
    block_j: int
    block_k: int
    persistent: bool
    num_warps: int = 4

    def grid(self, batch: int, hidden: int) -> int:
        return triton_cdiv(batch, self.block_b) * triton_cdiv(hidden, self.block_j)


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _pow2_at_least(n: int, minimum: int = 16) -> int:
    return max(minimum, 1 << (n - 1).bit_length())


def choose_tiling(batch: int, hidden: int, device: torch.device) -> Tiling:
    """Tiles as small as keeps every program busy, with a grid that fits on the device at once when possible.

    ``tl.dot`` needs every tile side to be at least 16, so batches under 16 leave rows of the tile idle.
    """
    if interpreting():
        return Tiling(_pow2_at_least(batch), _pow2_at_least(hidden), 16, persistent=True)
    slots = _multiprocessors(device.index if device.index is not None else torch.cuda.current_device())
    block_b = min(_pow2_at_least(batch), 64)
    while block_b < 128 and triton_cdiv(batch, block_b) * triton_cdiv(hidden, 16) > slots:
        block_b *= 2
    block_j = 16
    while triton_cdiv(batch, block_b) * triton_cdiv(hidden, block_j) > slots and block_j < 128:
        block_j *= 2
    persistent = triton_cdiv(batch, block_b) * triton_cdiv(hidden, block_j) <= slots
    return Tiling(block_b, block_j, 64 if hidden >= 64 else 32 if hidden >= 32 else 16, persistent,
                  num_warps=8 if block_b * block_j >= 64 * 64 else 4)
