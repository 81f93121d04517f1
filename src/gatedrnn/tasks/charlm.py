"""Character-level language model: the Macbeth text generator of the tutorials, trained, sampled, resumed, scaled.

Read top to bottom, like nanoGPT's ``train.py``:

1. **config**  — :class:`CharLMConfig`, one dataclass; the CLI maps onto it.
2. **data**    — read the text (Macbeth by default), build the vocabulary, hold out the last ``val_frac``,
   cut training windows (random windows, or ``stateful`` consecutive windows as char-rnn's truncated BPTT).
3. **model**   — :class:`CharLM`: embedding → dropout → a ``gatedrnn`` LSTM/GRU/RNN stack → dropout → softmax.
4. **loop**    — :func:`train`: AdamW, warmup + cosine learning rate over the budget, gradient clipping,
   evaluation, early stopping, progress bar, DDP under ``torchrun``.
5. **checkpoint** — the run directory (see :func:`train`); resuming continues bit-identically.
6. **use**     — :func:`load` gives a :class:`LanguageModel` that streams samples (one recurrent step per
   character) and evaluates text in nats/char, bits/char and perplexity.

The language model predicts character ``x_{t+1}`` from ``x_1..x_t``; the loss is the mean negative log-likelihood
in nats per character, ``bits = nats / ln 2``, ``perplexity = exp(nats)``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import training
from ..engine import check_name
from ..layers import GRU, LSTM, RNN, ClockworkRNN
from ..minimal import MinGRU, MinLSTM
from ..slstm import SLSTM
from ..training import CheckpointError

# ----------------------------------------------------------------------------------------------------------------
# 1. Configuration


@dataclass
class CharLMConfig:
    """Every option of a character-LM run. Model, data and optimisation fields must match to resume a run."""

    # model
    cell: str = "lstm"
    """``lstm``, ``gru``, ``rnn``, ``mingru``, ``minlstm``, ``slstm`` or ``clockwork`` (a tanh Clockwork RNN, modules
    of periods 1, 2, 4, 8)."""
    layers: int = 2
    hidden: int = 256
    embed: int = 64
    dropout: float = 0.2
    """On the embeddings, between recurrent layers and before the softmax layer."""
    peephole: bool = False
    coupled: bool = False
    layer_norm: bool = False
    forget_bias: float = 0.0
    depth_gate: bool = False
    """LSTM: each layer above the first reads the cell state of the layer below through a depth gate (Yao et al.
    2015)."""
    reset: str = "after"
    """GRU only: ``after`` (torch.nn, cuDNN) or ``before`` (Cho et al. 2014)."""
    engine: str = "auto"
    # data
    seq_len: int = 64
    batch: int = 64
    val_frac: float = 0.1
    stateful: bool = False
    """Carry the hidden state across consecutive windows (truncated BPTT, as char-rnn)."""
    encoding: str = "utf-8"
    # optimisation
    lr: float = 4e-3
    weight_decay: float = 0.1
    clip: float = 1.0
    warmup: int = 20
    schedule: str = "cosine"
    """``cosine``: from ``lr`` down to ``lr/10`` over the budget; ``constant``."""
    steps: int | None = None
    minutes: float | None = None
    eval_every: int = 50
    patience: int = 5
    """Stop after this many evaluations without a better validation loss (0: never). On by default: Macbeth's
    default model is at its best after about 700 steps and only overfits after that."""
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first option with a bad value."""
        _choice("cell", self.cell, tuple(_LAYERS))
        _choice("reset", self.reset, ("after", "before"))
        _choice("schedule", self.schedule, ("cosine", "constant"))
        for name in ("layers", "hidden", "embed", "seq_len", "batch", "eval_every"):
            _int(name, getattr(self, name), 1)
        for name in ("warmup", "patience"):
            _int(name, getattr(self, name), 0)
        training.check_seed("seed", self.seed)
        if self.steps is not None:
            _int("steps", self.steps, 1)
        if self.minutes is not None and not (_number(self.minutes) and 0 < self.minutes < math.inf):
            raise ValueError(f"minutes: expected a number > 0, got {self.minutes!r}")
        if not (_number(self.dropout) and 0 <= self.dropout < 1):
            raise ValueError(f"dropout: expected a probability in [0, 1), got {self.dropout!r}")
        if not (_number(self.val_frac) and 0 < self.val_frac < 1):
            raise ValueError(f"val_frac: expected a fraction in (0, 1), got {self.val_frac!r}")
        for name in ("lr", "clip"):
            if not (_number(getattr(self, name)) and 0 < getattr(self, name) < math.inf):
                raise ValueError(f"{name}: expected a number > 0, got {getattr(self, name)!r}")
        if not (_number(self.weight_decay) and 0 <= self.weight_decay < math.inf):
            raise ValueError(f"weight_decay: expected a number >= 0, got {self.weight_decay!r}")
        if not (_number(self.forget_bias) and math.isfinite(self.forget_bias)):
            raise ValueError(f"forget_bias: expected a finite number, got {self.forget_bias!r}")
        if self.cell != "lstm":
            for name in ("peephole", "coupled", "depth_gate"):
                if getattr(self, name):
                    raise ValueError(f"{name}: only an LSTM has this option, not cell={self.cell!r}")
            if self.forget_bias:
                raise ValueError(f"forget_bias: only an LSTM has a forget gate, not cell={self.cell!r}")
        if self.cell != "gru" and self.reset != "after":
            raise ValueError(f"reset: only a GRU has a reset gate, not cell={self.cell!r}")
        if self.depth_gate and self.layer_norm:
            raise ValueError("layer_norm: the depth-gated LSTM has no layer-norm form")
        if self.depth_gate and self.layers < 2:
            raise ValueError(f"depth_gate: the depth gate connects adjacent layers; expected layers >= 2, "
                             f"got {self.layers}")
        if self.cell == "clockwork" and self.layer_norm:
            raise ValueError("layer_norm: a Clockwork RNN has no layer-norm form (its modules update at different "
                             "steps)")
        if self.coupled and self.forget_bias:
            raise ValueError("forget_bias: a coupled LSTM has no forget gate (f = 1 - i)")
        if self.layer_norm and self.cell in _NO_LAYER_NORM:
            raise ValueError(f"layer_norm: cell={self.cell!r} has no layer-norm variant")
        training.resolve_dtype(self.dtype)
        check_name(self.engine)
        try:
            "".encode(self.encoding)
        except LookupError as error:
            raise ValueError(f"encoding: unknown text encoding {self.encoding!r}") from error

    RUN_FIELDS = ("device", "engine", "steps", "minutes", "eval_every", "patience")
    """Fields a resumed run may change: where it runs and how long; everything else decides the trajectory."""


