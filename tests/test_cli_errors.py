"""Every failure a user can cause is one line on stderr naming the option or file, exit code 2, and nothing written.

One table of bad inputs for every subcommand: bad options, bad files, bad paths, sizes larger than the machine
holds (checked before anything is allocated), corrupt run directories and bad data. Each case runs the command in
this process and asserts exactly one line on stderr, exit code 2 and an unchanged file tree (names, sizes and
modification times of every file and directory, the runs' included).
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from gatedrnn import training
from gatedrnn.cli import main
from gatedrnn.engine import engines
from gatedrnn.tasks import charlm

MACBETH = Path(charlm.__file__).parent.parent / "data" / "macbeth.txt"
HUGE_SEED = str(2**64)
GPU = next(e for e in engines() if e.name == "gpu").available


def _reviews(path: Path, n: int = 80, newline: str = "\n", bom: str = "") -> Path:
    words = ["the", "film", "plot", "was", "and", "a", "story", "music"]
    lines = ["review,verdict"]
    for i in range(n):
        verdict = "good" if i % 2 else "bad"
        lines.append(f"{words[i % 8]} {words[(i * 3) % 8]} {'great' if i % 2 else 'dull'},{verdict}")
    path.write_text(bom + newline.join(lines) + newline, encoding="utf-8", newline="")
    return path


def _series(path: Path, values: np.ndarray, zone: Callable[[int], str] = lambda i: "") -> Path:
    start = datetime(2021, 3, 1)
    rows = [f"{(start + timedelta(hours=i)).strftime('%Y-%m-%d %H:%M')}{zone(i)},{v:.6f}" for i, v in enumerate(values)]
    path.write_text("when,load\n" + "\n".join(rows) + "\n")
    return path


def _cycle(n: int = 400) -> np.ndarray:
    t = np.arange(n)
    return 20 + 5 * np.sin(2 * np.pi * t / 24) + np.random.default_rng(0).normal(0, 0.3, n)


CHARLM = ["--hidden", "8", "--embed", "4", "--seq-len", "8", "--batch", "2", "--warmup", "0", "--quiet",
          "--device", "cpu"]
CLASSIFY = ["--text-column", "review", "--label-column", "verdict", "--min-count", "1", "--embedding-size", "4",
            "--hidden-size", "4", "--batch-size", "16", "--device", "cpu"]
EXPERIMENT = ["--length", "4", "--hidden", "4", "--batch", "4", "--steps", "2", "--eval-every", "2", "--test-size", "4",
              "--cells", "lstm", "--workers", "1", "--quiet"]
FORECAST = ["--date-column", "when", "--value-column", "load", "--hidden-size", "4", "--window", "24",
            "--horizon", "4", "--season", "24", "--device", "cpu"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("world")
    paths = {"root": root}
    text = paths["text"] = root / "play.txt"
    text.write_text(MACBETH.read_text()[:3000])
    (root / "short.txt").write_text("a")
    (root / "binary.txt").write_bytes(b"\xff\xfe\x00abc")
    (root / "unknown.txt").write_text("\x00\x01 not in the play")
    paths["file"] = root / "file.txt"
    paths["file"].write_text("a file, not a directory\n")
    paths["dir"] = root / "adir"
    paths["dir"].mkdir()
    (root / "pictures.png").mkdir()
    paths["reviews"] = _reviews(root / "reviews.csv")
    (root / "twice.csv").write_text("review,verdict,review\n" + "a b,good,c\n" * 20)
    (root / "long.csv").write_text("review,verdict\n" + "x" * 200_000 + ",good\n")
    paths["series"] = _series(root / "series.csv", _cycle())
    _series(root / "zones.csv", _cycle(), lambda i: "+00:00" if i == 5 else "")
    _series(root / "constant.csv", np.full(400, 5.0))
    _series(root / "shortseries.csv", _cycle(10))
    (root / "baddate.csv").write_text("when,load\n2021-01-01,1\nyesterday,2\n")
    (root / "bad.ts").write_text("@problemName x\n@data\n1,2:a\n")
    lm, cls, fc = root / "lm", root / "cls", root / "fc"
    assert main(["charlm", "train", "--text", str(text), *CHARLM, "--steps", "3", "--eval-every", "3",
                 "--out", str(lm)]) == 0
    assert main(["classify", "train", "--csv", str(paths["reviews"]), *CLASSIFY, "--steps", "2", "--eval-every", "2",
                 "--out", str(cls)]) == 0
    assert main(["forecast", "train", "--csv", str(paths["series"]), *FORECAST, "--steps", "2", "--eval-every",
                 "2", "--out", str(fc)]) == 0
    exp = root / "exp"
    assert main(["experiment", "adding", *EXPERIMENT, "--out", str(exp)]) == 0
    paths.update(lm=lm, cls=cls, fc=fc, exp=exp)
    return paths


# ---------------------------------------------------------------------------------------------------- mutations


def _json(name: str, change: Callable[[object], object]) -> Callable[[Path], None]:
    def mutate(run: Path) -> None:
        (run / name).write_text(json.dumps(change(json.loads((run / name).read_text()))))
    return mutate


def _set(name: str, *keys_and_value: object) -> Callable[[Path], None]:
    *keys, value = keys_and_value

    def change(obj: object) -> object:
        inner = obj
        for key in keys[:-1]:
            inner = inner[key]  # type: ignore[index]
        inner[keys[-1]] = value  # type: ignore[index]
        return obj
    return _json(name, change)


def _drop(name: str, *keys: str) -> Callable[[Path], None]:
    def change(obj: object) -> object:
        inner = obj
        for key in keys[:-1]:
            inner = inner[key]  # type: ignore[index]
        del inner[keys[-1]]  # type: ignore[attr-defined]
        return obj
    return _json(name, change)


def _write(name: str, data: str | bytes) -> Callable[[Path], None]:
    def mutate(run: Path) -> None:
        target = run / name
        target.write_bytes(data) if isinstance(data, bytes) else target.write_text(data)
    return mutate


def _remove(name: str) -> Callable[[Path], None]:
    return lambda run: (run / name).unlink()


def _state(change: Callable[[dict, dict], None]) -> Callable[[Path], None]:
    """Edit the trainer state's JSON tree and tensors and write the file back."""
    def mutate(run: Path) -> None:
        path = run / training.TRAINER_STATE
        tensors, metadata = training._read_safetensors(path)
        tree = json.loads(metadata["state"])
        change(tree, tensors)
        metadata["state"] = json.dumps(tree)
        path.write_bytes(safetensors.torch.save(tensors, metadata=metadata))
    return mutate


