"""Labelled sequences for classification: the bundled data sets, user CSVs, the ``.ts`` format, splits, tokens.

Everything here is plain Python and NumPy, so it can be tested without a model:

- :func:`rotten_tomatoes` — the bundled review snippets (``fresh`` → positive, ``rotten`` → negative; plot
  synopses and exact duplicate texts dropped, so no snippet can sit in two splits).
- :func:`read_text_csv` — a user's CSV with a text and a label column.
- :func:`read_ts` / :func:`japanese_vowels` — multivariate series in sktime's ``.ts`` text format.
- :func:`stratified_split` — the fixed, seeded train/validation/test split (80/10/10 by default).
- :func:`tokenize` and :class:`Vocabulary` — word or character tokens; the vocabulary is built from the training
  split only.
"""

from __future__ import annotations

import bz2
import csv
import io
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np


def bundled(name: str) -> Path:
    """The path of a data file shipped in ``gatedrnn/data`` (see ``SOURCES_classify_forecast.md`` there)."""
    return Path(str(resources.files("gatedrnn").joinpath("data", name)))


def open_text(path: str | Path, what: str = "csv") -> io.TextIOBase:
    """Open a UTF-8 text file for reading (a byte-order mark is skipped), transparently decompressing ``.bz2`` and
    ``.gz``. Universal newlines are left to the reader: the ``csv`` module takes ``\n`` and ``\r\n`` alike."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what}: {path} is a directory; expected a file")
    if not path.is_file():
        raise ValueError(f"{what}: no such file: {path}")
    if path.suffix == ".bz2":
        return bz2.open(path, "rt", encoding="utf-8-sig", newline="")  # type: ignore[return-value]
    if path.suffix == ".gz":
        import gzip

        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")  # type: ignore[return-value]
    return open(path, encoding="utf-8-sig", newline="")


def read_csv_rows(path: str | Path, columns: Sequence[tuple[str, str]]) -> list[tuple[int, dict[str, str]]]:
    """The rows of a CSV with the file line each ends on; every ``(option, column)`` of ``columns`` must be in
    the header, once. ``option`` names the command-line option that chose the column, so the error says what to
    change. A file that cannot be read or parsed is an error naming it (and the line, where there is one).
    """
    reader: csv.DictReader | None = None
    try:
        with open_text(path) as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            if not header:
                raise ValueError(f"csv: {path} is empty (no header line)")
            twice = sorted({c for c in header if header.count(c) > 1})
            for option, column in columns:
                if column not in header:
                    raise ValueError(f"{option}: no column {column!r} in {path}; its columns are: {', '.join(header)}")
                if column in twice:
                    raise ValueError(f"{option}: the header of {path} names the column {column!r} "
                                     f"{header.count(column)} times; expected it once")
            return [(reader.line_num, row) for row in reader]  # line_num: quoted fields may span lines
    except csv.Error as error:
        raise ValueError(f"csv: line {reader.line_num if reader else 1} of {path}: {error}") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"csv: {path} is not UTF-8 text (byte {error.object[error.start]:#04x} at offset "
                         f"{error.start} of its text)") from None
    except (OSError, EOFError) as error:
        raise ValueError(f"csv: cannot read {path}: {getattr(error, 'strerror', None) or error}") from None


@dataclass
class TextData:
    """Texts and their labels (as strings, in file order)."""

    texts: list[str]
    labels: list[str]


def read_text_csv(path: str | Path, text_column: str, label_column: str,
                  keep: Callable[[str], bool] | None = None) -> TextData:
    """Texts and labels from a CSV (only rows whose label passes ``keep``, if given); an empty text or label is
    an error naming its line."""
    rows = read_csv_rows(path, [("--text-column", text_column), ("--label-column", label_column)])
    texts, labels = [], []
    for line, row in rows:
        if keep is not None and not keep(row[label_column] or ""):
            continue
        text, label = (row[text_column] or "").strip(), (row[label_column] or "").strip()
        if not text:
            raise ValueError(f"csv: empty text in column {text_column!r} on line {line} of {path}")
        if not label:
            raise ValueError(f"csv: empty label in column {label_column!r} on line {line} of {path}")
        texts.append(text)
        labels.append(label)
    if not texts:
        raise ValueError(f"csv: {path} has a header but no rows")
    return TextData(texts, labels)


def rotten_tomatoes(path: str | Path | None = None) -> TextData:
    """The Rotten Tomatoes review snippets: ``fresh`` → ``positive``, ``rotten`` → ``negative``.

    Plot synopses (category ``plot``) are not reviews and are dropped. Exact duplicate texts (56 in the bundled
    file) are kept once, at their first occurrence, so that no text can land in both training and test split.
    """
    names = {"fresh": "positive", "rotten": "negative"}
    data = read_text_csv(path or bundled("rotten_tomatoes.csv.bz2"), "text", "category", keep=names.__contains__)
    seen: set[str] = set()
    texts, labels = [], []
    for text, category in zip(data.texts, data.labels):
        if category in names and text not in seen:
            seen.add(text)
            texts.append(text)
            labels.append(names[category])
    return TextData(texts, labels)


@dataclass
class SeriesData:
    """Variable-length multivariate series, each ``(T_i, C)`` float32, and their labels."""

    series: list[np.ndarray]
    labels: list[str]
    class_labels: list[str]


def read_ts(path: str | Path) -> SeriesData:
    """Parse sktime's ``.ts`` text format (multivariate, variable length, a class label per series).

    The header holds ``@key value`` lines (``#`` lines are comments) up to ``@data``; each data line is
    ``dim_1:dim_2:...:dim_C:label`` with comma-separated values per dimension.
    """
    try:
        return _read_ts(Path(path))
    except UnicodeDecodeError as error:
        raise ValueError(f"ts: {path} is not UTF-8 text (byte {error.object[error.start]:#04x} at offset "
                         f"{error.start})") from None


def _read_ts(path: Path) -> SeriesData:
    header: dict[str, str] = {}
    series, labels = [], []
    in_data = False
    with open_text(path, "ts") as f:
        for number, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if not in_data:
                key, _, value = line.partition(" ")
                if key.lower() == "@data":
                    in_data = True
                elif key.startswith("@"):
                    header[key[1:].lower()] = value.strip()
                else:
                    raise ValueError(f"ts: line {number} of {path}: expected '@key value' before @data, got {line!r}")
                continue
            *dims, label = line.split(":")
            try:
                expected = int(header.get("dimensions", len(dims)))
            except ValueError:
                raise ValueError(f"ts: {path}: @dimensions {header['dimensions']!r} is not an integer") from None
            if len(dims) != expected:
                raise ValueError(f"ts: line {number} of {path}: expected {expected} dimensions, got {len(dims)}")
            try:
                channels = [np.array([float(v) for v in d.split(",")], dtype=np.float32) for d in dims]
            except ValueError:
                raise ValueError(f"ts: line {number} of {path}: a value is not a number") from None
            if len({len(c) for c in channels}) != 1:
                raise ValueError(f"ts: line {number} of {path}: the dimensions have different lengths")
            x = np.stack(channels, axis=1)  # (T, C)
            if not np.isfinite(x).all():
                raise ValueError(f"ts: line {number} of {path}: missing or non-finite values")
            series.append(x)
            labels.append(label.strip())
    if not series:
        raise ValueError(f"ts: {path} holds no series (no @data section or no lines after it)")
    class_labels = header.get("classlabel", "").split()[1:] or sorted(set(labels))
    unknown = sorted(set(labels) - set(class_labels))
    if unknown:
        raise ValueError(f"ts: {path}: labels {unknown} are not among the header's class labels {class_labels}")
    return SeriesData(series, labels, class_labels)


def japanese_vowels() -> tuple[SeriesData, SeriesData]:
    """The JapaneseVowels speaker set with its official split: 270 training and 370 test series, 9 classes."""
    return read_ts(bundled("JapaneseVowels_TRAIN.ts")), read_ts(bundled("JapaneseVowels_TEST.ts"))


def stratified_split(
    labels: Sequence[str], fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0
) -> tuple[list[int], list[int], list[int]]:
    """Indices of a train/validation/test split that keeps each label's share in every part.

    Each label's items are shuffled with ``seed`` and cut at the cumulative fractions, so the split depends only on
    the labels, the fractions and the seed (the same on every machine and every run).
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"fractions: expected three non-negative fractions summing to 1, got {fractions}")
    rng = np.random.default_rng(seed)
    parts: tuple[list[int], list[int], list[int]] = ([], [], [])
    by_label: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    for label in sorted(by_label):
        items = np.array(by_label[label])[rng.permutation(len(by_label[label]))]
        cut1 = round(fractions[0] * len(items))
        cut2 = cut1 + round(fractions[1] * len(items))
        for part, chunk in zip(parts, (items[:cut1], items[cut1:cut2], items[cut2:])):
            part.extend(int(i) for i in chunk)
    return sorted(parts[0]), sorted(parts[1]), sorted(parts[2])


