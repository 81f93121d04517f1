"""Compiling and loading the C++ kernels of the cpu engine, once per machine, with a reason when that fails.

The sources in ``csrc/`` are compiled on first use with ``torch.utils.cpp_extension.load`` (JIT, ninja, the
system C++ compiler) into a cache directory keyed by a hash of everything that changes the binary: the sources,
the flags, the torch version and the CPU's instruction set. The first use says so on stderr before it compiles
(about :func:`expected_seconds`) and again when it is done; ``gatedrnn build`` compiles ahead of time (images, CI).
The build records the sha256 of the library it made; a later process loads the cached library, in well under a
second, only if it still has that hash (else it says so and compiles again). Concurrent first uses (pytest-xdist
workers, several jobs) are serialised by a lock file in the build directory, so only one of them compiles.

Cache directory: ``$GATEDRNN_CACHE`` if set, else ``$XDG_CACHE_HOME/gatedrnn`` (``~/.cache/gatedrnn``), else
``$TMPDIR/gatedrnn-<uid>``: the first of them that can be made and is private, else a fresh private directory kept
for this process only. A library that someone else can replace would run their code in every process that loads it,
so on POSIX a cache is private when the directory, its ``extensions`` folder and the build directory belong to the
user and nobody else can write to them, and every folder above the directory belongs to the user or root and is
writable by others only with the sticky bit (as ``/tmp``). Write access for the group counts as others', except
for the user's private group (named for the user, with no other members: Debian and Ubuntu make one for every user,
and their default umask 002 leaves directories group-writable). A candidate that exists but is not private is
passed over with a warning that names it and why.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import platform
import re
import shutil
import socket
import stat
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

SOURCES = ("lstm.cpp", "gru.cpp", "rnn.cpp", "clockwork.cpp", "memory.cpp", "rules.cpp", "activations.cpp", "scan.cpp")
"""The translation units, largest first (ninja starts them in this order)."""
HEADERS = ("activations.h", "common.h", "rules.h", "team.h")
CFLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fopenmp")
"""Strict IEEE arithmetic: no ``-ffast-math`` or any flag that lets the compiler assume finite values or reorder
sums, so that no input (±inf, ±1e4, NaN) turns finite math into NaN. ``-fno-math-errno`` and ``-fno-trapping-math``
change no result (they drop ``errno`` and the floating-point exception flags, which nothing reads) and let ``sqrt``
inline and conditional code vectorise. The gate loops vectorise through ``activations.h`` (σ and tanh as inline
arithmetic) and ``omp simd`` reductions; ``-march=native`` uses the machine's full vector width (the binary is built
on the machine that runs it and keyed by its CPU flags). ``-fopenmp`` makes ``at::parallel_for`` in the gate loops
use torch's OpenMP thread pool (and so ``torch.set_num_threads``)."""
LDFLAGS = ("-fopenmp",)

COMPILE_CPU_SECONDS = 60.0
"""CPU time (user + sys) of the whole build, summed over its translation units, and of its longest unit (lstm.cpp):
g++ 12 on the 2-core AMD EPYC machine, each unit compiled alone with the build's own command line (``build.ninja``
in a build directory), the least of 6 compiles each while the machine ran other work (load 5 to 7), which makes
them upper bounds. :func:`expected_seconds` turns them into the wall time of a build here."""
LONGEST_UNIT_CPU_SECONDS = 17.0

STALE_LOCK_SECONDS = 900
"""A build lock older than this was left by an interrupted build (a build takes a few minutes at most) or by a
process on another machine that shares the cache; a lock whose process is gone from this machine is stale at once."""
LOCK = "build.lock"
"""The lock that serialises builds of one build directory across processes. torch's own ``lock`` in the same
directory is taken only inside it, so one found there by a build (which clears the directory first) was left by a
build killed inside torch."""
RECORD = "library.sha256"
"""Written by the build, next to the library, readable and writable by the user alone: ``<sha256>  <file name>``
(the format of ``sha256sum``)."""
AVAILABLE = ("fused C++ kernels (direct products for calls of few steps, packed matrix-vector products at batch 1, "
             "MKL packed or ATen GEMMs above), forward and backward")


class BuildError(RuntimeError):
    """The kernels could not be built or loaded; the message says why, in one line."""


class NotPrivate(OSError):
    """A cache directory that someone other than the user could write (the message names it and says why)."""


@dataclass(frozen=True)
class Library:
    """The loaded library: where it is, whether it came from the cache, how long compiling it took here, and whether
    it stays cached after this process (not in a fresh directory for this process only)."""

    path: Path
    cached: bool
    seconds: float = 0.0
    kept: bool = True


