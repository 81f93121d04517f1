"""Test-session settings shared by every test module."""

from __future__ import annotations

import os

import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Each xdist worker already owns a core; a second intra-op thread per worker makes the small tensors of the
    # tests fight over the cores (gradcheck ran ~20x slower with two workers of two threads each on 2 cores).
    torch.set_num_threads(1)

if not torch.cuda.is_available():
    # Without CUDA the gpu engine's tests run its kernels in Triton's CPU interpreter. Triton decides that when it is
    # first imported, and any test module may import it first while pytest collects (torch.utils.flop_counter does),
    # so the switch is set here, before collection.
    os.environ.setdefault("TRITON_INTERPRET", "1")
