"""Tiny trained character models (``charlm.train``, a few steps on Macbeth) for the plot and explorer tests."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

from gatedrnn.tasks import charlm


def tiny_run(out: Path, cell: str = "lstm", layers: int = 2, hidden: int = 8) -> Path:
    """A run directory of a ``cell`` model trained for 4 steps; seconds on one core."""
    config = dataclasses.replace(charlm.CharLMConfig(), cell=cell, layers=layers, hidden=hidden, embed=8,
                                 seq_len=16, batch=4, steps=4, eval_every=4, warmup=1)
    charlm.train(config, out=out, progress=False, sample_length=0, log=io.StringIO())
    return out
