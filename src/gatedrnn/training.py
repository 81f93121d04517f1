"""Shared training machinery that every task (charlm, classify, forecast, experiments) calls.

A task module reads top to bottom (data → model → loop → checkpoint → report); everything here is the plumbing
around that loop, written once. The public API below is stable: later changes only add to it.

Seeding and placement
    ``seed_everything(seed)``            seed Python's ``random``, NumPy and torch (every device).
    ``fold_seed(seed, *keys)``           a new 63-bit seed derived from ``seed`` and integers such as
                                         ``(rank, step)``: reseeding each step with it makes a run's randomness a
                                         function of the step alone, so a resumed or distributed run draws the same.
    ``resolve_device(name)``             ``"auto" | "cpu" | "cuda" | "cuda:N" | "mps"`` → ``torch.device``.
    ``resolve_dtype(name)``              ``"float32" | "float64" | "bfloat16" | "float16"`` → ``torch.dtype``.

Checkpoints (safetensors + JSON, each file written atomically: temp file + ``os.replace``; never pickle)
    ``CheckpointError``                  a ``ValueError``: missing, corrupt or mismatched checkpoint.
    ``atomic_write(path, data)``         bytes or text, all or nothing.
    ``write_json(path, obj)`` / ``read_json(path)``
    ``save_weights(path, module)`` / ``load_weights(path, module)``
                                         a module's ``state_dict`` as one safetensors file (``model.safetensors``);
                                         loading checks every name, shape and dtype and says what differs.
    ``check_config(saved, wanted, what)`` raise ``CheckpointError`` listing every key whose value differs.
    ``save_trainer_state(path, model=, optimizer=, scheduler=, step=, elapsed=, extra=)``
    ``load_trainer_state(path, model=, optimizer=, scheduler=)`` → :class:`TrainerState`
                                         ``trainer_state.safetensors``: the model's weights, the optimizer's and the
                                         LR scheduler's state (nested state dicts flattened into tensors + JSON),
                                         the Python/NumPy/torch RNG states, the step, the elapsed training time and
                                         any task data (data position, carried hidden state …) — one file, so a
                                         kill at any moment leaves either the old or the new state, never a mix.
    ``flatten_state(obj)`` / ``unflatten_state(tree, tensors)``
                                         the nested-dict ↔ (JSON tree, tensors) codec used by the above.
    ``capture_rng()`` / ``restore_rng(state)``

Checks before anything is written or allocated (each a one-line ``ValueError`` naming the option)
    ``check_output_dir(option, path)`` / ``check_output_file(option, path)``
                                         a path the run can create and write: not under a file, not a file where
                                         a directory is wanted (or the reverse), names the file system allows, a
                                         writable directory.
    ``check_seed(name, seed)``           an int in ``[0, 2**63)`` (what every generator and :func:`fold_seed` take).
    ``check_engine(name)``               ``"auto"`` or an engine that is registered and available on this machine.
    ``available_memory(device)`` / ``require_memory(what, nbytes, device)``
                                         what the device can still hold (RAM: ``MemAvailable`` and the cgroup
                                         limit; CUDA: free memory), and an error saying how much is needed.
    ``recurrent_bytes(...)``             a lower bound of what a recurrent model of that size takes, cheap to
                                         compute for any size (checked before a model is built).
    ``check_weights_header(path, module)`` the names, shapes and dtypes of a safetensors file against a module
                                         (built on the ``meta`` device: nothing allocated), from the header alone.
    ``build_and_load(path, build, what=, nbytes=, weights=, device=)``
                                         memory, then the header's size and shapes, then build and load: a
                                         checkpoint whose configuration was edited is refused before allocating.

Run directories (a directory is a complete run or nothing)
    ``open_run_dir(option, out, resume=, what=)`` → bool
                                         check ``--out``/``--resume DIR`` before anything is written; whether
                                         there is a trainer state to resume.
    ``begin_run(out, files, log)``       right before a fresh run's first write: clear what a run stopped before
                                         its first checkpoint left (saying so) and stale ``.tmp`` files.
    ``remove_stale_temporaries(out)``    the temporary files of writes a kill interrupted (before a resume).

Running
    ``Budget(steps=, minutes=)``         when to stop: a step count, a wall-clock budget, or both (first wins).
    ``Progress(budget, unit=)``          a tqdm bar: step, the task's losses, units/s (characters/s …), ETA.
    ``GracefulInterrupt()``              context manager: the first Ctrl-C (or SIGTERM) sets ``.requested`` (and
                                         ``.signum``) so the loop can save and leave; a second one raises
                                         :class:`Interrupted` at once.
    ``Interrupted``                      a ``KeyboardInterrupt`` that knows its signal.
    ``exit_status(signum)``              what a command returns: 0, or ``128 + signum`` when interrupted (as shells
                                         expect: 130 for Ctrl-C, 143 for SIGTERM).

Distributed data parallel (``torchrun``)
    ``setup_distributed(device)`` → :class:`DistInfo`  init the process group from torchrun's environment
                                         (gloo on CPU, nccl on CUDA); a plain single-process run needs nothing.
    ``teardown_distributed(info)``       destroy the process group.
    ``wrap_ddp(model, info)``            ``DistributedDataParallel`` when ``world_size > 1``, else the model.
    ``all_reduce_mean(tensor, info)``    mean over ranks (identity when not distributed).
    ``all_reduce_max(tensor, info)``     elementwise maximum over ranks (identity when not distributed).
    ``all_gather(tensor, info)``         every rank's tensor, concatenated along dim 0 in rank order.
    ``DistInfo.is_main``                 only rank 0 writes checkpoints and logs.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import signal
import struct
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import safetensors.torch
import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm.auto import tqdm

# ----------------------------------------------------------------------------------------------------------------
# Seeding and placement


def check_seed(name: str, seed: object) -> int:
    """A seed every generator takes: an int in ``[0, 2**63)`` (torch's and :func:`fold_seed`'s range)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"{name}: expected an int in [0, 2**63), got {seed!r}")
    return seed


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch on every device."""
    check_seed("seed", seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def fold_seed(seed: int, *keys: int) -> int:
    """A seed in ``[0, 2**63)`` derived from ``seed`` and ``keys`` (e.g. ``rank, step``) by hashing.

    Different keys give unrelated seeds, the same keys always the same one, on every machine.
    """
    digest = hashlib.sha256(struct.pack(f"<{1 + len(keys)}q", seed, *keys)).digest()
    return int.from_bytes(digest[:8], "little") >> 1


_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str) -> torch.dtype:
    """The torch dtype called ``name`` (``float32``, ``float64``, ``bfloat16``, ``float16``)."""
    if name not in _DTYPES:
        raise ValueError(f"dtype: expected one of {', '.join(_DTYPES)}, got {name!r}")
    return _DTYPES[name]


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"`` (CUDA if present, else CPU) or an explicit device that must exist on this machine."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device: expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {name!r}") from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device: {name!r} requested but CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device: {name!r} requested but there are {torch.cuda.device_count()} CUDA devices")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device: {name!r} requested but MPS is not available on this machine")
    elif device.type != "cpu":
        raise ValueError(f"device: expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {name!r}")
    return device


# ----------------------------------------------------------------------------------------------------------------
# Checkpoint files


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, corrupt or does not match what is asked of it."""


