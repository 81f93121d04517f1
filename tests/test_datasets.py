"""Classification data: the bundled sets, the ``.ts`` parser, user CSVs, the split, tokens, metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gatedrnn.datasets import (
    Vocabulary,
    japanese_vowels,
    read_text_csv,
    read_ts,
    rotten_tomatoes,
    stratified_split,
    tokenize,
)
from gatedrnn.metrics import accuracy, confusion_matrix, macro_f1


def test_japanese_vowels_official_split() -> None:
    train, test = japanese_vowels()
    assert (len(train.series), len(test.series)) == (270, 370)
    assert train.class_labels == [str(k) for k in range(1, 10)]
    lengths = [len(x) for x in train.series + test.series]
    assert (min(lengths), max(lengths)) == (7, 29)
    assert {x.shape[1] for x in train.series + test.series} == {12}
    assert all(train.labels.count(str(k)) == 30 for k in range(1, 10))  # 30 utterances per speaker
    assert train.series[0][:2, 0].tolist() == pytest.approx([1.860936, 1.891651])  # first values of the file


def test_rotten_tomatoes_reviews_only_without_duplicates() -> None:
    data = rotten_tomatoes()
    assert set(data.labels) == {"positive", "negative"}
    assert len(set(data.texts)) == len(data.texts) == 12752  # 12,808 reviews less 56 repeated texts
    assert data.labels.count("positive") == 7368
    assert data.texts[0] == "A three-hour cinema master class."


HEADER = "@problemName x\n@univariate false\n@dimensions 2\n@classLabel true a b\n@data\n"


@pytest.mark.parametrize(("body", "message"), [
    ("1,2:3,4:a\n1,x:3,4:b\n", r"line 7 of .*: a value is not a number"),
    ("1,2:3,4:5,6:a\n", r"line 6 of .*: expected 2 dimensions, got 3"),
    ("1,2:3:a\n", r"line 6 of .*: the dimensions have different lengths"),
    ("1,2:3,?:a\n", r"line 6 of .*: a value is not a number"),
    ("1,2:3,nan:a\n", r"line 6 of .*: missing or non-finite values"),
    ("1,2:3,4:c\n", r".*: labels \['c'\] are not among the header's class labels \['a', 'b'\]"),
    ("", r".* holds no series"),
], ids=["non-numeric", "dimensions", "ragged", "missing", "nan", "unknown-label", "empty"])
def test_read_ts_rejects_bad_files(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "bad.ts"
    path.write_text(HEADER + body)
    with pytest.raises(ValueError, match=f"^ts: {message}"):
        read_ts(path)


def test_read_ts_small_file_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "ok.ts"
    path.write_text("# comment\n" + HEADER + "1,2,3:4,5,6:b\n7:8:a\n")
    data = read_ts(path)
    assert data.labels == ["b", "a"]
    np.testing.assert_array_equal(data.series[0], [[1, 4], [2, 5], [3, 6]])
    with pytest.raises(ValueError, match="^ts: no such file: "):
        read_ts(tmp_path / "absent.ts")


def _csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "data.csv"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("text", "args", "message"), [
    ("review,label\nnice,pos\n", ("text", "label"), r"^--text-column: no column 'text' in .*; its columns are: "
                                                     r"review, label$"),
    ("text,stars\nnice,pos\n", ("text", "label"), r"^--label-column: no column 'label'"),
    ('text,label\nnice,pos\n"  ",neg\n', ("text", "label"), r"^csv: empty text in column 'text' on line 3 of "),
    ('text,label\n"two\nlines",pos\nnice,\n', ("text", "label"), r"^csv: empty label in column 'label' on line 4"),
    ("text,label\n", ("text", "label"), r"^csv: .* has a header but no rows$"),
    ("", ("text", "label"), r"^csv: .* is empty \(no header line\)$"),
], ids=["no-text-column", "no-label-column", "empty-text", "empty-label", "no-rows", "empty-file"])
def test_read_text_csv_rejects_bad_files(tmp_path: Path, text: str, args: tuple[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        read_text_csv(_csv(tmp_path, text), *args)


def test_read_text_csv_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="^csv: no such file: "):
        read_text_csv(tmp_path / "absent.csv", "text", "label")


def test_stratified_split_is_fixed_disjoint_and_keeps_label_shares() -> None:
    labels = ["a"] * 50 + ["b"] * 30 + ["c"] * 20
    train, validation, test = stratified_split(labels, (0.8, 0.1, 0.1), seed=3)
    assert sorted(train + validation + test) == list(range(100))
    assert (len(train), len(validation), len(test)) == (80, 10, 10)
    for label, n in (("a", 50), ("b", 30), ("c", 20)):
        assert [labels[i] for i in test].count(label) == n // 10
    assert stratified_split(labels, (0.8, 0.1, 0.1), seed=3) == (train, validation, test)
    assert stratified_split(labels, (0.8, 0.1, 0.1), seed=4)[2] != test
    with pytest.raises(ValueError, match=r"^fractions: expected three non-negative fractions summing to 1"):
        stratified_split(labels, (0.8, 0.3, 0.1))


def test_tokens_and_vocabulary() -> None:
    assert tokenize("It's a GREAT film, isn't it?", "word") == ["it's", "a", "great", "film", ",", "isn't", "it", "?"]
    assert tokenize("Ok!", "char") == ["O", "k", "!"]
    with pytest.raises(ValueError, match="^tokens: expected 'word' or 'char', got 'bpe'$"):
        tokenize("x", "bpe")
    vocab = Vocabulary.build([["b", "a", "b"], ["c", "b", "a"]], min_count=2)
    assert vocab.tokens == ["<pad>", "<unk>", "b", "a"]
    assert vocab.encode(["a", "zzz", "b"]) == [3, 1, 2]


def test_metrics_against_hand_computed_values() -> None:
    truth = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 0, 1, 1, 2, 2])
    matrix = confusion_matrix(truth, predicted, 3)
    np.testing.assert_array_equal(matrix, [[2, 1, 0], [0, 1, 1], [0, 0, 1]])
    assert accuracy(matrix) == pytest.approx(4 / 6)
    # F1 per class: 2·2/(4+0+1) = 0.8, 2·1/(2+1+1) = 0.5, 2·1/(2+1+0) = 2/3
    assert macro_f1(matrix) == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)


@pytest.mark.parametrize("compress", ["", ".gz", ".bz2"])
def test_csv_with_a_byte_order_mark_and_crlf_line_ends(tmp_path: Path, compress: str) -> None:
    import bz2
    import gzip

    data = '\ufefftext,label\r\n"a good, long film",pos\r\n"a bad one\r\nover two lines",neg\r\n'.encode()
    path = tmp_path / f"reviews.csv{compress}"
    path.write_bytes({"": data, ".gz": gzip.compress(data), ".bz2": bz2.compress(data)}[compress])
    read = read_text_csv(path, "text", "label")
    assert read.texts == ["a good, long film", "a bad one\r\nover two lines"]
    assert read.labels == ["pos", "neg"]


def test_csv_errors_name_the_file_and_what_was_expected(tmp_path: Path) -> None:
    twice = tmp_path / "twice.csv"
    twice.write_text("text,label,text\na,pos,b\n")
    with pytest.raises(ValueError, match=r"^--text-column: the header of .*twice.csv names the column 'text' 2 "
                                         r"times; expected it once$"):
        read_text_csv(twice, "text", "label")
    long = tmp_path / "long.csv"
    long.write_text("text,label\n" + "x" * 200_000 + ",pos\n")
    with pytest.raises(ValueError, match=r"^csv: line \d of .*long.csv: field larger than field limit"):
        read_text_csv(long, "text", "label")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text,label\ncaf\xe9,pos\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"^csv: .*latin.csv is not UTF-8 text \(byte 0xe9"):
        read_text_csv(latin, "text", "label")
    broken = tmp_path / "broken.csv.gz"
    broken.write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 6)
    with pytest.raises(ValueError, match=r"^csv: cannot read .*broken.csv.gz"):
        read_text_csv(broken, "text", "label")
    with pytest.raises(ValueError, match=r"^csv: .* is a directory; expected a file$"):
        read_text_csv(tmp_path, "text", "label")
    with pytest.raises(ValueError, match=r"^ts: .* is a directory; expected a file$"):
        read_ts(tmp_path)
