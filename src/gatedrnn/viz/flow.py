"""The vanishing-gradient story, measured: gradient flow through time of trained character models, side by side.

Each model reads windows of held-out text; the loss is the cross-entropy of its prediction at the last step only,
and :func:`gatedrnn.inspect.gradient_flow` gives ``‖∂L/∂h_t‖`` of the bottom recurrent layer at every step ``t``:
how much that one prediction still depends on what the model held ``T-1-t`` steps earlier. It is measured in
float64 on a copy of the model, so that tiny gradients show as tiny rather than as float32's 0.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..inspect import gradient_flow
from ..tasks import charlm


def last_prediction_flow(lm: charlm.LanguageModel, *, text: str, windows: int = 16, seq_len: int = 100,
                         seed: int = 0) -> Tensor:
    """``‖∂L/∂h_t‖`` ``(seq_len,)`` of ``lm``'s bottom layer, ``L`` the mean last-step loss over random windows."""
    ids = lm.vocab.encode(text, "text")
    if len(ids) < seq_len + 1:
        raise ValueError(f"text: expected at least seq_len + 1 = {seq_len + 1} characters, got {len(ids)}")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(ids) - seq_len, (windows,), generator=g).tolist()
    rows = torch.stack([ids[s : s + seq_len + 1] for s in starts]).to(lm.device)  # (W, T+1)
    target = rows[:, -1]  # the character after each window

    def loss(output: tuple[Tensor, object]) -> Tensor:
        logits, _ = output  # (W, T, V)
        return F.cross_entropy(logits[:, -1], target)

    # In float64: a float32 gradient underflows to exactly 0 some 80 steps back in a vanishing RNN.
    model = copy.deepcopy(lm.model).double().eval()
    flows = gradient_flow(model, rows[:, :-1], loss)
    return next(iter(flows.values()))  # the first to run: layer 0, the bottom one


def train_brief(cell: str, out: str | os.PathLike[str], *, hidden: int, steps: int, seq_len: int, seed: int,
                progress: bool) -> charlm.LanguageModel:
    """A one-layer character model of ``cell`` trained for ``steps`` on Macbeth (``charlm.train``), loaded.

    Batch 32, learning rate 3e-3 with 20 warmup steps, no dropout: fixed here, so that the comparison does not move
    when the character model's defaults do.
    """
    config = dataclasses.replace(
        charlm.CharLMConfig(), cell=cell, layers=1, hidden=hidden, embed=32, dropout=0.0, seq_len=seq_len,
        batch=32, lr=3e-3, warmup=20, steps=steps, eval_every=steps, seed=seed,
    )
    log = None if progress else io.StringIO()
    charlm.train(config, out=Path(out), progress=progress, sample_length=0, log=log)
    return charlm.load(out)


def label(lm: charlm.LanguageModel, text: str) -> str:
    """``"LSTM, 1×64: 2.71 bits/char"``: the cell, its size and its loss on ``text``."""
    config = lm.config
    return f"{config.cell.upper()}, {config.layers}×{config.hidden}: {lm.evaluate(text).bits:.2f} bits/char"