def _choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(choices)}, got {value!r}")


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")


# ----------------------------------------------------------------------------------------------------------------
# 2. Data

MACBETH = "macbeth.txt"
"""The default text, shipped in ``gatedrnn/data`` (Project Gutenberg, public domain; see ``data/ATTRIBUTION.md``)."""


def read_text(path: str | os.PathLike[str] | None, encoding: str = "utf-8") -> tuple[str, str]:
    """The text of ``path`` (Macbeth when None) and a name for it; a clear ``ValueError`` for any bad file."""
    if path is None:
        return (resources.files("gatedrnn") / "data" / MACBETH).read_text(encoding="utf-8"), "Macbeth (bundled)"
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"text: {p} is a directory; expected a text file")
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"text: {p}: no such file") from None
    except OSError as error:
        raise ValueError(f"text: cannot read {p}: {error.strerror}") from None
    try:
        text = data.decode(encoding)
    except LookupError:
        raise ValueError(f"encoding: unknown text encoding {encoding!r}") from None
    except UnicodeDecodeError as error:
        raise ValueError(
            f"text: {p} is not valid {encoding} (byte {data[error.start]:#04x} at offset {error.start}); "
            f"pass --encoding (e.g. --encoding latin-1)"
        ) from None
    return text, str(p)


class Vocab:
    """The characters of a text, sorted; ``encode``/``decode`` map between strings and int64 indices."""

    def __init__(self, chars: list[str]) -> None:
        self.chars = chars
        self.index = {c: i for i, c in enumerate(chars)}

    @classmethod
    def of(cls, text: str) -> Vocab:
        return cls(sorted(set(text)))

    def __len__(self) -> int:
        return len(self.chars)

    def unknown(self, text: str) -> list[str]:
        """Characters of ``text`` outside the vocabulary, in order of first appearance."""
        return list(dict.fromkeys(c for c in text if c not in self.index))

    def encode(self, text: str, what: str = "text") -> Tensor:
        missing = self.unknown(text)
        if missing:
            shown = ", ".join(repr(c) for c in missing[:8]) + (" …" if len(missing) > 8 else "")
            raise ValueError(f"{what}: {len(missing)} character(s) not in the model's vocabulary: {shown}")
        return torch.tensor([self.index[c] for c in text], dtype=torch.int64)

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)


def split(ids: Tensor, config: CharLMConfig, source: str, streams: int) -> tuple[Tensor, Tensor]:
    """Training ids and held-out ids (the last ``val_frac``); long enough for a window of every stream."""
    n_val = max(2, int(len(ids) * config.val_frac))
    train_ids, val_ids = ids[:-n_val], ids[-n_val:]
    # Random windows need one window of seq_len + 1 characters; stateful streams need one such window each.
    need = (config.seq_len + 1) * (streams if config.stateful else 1)
    if len(train_ids) < need:
        what = f"{streams} streams (--batch x processes) of " if config.stateful else "one window of "
        raise ValueError(
            f"text: {source} has {len(ids)} characters, too short for {what}--seq-len {config.seq_len} + 1 "
            f"characters after holding out --val-frac {config.val_frac} (need at least "
            f"{need + n_val} characters)"
        )
    return train_ids, val_ids


def random_windows(train_ids: Tensor, config: CharLMConfig, seed: int) -> tuple[Tensor, Tensor]:
    """``batch`` windows at random offsets: inputs and next-character targets, each ``(B, seq_len)``."""
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(train_ids) - config.seq_len, (config.batch,), generator=g)
    rows = torch.stack([train_ids[s : s + config.seq_len + 1] for s in starts.tolist()])  # (B, T+1)
    return rows[:, :-1], rows[:, 1:]