def atomic_write(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Write ``data`` to ``path`` so that readers (and a kill at any moment) see the old file or the new, whole one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; a checkpoint gets the usual mode
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """``obj`` as indented JSON, atomically."""
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    """Parse a JSON file; a missing or invalid file is a :class:`CheckpointError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (not a checkpoint directory, or the run never saved)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: corrupt JSON ({error})") from error
    except RecursionError:
        raise CheckpointError(f"{path}: corrupt JSON (nested too deeply)") from None


def _write_safetensors(
    path: str | os.PathLike[str], tensors: Mapping[str, Tensor], metadata: Mapping[str, str]
) -> None:
    # safetensors refuses views that share storage; contiguous CPU copies are always accepted.
    plain = {name: t.detach().to("cpu", copy=True).contiguous() for name, t in tensors.items()}
    atomic_write(path, safetensors.torch.save(plain, metadata=dict(metadata)))


def _read_safetensors(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (not a checkpoint directory, or the run never saved)")
    try:
        data = path.read_bytes()
        (header_len,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + header_len])
        tensors = safetensors.torch.load(data)
    except Exception as error:  # safetensors raises its own error types; any failure here means a bad file
        raise CheckpointError(f"{path}: corrupt safetensors file ({type(error).__name__}: {error})") from error
    return tensors, header.get("__metadata__") or {}


def save_weights(path: str | os.PathLike[str], module: nn.Module, metadata: Mapping[str, str] | None = None) -> None:
    """Write ``module.state_dict()`` to one safetensors file, atomically."""
    _write_safetensors(path, _unwrap(module).state_dict(), metadata or {})


def _check_and_load(source: str, module: nn.Module, tensors: Mapping[str, Tensor]) -> None:
    own = module.state_dict()
    if not isinstance(tensors, Mapping):
        raise CheckpointError(f"{source}: no weights in the file")
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        parts = ([f"missing {', '.join(missing[:4])}"] if missing else []) + (
            [f"unexpected {', '.join(unexpected[:4])}"] if unexpected else []
        )
        raise CheckpointError(f"{source}: the weights do not fit this model ({'; '.join(parts)})")
    for name in own:
        tensor = tensors[name]
        if tensor.shape != own[name].shape:
            raise CheckpointError(
                f"{source}: {name} has shape {tuple(tensor.shape)}, the model expects {tuple(own[name].shape)}"
            )
        if not isinstance(tensor, Tensor):
            raise CheckpointError(f"{source}: {name} is not a tensor")
        if tensor.dtype != own[name].dtype:
            raise CheckpointError(f"{source}: {name} is {tensor.dtype}, the model expects {own[name].dtype}")
    module.load_state_dict(dict(tensors))


def load_weights(path: str | os.PathLike[str], module: nn.Module) -> dict[str, str]:
    """Load a file written by :func:`save_weights` into ``module``; every name, shape and dtype must match.

    Returns the file's metadata.
    """
    tensors, metadata = _read_safetensors(path)
    _check_and_load(str(path), _unwrap(module), tensors)
    return metadata


def check_config(saved: Mapping[str, Any], wanted: Mapping[str, Any], what: str) -> None:
    """Raise :class:`CheckpointError` naming every key of ``wanted`` whose value differs from ``saved``'s."""
    diffs = [
        f"{k}={saved.get(k, '<absent>')!r} (asked {wanted[k]!r})" for k in sorted(wanted) if saved.get(k) != wanted[k]
    ]
    if diffs:
        raise CheckpointError(f"{what}: the checkpoint was made with a different configuration: {', '.join(diffs)}")


def _unwrap(module: nn.Module) -> nn.Module:
    """The model inside a ``DistributedDataParallel`` wrapper (its state dict has no ``module.`` prefix)."""
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


# ----------------------------------------------------------------------------------------------------------------
# Nested state ↔ (JSON, tensors)


def flatten_state(obj: Any, prefix: str = "") -> tuple[Any, dict[str, Tensor]]:
    """Split a nested state (dicts, lists, tuples, tensors, numbers, strings, None) into a JSON tree and tensors.

    Tensors become ``{"__tensor__": key}``; tuples ``{"__tuple__": [...]}``; dicts with non-string keys (an
    optimizer's per-parameter state) ``{"__keys__": [[key, value], ...]}``. :func:`unflatten_state` inverts it.
    """
    tensors: dict[str, Tensor] = {}

    def join(path: str, key: object) -> str:
        return f"{path}.{key}" if path else str(key)

    def walk(x: Any, path: str) -> Any:
        if isinstance(x, Tensor):
            tensors[path] = x
            return {"__tensor__": path}
        if isinstance(x, np.ndarray):
            return walk(torch.from_numpy(x.copy()), path)
        if isinstance(x, (bool, int, float, str)) or x is None:
            return x
        if isinstance(x, (np.integer, np.floating)):
            return x.item()
        if isinstance(x, tuple):
            return {"__tuple__": [walk(v, join(path, i)) for i, v in enumerate(x)]}
        if isinstance(x, list):
            return [walk(v, join(path, i)) for i, v in enumerate(x)]
        if isinstance(x, Mapping):
            if all(isinstance(k, str) and not k.startswith("__") for k in x):
                return {k: walk(v, join(path, k)) for k, v in x.items()}
            if all(isinstance(k, (str, int)) and not isinstance(k, bool) for k in x):
                return {"__keys__": [[k, walk(v, join(path, k))] for k, v in x.items()]}
        raise TypeError(f"{path or 'state'}: cannot store a {type(x).__name__} in a checkpoint")

    return walk(obj, prefix), tensors


def unflatten_state(tree: Any, tensors: Mapping[str, Tensor]) -> Any:
    """Rebuild what :func:`flatten_state` split."""
    if isinstance(tree, list):
        return [unflatten_state(v, tensors) for v in tree]
    if isinstance(tree, dict):
        if set(tree) == {"__tensor__"}:
            return tensors[tree["__tensor__"]]
        if set(tree) == {"__tuple__"}:
            return tuple(unflatten_state(v, tensors) for v in tree["__tuple__"])
        if set(tree) == {"__keys__"}:
            return {k: unflatten_state(v, tensors) for k, v in tree["__keys__"]}
        return {k: unflatten_state(v, tensors) for k, v in tree.items()}
    return tree


def capture_rng() -> dict[str, Any]:
    """The state of every random generator a training step may draw from: Python, NumPy, torch CPU and CUDA."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    """Put back what :func:`capture_rng` returned (CUDA states only where the device count matches)."""
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys.numpy(), dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


# ----------------------------------------------------------------------------------------------------------------
# Trainer state


@dataclass
class TrainerState:
    """What :func:`load_trainer_state` returns besides what it loads into the model, optimizer and scheduler."""

    step: int
    """Optimizer steps taken."""
    elapsed: float
    """Seconds of training so far (over every resumed session), for a :class:`Budget` in minutes."""
    extra: dict[str, Any] = field(default_factory=dict)
    """The task's own data: data position, carried hidden state, best loss, … (tensors allowed)."""


_TRAINER_FORMAT = "gatedrnn-trainer-state-1"


def save_trainer_state(
    path: str | os.PathLike[str],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any = None,
    step: int,
    elapsed: float = 0.0,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write everything needed to continue training bit-identically to one safetensors file, atomically."""
    state = {
        "model": _unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": capture_rng(),
        "step": int(step),
        "elapsed": float(elapsed),
        "extra": dict(extra or {}),
    }
    tree, tensors = flatten_state(state)
    _write_safetensors(path, tensors, {"format": _TRAINER_FORMAT, "state": json.dumps(tree)})


def load_trainer_state(
    path: str | os.PathLike[str],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any = None,
    restore_random: bool = True,
    extra_keys: tuple[str, ...] = (),
) -> TrainerState:
    """Load a file written by :func:`save_trainer_state` into ``model``, ``optimizer`` and ``scheduler``.

    Also restores the RNG states (unless ``restore_random=False``). Tensors of ``extra`` come back on the CPU;
    ``extra_keys`` are the task's keys that must be there (a file without them is a :class:`CheckpointError`).
    """
    tensors, metadata = _read_safetensors(path)
    if metadata.get("format") != _TRAINER_FORMAT:
        raise CheckpointError(f"{path}: not a gatedrnn trainer state (format {metadata.get('format')!r})")
    try:
        state = unflatten_state(json.loads(metadata["state"]), tensors)
        missing = [key for key in ("model", "optimizer", "rng", "step", "elapsed", "extra") if key not in state]
        if missing:
            raise KeyError(", ".join(missing))
        if not (isinstance(state["step"], int) and state["step"] >= 0 and _number(state["elapsed"])
                and isinstance(state["extra"], dict) and isinstance(state["model"], dict)):
            raise TypeError("step, elapsed or extra has the wrong type")
        absent = [key for key in extra_keys if key not in state["extra"]]
        if absent:
            raise KeyError(", ".join(absent))
    except (KeyError, TypeError, ValueError, RecursionError) as error:
        raise CheckpointError(f"{path}: corrupt trainer state ({type(error).__name__}: {error})") from None
    _check_and_load(str(path), _unwrap(model), state["model"])
    try:
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            if state["scheduler"] is None:
                raise ValueError("it was saved without a learning-rate scheduler")
            scheduler.load_state_dict(state["scheduler"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{path}: the optimizer state does not fit ({error})") from None
    if restore_random:
        try:
            restore_rng(state["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as error:
            raise CheckpointError(f"{path}: corrupt random generator state ({type(error).__name__}: {error})") from None
    return TrainerState(step=state["step"], elapsed=state["elapsed"], extra=state["extra"])


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ----------------------------------------------------------------------------------------------------------------
# Checks before anything is written or allocated


def _name_max(directory: Path) -> int:
    try:
        return os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return 255


def _existing_ancestor(path: Path) -> Path:
    """``path`` itself or its nearest ancestor that exists (``/`` at worst)."""
    path = Path(os.path.abspath(path))
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def _check_path(option: str, path: str | os.PathLike[str], *, directory: bool) -> Path:
    path = Path(path)
    if not str(path):
        raise ValueError(f"{option}: expected a path, got an empty string")
    ancestor = _existing_ancestor(path)
    longest = _name_max(ancestor if ancestor.is_dir() else ancestor.parent)
    for part in Path(os.path.abspath(path)).parts:
        if len(os.fsencode(part)) > longest:
            raise ValueError(f"{option}: {path}: the name {part[:16]}… is {len(os.fsencode(part))} bytes long; "
                             f"the file system allows at most {longest}")
    wanted = "a directory" if directory else "a file name"
    if ancestor == Path(os.path.abspath(path)):
        if directory and not path.is_dir():
            raise ValueError(f"{option}: {path} is a file; expected {wanted}")
        if not directory and path.is_dir():
            raise ValueError(f"{option}: {path} is a directory; expected {wanted}")
        if not directory and not os.access(path, os.W_OK):
            raise ValueError(f"{option}: {path} is not writable")
        if not directory:
            ancestor = path.parent
    if not ancestor.is_dir():
        raise ValueError(f"{option}: {path}: {ancestor} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        reason = "on a read-only file system" if _read_only(ancestor) else "not writable"
        raise ValueError(f"{option}: {path}: the directory {ancestor} is {reason}")
    return path


def _read_only(directory: Path) -> bool:
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def check_output_dir(option: str, path: str | os.PathLike[str]) -> Path:
    """``path`` is a directory this process can create (with its parents) or write into; else a ``ValueError``."""
    return _check_path(option, path, directory=True)


def check_output_file(option: str, path: str | os.PathLike[str]) -> Path:
    """``path`` is a file this process can create or replace (its directory may be created); else a ``ValueError``."""
    return _check_path(option, path, directory=False)


def check_engine(name: object) -> str:
    """``"auto"`` or the name of an engine that is registered and available on this machine."""
    from .engine import check_name, engines

    check_name(name)
    for info in engines():
        if info.name == name and not info.available:
            raise ValueError(f"engine: {name!r} is not available on this machine ({info.reason}); "
                             f"use --engine auto")
    return str(name)


def available_memory(device: torch.device) -> int:
    """Bytes ``device`` can still hold: free CUDA memory, or for RAM ``MemAvailable`` and the cgroup's headroom."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    limits = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                limits.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        ceiling = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if ceiling != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            limits.append(max(0, int(ceiling) - used))
    except (OSError, ValueError):
        pass
    if not limits:
        try:
            limits.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (OSError, ValueError, AttributeError):
            return 2**63
    return min(limits)


def _gib(nbytes: int) -> str:
    return f"{nbytes / 2**30:,.1f} GiB" if nbytes >= 2**27 else f"{nbytes / 2**20:,.1f} MiB"


def require_memory(what: str, nbytes: int, device: torch.device) -> None:
    """Raise a ``ValueError`` saying what ``what`` needs when ``nbytes`` exceed what ``device`` can hold now."""
    free = available_memory(device)
    if nbytes > free:
        where = "on this machine" if device.type == "cpu" else f"on {device}"
        raise ValueError(f"{what} needs at least {_gib(nbytes)} of memory; {_gib(free)} is available {where}")


LAYER_OVERHEAD = 4096
"""Bytes a recurrent layer and direction costs besides its parameters (Python objects, tensor headers)."""


def recurrent_bytes(*, layers: int, hidden: int, inputs: int, directions: int = 1, batch: int = 0, steps: int = 0,
                    dtype: torch.dtype = torch.float32, training: bool = False, overhead: bool = True,
                    recurrent: bool = True) -> int:
    """A lower bound of the memory a recurrent stack of this size takes, for any sizes (plain integer arithmetic).

    Each layer and direction holds at least ``W_ih`` (``H × width``) and, unless ``recurrent`` is False (the
    minimal cells, whose gates read the input alone), ``W_hh`` (``H × H``) — one gate's worth; gated cells hold 2
    to 4 times that. Training adds gradients and two Adam moments per weight and keeps the
    outputs ``(T, B, H)`` of every layer for the backward pass; inference keeps one layer's. ``overhead=False``
    leaves out what is not tensor data (for comparing with a weights file).
    """
    width = directions * hidden
    square = hidden * hidden if recurrent else 0
    weights = directions * (hidden * inputs + square + (layers - 1) * (hidden * width + square))
    kept = steps * batch * width * (layers if training else 1)
    itemsize = torch.empty((), dtype=dtype).element_size()
    return (weights * (4 if training else 1) + kept) * itemsize + layers * directions * LAYER_OVERHEAD * overhead


def check_weights_header(path: str | os.PathLike[str], module: nn.Module) -> None:
    """Check the names, shapes and dtypes in a safetensors file's header against ``module``'s state dict.

    Only the header is read, and ``module`` may live on the ``meta`` device, so a configuration that does not
    match its weights is found before anything of its size is allocated.
    """
    shapes = _header_shapes(path)
    own = _unwrap(module).state_dict()
    names = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
    missing, unexpected = sorted(set(own) - set(shapes)), sorted(set(shapes) - set(own))
    if missing or unexpected:
        parts = ([f"missing {', '.join(missing[:4])}"] if missing else []) + (
            [f"unexpected {', '.join(unexpected[:4])}"] if unexpected else [])
        raise CheckpointError(f"{path}: the weights do not fit this model ({'; '.join(parts)})")
    for name, tensor in own.items():
        shape, dtype = shapes[name]
        if shape != tuple(tensor.shape):
            raise CheckpointError(f"{path}: {name} has shape {shape}, the model expects {tuple(tensor.shape)}")
        if names.get(dtype, dtype) != tensor.dtype and tensor.is_floating_point():
            raise CheckpointError(f"{path}: {name} is {dtype}, the model expects {tensor.dtype}")


def _header_shapes(path: str | os.PathLike[str]) -> dict[str, tuple[tuple[int, ...], str]]:
    """Name → (shape, safetensors dtype) of every tensor in a safetensors file, from its header alone."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (not a checkpoint directory, or the run never saved)")
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > min(path.stat().st_size, 100 * 2**20):
                raise ValueError(f"a header of {length} bytes")
            header = json.loads(f.read(length))
        return {name: (tuple(int(n) for n in entry["shape"]), str(entry["dtype"])) for name, entry in header.items()
                if name != "__metadata__"}
    except (OSError, struct.error, ValueError, TypeError, KeyError, AttributeError, RecursionError) as error:
        raise CheckpointError(f"{path}: corrupt safetensors file ({type(error).__name__}: {error})") from None


def build_and_load(path: str | os.PathLike[str], build: Callable[[], nn.Module], *, what: str, nbytes: int,
                   weights: int, device: torch.device, dtype: torch.dtype | None = None) -> nn.Module:
    """The model ``build()`` makes, with the weights of ``path``, checked before anything of its size is allocated
    (or built): ``nbytes`` (a lower bound, see :func:`recurrent_bytes`) against the memory of ``device``; ``weights``
    (a lower bound of its tensor data) against the elements the file's header lists; then every name and shape of
    the header against the model built on the ``meta`` device. ``what`` names the configuration in errors."""
    require_memory(what, nbytes, device)
    elements = sum(math.prod(shape) for shape, _ in _header_shapes(path).values())
    itemsize = torch.empty((), dtype=dtype or torch.get_default_dtype()).element_size()
    if weights > elements * itemsize:
        raise CheckpointError(f"{path}: holds {elements:,} weights; {what} has at least {weights // itemsize:,} "
                              f"(the configuration does not match its weights)")
    with torch.device("meta"):
        skeleton = build()
        check_weights_header(path, skeleton if dtype is None else skeleton.to(dtype))
    model = build().to(device=device, dtype=dtype)
    load_weights(path, model)
    return model


# ----------------------------------------------------------------------------------------------------------------
# Run directories: a complete run or nothing

TRAINER_STATE = "trainer_state.safetensors"


def open_run_dir(option: str, out: str | os.PathLike[str], *, resume: bool, what: str) -> bool:
    """Check a run directory before anything is written, and say whether there is a trainer state to resume.

    A fresh run (``resume=False``) refuses a directory that holds a saved run. ``--resume`` of a directory
    whose run stopped before its first checkpoint (a configuration but no trainer state) starts that run over:
    :func:`begin_run` says so.
    """
    out = check_output_dir(option, out)
    if (out / TRAINER_STATE).is_file():
        if not resume:
            raise ValueError(f"{option}: {out} already holds a {what} run; continue it with --resume or choose "
                             f"another directory")
        return True
    if resume and not (out / "config.json").is_file():
        raise CheckpointError(f"resume: {out} holds no {what} run (no config.json, no {TRAINER_STATE})")
    return False


def remove_stale_temporaries(out: Path) -> None:
    """Remove the temporary files of writes that a kill interrupted (see :func:`atomic_write`)."""
    if out.is_dir():
        for tmp in out.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)


def begin_run(out: Path, files: tuple[str, ...], log: Any = None) -> None:
    """Right before a fresh run's first write: create ``out`` and clear what a run that stopped before its first
    checkpoint left there (``files``), saying so; stale temporary files go too."""
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    left = [out / name for name in files if (out / name).is_file()]
    if left:
        print(f"{out}: a run that stopped before its first checkpoint left {', '.join(p.name for p in left)}; "
              f"starting it over", file=log or sys.stderr)
        for path in left:
            path.unlink()


# ----------------------------------------------------------------------------------------------------------------
# Budget, progress, interruption


class Budget:
    """When to stop: after ``steps`` optimizer steps, after ``minutes`` of training, or whichever comes first.

    ``elapsed`` is the training time already spent (from a resumed :class:`TrainerState`); the clock runs from
    :meth:`start`.
    """

    def __init__(self, steps: int | None = None, minutes: float | None = None, elapsed: float = 0.0) -> None:
        if steps is None and minutes is None:
            raise ValueError("budget: give steps, minutes or both")
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
            raise ValueError(f"steps: expected an int >= 1, got {steps!r}")
        if minutes is not None and not (isinstance(minutes, (int, float)) and 0 < minutes < math.inf):
            raise ValueError(f"minutes: expected a number > 0, got {minutes!r}")
        self.steps = steps
        self.seconds = None if minutes is None else 60.0 * minutes
        self._before = float(elapsed)
        self._start = time.perf_counter()

    def start(self) -> None:
        """Start (or restart, after setup work that should not count) the clock."""
        self._start = time.perf_counter()

    def elapsed(self) -> float:
        """Seconds of training, including those of earlier sessions."""
        return self._before + time.perf_counter() - self._start

    def fraction(self, step: int) -> float:
        """How much of the budget is spent, in ``[0, 1]``: the larger of the step and time fractions."""
        parts = []
        if self.steps is not None:
            parts.append(step / self.steps)
        if self.seconds is not None:
            parts.append(self.elapsed() / self.seconds)
        return min(1.0, max(parts))

    def done(self, step: int) -> bool:
        """Whether training should stop before taking step ``step + 1``."""
        return (self.steps is not None and step >= self.steps) or (
            self.seconds is not None and self.elapsed() >= self.seconds
        )


class Progress:
    """A progress bar over a :class:`Budget`: ``step``, the task's metrics, throughput in ``unit``/s and an ETA.

    The bar counts per mille of the budget, so a budget in steps, in minutes or both gets one bar and one ETA.
    ``start_step`` is where a resumed run starts, so that the ETA counts only this session's pace.
    ``enabled=False`` (other ranks, quiet runs) prints nothing.
    """

    def __init__(self, budget: Budget, *, unit: str = "sample", enabled: bool = True, desc: str = "train",
                 start_step: int = 0) -> None:
        self.budget = budget
        self.unit = unit
        self._bar = tqdm(total=1000, initial=int(1000 * budget.fraction(start_step)), desc=desc,
                         disable=not enabled, dynamic_ncols=True, leave=True,
                         bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]")
        self._units = 0
        self._t0 = time.perf_counter()
        self._rate = 0.0

    def update(self, step: int, units: int, **metrics: Any) -> None:
        """After step ``step``, which processed ``units`` more items; ``metrics`` are shown as ``name=value``."""
        self._units += units
        now = time.perf_counter()
        if now > self._t0:
            self._rate = self._units / (now - self._t0)
        self._bar.n = int(1000 * self.budget.fraction(step))
        total = f"/{self.budget.steps}" if self.budget.steps is not None else ""
        shown = {"step": f"{step}{total}"}
        for name, value in metrics.items():
            shown[name] = f"{value:.4f}" if isinstance(value, float) else str(value)
        shown[f"{self.unit}/s"] = f"{self._rate:,.0f}"
        self._bar.set_postfix(shown, refresh=False)
        self._bar.refresh()

    @property
    def rate(self) -> float:
        """Items per second since the bar was made."""
        return self._rate

    def write(self, text: str) -> None:
        """Print a line above the bar (nothing when the bar is disabled)."""
        if not self._bar.disable:
            self._bar.write(text)

    def close(self) -> None:
        self._bar.close()


class Interrupted(KeyboardInterrupt):
    """A second Ctrl-C or SIGTERM while a run was saving and leaving: stop at once. ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_status(signum: int | None) -> int:
    """A command's exit status: 0, or ``128 + signum`` after an interrupt (130: Ctrl-C, 143: SIGTERM)."""
    return 128 + signum if signum else 0


class GracefulInterrupt:
    """Within ``with GracefulInterrupt() as stop:``, Ctrl-C (SIGINT) or SIGTERM sets ``stop.requested``.

    The loop checks it after each step, saves and leaves cleanly; ``stop.signum`` is the signal (for
    :func:`exit_status`). A second signal raises :class:`Interrupted` at once. Outside the main thread (where
    handlers cannot be installed) it does nothing.
    """

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise Interrupted(signum)
        self.requested = True
        self.signum = signum

    def __enter__(self) -> GracefulInterrupt:
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread
            self._previous.clear()
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


# ----------------------------------------------------------------------------------------------------------------
# Distributed data parallel


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a (possibly single-process) run."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes checkpoints and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: str = "auto") -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment, or run alone without one.

    On CUDA each process takes the GPU ``cuda:LOCAL_RANK`` and the backend is nccl; on CPU it is gloo.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo(0, 1, 0, resolve_device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    chosen = resolve_device(device)
    if chosen.type == "cuda":
        chosen = torch.device("cuda", local_rank)
        torch.cuda.set_device(chosen)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo")
    return DistInfo(rank, world_size, local_rank, chosen)


def teardown_distributed(info: DistInfo) -> None:
    """Leave the process group (a no-op for a single process)."""
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


def wrap_ddp(model: nn.Module, info: DistInfo) -> nn.Module:
    """``DistributedDataParallel(model)`` in a distributed run (gradients averaged over ranks), else ``model``."""
    if not info.distributed:
        return model
    ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


KEPT_TENSORS = 16
"""How many tensors of the latest collectives stay referenced from Python (see :func:`_keep`)."""

_kept: deque[Tensor] = deque(maxlen=KEPT_TENSORS)


def _keep(*tensors: Tensor) -> None:
    """Keep a collective's tensors referenced from Python until later collectives push them out.

    Gloo runs a collective on a worker thread, which drops its own reference to the tensors a moment after the
    caller has been woken. If the caller has dropped them by then, that is the last reference, and freeing a tensor
    that Python created takes the GIL. DDP keeps the process group, and so its worker threads, alive after
    ``destroy_process_group``; when the late drop falls into the interpreter's shutdown, taking the GIL ends the
    thread inside a destructor and the process aborts ("terminate called without an active exception", seen 3
    times in 146 two-process runs on a loaded 2-core machine; pytorch/pytorch#190489). Kept here, the last
    reference is Python's, freed by the main thread.
    """
    _kept.extend(tensors)


def _all_reduce(tensor: Tensor, op: Any) -> Tensor:
    """``op`` over all ranks of a copy of ``tensor``."""
    reduced = tensor.detach().clone()
    _keep(reduced)
    dist.all_reduce(reduced, op=op)
    return reduced


def all_reduce_mean(tensor: Tensor, info: DistInfo) -> Tensor:
    """The mean of ``tensor`` over all ranks (``tensor`` itself when not distributed)."""
    return _all_reduce(tensor, dist.ReduceOp.SUM) / info.world_size if info.distributed else tensor


def all_reduce_max(tensor: Tensor, info: DistInfo) -> Tensor:
    """The elementwise maximum of ``tensor`` over all ranks (``tensor`` itself when not distributed)."""
    return _all_reduce(tensor, dist.ReduceOp.MAX) if info.distributed else tensor


def all_gather(tensor: Tensor, info: DistInfo) -> Tensor:
    """Tensors of equal shape from every rank, concatenated along dim 0 in rank order (``tensor`` when alone)."""
    if not info.distributed:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(info.world_size)]
    mine = tensor.detach().contiguous()
    _keep(mine, *parts)
    dist.all_gather(parts, mine)
    return torch.cat(parts)
