"""Compiling and loading the C++ kernels of the cpu engine, once per machine, with a reason when that fails.

The sources in ``csrc/`` are compiled on first use with ``torch.utils.cpp_extension.load`` (JIT, ninja, the
system C++ compiler) into a cache directory keyed by a hash of everything that changes the binary: the sources,
the flags, the torch version and the CPU's instruction set. Later processes load the cached library in well
under a second. Concurrent first uses (pytest-xdist workers, several jobs) are serialised by torch's lock file
in the build directory, so only one of them compiles.

Cache directory: ``$GATEDRNN_CACHE`` if set, else ``$XDG_CACHE_HOME/gatedrnn`` (``~/.cache/gatedrnn``); when that
is not writable, a per-user directory under the system temporary directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import torch

SOURCES = ("lstm.cpp", "gru.cpp", "rnn.cpp", "team.cpp", "short.cpp", "split.cpp", "input.cpp", "memory.cpp",
           "activations.cpp")
HEADERS = ("activations.h", "common.h", "team.h")
CFLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fopenmp")
"""Strict IEEE arithmetic: no ``-ffast-math`` or any flag that lets the compiler assume finite values or reorder
sums, so that no input (±inf, ±1e4, NaN) turns finite math into NaN. ``-fno-math-errno`` and ``-fno-trapping-math``
change no result (they drop ``errno`` and the floating-point exception flags, which nothing reads) and let ``sqrt``
inline and conditional code vectorise. The gate loops vectorise through ``activations.h`` (σ and tanh as inline
arithmetic) and ``omp simd`` reductions; ``-march=native`` uses the machine's full vector width (the binary is built
on the machine that runs it and keyed by its CPU flags). ``-fopenmp`` makes ``at::parallel_for`` in the gate loops
use torch's OpenMP thread pool (and so ``torch.set_num_threads``)."""
LDFLAGS = ("-fopenmp",)

STALE_LOCK_SECONDS = 900
"""A build lock older than this was left by an interrupted build (a build takes a few minutes at most)."""

_lock = threading.Lock()
_result: tuple[bool, str] | None = None


def source_dir() -> Path:
    return Path(__file__).parent / "csrc"


def _cpu_flags() -> str:
    """The CPU's feature flags (part of the cache key, because of ``-march=native``)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    return platform.processor() or platform.machine()


def build_key() -> str:
    """A hash of everything that changes the compiled library."""
    digest = hashlib.sha256()
    for name in (*SOURCES, *HEADERS):
        digest.update(name.encode())
        digest.update((source_dir() / name).read_bytes())
    for part in (*CFLAGS, *LDFLAGS, torch.__version__, platform.machine(), _cpu_flags()):
        digest.update(part.encode())
    return digest.hexdigest()[:16]


def _writable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError:
        return False
    return True


def cache_root() -> Path:
    """Where compiled extensions are kept (see the module docstring)."""
    if os.environ.get("GATEDRNN_CACHE"):
        candidates = [Path(os.environ["GATEDRNN_CACHE"])]
    else:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        candidates = [Path(xdg) / "gatedrnn"]
    uid = os.getuid() if hasattr(os, "getuid") else os.getlogin()
    candidates.append(Path(tempfile.gettempdir()) / f"gatedrnn-{uid}")
    for path in candidates:
        if _writable(path):
            return path
    raise OSError(f"no writable cache directory for the compiled extension (tried {', '.join(map(str, candidates))})")


@contextlib.contextmanager
def _ninja_on_path() -> Iterator[None]:
    """torch's JIT build calls ``ninja`` by name; the ``ninja`` wheel installs it next to Python, which may not be
    on ``PATH`` when the virtual environment is not activated."""
    if shutil.which("ninja"):
        yield
        return
    try:
        import ninja  # the PyPI wheel, a runtime dependency
    except ImportError:
        yield
        return
    old = os.environ.get("PATH", "")
    os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + old
    try:
        yield
    finally:
        os.environ["PATH"] = old


def clear_stale_lock(build_dir: Path) -> bool:
    """Remove torch's build lock if an interrupted build left it behind; torch would otherwise wait on it forever.
    Returns whether a lock was removed."""
    lock = build_dir / "lock"
    try:
        if time.time() - lock.stat().st_mtime > STALE_LOCK_SECONDS:
            lock.unlink()
            return True
    except FileNotFoundError:
        pass
    return False


def compile_and_load() -> None:
    """Build (or find in the cache) and load the library; its ops appear as ``torch.ops.gatedrnn_cpu.*``."""
    from torch.utils import cpp_extension

    name = f"gatedrnn_cpu_{build_key()}"
    build_dir = cache_root() / "extensions" / name
    build_dir.mkdir(parents=True, exist_ok=True)
    clear_stale_lock(build_dir)
    with _ninja_on_path():
        cpp_extension.load(
            name=name,
            sources=[str(source_dir() / s) for s in SOURCES],
            extra_cflags=list(CFLAGS),
            extra_ldflags=list(LDFLAGS),
            extra_include_paths=[str(source_dir())],
            build_directory=str(build_dir),
            is_python_module=False,
            verbose=False,
        )


@torch.compiler.assume_constant_result
def status() -> tuple[bool, str]:
    """``(available, reason)``: builds and loads the kernels on the first call, then answers from memory. A constant
    to ``torch.compile``, which calls it while tracing rather than tracing into the build and its lock."""
    global _result
    with _lock:
        if _result is None:
            try:
                compile_and_load()
                _result = (True, "fused C++ kernels (direct products for calls of few steps, packed matrix-vector "
                                 "products at batch 1, MKL packed or ATen GEMMs above), forward and backward")
            except Exception as error:  # a missing compiler, ninja or header, a failed build or load
                first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                _result = (False, f"the C++ extension could not be built or loaded: {type(error).__name__}: {first}")
        return _result


def reset() -> None:
    """Forget the result of :func:`status` (tests simulate a failed build with it)."""
    global _result
    with _lock:
        _result = None