def stream_windows(train_ids: Tensor, config: CharLMConfig, rank: int, world: int, position: int) -> tuple[
        Tensor, Tensor]:
    """The windows at ``position`` of this rank's ``batch`` contiguous streams (the text cut in ``B·world``)."""
    length = stream_length(train_ids, config, world)
    streams = train_ids[: length * config.batch * world].view(config.batch * world, length)  # (B·world, L)
    rows = streams[rank * config.batch : (rank + 1) * config.batch, position : position + config.seq_len + 1]
    return rows[:, :-1], rows[:, 1:]


def stream_length(train_ids: Tensor, config: CharLMConfig, world: int) -> int:
    """Characters in each of the ``batch · world`` streams of a stateful run (the remainder is left out)."""
    return len(train_ids) // (config.batch * world)


# ----------------------------------------------------------------------------------------------------------------
# 3. Model

_LAYERS: dict[str, type[nn.Module]] = {"lstm": LSTM, "gru": GRU, "rnn": RNN, "mingru": MinGRU, "minlstm": MinLSTM,
                                       "slstm": SLSTM, "clockwork": ClockworkRNN}
_NO_LAYER_NORM = ("mingru", "minlstm", "slstm", "clockwork")
MINIMAL_CELLS = ("mingru", "minlstm")
"""The cells without recurrent weights (their gates read the input alone)."""


class CharLM(nn.Module):
    r"""Embedding → dropout → stacked recurrent layers → dropout → linear → softmax over the vocabulary.

    ``forward(ids, state, start)`` takes ids ``(B, T)``, the recurrent state (None: zeros) and, for a Clockwork
    RNN, the clocks' time at the first of ``ids`` (the characters read before it); it returns logits ``(B, T, V)``
    and the state after the last step, so text can be fed on in pieces of any length.
    """

    def __init__(self, vocab_size: int, config: CharLMConfig) -> None:
        super().__init__()
        self.clocked = config.cell == "clockwork"
        options: dict[str, Any] = {} if config.cell in _NO_LAYER_NORM else {"layer_norm": config.layer_norm}
        if config.cell == "lstm":
            options.update(peephole=config.peephole, coupled=config.coupled, forget_bias=config.forget_bias,
                           depth_gate=config.depth_gate)
        if config.cell == "gru":
            options.update(reset=config.reset)
        self.embed = nn.Embedding(vocab_size, config.embed)
        self.drop = nn.Dropout(config.dropout)
        self.rnn = _LAYERS[config.cell](
            config.embed, config.hidden, num_layers=config.layers, batch_first=True,
            dropout=config.dropout if config.layers > 1 else 0.0, engine=config.engine, **options,
        )
        self.head = nn.Linear(config.hidden, vocab_size)

    def forward(self, ids: Tensor, state: Any = None, start: int = 0) -> tuple[Tensor, Any]:
        x = self.drop(self.embed(ids))  # (B, T, E)
        out, state = self.rnn(x, state, start=start) if self.clocked else self.rnn(x, state)  # (B, T, H)
        return self.head(self.drop(out)), state  # (B, T, V)


def detach_state(state: Any) -> Any:
    """The state cut from the graph (truncated BPTT): a tensor or a tuple ``(h, c)``."""
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


def _state_tensors(state: Any) -> tuple[Tensor, ...]:
    return state if isinstance(state, tuple) else (state,)


def _state_from(tensors: tuple[Tensor, ...]) -> Any:
    return tensors if len(tensors) > 1 else tensors[0]