_lock = threading.Lock()
_outcome: Library | str | None = None  # the loaded library, or why it could not be built or loaded
_fresh_roots: list[Path] = []  # the directories made for this process only (removed when it exits)


def source_dir() -> Path:
    return Path(__file__).parent / "csrc"


def _cpu_flags() -> str:
    """The CPU's feature flags (part of the cache key, because of ``-march=native``)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    return platform.processor() or platform.machine()


def _compiler() -> str:
    """The compiler torch's build runs (``$CXX``, else ``c++``), as a resolved path where it is on ``PATH``."""
    name = os.environ.get("CXX", "c++")
    found = shutil.which(name)
    return os.path.realpath(found) if found else name


def build_key() -> str:
    """A hash of everything that changes the compiled library: the sources and flags, the compiler, torch (its
    version and where it is installed, whose headers and libraries the build uses), Python's version, the CPU. A cached
    library is loaded without running the build again, so whatever would change the build's commands is here."""
    digest = hashlib.sha256()
    for name in (*SOURCES, *HEADERS):
        digest.update(name.encode())
        digest.update((source_dir() / name).read_bytes())
    for part in (*CFLAGS, *LDFLAGS, _compiler(), torch.__version__, str(Path(torch.__file__).resolve().parent),
                 platform.python_version(), platform.machine(), _cpu_flags()):
        digest.update(part.encode())
    return digest.hexdigest()[:16]


def expected_seconds() -> int:
    """About how long a build takes here, in wall seconds (rounded to 5): its CPU time shared among the cores this
    process may use and that other work leaves it, and at least its longest unit. ninja runs ``$MAX_JOBS`` units at a
    time, else its default (3 on 2 cores, 2 more than the cores above); with other runnable work (the load average)
    the cores are shared among all of it."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    jobs = int(os.environ["MAX_JOBS"]) if os.environ.get("MAX_JOBS", "").isdigit() else \
        2 if cores == 1 else 3 if cores == 2 else cores + 2
    jobs = max(1, min(jobs, len(SOURCES)))
    others = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    used = min(jobs, cores) if others + jobs <= cores else cores * jobs / (others + jobs)
    seconds = max(LONGEST_UNIT_CPU_SECONDS, COMPILE_CPU_SECONDS / used)
    return max(5, 5 * round(seconds / 5))


def _notice(message: str) -> None:
    """One line on stderr, at once (flushed), for library users as for the CLI."""
    print(f"gatedrnn: {message}", file=sys.stderr, flush=True)


# --- the cache directory --------------------------------------------------------------------------------------------

def _user_private_group(gid: int) -> bool:
    """Whether ``gid`` is the user's private group: the user's primary group, named for the user, no other members."""
    try:
        import grp
        import pwd

        user = pwd.getpwuid(os.getuid())
        group = grp.getgrgid(gid)
    except (ImportError, KeyError):  # no such databases (Windows), or a uid or gid without an entry (containers)
        return False
    return gid == user.pw_gid and group.gr_name == user.pw_name and set(group.gr_mem) <= {user.pw_name}


def _why_not_private(path: Path, st: os.stat_result, *, above: bool) -> str | None:
    """Why a folder (a cache directory, or with ``above`` a folder above one) is not private, or None if it is."""
    uid = os.getuid()
    if not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a directory"
    if st.st_uid != uid and not (above and st.st_uid == 0):
        return f"{path} belongs to uid {st.st_uid}, not to this user (uid {uid})"
    if st.st_mode & stat.S_IWOTH:
        writers = "every user"
    elif st.st_mode & stat.S_IWGRP and not _user_private_group(st.st_gid):
        writers = f"group {st.st_gid}"
    else:
        return None
    if above and st.st_mode & stat.S_ISVTX:  # others may add entries but not rename or remove this user's
        return None
    return f"{path} is writable by {writers} (mode {stat.S_IMODE(st.st_mode):o})"


def check_private(root: Path) -> None:
    """Raises :class:`NotPrivate` unless ``root`` (resolved, without symlinks) and every folder above it are private
    (see the module docstring). Nothing to check where there are no POSIX owners."""
    if not hasattr(os, "getuid"):
        return
    for parent in reversed(root.parents):
        problem = _why_not_private(parent, os.stat(parent), above=True)
        if problem:
            raise NotPrivate(problem)
    problem = _why_not_private(root, os.stat(root), above=False)
    if problem:
        raise NotPrivate(problem)


def _private_subdirectory(path: Path) -> Path:
    """Makes ``path`` inside a private directory (mode 0700) where it is missing; raises :class:`NotPrivate` if what
    is there is a symlink or not private."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise NotPrivate(f"{path} is a symbolic link")
    if hasattr(os, "getuid"):
        problem = _why_not_private(path, st, above=False)
        if problem:
            raise NotPrivate(problem)
    return path


