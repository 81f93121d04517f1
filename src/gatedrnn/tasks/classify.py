"""Sequence classification: data → model → training loop → checkpoint → evaluation → prediction.

Three kinds of data, one model:

- ``rotten-tomatoes`` (bundled): review snippets, positive or negative; a fixed, seeded, stratified 80/10/10
  train/validation/test split; word or character tokens with a vocabulary built from the training split only.
- ``csv``: a user's CSV with a text and a label column, handled exactly like the reviews.
- ``japanese-vowels`` (bundled): 12-channel series of length 7–29, nine speakers, the official 270/370
  train/test split; 10% of the training series (stratified, seeded) are held out for validation. Each channel is
  standardised with the mean and standard deviation of the training series only.

The model embeds tokens (text) or reads the channels directly (series), runs a (bi)directional gatedrnn
LSTM/GRU/RNN over the padded batch with ``lengths`` (so padding never enters a state), pools the outputs over each
sequence's own length (``last`` state, ``mean`` or ``max``) and classifies the pooled vector with a linear layer:

.. math::

    o_{1..T} = \\mathrm{RNN}(e_{1..T}), \\quad p = \\mathrm{pool}(o_{1..T_b}), \\quad
    \\hat y = \\mathrm{softmax}(W p + b)
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .. import training
from ..checks import check_choice, check_finite_float, check_positive
from ..datasets import (
    SeriesData,
    Vocabulary,
    japanese_vowels,
    read_text_csv,
    read_ts,
    rotten_tomatoes,
    stratified_split,
    tokenize,
)
from ..metrics import accuracy, confusion_matrix, macro_f1
from ..variants import variant
from ..viz import results as plots
from . import supervised

DATASETS = ("rotten-tomatoes", "japanese-vowels", "csv")
POOLINGS = ("last", "mean", "max")
FITTED = ("labels", "channel_mean", "channel_std")
"""The configuration fields that training fits to the training split."""


@dataclass
class ClassifyConfig:
    """Everything that defines a classifier and its data; saved as ``config.json`` beside the weights."""

    data: str = "rotten-tomatoes"
    csv: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    tokens: str = "word"
    min_count: int = 2
    cell: str = "lstm"
    bidirectional: bool = True
    layers: int = 1
    embedding_size: int = 128
    hidden_size: int = 128
    pooling: str = "max"
    dropout: float = 0.4
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.0
    seed: int = 0
    engine: str = "auto"
    # Filled in from the training split when training starts.
    labels: list[str] = field(default_factory=list)
    channel_mean: list[float] = field(default_factory=list)
    channel_std: list[float] = field(default_factory=list)

    def check(self) -> None:
        """Raise ``ValueError`` naming the first option with a bad value."""
        check_choice("data", self.data, DATASETS)
        check_choice("tokens", self.tokens, ("word", "char"))
        check_choice("pooling", self.pooling, POOLINGS)
        supervised.check_model(self)
        for name in ("min_count", "embedding_size"):
            supervised.check_int(f"--{name.replace('_', '-')}", getattr(self, name))
        check_positive("--lr", self.lr)
        check_positive("--weight-decay", self.weight_decay, zero=True)
        if not isinstance(self.bidirectional, bool):
            raise ValueError(f"bidirectional: expected true or false, got {self.bidirectional!r}")
        for name in ("text_column", "label_column"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"--{name.replace('_', '-')}: expected a column name, got {getattr(self, name)!r}")
        if (self.data == "csv") != (self.csv is not None):
            raise ValueError("csv: give --csv FILE exactly when --data is 'csv'")

    def check_fitted(self) -> None:
        """What training fitted: two or more distinct labels; for series, a finite mean and a positive standard
        deviation per channel."""
        labels = self.labels
        if not (isinstance(labels, list) and len(labels) >= 2 and all(isinstance(x, str) for x in labels)
                and len(set(labels)) == len(labels)):
            raise ValueError(f"labels: expected a list of 2 or more distinct names, got {labels!r}")
        mean, std = self.channel_mean, self.channel_std
        if not (isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std)
                and (self.is_text or mean)):
            raise ValueError("channel_mean, channel_std: expected one value per channel in each")
        for i, (m, d) in enumerate(zip(mean, std)):
            check_finite_float(f"channel_mean[{i}]", m)
            check_positive(f"channel_std[{i}]", d)

    @property
    def is_text(self) -> bool:
        return self.data != "japanese-vowels"


# ---------------------------------------------------------------------------------------------------------- data


@dataclass
class Split:
    """Encoded examples of one split: token ids ``(T_i,)`` int64 or series ``(T_i, C)`` float32, label ids."""

    inputs: list[Tensor]
    targets: Tensor


@dataclass
class Prepared:
    train: Split
    validation: Split
    test: Split
    vocab: Vocabulary | None


def _text_split(texts: Sequence[str], labels: Sequence[str], config: ClassifyConfig, vocab: Vocabulary) -> Split:
    ids = {label: i for i, label in enumerate(config.labels)}
    inputs = []
    for text in texts:
        tokens = tokenize(text, config.tokens)
        if not tokens:
            raise ValueError(f"text: {text!r} has no {config.tokens} tokens")
        inputs.append(torch.tensor(vocab.encode(tokens), dtype=torch.int64))
    return Split(inputs, torch.tensor([ids[label] for label in labels], dtype=torch.int64))


def _series_split(data: SeriesData, config: ClassifyConfig) -> Split:
    ids = {label: i for i, label in enumerate(config.labels)}
    mean, std = np.array(config.channel_mean, np.float32), np.array(config.channel_std, np.float32)
    inputs = [torch.from_numpy((x - mean) / std) for x in data.series]
    return Split(inputs, torch.tensor([ids[label] for label in data.labels], dtype=torch.int64))


def check_labels(labels: Sequence[str], known: Sequence[str], where: str) -> None:
    unseen = sorted(set(labels) - set(known))
    if unseen:
        raise ValueError(f"label: {where} has labels not seen in training: {unseen}; known labels: {list(known)}")


def prepare(config: ClassifyConfig, vocab: Vocabulary | None = None) -> Prepared:
    """Load and split the data. Without ``vocab`` (training), fit the vocabulary, labels and channel scaling on
    the training split and store them in ``config``; with it (evaluation), reuse those of the checkpoint."""
    fitting = vocab is None
    if config.is_text:
        data = rotten_tomatoes() if config.data == "rotten-tomatoes" else read_text_csv(
            config.csv, config.text_column, config.label_column)  # type: ignore[arg-type]
        parts = stratified_split(data.labels, (0.8, 0.1, 0.1), config.seed)
        texts = [[data.texts[i] for i in part] for part in parts]
        labels = [[data.labels[i] for i in part] for part in parts]
        if fitting:
            config.labels = sorted(set(labels[0]))
            if len(config.labels) < 2:
                raise ValueError(f"label: the training split has only the label(s) {config.labels}; need 2 or more")
            vocab = Vocabulary.build((tokenize(t, config.tokens) for t in texts[0]), config.min_count)
            if len(vocab) <= 2:
                raise ValueError(f"--min-count: no {config.tokens} token occurs {config.min_count} times in the "
                                 f"training split; the vocabulary would be empty (lower --min-count)")
        for name, part in zip(("validation split", "test split"), labels[1:]):
            check_labels(part, config.labels, name)
        assert vocab is not None
        train, validation, test = (_text_split(t, y, config, vocab) for t, y in zip(texts, labels))
        return Prepared(train, validation, test, vocab)
    train_data, test_data = japanese_vowels()
    parts = stratified_split(train_data.labels, (0.9, 0.1, 0.0), config.seed)
    train_part = SeriesData([train_data.series[i] for i in parts[0]], [train_data.labels[i] for i in parts[0]],
                            train_data.class_labels)
    validation_part = SeriesData([train_data.series[i] for i in parts[1]], [train_data.labels[i] for i in parts[1]],
                                 train_data.class_labels)
    if fitting:
        config.labels = list(train_data.class_labels)
        stacked = np.concatenate(train_part.series)  # (sum of T_i, C): the training series only
        config.channel_mean = stacked.mean(0).tolist()
        config.channel_std = np.maximum(stacked.std(0), 1e-6).tolist()
    return Prepared(*(_series_split(d, config) for d in (train_part, validation_part, test_data)), vocab=None)


def collate(inputs: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Pad a batch time-major: ``(T, B)`` token ids or ``(T, B, C)`` values, and ``lengths`` ``(B,)``."""
    lengths = torch.tensor([len(x) for x in inputs], dtype=torch.int64)
    return nn.utils.rnn.pad_sequence(list(inputs)), lengths