WORD_PATTERN = r"[^\W_]+(?:'[^\W_]+)?|[^\w\s]|_"
"""Word tokens (of lower-cased text): runs of letters/digits with an optional apostrophe suffix ("it's", "don't");
every other non-space character (punctuation) is a token of its own. Exported classifiers carry it."""
_WORD = re.compile(WORD_PATTERN)


def tokenize(text: str, level: str) -> list[str]:
    """``level="word"``: lower-cased words and punctuation marks; ``level="char"``: the characters."""
    if level == "word":
        return _WORD.findall(text.lower())
    if level == "char":
        return list(text)
    raise ValueError(f"tokens: expected 'word' or 'char', got {level!r}")


class Vocabulary:
    """Token ↔ id. Id 0 is padding and id 1 stands for every token not in the vocabulary."""

    PAD, UNK = "<pad>", "<unk>"

    def __init__(self, tokens: Sequence[str]) -> None:
        self.tokens = [self.PAD, self.UNK, *tokens]
        self.ids = {t: i for i, t in enumerate(self.tokens)}

    @classmethod
    def build(cls, token_lists: Iterable[Sequence[str]], min_count: int = 1) -> Vocabulary:
        """Every token seen at least ``min_count`` times, most frequent first (ties in first-seen order).

        Call it with the training split's tokens only: a vocabulary that has seen validation or test text leaks
        which words occur there.
        """
        counts = Counter(t for tokens in token_lists for t in tokens)
        return cls([t for t, n in counts.most_common() if n >= min_count])

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, tokens: Sequence[str]) -> list[int]:
        return [self.ids.get(t, 1) for t in tokens]