def _short_rng(tree: dict, tensors: dict) -> None:
    key = tree["rng"]["torch"]["__tensor__"]
    tensors[key] = tensors[key][:10].clone()


NESTED = "[" * 100_000 + "]" * 100_000

# ------------------------------------------------------------------------------------------------------- the table
# (id, command line with {placeholders}, what the line must say, the run to copy and how to damage it, or None)
# Placeholders: world files ({text}, {reviews}, {series}, {file}, {dir}, {lm}, {cls}, {fc}, {root}) and, per case,
# {new} (a path that does not exist yet), {long} (a 300-character file name) and {run} (the damaged copy).

CASES: list[tuple[str, str, str, tuple[str, Callable[[Path], None]] | None]] = [
    # argparse, for every command
    ("no-command", "", "the following arguments are required: COMMAND", None),
    ("unknown-command", "teleport", "invalid choice: 'teleport'", None),
    ("engines-extra", "engines --fast", "unrecognized arguments: --fast", None),
    ("build-extra", "build now", "unrecognized arguments: now", None),
    ("cells-not-int", "cells --steps many", "argument --steps: invalid int value: 'many'", None),
    ("cells-variant", "cells --cells lstm-sideways", "cell: unknown variant 'lstm-sideways'", None),
    ("cells-hidden-0", "cells --hidden-size 0", "hidden-size: expected an int >= 1, got 0", None),
    ("cells-huge", "cells --hidden-size 1000000000", "needs at least", None),
    ("cells-layers-huge", "cells --layers 1000000", "needs at least", None),
    ("cells-seed", f"cells --seed {HUGE_SEED}", "seed: expected an int in [0, 2**63)", None),
    # charlm train: options
    ("lm-hidden-huge", "charlm train --text {text} --hidden 1000000000 --out {new}", "needs at least", None),
    ("lm-embed-huge", "charlm train --text {text} --embed 1000000000 --out {new}", "needs at least", None),
    ("lm-layers-huge", "charlm train --text {text} --layers 1000000 --out {new}", "needs at least", None),
    ("lm-batch-huge", "charlm train --text {text} --batch 10000000 --out {new}", "needs at least", None),
    ("lm-hidden-0", "charlm train --text {text} --hidden 0 --out {new}", "hidden: expected an int >= 1", None),
    ("lm-dropout", "charlm train --text {text} --dropout 2 --out {new}", "dropout: expected a probability", None),
    ("lm-lr-nan", "charlm train --text {text} --lr nan --out {new}", "lr: expected a number > 0", None),
    ("lm-minutes", "charlm train --text {text} --minutes -1 --out {new}", "minutes: expected a number > 0", None),
    ("lm-steps-0", "charlm train --text {text} --steps 0 --out {new}", "steps: expected an int >= 1", None),
    ("lm-engine", "charlm train --text {text} --engine warp --out {new}", "engine: unknown engine 'warp'", None),
    ("lm-device", "charlm train --text {text} --device tpu --out {new}", "device: expected", None),
    ("lm-seed", f"charlm train --text {{text}} --seed {HUGE_SEED} --out {{new}}", "seed: expected an int in", None),
    ("lm-cell", "charlm train --text {text} --cell transformer --out {new}", "cell: expected one of", None),
    ("lm-peephole-gru", "charlm train --text {text} --cell gru --peephole --out {new}", "peephole: only an LSTM",
     None),
    ("lm-encoding", "charlm train --text {text} --encoding klingon --out {new}", "encoding: unknown", None),
    ("lm-sample-length", "charlm train --text {text} --sample-length -1 --out {new}", "sample_length: expected",
     None),
    ("lm-not-int", "charlm train --hidden 1e9", "argument --hidden: invalid int value: '1e9'", None),
    # charlm train: files and paths
    ("lm-text-missing", "charlm train --text {new} --out {new}", "no such file", None),
    ("lm-text-dir", "charlm train --text {dir} --out {new}", "is a directory", None),
    ("lm-text-binary", "charlm train --text {root}/binary.txt --out {new}", "is not valid utf-8", None),
    ("lm-text-short", "charlm train --text {root}/short.txt --out {new}", "a language model needs a longer text",
     None),
    ("lm-out-file", "charlm train --text {text} --out {file}", "is a file; expected a directory", None),
    ("lm-out-under-file", "charlm train --text {text} --out {file}/run", "is a file, not a directory", None),
    ("lm-out-long", "charlm train --text {text} --out {long}", "bytes long; the file system allows", None),
    ("lm-out-run", "charlm train --text {text} --steps 5 --out {lm}", "already holds a charlm run", None),
    ("lm-resume-missing", "charlm train --resume {new}", "is not a run directory", None),
    ("lm-resume-empty", "charlm train --resume {dir}", "holds no charlm run", None),
    ("lm-resume-other-text", "charlm train --resume {run} --text {reviews} --steps 9", "is not the text",
     ("lm", lambda run: None)),
    ("lm-resume-other-model", "charlm train --resume {run} --hidden 9 --steps 9", "different configuration",
     ("lm", lambda run: None)),
    ("lm-resume-garbage-state", "charlm train --resume {run} --steps 9", "corrupt safetensors file",
     ("lm", _write(training.TRAINER_STATE, b"\x08\x00\x00\x00\x00\x00\x00\x00{bad json"))),
    ("lm-resume-state-keys", "charlm train --resume {run} --steps 9", "corrupt trainer state",
     ("lm", _state(lambda tree, tensors: tree["extra"].pop("position")))),
    ("lm-resume-state-step", "charlm train --resume {run} --steps 9", "corrupt trainer state",
     ("lm", _state(lambda tree, tensors: tree.update(step="three")))),
    ("lm-resume-rng", "charlm train --resume {run} --steps 9", "corrupt random generator state",
     ("lm", _state(_short_rng))),
    ("lm-resume-config-list", "charlm train --resume {run} --steps 9", "not a charlm run configuration",
     ("lm", _write("config.json", "[1, 2]"))),
    ("lm-resume-nested", "charlm train --resume {run} --steps 9", "nested too deeply",
     ("lm", _write("config.json", NESTED))),
    # charlm sample / eval
    ("sample-missing", "charlm sample --model {new}", "is not a directory", None),
    ("sample-no-model", "charlm sample", "the following arguments are required: --model", None),
    ("sample-temperature", "charlm sample --model {lm} --temperature 0", "temperature: expected a number > 0", None),
    ("sample-length", "charlm sample --model {lm} --length -1", "length: expected an int >= 0", None),
    ("sample-top-p", "charlm sample --model {lm} --top-p 2", "top_p: expected a number in (0, 1]", None),
    ("sample-top-k", "charlm sample --model {lm} --top-k 0", "top_k: expected an int >= 1", None),
    ("sample-prime", "charlm sample --model {lm} --prime \x00", "prime: 1 character(s) not in", None),
    ("sample-weights", "charlm sample --model {lm} --weights worst", "weights: expected one of", None),
    ("sample-device", "charlm sample --model {lm} --device quantum", "device: expected", None),
    ("sample-seed", f"charlm sample --model {{lm}} --seed {HUGE_SEED}", "seed: expected an int", None),
    ("sample-hidden-8000", "charlm sample --model {run}", "does not match its weights",
     ("lm", _set("config.json", "config", "hidden", 8000))),
    ("sample-hidden-other", "charlm sample --model {run}", "has shape (32, 4), the model expects (28, 4)",
     ("lm", _set("config.json", "config", "hidden", 7))),
    ("sample-hidden-huge", "charlm sample --model {run}", "needs at least",
     ("lm", _set("config.json", "config", "hidden", 10**9))),
    ("sample-embed-huge", "charlm sample --model {run}", "needs at least",
     ("lm", _set("config.json", "config", "embed", 10**9))),
    ("sample-layers-huge", "charlm sample --model {run}", "does not match its weights",
     ("lm", _set("config.json", "config", "layers", 10**6))),
    ("sample-layers-huger", "charlm sample --model {run}", "needs at least",
     ("lm", _set("config.json", "config", "layers", 10**8))),
    ("sample-hidden-str", "charlm sample --model {run}", "invalid configuration",
     ("lm", _set("config.json", "config", "hidden", "eight"))),
    ("sample-config-key", "charlm sample --model {run}", "not a charlm run configuration",
     ("lm", _drop("config.json", "config"))),
    ("sample-config-nested", "charlm sample --model {run}", "nested too deeply",
     ("lm", _write("config.json", NESTED))),
    ("sample-config-json", "charlm sample --model {run}", "corrupt JSON", ("lm", _write("config.json", "{"))),
    ("sample-vocab-dict", "charlm sample --model {run}", "corrupt vocabulary",
     ("lm", _write("vocab.json", '{"a": 0}'))),
    ("sample-vocab-twice", "charlm sample --model {run}", "listed twice",
     ("lm", _json("vocab.json", lambda chars: [*chars, chars[0]]))),
    ("sample-vocab-missing", "charlm sample --model {run}", "vocab.json: missing", ("lm", _remove("vocab.json"))),
    ("sample-weights-garbage", "charlm sample --model {run}", "corrupt safetensors",
     ("lm", _write("best.safetensors", b"garbage"))),
    ("sample-latest-missing", "charlm sample --model {run} --weights latest", "model.safetensors: missing",
     ("lm", _remove("model.safetensors"))),
    ("eval-text-missing", "charlm eval --model {lm} --text {new}", "no such file", None),
    ("eval-text-unknown", "charlm eval --model {lm} --text {root}/unknown.txt", "not in the model's vocabulary",
     None),
    ("eval-encoding", "charlm eval --model {lm} --text {text} --encoding klingon", "encoding: unknown", None),
    ("eval-text-changed", "charlm eval --model {run}", "has changed since the model was trained",
     ("lm", _set("config.json", "text_sha256", "0" * 64))),
    # viz and explore
    ("gates-format", "viz gates --model {lm} --out {new}.jpg", "expected a file name ending in .png or .svg", None),
    ("gates-width", "viz gates --model {lm} --out {new}.png --width 100000", "size: expected (width, height)", None),
    ("gates-height", "viz gates --model {lm} --out {new}.png --height 10", "size: expected (width, height)", None),
    ("gates-layer", "viz gates --model {lm} --out {new}.png --layer 7", "layer: expected a layer in [0, 2)",
     None),
    ("gates-chars", "viz gates --model {lm} --out {new}.png --chars 0", "chars: expected an int >= 1", None),
    ("gates-units", "viz gates --model {lm} --out {new}.png --units a,b", "units: expected", None),
    ("gates-out-dir", "viz gates --model {lm} --out {dir}.png/x/y.png", "does not exist", None),
    ("gates-out-is-dir", "viz gates --model {lm} --out {root}/pictures.png", "is a directory", None),
    ("gates-model", "viz gates --model {new} --out {new}.png", "is not a directory", None),
    ("flow-hidden", "viz gradient-flow --out {new}.png --hidden 0", "hidden: expected an int >= 1", None),
    ("flow-cells", "viz gradient-flow --out {new}.png --cells lstm,tape", "cells: expected a comma-separated", None),
    ("flow-runs", "viz gradient-flow --out {new}.png --runs {file}", "is a file; expected a directory", None),
    ("flow-seed", f"viz gradient-flow --out {{new}}.png --seed {HUGE_SEED}", "seed: expected an int", None),
    ("explore-port-high", "explore --model {lm} --out {new}.html --port 99999", "port: expected a port number",
     None),
    ("explore-port-low", "explore --model {lm} --out {new}.html --port -1", "port: expected a port number", None),
    ("explore-out-dir", "explore --model {lm} --out {dir}", "is a directory", None),
    ("explore-out-long", "explore --model {lm} --out {long}", "bytes long", None),
    ("explore-chars", "explore --model {lm} --out {new}.html --chars 0", "chars: expected an int >= 1", None),
    ("explore-screenshot", "explore --model {lm} --out {new}.html --screenshot {new}.jpg", "screenshot: expected",
     None),
    ("explore-text", "explore --model {lm} --out {new}.html --text {new}", "no such file", None),
    # classify
    ("cls-hidden-0", "classify train --csv {reviews} " + " ".join(CLASSIFY) + " --hidden-size 0 --out {new}",
     "--hidden-size: expected an int >= 1, got 0", None),
    ("cls-embedding-huge", "classify train --csv {reviews} " + " ".join(CLASSIFY)
     + " --embedding-size 1000000000 --out {new}", "needs at least", None),
    ("cls-hidden-huge", "classify train --csv {reviews} " + " ".join(CLASSIFY)
     + " --hidden-size 1000000000 --out {new}", "needs at least", None),
    ("cls-layers-huge", "classify train --csv {reviews} " + " ".join(CLASSIFY) + " --layers 1000000 --hidden-size 256 "
     "--out {new}",
     "needs at least", None),
    ("cls-dropout", "classify train --csv {reviews} " + " ".join(CLASSIFY) + " --dropout 2 --out {new}",
     "--dropout: expected a probability in [0, 1)", None),
    ("cls-lr-nan", "classify train --csv {reviews} " + " ".join(CLASSIFY) + " --lr nan --out {new}",
     "--lr: expected a finite number > 0", None),
    ("cls-weight-decay", "classify train --csv {reviews} " + " ".join(CLASSIFY) + " --weight-decay -1 --out {new}",
     "--weight-decay: expected a finite number >= 0", None),
    ("cls-engine", "classify train --csv {reviews} " + " ".join(CLASSIFY) + " --engine warp --out {new}",
     "engine: unknown engine 'warp'", None),
    ("cls-minutes", "classify train --csv {reviews} " + " ".join(CLASSIFY) + " --minutes -1 --out {new}",
     "--minutes: expected a finite number > 0", None),
    ("cls-steps", "classify train --csv {reviews} " + " ".join(CLASSIFY) + " --steps 0 --out {new}",
     "--steps: expected an int >= 1", None),
    ("cls-eval-every", "classify train --csv {reviews} " + " ".join(CLASSIFY) + " --eval-every 0 --out {new}",
     "--eval-every: expected an int >= 1", None),
    ("cls-seed", "classify train --csv {reviews} " + " ".join(CLASSIFY) + f" --seed {HUGE_SEED} --out {{new}}",
     "--seed: expected an int in [0, 2**63)", None),
    ("cls-pooling", "classify train --csv {reviews} " + " ".join(CLASSIFY) + " --pooling median --out {new}",
     "pooling: expected", None),
    ("cls-cell", "classify train --csv {reviews} " + " ".join(CLASSIFY) + " --cell lstm-sideways --out {new}",
     "unknown variant", None),
    ("cls-device", "classify train --csv {reviews} " + " ".join(CLASSIFY) + " --device tpu --out {new}",
     "device: expected", None),
    ("cls-min-count", "classify train --csv {reviews} " + " ".join(CLASSIFY) + " --min-count 1000000000 --out {new}",
     "--min-count: no word token occurs 1000000000 times", None),
    ("cls-csv-missing", "classify train --csv {new} " + " ".join(CLASSIFY) + " --out {new}", "csv: no such file",
     None),
    ("cls-csv-dir", "classify train --csv {dir} " + " ".join(CLASSIFY) + " --out {new}", "is a directory", None),
    ("cls-csv-twice", "classify train --csv {root}/twice.csv " + " ".join(CLASSIFY) + " --out {new}",
     "--text-column: the header of", None),
    ("cls-csv-long-field", "classify train --csv {root}/long.csv " + " ".join(CLASSIFY) + " --out {new}",
     "field larger than field limit", None),
    ("cls-csv-column", "classify train --csv {reviews} --text-column body --out {new}",
     "--text-column: no column 'body'", None),
    ("cls-out-file", "classify train --csv {reviews} " + " ".join(CLASSIFY) + " --out {file}",
     "is a file; expected a directory", None),
    ("cls-out-long", "classify train --csv {reviews} " + " ".join(CLASSIFY) + " --out {long}", "bytes long", None),
    ("cls-out-run", "classify train --csv {reviews} " + " ".join(CLASSIFY) + " --out {cls}",
     "already holds a classify run", None),
    ("cls-resume-empty", "classify train --csv {reviews} " + " ".join(CLASSIFY) + " --resume --out {dir}",
     "holds no classify run", None),
    ("cls-resume-other", "classify train --csv {reviews} " + " ".join(CLASSIFY).replace("--hidden-size 4",
     "--hidden-size 5") + " --resume --out {run}", "different configuration", ("cls", lambda run: None)),
    ("cls-resume-state", "classify train --csv {reviews} " + " ".join(CLASSIFY) + " --resume --out {run}",
     "corrupt trainer state", ("cls", _state(lambda tree, tensors: tree["extra"].pop("epoch")))),
    ("cls-eval-missing", "classify eval --out {new}", "is not a directory", None),
    ("cls-eval-split", "classify eval --out {cls} --split everything", "split: expected", None),
    ("cls-eval-plot-dir", "classify eval --out {cls} --plot {dir}", "is a directory; expected a file name", None),
    ("cls-eval-csv", "classify eval --out {cls} --csv {new}", "csv: no such file", None),
    ("cls-eval-hidden-huge", "classify eval --out {run}", "needs at least",
     ("cls", _set("config.json", "hidden_size", 10**9))),
    ("cls-eval-hidden-other", "classify eval --out {run}", "has shape",
     ("cls", _set("config.json", "hidden_size", 3))),
    ("cls-eval-key", "classify eval --out {run}", "missing pooling", ("cls", _drop("config.json", "pooling"))),
    ("cls-eval-labels", "classify eval --out {run}", "labels: expected a list of 2 or more",
     ("cls", _set("config.json", "labels", ["good"]))),
    ("cls-eval-type", "classify eval --out {run}", "invalid configuration",
     ("cls", _set("config.json", "layers", "one"))),
    ("cls-eval-nested", "classify eval --out {run}", "nested too deeply", ("cls", _write("config.json", NESTED))),
    ("cls-eval-vocab-dict", "classify eval --out {run}", "corrupt vocabulary", ("cls", _write("vocab.json", "{}"))),
    ("cls-eval-vocab-twice", "classify eval --out {run}", "listed twice",
     ("cls", _json("vocab.json", lambda tokens: [*tokens, tokens[2]]))),
    ("cls-predict-empty", "classify predict --out {cls}", "text: expected a text", None),
    ("cls-predict-ts", "classify predict --out {cls} --ts {new}", "ts: no such file", None),
    ("cls-predict-bad-ts", "classify predict --out {cls} --ts {root}/bad.ts", "ts: ", None),
    # forecast
    ("fc-hidden-0", "forecast train --csv {series} " + " ".join(FORECAST) + " --hidden-size 0 --out {new}",
     "--hidden-size: expected an int >= 1", None),
    ("fc-hidden-huge", "forecast train --csv {series} " + " ".join(FORECAST) + " --hidden-size 1000000000 --out {new}",
     "needs at least", None),
    ("fc-window-0", "forecast train --csv {series} " + " ".join(FORECAST) + " --window 0 --out {new}",
     "--window: expected an int >= 1", None),
    ("fc-horizon", "forecast train --csv {series} " + " ".join(FORECAST) + " --horizon 100000 --out {new}",
     "shorter than --window + --horizon", None),
    ("fc-transform", "forecast train --csv {series} " + " ".join(FORECAST) + " --transform fourier --out {new}",
     "transform: expected", None),
    ("fc-filter", "forecast train --csv {series} " + " ".join(FORECAST) + " --filter nonsense --out {new}",
     "--filter: expected COLUMN=VALUE", None),
    ("fc-filter-column", "forecast train --csv {series} " + " ".join(FORECAST) + " --filter city=x --out {new}",
     "--filter: no column 'city'", None),
    ("fc-dropout", "forecast train --csv {series} " + " ".join(FORECAST) + " --dropout 2 --out {new}",
     "--dropout: expected a probability", None),
    ("fc-lr", "forecast train --csv {series} " + " ".join(FORECAST) + " --lr nan --out {new}",
     "--lr: expected a finite number > 0", None),
    ("fc-minutes", "forecast train --csv {series} " + " ".join(FORECAST) + " --minutes -1 --out {new}",
     "--minutes: expected a finite number > 0", None),
    ("fc-engine", "forecast train --csv {series} " + " ".join(FORECAST) + " --engine warp --out {new}",
     "engine: unknown engine 'warp'", None),
    ("fc-seed", "forecast train --csv {series} " + " ".join(FORECAST) + f" --seed {HUGE_SEED} --out {{new}}",
     "--seed: expected an int in", None),
    ("fc-columns", "forecast train --csv {series} --out {new}", "give --date-column and --value-column", None),
    ("fc-zones", "forecast train --csv {root}/zones.csv " + " ".join(FORECAST) + " --out {new}", "time zone", None),
    ("fc-constant", "forecast train --csv {root}/constant.csv " + " ".join(FORECAST) + " --out {new}",
     "the training span is constant", None),
    ("fc-short", "forecast train --csv {root}/shortseries.csv " + " ".join(FORECAST) + " --out {new}",
     "shorter than --window + --horizon", None),
    ("fc-bad-date", "forecast train --csv {root}/baddate.csv " + " ".join(FORECAST) + " --out {new}",
     "'yesterday' is not a date", None),
    ("fc-out-file", "forecast train --csv {series} " + " ".join(FORECAST) + " --out {file}", "is a file", None),
    ("fc-out-run", "forecast train --csv {series} " + " ".join(FORECAST) + " --out {fc}",
     "already holds a forecast run", None),
    ("fc-eval-split", "forecast eval --out {fc} --split train", "split: expected", None),
    ("fc-eval-scale", "forecast eval --out {run}", "scaler_std: expected a finite number > 0",
     ("fc", _set("config.json", "scaler_std", 0))),
    ("fc-predict-scale", "forecast predict --out {run}", "scaler_std: expected a finite number > 0",
     ("fc", _set("config.json", "scaler_std", 0.0))),
    ("fc-eval-mase", "forecast eval --out {run}", "mase_scale", ("fc", _set("config.json", "mase_scale", 0))),
    ("fc-eval-hidden-huge", "forecast eval --out {run}", "needs at least",
     ("fc", _set("config.json", "hidden_size", 10**9))),
    ("fc-eval-weights", "forecast eval --out {run}", "model.safetensors: missing",
     ("fc", _remove("model.safetensors"))),
    ("fc-predict-csv", "forecast predict --out {fc} --csv {new}", "csv: no such file", None),
    ("fc-predict-short", "forecast predict --out {fc} --csv {root}/shortseries.csv", "csv: the series has 10 steps",
     None),
    # experiment
    ("exp-task", "experiment juggling --out {new}", "task: unknown task 'juggling'", None),
    ("exp-length", "experiment adding --length 1000000000 --out {new}", "needs at least", None),
    ("exp-hidden", "experiment adding --hidden 0 --out {new}", "hidden: expected an int >= 1", None),
    ("exp-hidden-huge", "experiment adding --hidden 1000000000 --out {new}", "needs at least", None),
    ("exp-batch-huge", "experiment adding --batch 10000000 --length 1000 --out {new}", "needs at least", None),
    ("exp-workers", "experiment adding --workers 0 --out {new}", "workers: expected an int >= 1, got 0", None),
    ("exp-seed", f"experiment adding --seed {HUGE_SEED} --out {{new}}", "seed: expected an int in", None),
    ("exp-seeds", f"experiment adding --seed {2**63 - 1} --seeds 2 --out {{new}}", "go past 2**63 - 1", None),
    ("exp-cells", "experiment adding --cells lstm,lstm --out {new}", "cells: each cell at most once", None),
    ("exp-engine", "experiment adding --engine warp --out {new}", "engine: unknown engine", None),
    ("exp-out-file", "experiment adding --out {file}", "is a file; expected a directory", None),
    ("exp-out-long", "experiment adding --out {long}", "bytes long", None),
    ("exp-lr", "experiment adding --lr 0 --out {new}", "lr: expected a number > 0", None),
    ("exp-other-config", "experiment adding " + " ".join(EXPERIMENT).replace("--hidden 4", "--hidden 5")
     + " --out {exp}", "different configuration", None),
    ("exp-config-list", "experiment adding " + " ".join(EXPERIMENT) + " --out {run}",
     "not an experiment configuration", ("exp", _write("config.json", "[]"))),
    ("exp-result", "experiment adding " + " ".join(EXPERIMENT) + " --out {run}", "not a run result",
     ("exp", _write("runs/lstm-seed0/result.json", '{"cell": "lstm"}'))),
    # bench
    ("bench-json-dir", "bench --json {dir} --shapes 1x2x3x4", "json: ", None),
    ("bench-json-under-file", "bench --json {file}/x.json --shapes 1x2x3x4", "is a file, not a directory", None),
    ("bench-shape", "bench --shapes 1x2x3", "expected BxTxIxH", None),
    ("bench-shape-huge", "bench --shapes 1x1000000000x64x128", "needs at least", None),
    ("bench-device", "bench --device quantum --shapes 1x2x3x4", "device: expected", None),
    ("bench-repeats", "bench --repeats 0 --shapes 1x2x3x4", "repeats: expected >= 1", None),
    ("bench-seed", f"bench --seed {HUGE_SEED} --shapes 1x2x3x4", "seed: expected an int", None),
    ("bench-impl", "bench --impls magic", "unknown implementation magic", None),
]
if not GPU:
    CASES += [
        ("lm-engine-gpu", "charlm train --text {text} --engine gpu --out {new}", "engine: 'gpu' is not available",
         None),
        ("lm-device-cuda", "charlm train --text {text} --device cuda --out {new}", "CUDA is not available", None),
        ("cls-engine-gpu", "classify train --csv {reviews} " + " ".join(CLASSIFY) + " --engine gpu --out {new}",
         "engine: 'gpu' is not available", None),
        ("fc-engine-gpu", "forecast train --csv {series} " + " ".join(FORECAST) + " --engine gpu --out {new}",
         "engine: 'gpu' is not available", None),
        ("exp-engine-gpu", "experiment adding --engine gpu --out {new}", "engine: 'gpu' is not available", None),
        ("bench-cuda", "bench --device cuda --shapes 1x2x3x4", "CUDA is not available", None),
        ("sample-cuda", "charlm sample --model {lm} --device cuda", "CUDA is not available", None),
    ]