def _candidates() -> list[Path]:
    if os.environ.get("GATEDRNN_CACHE"):
        first = Path(os.environ["GATEDRNN_CACHE"])
    else:
        first = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gatedrnn"
    user = os.getuid() if hasattr(os, "getuid") else os.getlogin()
    return [first, Path(tempfile.gettempdir()) / f"gatedrnn-{user}"]


def _prepare(root: Path, name: str) -> Path:
    """The private build directory ``root/extensions/name``, made where missing; raises :class:`NotPrivate` or another
    ``OSError`` (a directory that cannot be made or written)."""
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_private(root)
    with tempfile.NamedTemporaryFile(dir=root):
        pass
    return _private_subdirectory(_private_subdirectory(root / "extensions") / name)


def _fresh_directory() -> Path:
    """A new private directory under the system temporary directory, removed when this process exits."""
    root = Path(os.path.realpath(tempfile.mkdtemp(prefix="gatedrnn-")))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    _fresh_roots.append(root)
    check_private(root)
    return root


def build_directory(name: str) -> Path:
    """The private directory where the library ``name`` is built and cached (see the module docstring)."""
    passed_over: list[str] = []
    for candidate in _candidates():
        root = Path(os.path.realpath(candidate))
        try:
            build_dir = _prepare(root, name)
        except NotPrivate as problem:
            passed_over.append(str(problem))
        except OSError:  # not writable (a read-only home): the next candidate, quietly
            continue
        else:
            if passed_over:
                warnings.warn(f"gatedrnn: the cpu engine is cached in {root} instead: {'; '.join(passed_over)}",
                              RuntimeWarning, stacklevel=2)
            return build_dir
    try:
        root = _fresh_directory()
    except OSError as error:
        raise NotPrivate(f"no private directory for the compiled cpu engine: {error}; set GATEDRNN_CACHE to a "
                         f"directory only you can write") from None
    why = "; ".join(passed_over) or "none of the usual ones can be written"
    warnings.warn(f"gatedrnn: no private cache directory for the cpu engine ({why}), so it compiles into {root} for "
                  f"this process only; set GATEDRNN_CACHE to a directory only you can write to keep it",
                  RuntimeWarning, stacklevel=2)
    return _prepare(root, name)


# --- building, recording and checking the library -------------------------------------------------------------------

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
    """Remove the build lock if an interrupted build left it behind (see :data:`STALE_LOCK_SECONDS`); another process
    would otherwise wait on it. Returns whether a lock was removed."""
    lock = build_dir / LOCK
    try:
        holder = lock.read_text().split()
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return False
    gone = False
    if len(holder) == 2 and holder[0].isdigit() and holder[1] == socket.gethostname():
        try:
            os.kill(int(holder[0]), 0)
        except ProcessLookupError:
            gone = True
        except PermissionError:  # alive, another user's
            pass
    if gone or age > STALE_LOCK_SECONDS:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
        return True
    return False


@contextlib.contextmanager
def _build_lock(build_dir: Path) -> Iterator[None]:
    """Holds the build directory's lock (waiting for another process's build, with a line on stderr)."""
    lock = build_dir / LOCK
    said = False
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            break
        except FileExistsError:
            if clear_stale_lock(build_dir):
                continue
            if not said:
                _notice(f"waiting for another process to finish compiling the cpu engine in {build_dir}")
                said = True
            time.sleep(0.2)
    try:
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        os.close(fd)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _record(library: Path) -> None:
    """Writes the library's sha256 to :data:`RECORD` beside it, atomically, mode 0600."""
    fd, tmp = tempfile.mkstemp(dir=library.parent, prefix=f".{RECORD}.")
    with os.fdopen(fd, "w") as file:
        file.write(f"{_sha256(library)}  {library.name}\n")
    os.replace(tmp, library.parent / RECORD)


def cached_library(build_dir: Path) -> tuple[Path | None, str]:
    """``(library, problem)``: the cached library if it has the sha256 recorded when it was built, else None and why
    not (``""`` where nothing was recorded: no build has finished there)."""
    record = build_dir / RECORD
    try:
        st = os.lstat(record)
    except FileNotFoundError:
        return None, ""
    if not stat.S_ISREG(st.st_mode) or hasattr(os, "getuid") and (
            st.st_uid != os.getuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)):
        return None, f"its record {record} is not a file that only this user can write"
    fields = record.read_text(errors="replace").split()
    if len(fields) != 2 or len(fields[0]) != 64 or Path(fields[1]).name != fields[1]:
        return None, f"its record {record} is not '<sha256>  <file name>'"
    library = build_dir / fields[1]
    if not library.is_file():
        return None, f"{library} is missing"
    if _sha256(library) != fields[0]:
        return None, f"{library} does not have the sha256 recorded when it was built"
    return library, ""