@torch.no_grad()
def nats_per_char(model: CharLM, ids: Tensor, rows: int = 32) -> float:
    """Mean negative log-likelihood of ``ids[1:]`` given what precedes each, in nats per character.

    The text is cut into ``rows`` contiguous pieces run side by side in one batch, each read from its start
    (the first character of each piece is context only), so the result does not depend on the training batch.
    """
    rows = max(1, min(rows, (len(ids) - 1) // 2))
    length = (len(ids) - 1) // rows
    device = next(model.parameters()).device
    x = ids[: rows * length].view(rows, length).to(device)  # (R, L)
    y = ids[1 : rows * length + 1].view(rows, length).to(device)
    was_training = model.training
    model.eval()
    logits, _ = model(x)
    total = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum")
    # The characters left over by the even split are scored as one more, shorter piece.
    tail = ids[rows * length :]
    if len(tail) > 1:
        logits, _ = model(tail[:-1].unsqueeze(0).to(device))
        total += F.cross_entropy(logits.float()[0], tail[1:].to(device), reduction="sum")
    model.train(was_training)
    return total.item() / (len(ids) - 1)


# ----------------------------------------------------------------------------------------------------------------
# 4. Sampling and evaluation of a trained model


@dataclass(frozen=True)
class Evaluation:
    """Loss of a model on a text."""

    nats: float
    characters: int

    @property
    def bits(self) -> float:
        return self.nats / math.log(2)

    @property
    def perplexity(self) -> float:
        return math.exp(self.nats)


class LanguageModel:
    """A trained :class:`CharLM` with its vocabulary: streams samples and evaluates texts."""

    def __init__(self, model: CharLM, vocab: Vocab, config: CharLMConfig, *, text: str | None = None,
                 text_sha256: str | None = None) -> None:
        self.model = model.eval()
        self.vocab = vocab
        self.config = config
        self.text = text
        """Path of the training text (None: the bundled Macbeth)."""
        self.text_sha256 = text_sha256

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def generate(self, prime: str | None = None, length: int = 500, *, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int = 0) -> Iterator[str]:
        """An iterator over ``length`` characters following ``prime`` (default: :func:`default_prime`).

        The prime is read in one pass; then each character costs one recurrent step from the carried state, so
        the cost per character does not grow with what was generated. The same seed gives the same text.
        Arguments are checked here, before the first character is asked for.
        """
        prime = default_prime(self.vocab.chars) if prime is None else prime
        _int("length", length, 0)
        if not (_number(temperature) and 0 < temperature < math.inf):
            raise ValueError(f"temperature: expected a number > 0, got {temperature!r}")
        if top_k is not None:
            _int("top_k", top_k, 1)
        if top_p is not None and not (_number(top_p) and 0 < top_p <= 1):
            raise ValueError(f"top_p: expected a number in (0, 1], got {top_p!r}")
        if not prime:
            raise ValueError("prime: expected at least one character")
        training.check_seed("seed", seed)
        ids = self.vocab.encode(prime, "prime").unsqueeze(0).to(self.device)  # (1, P)
        return self._stream(ids, length, temperature, top_k, top_p, seed)

    @torch.no_grad()
    def _stream(self, ids: Tensor, length: int, temperature: float, top_k: int | None, top_p: float | None,
                seed: int) -> Iterator[str]:
        g = torch.Generator().manual_seed(seed)
        logits, state = self.model(ids)
        for position in range(ids.shape[1], ids.shape[1] + length):
            probs = _next_char_probs(logits[0, -1].float().cpu(), temperature, top_k, top_p)
            nxt = int(torch.multinomial(probs, 1, generator=g))
            yield self.vocab.chars[nxt]
            logits, state = self.model(torch.tensor([[nxt]], device=self.device), state, position)

    def sample(self, prime: str | None = None, length: int = 500, **options: Any) -> str:
        """The whole of :meth:`generate` as one string."""
        return "".join(self.generate(prime, length, **options))

    def evaluate(self, text: str, what: str = "text") -> Evaluation:
        """Loss on ``text`` (every character must be in the vocabulary)."""
        ids = self.vocab.encode(text, what)
        if len(ids) < 2:
            raise ValueError(f"{what}: expected at least 2 characters to score, got {len(ids)}")
        return Evaluation(nats_per_char(self.model, ids), len(ids) - 1)

    def validation_text(self) -> str:
        """The held-out last ``val_frac`` of the text the model was trained on (it must still be there, unchanged)."""
        if self.text_sha256 is None:
            raise ValueError("text: this model does not record its training text; pass --text")
        try:
            text, source = read_text(self.text, self.config.encoding)
        except ValueError as error:
            raise ValueError(f"{error} (the training text of this model; pass --text to score another)") from None
        if _sha256(text) != self.text_sha256:
            raise ValueError(f"text: {source} has changed since the model was trained on it; pass --text")
        return text[-max(2, int(len(text) * self.config.val_frac)) :]


def _next_char_probs(logits: Tensor, temperature: float, top_k: int | None, top_p: float | None) -> Tensor:
    """Softmax of ``logits / temperature`` keeping the ``top_k`` most likely and the smallest set of mass
    ``>= top_p`` (nucleus sampling, Holtzman et al. 2020)."""
    logits = logits / temperature
    if top_k is not None and top_k < len(logits):
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, -math.inf)
    probs = torch.softmax(logits, dim=-1)
    if top_p is not None and top_p < 1:
        sorted_probs, order = torch.sort(probs, descending=True)
        before = torch.cumsum(sorted_probs, 0) - sorted_probs  # mass of the more likely characters
        sorted_probs[before >= top_p] = 0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return probs / probs.sum()


def default_prime(chars: list[str]) -> str:
    """What generation starts from when no prime is given: a newline, or the first character of the vocabulary."""
    return "\n" if "\n" in chars else chars[0]


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def load(directory: str | os.PathLike[str], *, weights: str = "best", device: str = "cpu") -> LanguageModel:
    """The model of a run directory: its ``best.safetensors`` (``weights="best"``, falling back to the latest when
    no evaluation has happened yet) or ``model.safetensors`` (``"latest"``)."""
    _choice("weights", weights, ("best", "latest"))
    run = Path(directory)
    if not run.is_dir():
        raise CheckpointError(f"model: {run} is not a directory (expected a run directory from charlm train)")
    saved = training.read_json(run / "config.json")
    config = _config_from(saved, run / "config.json")
    chars = training.read_json(run / "vocab.json")
    if not (isinstance(chars, list) and chars and all(isinstance(c, str) and len(c) == 1 for c in chars)):
        raise CheckpointError(f"{run / 'vocab.json'}: corrupt vocabulary (expected a list of single characters)")
    if len(set(chars)) != len(chars):
        twice = sorted({c for c in chars if chars.count(c) > 1})
        raise CheckpointError(f"{run / 'vocab.json'}: corrupt vocabulary (characters listed twice: "
                              f"{', '.join(map(repr, twice[:8]))})")
    on, dtype = training.resolve_device(device), training.resolve_dtype(config.dtype)
    path = run / "best.safetensors"
    if weights == "latest" or not path.exists():
        path = run / "model.safetensors"
    config = dataclasses.replace(config, engine="auto")
    model = training.build_and_load(
        path, lambda: CharLM(len(chars), config), device=on, dtype=dtype,
        what=f"model: {run / 'config.json'} (layers {config.layers}, hidden {config.hidden}, embed {config.embed})",
        nbytes=model_bytes(config, len(chars), dtype), weights=model_bytes(config, len(chars), dtype, overhead=False))
    return LanguageModel(model, Vocab(chars), config, text=saved.get("text"), text_sha256=saved.get("text_sha256"))


def model_bytes(config: CharLMConfig, vocab_size: int, dtype: torch.dtype, *, train: bool = False,
                overhead: bool = True) -> int:
    """A lower bound of the memory the model takes (training: with gradients, optimizer state and one batch's
    activations), computed before anything is allocated."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    rows = config.batch * config.seq_len if train else 0
    around = (vocab_size * (config.embed + config.hidden) * (4 if train else 1)  # embedding, softmax layer
              + rows * (2 * vocab_size + config.embed)) * itemsize + rows * 16  # logits and their gradient; ids
    return around + training.recurrent_bytes(layers=config.layers, hidden=config.hidden, inputs=config.embed,
                                             batch=config.batch if train else 0, steps=config.seq_len,
                                             dtype=dtype, training=train, overhead=overhead,
                                             recurrent=config.cell not in MINIMAL_CELLS)


def _config_from(saved: Any, source: Path) -> CharLMConfig:
    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
        raise CheckpointError(f"{source}: not a charlm run configuration")
    known = {f.name for f in dataclasses.fields(CharLMConfig)}
    try:
        return CharLMConfig(**{k: v for k, v in saved["config"].items() if k in known})
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{source}: invalid configuration ({error})") from error


# ----------------------------------------------------------------------------------------------------------------
# 5. Training loop and checkpoints


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` reports."""

    out: str
    steps: int
    best_val: float
    best_step: int
    last_val: float
    elapsed: float
    chars_per_second: float
    stopped: str
    """``budget``, ``early stopping`` or ``interrupted``."""
    signal: int | None = None
    """The signal that interrupted the run (see :func:`training.exit_status`)."""


def learning_rate(config: CharLMConfig, step: int, fraction: float) -> float:
    """Linear warmup over ``warmup`` steps, then cosine from ``lr`` to ``lr/10`` as ``fraction`` goes 0 → 1."""
    warm = min(1.0, (step + 1) / config.warmup) if config.warmup else 1.0
    if config.schedule == "constant":
        return config.lr * warm
    return config.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * fraction)))


