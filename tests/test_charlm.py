"""The character-level language model: end to end, bit-identical resume (also after SIGKILL), DDP, every bad input."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gatedrnn import training
from gatedrnn.cli import main
from gatedrnn.tasks import charlm
from gatedrnn.tasks.charlm import CharLMConfig

MACBETH = Path(charlm.__file__).parent.parent / "data" / "macbeth.txt"
TINY = ["--hidden", "16", "--embed", "8", "--seq-len", "16", "--batch", "4", "--eval-every", "3", "--warmup", "2"]
TINY_CONFIG = CharLMConfig(hidden=16, embed=8, seq_len=16, batch=4, eval_every=3, warmup=2, device="cpu")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def text(tmp_path: Path) -> Path:
    path = tmp_path / "play.txt"
    path.write_text(MACBETH.read_text()[:4000])
    return path


def _weights(directory: Path, name: str = "model.safetensors") -> dict[str, torch.Tensor]:
    return training._read_safetensors(directory / name)[0]


def _assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())} if directory.exists() else {}


def test_bundled_macbeth_and_its_attribution() -> None:
    text, source = charlm.read_text(None)
    assert text.startswith("MACBETH") and len(text) == 103427 and source == "Macbeth (bundled)"
    attribution = (MACBETH.parent / "ATTRIBUTION.md").read_text()
    assert "Project Gutenberg" in attribution and "Open Knowledge Foundation" in attribution


def test_end_to_end_train_checkpoint_resume_sample_eval(text: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["charlm", "train", "--text", str(text), *TINY, "--steps", "4", "--out", str(out), "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["best.safetensors", "config.json", "history.json",
                                                      "model.safetensors", "trainer_state.safetensors", "vocab.json"]
    assert [h["step"] for h in json.loads((out / "history.json").read_text())] == [3, 4]
    assert main(["charlm", "train", "--resume", str(out), "--steps", "6", "--quiet"]) == 0
    history = json.loads((out / "history.json").read_text())
    assert [h["step"] for h in history] == [3, 4, 6] and all(math.isfinite(h["val_nats"]) for h in history)
    assert "budget after step 6" in capsys.readouterr().out

    assert main(["charlm", "sample", "--model", str(out), "--prime", "MACBETH.", "--length", "40", "--seed", "3"]) == 0
    first = capsys.readouterr().out
    assert first.startswith("MACBETH.") and len(first) == len("MACBETH.") + 40 + 1
    assert main(["charlm", "sample", "--model", str(out), "--prime", "MACBETH.", "--length", "40", "--seed", "3"]) == 0
    assert capsys.readouterr().out == first

    assert main(["charlm", "eval", "--model", str(out)]) == 0
    line = capsys.readouterr().out
    best = min(h["val_nats"] for h in history)
    assert line.startswith(f"{best:.4f} nats/char") and "of the validation split" in line
    assert main(["charlm", "eval", "--model", str(out), "--text", str(text), "--weights", "latest"]) == 0
    assert f"{len(text.read_text()) - 1:,} characters of {text}" in capsys.readouterr().out


def test_resume_is_bit_identical_in_process(text: Path, tmp_path: Path) -> None:
    for stateful in (False, True):
        # A constant schedule, so that the first session can stop at step 3 by its own --steps.
        config = dataclasses.replace(TINY_CONFIG, steps=7, stateful=stateful, dropout=0.3, schedule="constant")
        charlm.train(config, text=text, out=tmp_path / f"straight{stateful}", progress=False, sample_length=0)
        charlm.train(dataclasses.replace(config, steps=3), text=text, out=tmp_path / f"cut{stateful}",
                     progress=False, sample_length=0)
        charlm.train(config, text=text, out=tmp_path / f"cut{stateful}", resume=True, progress=False,
                     sample_length=0)
        _assert_bitwise_equal(_weights(tmp_path / f"straight{stateful}"), _weights(tmp_path / f"cut{stateful}"))


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "gatedrnn", "charlm", "train", *args]


def test_resume_after_sigkill_is_bit_identical(text: Path, tmp_path: Path) -> None:
    args = ["--text", str(text), *TINY, "--eval-every", "2", "--stateful", "--dropout", "0.3", "--quiet",
            "--device", "cpu"]
    straight = subprocess.Popen(_cli(*args, "--steps", "30", "--out", str(tmp_path / "straight")), env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    victim = subprocess.Popen(_cli(*args, "--steps", "30", "--out", str(tmp_path / "killed")), env=ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    history = tmp_path / "killed" / "history.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and victim.poll() is None:
        if history.exists() and json.loads(history.read_text())[-1]["step"] >= 6:
            break
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_at = json.loads(history.read_text())[-1]["step"]
    assert 6 <= killed_at < 30, "the run ended before it could be killed"
    assert straight.wait(timeout=120) == 0
    subprocess.run(_cli("--resume", str(tmp_path / "killed"), "--quiet"), env=ENV, check=True, capture_output=True)
    _assert_bitwise_equal(_weights(tmp_path / "straight"), _weights(tmp_path / "killed"))
    _assert_bitwise_equal(_weights(tmp_path / "straight", "best.safetensors"),
                          _weights(tmp_path / "killed", "best.safetensors"))


def test_ctrl_c_saves_and_exits_cleanly(text: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    run = subprocess.Popen(_cli("--text", str(text), *TINY, "--steps", "100000", "--out", str(out), "--quiet"),
                           env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (out / "history.json").exists():
        time.sleep(0.05)
    run.send_signal(signal.SIGINT)
    stdout, stderr = run.communicate(timeout=60)
    assert run.returncode == 130, stderr  # 128 + SIGINT, as shells expect
    assert "interrupted after step" in stdout and "Traceback" not in stderr
    step = int(stdout.split("interrupted after step ")[1].split()[0])
    # The interrupt saves the state of that step without an evaluation of its own (it would count toward
    # --patience): the history ends at the last regular evaluation.
    assert json.loads((out / "history.json").read_text())[-1]["step"] == step - step % 3
    assert json.loads(training._read_safetensors(out / "trainer_state.safetensors")[1]["state"])["step"] == step


def test_minutes_budget_stops_and_saves(text: Path, tmp_path: Path) -> None:
    config = dataclasses.replace(TINY_CONFIG, minutes=0.01, eval_every=10**6)
    result = charlm.train(config, text=text, out=tmp_path / "run", progress=False, sample_length=0)
    assert result.stopped == "budget" and result.steps >= 1 and 0.6 <= result.elapsed < 5
    assert json.loads((tmp_path / "run" / "history.json").read_text())[-1]["step"] == result.steps


def test_early_stopping_keeps_the_best_model(text: Path, tmp_path: Path) -> None:
    # A learning rate this high makes the validation loss worse after the first evaluations.
    config = dataclasses.replace(TINY_CONFIG, steps=200, eval_every=1, patience=2, lr=0.5, warmup=0, clip=100.0)
    result = charlm.train(config, text=text, out=tmp_path / "run", progress=False, sample_length=0)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert result.stopped == "early stopping" and result.steps < 200
    assert [h["step"] for h in history][-3] == result.best_step
    lm = charlm.load(tmp_path / "run")
    assert lm.evaluate(lm.validation_text()).nats == pytest.approx(result.best_val, abs=1e-6)


def test_ddp_two_processes_match_one_process_with_their_batches(text: Path, tmp_path: Path) -> None:
    # Stateful streams are the same rows whether one process reads 8 of them or two processes read 4 each; with
    # no dropout, DDP's averaged gradient is then the single process's gradient.
    args = ["--text", str(text), "--hidden", "16", "--embed", "8", "--seq-len", "16", "--eval-every", "3",
            "--stateful", "--dropout", "0", "--steps", "5", "--device", "cpu", "--quiet"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "gatedrnn", "charlm", "train"]
    done = subprocess.run([*torchrun, *args, "--batch", "4", "--out", str(tmp_path / "ddp")], env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("budget after step 5") == 1  # only rank 0 reports
    subprocess.run(_cli(*args, "--batch", "8", "--out", str(tmp_path / "one")), env=ENV, check=True,
                   capture_output=True)
    ddp, one = _weights(tmp_path / "ddp"), _weights(tmp_path / "one")
    for name in one:
        torch.testing.assert_close(ddp[name], one[name], rtol=1e-4, atol=1e-5)
    assert not torch.equal(ddp["rnn.weight_hh_l0"], _initial_weights(text)["rnn.weight_hh_l0"])


def _initial_weights(text: Path) -> dict[str, torch.Tensor]:
    vocab = charlm.Vocab.of(text.read_text())
    training.seed_everything(0)
    return charlm.CharLM(len(vocab), dataclasses.replace(TINY_CONFIG, dropout=0.0)).state_dict()


def test_sampling_streams_one_step_per_character_and_is_deterministic(text: Path, tmp_path: Path) -> None:
    charlm.train(dataclasses.replace(TINY_CONFIG, steps=3), text=text, out=tmp_path / "run", progress=False,
                 sample_length=0)
    lm = charlm.load(tmp_path / "run")
    lengths = []
    hook = lm.model.rnn.register_forward_hook(lambda module, args, output: lengths.append(args[0].shape[1]))
    out = lm.sample("MACBETH", 30, seed=1)
    hook.remove()
    assert lengths == [7] + [1] * 30  # the prime in one pass, then one step per character
    assert len(out) == 30 and out == lm.sample("MACBETH", 30, seed=1) and out != lm.sample("MACBETH", 30, seed=2)
    greedy = lm.sample("MACBETH", 20, top_k=1)
    assert lm.sample("MACBETH", 20, top_k=1, seed=5) == greedy == lm.sample("MACBETH", 20, top_p=1e-6, seed=7)


def test_next_char_probabilities_temperature_top_k_top_p() -> None:
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    torch.testing.assert_close(charlm._next_char_probs(logits, 1.0, None, None), torch.tensor([0.5, 0.3, 0.15, 0.05]))
    torch.testing.assert_close(charlm._next_char_probs(logits, 1.0, 2, None), torch.tensor([0.625, 0.375, 0, 0]))
    # The nucleus of mass >= 0.8 is {0.5, 0.3}; of mass >= 0.81 it takes 0.15 too.
    torch.testing.assert_close(charlm._next_char_probs(logits, 1.0, None, 0.8), torch.tensor([0.625, 0.375, 0, 0]))
    torch.testing.assert_close(charlm._next_char_probs(logits, 1.0, None, 0.81),
                               torch.tensor([0.5, 0.3, 0.15, 0]) / 0.95)
    hot = charlm._next_char_probs(logits, 2.0, None, None)
    torch.testing.assert_close(hot, torch.softmax(logits / 2, 0))


def test_a_uniform_model_scores_log_vocabulary_size() -> None:
    model = charlm.CharLM(7, TINY_CONFIG)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
    lm = charlm.LanguageModel(model, charlm.Vocab(list("abcdefg")), TINY_CONFIG)
    result = lm.evaluate("abcdefgfedcbaabcdefggg" * 5)
    assert result.nats == pytest.approx(math.log(7)) and result.bits == pytest.approx(math.log2(7))
    assert result.perplexity == pytest.approx(7) and result.characters == 22 * 5 - 1


def test_every_cell_and_variant_trains(text: Path, tmp_path: Path) -> None:
    for i, flags in enumerate([["--cell", "gru", "--reset", "before", "--layer-norm"], ["--cell", "rnn"],
                               ["--peephole", "--coupled", "--layers", "1"], ["--forget-bias", "1"]]):
        out = tmp_path / str(i)
        args = ["charlm", "train", "--text", str(text), *TINY, "--steps", "2", "--out", str(out), "--quiet"]
        assert main([*args, *flags]) == 0, flags
        assert charlm.load(out).sample("M", 5)


# -- bad input: one line on stderr, exit code 2, nothing written or overwritten

def _fails(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    assert err.startswith("gatedrnn: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert message in err, err


def test_bad_training_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "one.txt").write_text("x")
    (tmp_path / "short.txt").write_text("to be or not to be" * 3)
    (tmp_path / "latin.txt").write_bytes("Thane of Cawdor — à la".encode("latin-1", errors="replace") * 200)
    cases = [
        (["--text", str(tmp_path / "missing.txt")], "text: " + str(tmp_path / "missing.txt") + ": no such file"),
        (["--text", str(tmp_path)], f"text: {tmp_path} is a directory; expected a text file"),
        (["--text", str(tmp_path / "empty.txt")], "has 0 character(s); a language model needs a longer text"),
        (["--text", str(tmp_path / "one.txt")], "has 1 character(s); a language model needs a longer text"),
        (["--text", str(tmp_path / "short.txt")], "has 54 characters, too short for one window of --seq-len 64"),
        (["--text", str(tmp_path / "latin.txt")], "is not valid utf-8 (byte 0xe0 at offset 18); pass --encoding"),
        (["--cell", "transformer"], "cell: expected one of lstm, gru, rnn, mingru, minlstm, slstm, clockwork, got "
                                    "'transformer'"),
        (["--cell", "gru", "--peephole"], "peephole: only an LSTM has this option, not cell='gru'"),
        (["--dropout", "1.5"], "dropout: expected a probability in [0, 1), got 1.5"),
        (["--val-frac", "0"], "val_frac: expected a fraction in (0, 1), got 0.0"),
        (["--lr", "-1"], "lr: expected a number > 0, got -1.0"),
        (["--steps", "0"], "steps: expected an int >= 1, got 0"),
        (["--dtype", "int8"], "dtype: expected one of float32, float64, bfloat16, float16, got 'int8'"),
        (["--engine", "warp"], "engine: unknown engine 'warp'"),
        (["--encoding", "klingon"], "encoding: unknown text encoding 'klingon'"),
        (["--resume", str(tmp_path / "nowhere")], "is not a run directory"),
    ]
    for args, message in cases:
        _fails(capsys, ["charlm", "train", "--out", str(out), "--steps", "1", *args], message)
        assert not out.exists(), args


def test_non_utf8_text_trains_with_encoding(tmp_path: Path) -> None:
    latin = tmp_path / "latin.txt"
    latin.write_bytes("Thane of Cawdor, à la façon".encode("latin-1") * 40)
    assert main(["charlm", "train", "--text", str(latin), "--encoding", "latin-1", *TINY, "--steps", "1",
                 "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert "ç" in json.loads((tmp_path / "run" / "vocab.json").read_text())


def test_bad_sampling_eval_and_resume_input(text: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["charlm", "train", "--text", str(text), *TINY, "--steps", "3", "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    before = _snapshot(out)
    model = ["--model", str(out)]
    cases = [
        (["sample", *model, "--prime", "MACBETH ☠"], "prime: 1 character(s) not in the model's vocabulary: '☠'"),
        (["sample", *model, "--temperature", "0"], "temperature: expected a number > 0, got 0.0"),
        (["sample", *model, "--temperature", "-1"], "temperature: expected a number > 0, got -1.0"),
        (["sample", *model, "--top-p", "0"], "top_p: expected a number in (0, 1], got 0.0"),
        (["sample", *model, "--top-p", "1.5"], "top_p: expected a number in (0, 1], got 1.5"),
        (["sample", *model, "--top-k", "0"], "top_k: expected an int >= 1, got 0"),
        (["sample", *model, "--length", "-3"], "length: expected an int >= 0, got -3"),
        (["sample", "--model", str(tmp_path / "nothing")], "is not a directory"),
        (["sample", "--model", str(text)], "is not a directory"),
        (["eval", *model, "--text", str(tmp_path / "missing.txt")], "no such file"),
        (["train", "--resume", str(out), "--hidden", "32"], "different configuration: hidden=16 (asked 32)"),
        (["train", "--resume", str(out), "--text", str(MACBETH)], "is not the text the run in"),
        (["train", "--out", str(out), "--text", str(text), "--steps", "1"], "already holds a charlm run; continue it"),
        (["train", "--resume", str(out), "--out", str(tmp_path / "other")], "out: --resume continues the run in"),
    ]
    for args, message in cases:
        _fails(capsys, ["charlm", *args], message)
    (tmp_path / "other.txt").write_text(text.read_text() + "☠")
    _fails(capsys, ["charlm", "eval", *model, "--text", str(tmp_path / "other.txt")],
           "text: 1 character(s) not in the model's vocabulary: '☠'")
    assert _snapshot(out) == before

    # A corrupt or mismatched checkpoint: each file damaged in turn.
    damage = [
        ("model.safetensors", b"garbage", "--weights", "corrupt safetensors file"),
        ("best.safetensors", b"\x00" * 40, None, "corrupt safetensors file"),
        ("config.json", b"{not json", None, "corrupt JSON"),
        ("vocab.json", b'["a", "bc"]', None, "corrupt vocabulary"),
        ("vocab.json", json.dumps(list("abc")).encode(), None, "the model expects"),
        ("trainer_state.safetensors", b"junk", "resume", "corrupt safetensors file"),
    ]
    for name, data, how, message in damage:
        broken = tmp_path / f"broken-{name}-{len(data)}"
        shutil.copytree(out, broken)
        (broken / name).write_bytes(data)
        snapshot = _snapshot(broken)
        if how == "resume":
            _fails(capsys, ["charlm", "train", "--resume", str(broken)], message)
        elif how == "--weights":
            _fails(capsys, ["charlm", "sample", "--model", str(broken), "--weights", "latest"], message)
        else:
            _fails(capsys, ["charlm", "eval", "--model", str(broken)], message)
        assert _snapshot(broken) == snapshot, name
    mismatched = tmp_path / "mismatched"
    shutil.copytree(out, mismatched)
    saved = json.loads((mismatched / "config.json").read_text())
    saved["config"]["hidden"] = 24
    (mismatched / "config.json").write_text(json.dumps(saved))
    _fails(capsys, ["charlm", "sample", "--model", str(mismatched)],
           "rnn.weight_ih_l0 has shape (64, 8), the model expects (96, 8)")
    _fails(capsys, ["charlm", "train", "--resume", str(mismatched)], "has shape")


def test_gpu_script_runs_on_cpu_with_a_tiny_text(text: Path) -> None:
    script = Path(__file__).parent.parent / "scripts" / "gpu_charlm.sh"
    env = {**ENV, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run([str(script), str(text), "0.02", "cpu", "--layers", "1", "--hidden", "16", "--embed", "8",
                           "--batch", "4", "--seq-len", "16", "--eval-every", "2", "--sample-length", "10"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "best validation loss: " in done.stdout and " characters/s over " in done.stdout
    usage = subprocess.run([str(script)], env=env, capture_output=True, text=True)
    assert usage.returncode == 2 and usage.stderr.startswith("usage:")