def _clean(build_dir: Path) -> None:
    """Removes everything in the build directory but the lock (torch's ``lock`` too, see :data:`LOCK`), so that the
    next build starts from the sources."""
    for entry in build_dir.iterdir():
        if entry.name == LOCK:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _first_error_line(output: str) -> str:
    """The compiler's first error in ninja's output (``file:line:col: error: ...``), else the first line that the
    failed command printed."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in lines:
        if re.search(r"\berror:", line, re.IGNORECASE):
            return line
    for k, line in enumerate(lines[:-2]):
        if line.startswith("FAILED:"):
            return lines[k + 2]  # FAILED: target, the command, then what it printed
    return lines[0] if lines else ""


def _compile(name: str, build_dir: Path) -> Path:
    """Compiles the sources into ``build_dir`` (ninja, in parallel) and loads the library; returns its path. A failed
    build leaves the compiler's output in ``build.log`` there and raises :class:`BuildError` naming its first error."""
    from torch.utils import cpp_extension

    try:
        with _ninja_on_path():
            path = cpp_extension.load(
                name=name,
                sources=[str(source_dir() / s) for s in SOURCES],
                extra_cflags=list(CFLAGS),
                extra_ldflags=list(LDFLAGS),
                extra_include_paths=[str(source_dir())],
                build_directory=str(build_dir),
                is_python_module=False,
                verbose=False,
            )
    except Exception as error:
        text = str(error).strip() or type(error).__name__
        log = build_dir / "build.log"
        with contextlib.suppress(OSError):
            log.write_text(text + "\n")
        raise BuildError(f"{type(error).__name__}: {_first_error_line(text)} (the whole output: {log})") from error
    return Path(path)


def _load_library(path: Path) -> None:
    torch.ops.load_library(str(path))


def compile_and_load() -> Library:
    """Loads the cached library, or builds it first (saying so on stderr); its ops appear as
    ``torch.ops.gatedrnn_cpu.*``."""
    name = f"gatedrnn_cpu_{build_key()}"
    build_dir = build_directory(name)
    library, _ = cached_library(build_dir)
    if library is None:
        with _build_lock(build_dir):
            library, problem = cached_library(build_dir)  # another process may have built it while this one waited
            if library is None:
                if problem:
                    warnings.warn(f"gatedrnn: not loading the cached cpu engine: {problem}; compiling it again",
                                  RuntimeWarning, stacklevel=2)
                _clean(build_dir)
                _notice(f"compiling the cpu engine once (about {expected_seconds()} s); cached in {build_dir}")
                start = time.perf_counter()
                library = _compile(name, build_dir)
                seconds = time.perf_counter() - start
                _record(library)
                _notice(f"compiled the cpu engine in {seconds:.0f} s")
                return Library(library, cached=False, seconds=seconds, kept=_kept(build_dir))
    _load_library(library)
    return Library(library, cached=True, kept=_kept(build_dir))


def _kept(build_dir: Path) -> bool:
    return not any(build_dir.is_relative_to(root) for root in _fresh_roots)


def load() -> Library:
    """The loaded library, built first where the cache has none; on the first call only, then from memory. Raises
    :class:`BuildError` (one line: why) if it cannot be built or loaded."""
    global _outcome
    with _lock:
        if _outcome is None:
            try:
                _outcome = compile_and_load()
            except Exception as error:  # a missing compiler, ninja or header, a failed build or load, no private cache
                reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
                if not isinstance(error, BuildError):
                    reason = f"{type(error).__name__}: {reason}" if reason else type(error).__name__
                _outcome = f"the C++ extension could not be built or loaded: {reason}"
        if isinstance(_outcome, str):
            raise BuildError(_outcome)
        return _outcome


@torch.compiler.assume_constant_result
def status() -> tuple[bool, str]:
    """``(available, reason)``: builds and loads the kernels on the first call, then answers from memory. A constant
    to ``torch.compile``, which calls it while tracing rather than tracing into the build and its lock."""
    try:
        load()
    except BuildError as error:
        return False, str(error)
    return True, AVAILABLE


def reset() -> None:
    """Forget the outcome of :func:`load` (tests simulate a failed build with it)."""
    global _outcome
    with _lock:
        _outcome = None