def train(config: CharLMConfig, *, text: str | os.PathLike[str] | None = None, out: str | os.PathLike[str],
          resume: bool = False, progress: bool = True, sample_length: int = 200,
          log: Any = None) -> TrainResult:
    """Train a character LM and keep its checkpoints in ``out``.

    ``out`` holds ``config.json`` (the configuration and the text's SHA-256), ``vocab.json``, ``model.safetensors``
    (latest weights), ``best.safetensors`` (best validation loss so far), ``trainer_state.safetensors`` (weights,
    optimizer, RNG states, step, data position, carried state, history) and ``history.json`` (every evaluation).
    All are written atomically, by rank 0 only, at every evaluation, at the end and on Ctrl-C.

    With ``resume=True`` training continues from ``out``'s trainer state; the configuration must match the saved
    one except for :attr:`CharLMConfig.RUN_FIELDS` (a run that stopped before its first checkpoint starts over).
    Without it, ``out`` must not already hold a saved run. Everything is checked before anything is written.
    """
    log = log or sys.stdout
    if config.steps is None and config.minutes is None:
        raise ValueError("steps: give --steps, --minutes or both")
    out = Path(out)
    asked = resume
    resume = training.open_run_dir("resume" if asked else "out", out, resume=asked, what="charlm")
    training.check_engine(config.engine)
    device = training.resolve_device(config.device)
    if asked:
        saved = training.read_json(out / "config.json")
        saved_config = _config_from(saved, out / "config.json")
        fixed = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
                 if f.name not in CharLMConfig.RUN_FIELDS}
        training.check_config(dataclasses.asdict(saved_config), fixed, f"resume: {out}")

    # -- data
    raw, source = read_text(text, config.encoding)
    text_path = None if text is None else str(Path(text).resolve())
    if len(raw) < 2:
        raise ValueError(f"text: {source} has {len(raw)} character(s); a language model needs a longer text")
    if resume and saved.get("text_sha256") != _sha256(raw):
        raise ValueError(f"resume: {source} is not the text the run in {out} was trained on")
    vocab = Vocab.of(raw)
    if resume and training.read_json(out / "vocab.json") != vocab.chars:
        raise CheckpointError(f"resume: {out / 'vocab.json'} does not match the text's characters")
    training.require_memory(f"model: --layers {config.layers} --hidden {config.hidden} --embed {config.embed} "
                            f"--batch {config.batch} --seq-len {config.seq_len}",
                            model_bytes(config, len(vocab), training.resolve_dtype(config.dtype), train=True), device)
    info = training.setup_distributed(config.device)
    try:
        return _train(config, raw, text_path, source, vocab, info, out, resume, progress, sample_length, log)
    finally:
        training.teardown_distributed(info)


