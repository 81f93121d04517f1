"""``gatedrnn classify train|eval|predict``: a small CSV learned end to end, resume, JapaneseVowels, bad input."""

from __future__ import annotations

import io
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gatedrnn import training
from gatedrnn.cli import main
from gatedrnn.datasets import Vocabulary, bundled, tokenize
from gatedrnn.tasks import classify, supervised

SMALL = ["--embedding-size", "8", "--hidden-size", "8", "--batch-size", "16", "--lr", "0.02", "--eval-every", "20"]


def _reviews(path: Path, n: int = 120, seed: int = 0) -> Path:
    """Texts of filler words where one word decides the label; a comma and a quote test the CSV quoting."""
    rng = random.Random(seed)
    filler = ["the", "film", "plot", "actor", "scene", "was", "and", "a", "story", "music"]
    lines = ["review,verdict"]
    for i in range(n):
        label = "good" if i % 2 else "bad"
        words = rng.sample(filler, 4) + [rng.choice(["great", "superb"] if label == "good" else ["awful", "dull"])]
        rng.shuffle(words)
        lines.append(f'"{" ".join(words)}, ""really""",{label}')
    path.write_text("\n".join(lines) + "\n")
    return path


def _train(tmp_path: Path, *extra: str) -> Path:
    tmp_path.mkdir(exist_ok=True)
    csv = _reviews(tmp_path / "reviews.csv")
    out = tmp_path / "run"
    args = ["classify", "train", "--csv", str(csv), "--text-column", "review", "--label-column", "verdict",
            "--min-count", "1", *SMALL, "--out", str(out), *extra]
    assert main(args) == 0
    return out