def _tree(*roots: Path) -> dict[str, tuple[bool, int, int]]:
    """Every file and directory under ``roots``: whether a directory, size and modification time (ns)."""
    seen = {}
    for root in roots:
        for path in [root, *root.rglob("*")]:
            status = path.lstat()
            seen[str(path)] = (path.is_dir(), status.st_size, status.st_mtime_ns)
    return seen


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse
        code = exit.code  # type: ignore[assignment]
    return code, capsys.readouterr().err


@pytest.mark.parametrize(("command", "expected", "damage"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_nothing_written(world: dict[str, Path], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch, command: str,
                                                          expected: str, damage: tuple | None) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # predict reads texts from stdin when given none
    places = {name: str(path) for name, path in world.items()}
    places.update(new=str(tmp_path / "new"), long=str(tmp_path / ("x" * 300)))
    if damage is not None:
        kind, mutate = damage
        run = tmp_path / "run"
        shutil.copytree(world[kind], run)
        mutate(run)
        places["run"] = str(run)
    argv = [part.format(**places) for part in command.split(" ") if part]
    before = _tree(world["root"], tmp_path)
    code, err = _run(argv, capsys)
    assert code == 2, err
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("gatedrnn"), err
    assert expected in err, err
    assert _tree(world["root"], tmp_path) == before


@pytest.mark.parametrize("number", [errno.ENOSPC, errno.EROFS, errno.EACCES, errno.ENAMETOOLONG])
def test_an_operating_system_error_while_writing_is_one_line(world: dict[str, Path], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch, number: int) -> None:
    def refuse(path: object, data: object) -> None:
        raise OSError(number, os.strerror(number), str(path))

    monkeypatch.setattr(training, "atomic_write", refuse)
    out = tmp_path / "run"
    code, err = _run(["charlm", "train", "--text", str(world["text"]), *CHARLM, "--steps", "3", "--out", str(out)],
                     capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert err == f"gatedrnn: error: {out / 'config.json'}: {os.strerror(number)}\n"
    assert not any(out.iterdir())  # nothing written; a later run starts in the empty directory


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_directory_is_refused_before_anything_is_done(world: dict[str, Path], tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    for argv in (["charlm", "train", "--text", str(world["text"]), "--out", str(locked / "run")],
                 ["viz", "gates", "--model", str(world["lm"]), "--out", str(locked / "x.png")],
                 ["bench", "--json", str(locked / "b.json"), "--shapes", "1x2x3x4"]):
        code, err = _run(argv, capsys)
        assert code == 2 and err.count("\n") == 1 and "is not writable" in err, err
    assert not any(locked.iterdir())


def test_the_table_covers_every_command() -> None:
    commands = {c[1].split(" ")[0] for c in CASES if c[1]}
    assert commands >= {"engines", "build", "cells", "charlm", "viz", "explore", "classify", "forecast",
                        "experiment", "bench"}
    assert len(CASES) >= 150
    verbs = {" ".join(c[1].split(" ")[:2]) for c in CASES}
    assert verbs >= {"charlm train", "charlm sample", "charlm eval", "viz gates", "viz gradient-flow",
                     "classify train", "classify eval", "classify predict", "forecast train", "forecast eval",
                     "forecast predict"}


def test_memory_errors_say_what_is_needed_and_what_is_available() -> None:
    free = training.available_memory(torch.device("cpu"))
    assert 0 < free < 2**50
    training.require_memory("small", 1024, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"^big needs at least [\d,.]+ GiB of memory; [\d,.]+ GiB is available "
                                         r"on this machine$"):
        training.require_memory("big", free + 2**40, torch.device("cpu"))
    # The lower bound holds the weights of the model it describes.
    layer = torch.nn.LSTM(7, 5, num_layers=3, bidirectional=True)
    weights = sum(p.numel() for p in layer.parameters()) * 4
    bound = training.recurrent_bytes(layers=3, hidden=5, inputs=7, directions=2) - 3 * 2 * training.LAYER_OVERHEAD
    assert 0 < bound <= weights