def _train(config: CharLMConfig, raw: str, text_path: str | None, source: str, vocab: Vocab,
           info: training.DistInfo, out: Path, resume: bool, progress: bool, sample_length: int,
           log: Any) -> TrainResult:
    ids = vocab.encode(raw)
    train_ids, val_ids = split(ids, config, source, config.batch * info.world_size)
    length = stream_length(train_ids, config, info.world_size)

    # -- model and optimiser (the same initial weights on every rank: seeded before they are drawn)
    training.seed_everything(config.seed)
    dtype = training.resolve_dtype(config.dtype)
    model = CharLM(len(vocab), config).to(device=info.device, dtype=dtype)
    # Weight decay on matrices only: decaying biases, gains and embeddings' rows would only pull them to 0.
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and not n.startswith("embed")]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and not n.startswith("embed"))]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": rest, "weight_decay": 0.0}], lr=config.lr)
    ddp = training.wrap_ddp(model, info)

    step, elapsed, position, carried, train_avg = 0, 0.0, 0, None, math.nan
    history: list[dict[str, float]] = []
    best_val, best_step, stale = math.inf, 0, 0
    if resume:
        training.remove_stale_temporaries(out)
        state = training.load_trainer_state(out / "trainer_state.safetensors", model=model, optimizer=optimizer,
                                            extra_keys=("position", "history", "best_val", "best_step", "stale"))
        step, elapsed = state.step, state.elapsed
        if config.stateful and state.extra.get("world_size", 1) != info.world_size:
            raise CheckpointError(f"resume: the stateful run in {out} read its streams with "
                                  f"{state.extra.get('world_size', 1)} process(es); resume it with as many")
        position, history = state.extra["position"], state.extra["history"]
        best_val, best_step, stale = state.extra["best_val"], state.extra["best_step"], state.extra["stale"]
        train_avg = state.extra.get("train_avg", math.nan)
        if config.stateful and state.extra.get("carried") is not None:
            mine = slice(info.rank * config.batch, (info.rank + 1) * config.batch)
            carried = _state_from(tuple(t[:, mine].to(info.device) for t in state.extra["carried"]))
    elif info.is_main:
        training.begin_run(out, RUN_FILES)
        training.write_json(out / "config.json", {"config": dataclasses.asdict(config), "text": text_path,
                                                  "text_sha256": _sha256(raw), "characters": len(raw),
                                                  "parameters": sum(p.numel() for p in model.parameters())})
        training.write_json(out / "vocab.json", vocab.chars)

    def checkpoint() -> None:
        gathered = None
        if config.stateful and carried is not None:
            gathered = tuple(training.all_gather(t.transpose(0, 1), info).transpose(0, 1)
                             for t in _state_tensors(carried))  # (layers, B·world, H) in rank order
        if not info.is_main:
            return
        extra = {"position": position, "history": history, "best_val": best_val, "best_step": best_step,
                 "stale": stale, "carried": gathered, "world_size": info.world_size, "train_avg": train_avg}
        training.save_trainer_state(out / "trainer_state.safetensors", model=model, optimizer=optimizer,
                                    step=step, elapsed=budget.elapsed(), extra=extra)
        training.save_weights(out / "model.safetensors", model, {"step": str(step)})
        training.write_json(out / "history.json", history)

    def evaluate() -> float:
        nonlocal best_val, best_step, stale
        val = nats_per_char(model, val_ids)
        improved = val < best_val
        if improved:
            best_val, best_step, stale = val, step, 0
            if info.is_main:
                training.save_weights(out / "best.safetensors", model, {"step": str(step), "val_nats": repr(val)})
        else:
            stale += 1
        history.append({"step": step, "elapsed": round(budget.elapsed(), 3), "train_nats": train_avg,
                        "val_nats": val, "val_bits": val / math.log(2)})
        if info.is_main and sample_length:
            text = LanguageModel(model, vocab, config).sample(None, sample_length, seed=step)
            model.train()
            bar.write(f"--- step {step}: val {val:.4f} nats/char ({val / math.log(2):.3f} bits)"
                      f"{' (best)' if improved else ''}; sample:\n{text}\n---")
        return val

    budget = training.Budget(steps=config.steps, minutes=config.minutes, elapsed=elapsed)
    bar = training.Progress(budget, unit="char", enabled=progress and info.is_main, start_step=step)
    last_val = history[-1]["val_nats"] if history else math.nan
    saved_step = step if resume else -1
    stopped = "budget"
    model.train()
    with training.GracefulInterrupt() as interrupt:
        budget.start()
        while True:
            # One decision for every rank: the slowest rank's clock, anyone's Ctrl-C.
            flags = torch.tensor([budget.elapsed(), float(interrupt.requested)], dtype=torch.float64)
            spent, interrupted = training.all_reduce_max(flags, info).tolist()
            if interrupted:
                stopped = "interrupted"
                break
            if (config.steps is not None and step >= config.steps) or (
                    config.minutes is not None and spent >= 60 * config.minutes):
                break
            # The schedule follows --steps when given (so the run is reproducible), else the clock.
            fraction = step / config.steps if config.steps is not None else spent / (60 * config.minutes)
            # Randomness (windows, dropout) is a function of (seed, rank, step): resuming redraws it exactly.
            torch.manual_seed(training.fold_seed(config.seed, info.rank, step))
            start = 0  # where the window starts in its stream: a Clockwork RNN's clocks go on across windows
            if config.stateful:
                if position + config.seq_len + 1 > length:
                    position, carried = 0, None  # a new pass over the text starts from a zero state
                x, y = stream_windows(train_ids, config, info.rank, info.world_size, position)
                start = position
                position += config.seq_len
            else:
                x, y = random_windows(train_ids, config, training.fold_seed(config.seed, info.rank, step, 1))
            x, y = x.to(info.device), y.to(info.device)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, step, fraction)
            logits, new_state = ddp(x, carried, start)
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip)
            optimizer.step()
            carried = detach_state(new_state) if config.stateful else None
            step += 1
            value = training.all_reduce_mean(loss.detach(), info).item()
            if not math.isfinite(value):
                raise ValueError(f"lr: the training loss became {value} at step {step}; lower --lr or --clip")
            train_avg = value if math.isnan(train_avg) else 0.9 * train_avg + 0.1 * value
            if step % config.eval_every == 0 or step == config.steps:
                last_val = evaluate()
                checkpoint()
                saved_step = step
                if config.patience and stale >= config.patience:
                    stopped = "early stopping"
                    break
            seen = math.isfinite(last_val)
            bar.update(step, config.batch * config.seq_len * info.world_size, loss=train_avg,
                       val=f"{last_val:.4f}" if seen else "-", bpc=f"{last_val / math.log(2):.3f}" if seen else "-")
        if saved_step != step:  # stopped by the clock or Ctrl-C between evaluations
            # An interrupt saves the state an uninterrupted run has at this step: no evaluation, which would
            # count toward --patience and could replace best.safetensors.
            if stopped != "interrupted" and step and (not history or history[-1]["step"] != step):
                last_val = evaluate()
            checkpoint()
    bar.close()
    result = TrainResult(str(out), step, best_val, best_step, last_val, budget.elapsed(), bar.rate, stopped,
                         interrupt.signum if stopped == "interrupted" else None)
    if info.is_main:
        print(f"{stopped} after step {step} ({result.elapsed:.0f} s, {bar.rate:,.0f} chars/s): best validation "
              f"loss {best_val:.4f} nats/char ({best_val / math.log(2):.3f} bits/char) at step {best_step}; "
              f"checkpoints in {out}", file=log)
    return result