def test_csv_train_eval_predict(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    out = _train(tmp_path, "--steps", "60", "--pooling", "mean")
    assert {"config.json", "vocab.json", "model.safetensors", "trainer_state.safetensors"} <= {
        p.name for p in out.iterdir()}
    capsys.readouterr()
    assert main(["classify", "eval", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "accuracy  1.0000  (12/12)" in text and "macro-F1  1.0000" in text  # 10% of 120 texts, all right
    assert "confusion matrix" in text and (out / "confusion_test.png").stat().st_size > 1000
    assert main(["classify", "predict", "--out", str(out), "a superb film", "an awful plot"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["good", "bad"]
    assert all(0.5 < float(line.split("\t")[1]) <= 1 for line in lines)
    monkeypatch.setattr("sys.stdin", io.StringIO("great music\n\ndull scene\n"))
    assert main(["classify", "predict", "--out", str(out)]) == 0
    assert [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()] == ["good", "bad"]


def test_torchrun_two_processes_train_one_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """DDP on CPU (gloo): two ranks share the batches, rank 0 alone writes, and the run learns the task."""
    csv = _reviews(tmp_path / "reviews.csv")
    out = tmp_path / "ddp"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                "gatedrnn", "classify", "train", "--csv", str(csv), "--text-column", "review", "--label-column",
                "verdict", "--min-count", "1", *SMALL, "--steps", "60", "--out", str(out), "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(torchrun, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert {"config.json", "vocab.json", "model.safetensors", "trainer_state.safetensors"} <= {
        p.name for p in out.iterdir()}
    assert not [p for p in out.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]  # no stray temp files
    assert main(["classify", "eval", "--out", str(out)]) == 0
    assert "accuracy  1.0000  (12/12)" in capsys.readouterr().out


def test_vocabulary_comes_from_the_training_split_only(tmp_path: Path) -> None:
    csv = _reviews(tmp_path / "reviews.csv")
    config = classify.ClassifyConfig(data="csv", csv=str(csv), text_column="review", label_column="verdict",
                                     min_count=1)
    data = classify.prepare(config)
    assert data.vocab is not None
    texts = csv.read_text().splitlines()[1:]
    train_tokens = {t for i in classify.stratified_split([x.rsplit(",", 1)[1] for x in texts])[0]
                    for t in tokenize(texts[i].rsplit(",", 1)[0], "word")}
    assert set(data.vocab.tokens[2:]) == train_tokens
    # A word that occurs only outside the training split is unknown (id 1) to the model.
    unseen = Vocabulary(data.vocab.tokens[2:]).encode(["zebra"])
    assert unseen == [1]


def test_resume_continues_the_same_run(tmp_path: Path) -> None:
    straight = _train(tmp_path / "a", "--steps", "30")
    resumed = _train(tmp_path / "b", "--steps", "15")
    assert main(["classify", "train", "--csv", str(tmp_path / "b" / "reviews.csv"), "--text-column", "review",
                 "--label-column", "verdict", "--min-count", "1", *SMALL, "--out", str(resumed), "--steps", "30",
                 "--resume"]) == 0
    model_a, model_b = (classify.load(out, torch.device("cpu"))[2] for out in (straight, resumed))
    state_a, state_b = (training.load_trainer_state(out / supervised.STATE, model=m, optimizer=torch.optim.AdamW(
        m.parameters())) for out, m in ((straight, model_a), (resumed, model_b)))
    assert state_a.step == state_b.step == 30
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_japanese_vowels_train_eval_predict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "jv"
    assert main(["classify", "train", "--data", "japanese-vowels", "--hidden-size", "8", "--steps", "4",
                 "--eval-every", "4", "--cell", "gru", "--pooling", "last", "--out", str(out)]) == 0
    config = classify.load_config(out)
    assert len(config.channel_mean) == 12 and config.labels == [str(k) for k in range(1, 10)]
    capsys.readouterr()
    assert main(["classify", "eval", "--out", str(out)]) == 0
    assert "japanese-vowels test split" in capsys.readouterr().out
    ts = bundled("JapaneseVowels_TEST.ts")
    assert main(["classify", "predict", "--out", str(out), "--ts", str(ts)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 370


def _error(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("gatedrnn: error: ") and err.count("\n") == 1, err
    return err


def test_bad_input_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    csv = _reviews(tmp_path / "reviews.csv")
    base = ["classify", "train", "--csv", str(csv), "--text-column", "review", "--label-column", "verdict",
            "--steps", "1", "--out", str(tmp_path / "x")]
    assert "--label-column: no column 'label'" in _error(capsys, base[:-6] + base[-4:])
    assert "--text-column: no column 'body'" in _error(capsys, [*base, "--text-column", "body"])
    assert "pooling: expected 'last' or 'mean' or 'max', got 'sum'" in _error(capsys, [*base, "--pooling", "sum"])
    assert "data: expected 'rotten-tomatoes' or 'japanese-vowels' or 'csv', got 'imdb'" in _error(
        capsys, ["classify", "train", "--data", "imdb", "--out", str(tmp_path / "y")])
    assert "cell: unknown variant 'lstn'" in _error(capsys, [*base, "--cell", "lstn"])
    assert "--steps: expected an int >= 1, got 0" in _error(capsys, [*base, "--steps", "0"])
    (tmp_path / "empty.csv").write_text('review,verdict\n"",good\n')
    assert "csv: empty text in column 'review' on line 2" in _error(capsys, [*base[:3], str(tmp_path / "empty.csv"),
                                                                             *base[4:]])
    out = _train(tmp_path, "--steps", "2", "--eval-every", "2")
    capsys.readouterr()
    assert "already holds a classify run; continue it with --resume" in _error(capsys, [
        "classify", "train", "--csv", str(tmp_path / "reviews.csv"), "--text-column", "review", "--label-column",
        "verdict", "--out", str(out)])
    assert "different configuration: hidden_size=8 (asked 16)" in _error(capsys, [
        "classify", "train", "--csv", str(tmp_path / "reviews.csv"), "--text-column", "review", "--label-column",
        "verdict", "--min-count", "1", *SMALL, "--hidden-size", "16", "--out", str(out), "--resume"])
    unseen = tmp_path / "unseen.csv"
    unseen.write_text("review,verdict\ngreat film,good\nodd film,meh\n")
    assert "label: " + str(unseen) + " has labels not seen in training: ['meh']; known labels: ['bad', 'good']" in \
        _error(capsys, ["classify", "eval", "--out", str(out), "--csv", str(unseen)])
    assert "text: expected a non-empty text, got '   '" in _error(capsys, ["classify", "predict", "--out", str(out),
                                                                           "   "])
    monkeypatch.setattr("sys.stdin", io.StringIO("\n\n"))
    assert "text: expected a text as an argument or lines on stdin, got none" in _error(
        capsys, ["classify", "predict", "--out", str(out)])
    assert "ts: this classifier reads text" in _error(capsys, ["classify", "predict", "--out", str(out), "--ts",
                                                              str(bundled("JapaneseVowels_TEST.ts"))])
    assert "split: expected 'train' or 'validation' or 'test', got 'dev'" in _error(
        capsys, ["classify", "eval", "--out", str(out), "--split", "dev"])
    assert "nothing is not a directory" in _error(capsys, ["classify", "eval", "--out", str(tmp_path / "nothing")])