def batches(split: Split, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    """One epoch's training batches of indices: shuffled, then sorted by length within pools of 50 batches so that
    a batch holds similar lengths (less padding, fewer wasted time steps), and the batch order shuffled."""
    order = torch.randperm(len(split.inputs), generator=generator)
    lengths = torch.tensor([len(x) for x in split.inputs])
    out = []
    for pool in order.split(batch_size * 50):
        pool = pool[torch.argsort(lengths[pool], stable=True)]
        out.extend(pool.split(batch_size))
    return [out[i] for i in torch.randperm(len(out), generator=generator)]


# --------------------------------------------------------------------------------------------------------- model


class SequenceClassifier(nn.Module):
    """Embedding (text) or raw channels (series) → gatedrnn layer → pooling over each length → linear classifier.

    Inputs: ``x`` ``(T, B)`` token ids or ``(T, B, C)`` values, ``lengths`` ``(B,)``. Output: logits ``(B, K)``.
    """

    def __init__(self, config: ClassifyConfig, vocab_size: int, input_size: int) -> None:
        super().__init__()
        self.pooling = config.pooling
        self.embedding = nn.Embedding(vocab_size, config.embedding_size, padding_idx=0) if vocab_size else None
        width = config.embedding_size if vocab_size else input_size
        self.rnn = variant(config.cell).build(
            width, config.hidden_size, num_layers=config.layers, bidirectional=config.bidirectional,
            dropout=config.dropout if config.layers > 1 else 0.0, engine=config.engine)
        self.dropout = nn.Dropout(config.dropout)
        directions = 2 if config.bidirectional else 1
        out_width = getattr(self.rnn, "proj_size", 0) or config.hidden_size
        self.classifier = nn.Linear(directions * out_width, len(config.labels))

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        e = self.dropout(self.embedding(x)) if self.embedding is not None else x  # (T, B, E)
        out, state = self.rnn(e, lengths=lengths)  # out (T, B, D*H), zero past each length
        if self.pooling == "last":
            h_n = state[0] if isinstance(state, tuple) else state  # (L*D, B, H)
            directions = 2 if self.rnn.bidirectional else 1
            pooled = torch.cat(list(h_n[-directions:]), dim=1)  # forward: last step; backward: first step
        else:
            valid = (torch.arange(out.shape[0], device=out.device).unsqueeze(1) < lengths.to(out.device))
            valid = valid.unsqueeze(2)  # (T, B, 1)
            if self.pooling == "mean":
                pooled = (out * valid).sum(0) / valid.sum(0)
            else:
                pooled = out.masked_fill(~valid, -math.inf).amax(0)
        return self.classifier(self.dropout(pooled))


def build_model(config: ClassifyConfig, vocab: Vocabulary | None) -> SequenceClassifier:
    return SequenceClassifier(config, len(vocab) if vocab is not None else 0, len(config.channel_mean))


def model_bytes(config: ClassifyConfig, vocab: Vocabulary | None, steps: int = 0, *, train: bool = False,
                overhead: bool = True) -> int:
    """A lower bound of the memory the classifier takes (training: with gradients, optimizer state and the
    activations of a batch of ``steps`` steps), computed before anything is allocated."""
    width = config.embedding_size if vocab is not None else len(config.channel_mean)
    embedding = len(vocab) * config.embedding_size * (4 if train else 1) if vocab is not None else 0
    inputs = config.batch_size * steps * width if train else 0
    return 4 * (embedding + inputs) + training.recurrent_bytes(
        layers=config.layers, hidden=config.hidden_size, inputs=width, directions=2 if config.bidirectional else 1,
        batch=config.batch_size if train else 0, steps=steps, training=train, overhead=overhead)


@torch.no_grad()
def predict_proba(model: SequenceClassifier, inputs: Sequence[Tensor], device: torch.device,
                  batch_size: int = 256) -> Tensor:
    """Class probabilities ``(N, K)`` in input order."""
    model.eval()
    probabilities = []
    for start in range(0, len(inputs), batch_size):
        x, lengths = collate(inputs[start : start + batch_size])
        probabilities.append(F.softmax(model(x.to(device), lengths), dim=1).cpu())
    return torch.cat(probabilities)


def evaluate(model: SequenceClassifier, split: Split, classes: int, device: torch.device) -> dict[str, object]:
    predicted = predict_proba(model, split.inputs, device).argmax(1)
    matrix = confusion_matrix(split.targets.numpy(), predicted.numpy(), classes)
    return {"accuracy": accuracy(matrix), "macro_f1": macro_f1(matrix), "confusion": matrix}


# ------------------------------------------------------------------------------------------------------ training


def train(config: ClassifyConfig, loop: supervised.Loop, out: Path, *, resume: bool = False,
          device: str = "auto") -> supervised.Result:
    """Train a classifier into ``out``; the weights with the best validation accuracy are kept.

    Every option, the data and the memory the model needs are checked before anything is written.
    """
    config.check()
    loop.check()
    training.check_engine(config.engine)
    placement = training.resolve_device(device)
    resume = training.open_run_dir("--out", out, resume=resume, what="classify")
    dist = training.setup_distributed(device)
    try:
        training.seed_everything(config.seed)
        if resume:  # the labels, vocabulary and scaling come from the saved run, fitted on its training split
            supervised.check_resume(out, {k: v for k, v in asdict(config).items() if k not in FITTED})
            config = load_config(out)
            data = prepare(config, load_vocab(out, config))
        else:
            data = prepare(config)
        longest = max(len(x) for x in data.train.inputs)
        training.require_memory(
            f"model: --layers {config.layers} --hidden-size {config.hidden_size} --embedding-size "
            f"{config.embedding_size} --batch-size {config.batch_size} (sequences of up to {longest} steps)",
            model_bytes(config, data.vocab, longest, train=True), placement)
        if not resume and dist.is_main:
            training.begin_run(out, supervised.RUN_FILES)
            training.write_json(out / supervised.CONFIG, asdict(config))
            if data.vocab is not None:
                training.write_json(out / "vocab.json", data.vocab.tokens)
        model = build_model(config, data.vocab).to(dist.device)
        classes = len(config.labels)

        def loss_of(m: nn.Module, batch: Tensor) -> tuple[Tensor, int]:
            x, lengths = collate([data.train.inputs[i] for i in batch])
            return F.cross_entropy(m(x.to(dist.device), lengths), data.train.targets[batch].to(dist.device)), len(batch)

        def validate(m: nn.Module) -> tuple[float, str]:
            scores = evaluate(m, data.validation, classes, dist.device)  # type: ignore[arg-type]
            acc, f1 = scores["accuracy"], scores["macro_f1"]
            return acc, f"validation accuracy {acc:.4f}, macro-F1 {f1:.4f}"

        return supervised.fit(
            model, out=out, loop=loop, seed=config.seed, resume=resume,
            epoch_batches=lambda g: batches(data.train, config.batch_size, g),
            loss_of=loss_of, validate=validate, dist=dist, unit="seq")
    finally:
        training.teardown_distributed(dist)


def load_config(out: Path) -> ClassifyConfig:
    """The configuration of the run in ``out``, every field checked (a ``CheckpointError`` naming the file)."""
    return supervised.load_config(out, ClassifyConfig, "classify")


def load_vocab(out: Path, config: ClassifyConfig) -> Vocabulary | None:
    if not config.is_text:
        return None
    path = out / "vocab.json"
    tokens = training.read_json(path)
    if not (isinstance(tokens, list) and tokens[:2] == [Vocabulary.PAD, Vocabulary.UNK] and len(tokens) > 2
            and all(isinstance(t, str) for t in tokens)):
        raise training.CheckpointError(f"{path}: corrupt vocabulary (expected a list of tokens starting with "
                                       f"{Vocabulary.PAD!r}, {Vocabulary.UNK!r})")
    if len(set(tokens)) != len(tokens):
        raise training.CheckpointError(f"{path}: corrupt vocabulary (a token is listed twice)")
    return Vocabulary(tokens[2:])  # the first two are <pad> and <unk>


def load(out: Path, device: torch.device) -> tuple[ClassifyConfig, Vocabulary | None, SequenceClassifier]:
    """The configuration, vocabulary and best weights of a trained classifier."""
    if not out.is_dir():
        raise ValueError(f"--out: {out} is not a directory (expected a run directory from classify train)")
    config = load_config(out)
    vocab = load_vocab(out, config)
    model = training.build_and_load(
        out / supervised.WEIGHTS, lambda: build_model(config, vocab), device=device,
        what=f"model: {out / supervised.CONFIG} (layers {config.layers}, hidden_size {config.hidden_size}, "
             f"embedding_size {config.embedding_size})", nbytes=model_bytes(config, vocab),
        weights=model_bytes(config, vocab, overhead=False))
    return config, vocab, model.eval()


# ---------------------------------------------------------------------------------------------- evaluation, use


def report(config: ClassifyConfig, scores: dict[str, object], title: str, plot: Path) -> str:
    """Accuracy, macro-F1 and the confusion matrix as text; the matrix also as a PNG at ``plot``."""
    matrix = scores["confusion"]
    assert isinstance(matrix, np.ndarray)
    plots.confusion_plot(plot, matrix, config.labels, f"{title}: accuracy {scores['accuracy']:.3f}")
    width = max(6, *(len(label) for label in config.labels))
    lines = [title, f"accuracy  {scores['accuracy']:.4f}  ({int(np.trace(matrix))}/{int(matrix.sum())})",
             f"macro-F1  {scores['macro_f1']:.4f}", "", "confusion matrix (rows: true, columns: predicted)",
             " " * width + " " + " ".join(label.rjust(width) for label in config.labels)]
    for label, row in zip(config.labels, matrix):
        lines.append(label.rjust(width) + " " + " ".join(str(n).rjust(width) for n in row))
    lines.append(plots.plot_line(plot))
    return "\n".join(lines)


def eval_split(out: Path, device: torch.device, split: str = "test", csv: str | None = None) -> tuple[
        ClassifyConfig, dict[str, object], str]:
    """Scores of a trained classifier on its data's ``split``, or on a labelled CSV with the training columns."""
    check_choice("split", split, ("train", "validation", "test"))
    config, vocab, model = load(out, device)
    if csv is not None:
        if not config.is_text:
            raise ValueError("csv: this classifier reads series, not text; evaluate it on its own test split")
        data = read_text_csv(csv, config.text_column if config.data == "csv" else "text",
                             config.label_column if config.data == "csv" else "label")
        check_labels(data.labels, config.labels, csv)
        assert vocab is not None
        part = _text_split(data.texts, data.labels, config, vocab)
        where = csv
    else:
        part = getattr(prepare(config, vocab), split)
        where = f"{config.data} {split} split"
    return config, evaluate(model, part, len(config.labels), device), where


def predict_texts(out: Path, texts: Sequence[str], device: torch.device) -> list[tuple[str, float]]:
    """The most probable label and its probability for each text."""
    config, vocab, model = load(out, device)
    if not config.is_text or vocab is None:
        raise ValueError("text: this classifier reads series; give a .ts file with --ts")
    inputs = []
    for text in texts:
        tokens = tokenize(text, config.tokens)
        if not text.strip() or not tokens:
            raise ValueError(f"text: expected a non-empty text, got {text!r}")
        inputs.append(torch.tensor(vocab.encode(tokens), dtype=torch.int64))
    probabilities = predict_proba(model, inputs, device)
    best = probabilities.argmax(1)
    return [(config.labels[k], float(probabilities[i, k])) for i, k in enumerate(best.tolist())]


def predict_series(out: Path, path: str, device: torch.device) -> list[tuple[str, float]]:
    config, _, model = load(out, device)
    if config.is_text:
        raise ValueError("ts: this classifier reads text; give texts as arguments or on stdin")
    data = read_ts(path)
    if data.series[0].shape[1] != len(config.channel_mean):
        raise ValueError(f"ts: {path} has {data.series[0].shape[1]} dimensions, the model reads "
                         f"{len(config.channel_mean)}")
    mean, std = np.array(config.channel_mean, np.float32), np.array(config.channel_std, np.float32)
    probabilities = predict_proba(model, [torch.from_numpy((x - mean) / std) for x in data.series], device)
    best = probabilities.argmax(1)
    return [(config.labels[k], float(probabilities[i, k])) for i, k in enumerate(best.tolist())]


# --------------------------------------------------------------------------------------------------- command line


def _train_command(args: argparse.Namespace) -> int:
    config = ClassifyConfig(**{f.name: getattr(args, f.name) for f in fields(ClassifyConfig)
                               if hasattr(args, f.name)})
    if args.csv is not None and args.data == "rotten-tomatoes":
        config.data = "csv"  # --csv alone means the user's file
    if config.csv is not None:
        config.csv = str(Path(config.csv).resolve())  # eval and predict may run from another directory
    result = train(config, supervised.loop_from(args), args.out, resume=args.resume, device=args.device)
    if os.environ.get("RANK", "0") != "0":
        return training.exit_status(result.signal)  # under torchrun only rank 0 reports
    print(f"trained {result.step} steps in {result.elapsed:.0f} s; best validation accuracy "
          f"{result.best_score:.4f} at step {result.best_step}; weights in {args.out / supervised.WEIGHTS}")
    return training.exit_status(result.signal)


def _eval_command(args: argparse.Namespace) -> int:
    device = training.resolve_device(args.device)
    plot = args.plot or args.out / f"confusion_{args.split if args.csv is None else 'csv'}.png"
    training.check_output_file("--plot", plot)
    config, scores, where = eval_split(args.out, device, args.split, args.csv)
    print(report(config, scores, f"{config.cell} on {where}", plot))
    return 0


def _predict_command(args: argparse.Namespace) -> int:
    device = training.resolve_device(args.device)
    if args.ts is not None:
        names = [f"series {i}" for i in range(len(read_ts(args.ts).series))]
        results = predict_series(args.out, args.ts, device)
    else:
        names = args.text or [line.rstrip("\n") for line in sys.stdin if line.strip()]
        if not names:
            raise ValueError("text: expected a text as an argument or lines on stdin, got none")
        results = predict_texts(args.out, names, device)
    for name, (label, probability) in zip(names, results):
        print(f"{label}\t{probability:.4f}\t{name}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``gatedrnn classify train|eval|predict`` to the CLI."""
    task = commands.add_parser("classify", help="sequence classification: reviews, speakers, your CSV")
    verbs = task.add_subparsers(dest="verb", required=True, metavar="VERB")
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = verbs.add_parser("train", help="train a classifier", formatter_class=fmt)
    p.add_argument("--data", default="rotten-tomatoes", help="bundled data set or csv: " + ", ".join(DATASETS))
    p.add_argument("--csv", default=None, help="your CSV of labelled texts (implies --data csv)")
    p.add_argument("--text-column", default="text", help="the CSV's text column")
    p.add_argument("--label-column", default="label", help="the CSV's label column")
    p.add_argument("--tokens", default="word", help="token level: word or char")
    p.add_argument("--min-count", type=int, default=2, help="keep tokens seen this often in the training split")
    p.add_argument("--embedding-size", type=int, default=128, help="token embedding width")
    p.add_argument("--hidden-size", type=int, default=128, help="H, hidden units per direction")
    p.add_argument("--unidirectional", dest="bidirectional", action="store_false", help="forward direction only")
    p.add_argument("--pooling", default="max", help="how the outputs become one vector: " + ", ".join(POOLINGS))
    p.add_argument("--dropout", type=float, default=0.4, help="dropout on embeddings and the pooled vector")
    supervised.add_options(p, steps=2000, eval_every=100, lr=3e-3, batch_size=64)
    p.set_defaults(run=_train_command)
    p = verbs.add_parser("eval", help="accuracy, macro-F1 and confusion matrix (text and PNG)", formatter_class=fmt)
    p.add_argument("--out", type=Path, required=True, help="checkpoint directory")
    p.add_argument("--split", default="test", help="which split: train, validation or test")
    p.add_argument("--csv", default=None, help="evaluate on this labelled CSV instead (the training columns)")
    p.add_argument("--plot", type=Path, default=None, help="confusion-matrix PNG (default: in --out)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.set_defaults(run=_eval_command)
    p = verbs.add_parser("predict", help="label and probability of new texts (arguments or stdin lines)",
                         formatter_class=fmt)
    p.add_argument("text", nargs="*", help="texts to classify (default: one per line on stdin)")
    p.add_argument("--out", type=Path, required=True, help="checkpoint directory")
    p.add_argument("--ts", default=None, help="classify the series of this .ts file instead")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.set_defaults(run=_predict_command)