# ----------------------------------------------------------------------------------------------------------------
# 6. Command line: ``gatedrnn charlm train|sample|eval``

RUN_FILES = ("config.json", "vocab.json", "model.safetensors", "best.safetensors", "history.json")
"""What a run writes besides its trainer state (cleared when a run that never saved one starts over)."""

DEFAULT_MINUTES = 9.0
"""``gatedrnn charlm train`` without ``--steps`` or ``--minutes`` trains for this many minutes."""

_TRAIN_OPTIONS: list[tuple[str, str, Any, str]] = [
    # flag, field, type, help
    ("--cell", "cell", str, "recurrent cell: lstm, gru, rnn, mingru, minlstm, slstm or clockwork"),
    ("--layers", "layers", int, "stacked recurrent layers"),
    ("--hidden", "hidden", int, "hidden units per layer"),
    ("--embed", "embed", int, "character embedding width"),
    ("--dropout", "dropout", float, "dropout on embeddings, between layers and before the softmax layer"),
    ("--forget-bias", "forget_bias", float, "LSTM: constant added to the forget gate's pre-activation"),
    ("--reset", "reset", str, "GRU: reset gate 'after' (torch.nn) or 'before' (Cho et al.) the matmul"),
    ("--engine", "engine", str, "recurrence engine (see `gatedrnn engines`)"),
    ("--seq-len", "seq_len", int, "characters per training window (steps of backpropagation through time)"),
    ("--batch", "batch", int, "windows per step (per process under torchrun)"),
    ("--val-frac", "val_frac", float, "fraction of the text held out at its end for validation"),
    ("--encoding", "encoding", str, "encoding of --text"),
    ("--lr", "lr", float, "peak learning rate of AdamW"),
    ("--weight-decay", "weight_decay", float, "AdamW weight decay (weight matrices only)"),
    ("--clip", "clip", float, "gradient norm clipping"),
    ("--warmup", "warmup", int, "steps of linear learning-rate warmup"),
    ("--schedule", "schedule", str, "learning rate after warmup: cosine (to lr/10 over the budget) or constant"),
    ("--steps", "steps", int, f"optimizer steps (default: --minutes {DEFAULT_MINUTES:g} when neither is given)"),
    ("--minutes", "minutes", float, "wall-clock training budget in minutes; with --steps, whichever ends first"),
    ("--eval-every", "eval_every", int, "steps between evaluations, samples and checkpoints"),
    ("--patience", "patience", int, "stop after this many evaluations without improvement (0: never)"),
    ("--seed", "seed", int, "random seed"),
    ("--device", "device", str, "auto, cpu, cuda, cuda:N or mps"),
    ("--dtype", "dtype", str, "float32, float64, bfloat16 or float16"),
]
_TRAIN_FLAGS = [
    ("--peephole", "peephole", "LSTM: peephole connections (gates read the cell state)"),
    ("--coupled", "coupled", "LSTM: coupled input-forget gate, f = 1 - i"),
    ("--depth-gate", "depth_gate", "LSTM: depth gates between the cells of adjacent layers (Yao et al. 2015)"),
    ("--layer-norm", "layer_norm", "layer-normalised cell"),
    ("--stateful", "stateful", "carry the hidden state across consecutive windows (truncated BPTT, as char-rnn)"),
]


def add_commands(commands: Any) -> None:
    """Register ``charlm`` with its verbs on the ``gatedrnn`` sub-command parser."""
    import argparse

    p = commands.add_parser("charlm", help="character-level language model (default text: Macbeth)",
                            description="Character-level language model: train, sample, eval.")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    defaults = CharLMConfig()

    t = verbs.add_parser("train", help="train a model (Macbeth unless --text)",
                         description="Train a character-level language model. Options left out take their "
                                     "default, or with --resume the resumed run's value.")
    t.add_argument("--text", help="UTF-8 text file to train on (default: Macbeth, bundled)")
    for flag, name, kind, text in _TRAIN_OPTIONS:
        default = getattr(defaults, name)
        shown = "" if name in ("steps", "minutes") else f" (default: {default})"
        t.add_argument(flag, dest=name, type=kind, default=None, help=text + shown)
    for flag, name, text in _TRAIN_FLAGS:
        t.add_argument(flag, dest=name, action="store_true", default=None, help=text)
    t.add_argument("--out", help="run directory for checkpoints (default: runs/charlm)")
    t.add_argument("--resume", metavar="DIR", help="continue the run in DIR (bit-identically)")
    t.add_argument("--sample-length", type=int, default=200, help="characters sampled at each evaluation")
    t.add_argument("--quiet", action="store_true", help="no progress bar and no samples")
    t.set_defaults(run=_cli_train)

    s = verbs.add_parser("sample", help="generate text from a trained model, streaming",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s.add_argument("--model", required=True, metavar="DIR", help="run directory written by charlm train")
    s.add_argument("--prime", help="text to start from (default: a newline)")
    s.add_argument("--length", type=int, default=500, help="characters to generate")
    s.add_argument("--temperature", type=float, default=1.0, help="softmax temperature (> 0)")
    s.add_argument("--top-k", type=int, help="sample among the K most likely characters")
    s.add_argument("--top-p", type=float, help="nucleus sampling: the smallest set of characters of mass >= P")
    s.add_argument("--seed", type=int, default=0, help="random seed")
    s.add_argument("--weights", default="best", help="best (lowest validation loss) or latest")
    s.add_argument("--device", default="cpu", help="device to run on")
    s.set_defaults(run=_cli_sample)

    e = verbs.add_parser("eval", help="loss of a trained model in nats/char, bits/char and perplexity",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    e.add_argument("--model", required=True, metavar="DIR", help="run directory written by charlm train")
    e.add_argument("--text", help="text file to score (default: the model's validation split)")
    e.add_argument("--encoding", default="utf-8", help="encoding of --text")
    e.add_argument("--weights", default="best", help="best (lowest validation loss) or latest")
    e.add_argument("--device", default="cpu", help="device to run on")
    e.set_defaults(run=_cli_eval)


def _cli_train(args: Any) -> int:
    given = {name: getattr(args, name) for _, name, *_ in [*_TRAIN_OPTIONS, *_TRAIN_FLAGS]
             if getattr(args, name) is not None}
    if args.resume:
        out = Path(args.resume)
        if not out.is_dir():
            raise ValueError(f"resume: {out} is not a run directory")
        if not (out / "config.json").is_file():
            raise CheckpointError(f"resume: {out} holds no charlm run (no config.json)")
        if args.out and Path(args.out) != out:
            raise ValueError(f"out: --resume continues the run in {out}; leave out --out or give the same")
        base = _config_from(training.read_json(out / "config.json"), out / "config.json")
        text = training.read_json(out / "config.json").get("text") if args.text is None else args.text
    else:
        out = Path(args.out or "runs/charlm")
        base = CharLMConfig()
        if "steps" not in given and "minutes" not in given:
            given["minutes"] = DEFAULT_MINUTES
        text = args.text
    config = dataclasses.replace(base, **given)
    _int("sample_length", args.sample_length, 0)
    result = train(config, text=text, out=out, resume=bool(args.resume), progress=not args.quiet,
                   sample_length=0 if args.quiet else args.sample_length)
    return training.exit_status(result.signal)


def _cli_sample(args: Any) -> int:
    lm = load(args.model, weights=args.weights, device=args.device)
    prime = default_prime(lm.vocab.chars) if args.prime is None else args.prime
    chars = lm.generate(prime, args.length, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                        seed=args.seed)
    sys.stdout.write(prime)
    for c in chars:
        sys.stdout.write(c)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def _cli_eval(args: Any) -> int:
    lm = load(args.model, weights=args.weights, device=args.device)
    if args.text is None:
        text, what = lm.validation_text(), "the validation split"
    else:
        text, what = read_text(args.text, args.encoding)[0], args.text
    result = lm.evaluate(text, "text")
    print(f"{result.nats:.4f} nats/char  {result.bits:.4f} bits/char  perplexity {result.perplexity:.3f}  "
          f"({result.characters:,} characters of {what})")
    return 0
