"""The cpu engine's build: the private cache, the library's recorded hash, the notices, the lock, ``gatedrnn build``.

Most tests stand in for the compiler (``fake_compiler``: the build writes a file where the library would be) so that
they run in milliseconds; two run a real build in a fresh process with a compiler that fails. As root (the CI and
this machine), directories of another user are made with ``os.chown``; without root those tests skip.
"""

from __future__ import annotations

import os
import re
import select
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch

import gatedrnn
from gatedrnn import cli
from gatedrnn import engine as registry
from gatedrnn.engine.cpu import build

OTHER_UID = 4242  # no user of this machine: a directory "made by another user"
as_root = pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                             reason="needs root to make directories owned by another user")


@pytest.fixture
def caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every candidate cache directory under tmp_path: GATEDRNN_CACHE unset, the XDG cache and the system
    temporary directory (``$TMPDIR/gatedrnn-<uid>``, and mkdtemp's fresh directories) inside it."""
    monkeypatch.delenv("GATEDRNN_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    return tmp_path


class FakeCompiler:
    """Stands in for ``build._compile`` (which builds and loads) and ``build._load_library`` (which loads a cached
    library): writes a library of known bytes, and records what was compiled and loaded, and the library's bytes at
    the moment it was loaded."""

    def __init__(self) -> None:
        self.compiled: list[Path] = []
        self.loaded: list[tuple[Path, bytes]] = []

    def compile(self, name: str, build_dir: Path) -> Path:
        library = build_dir / f"{name}.so"
        library.write_bytes(b"\x7fELF a library built from the sources " + name.encode())
        self.compiled.append(library)
        return library

    def load(self, path: Path) -> None:
        self.loaded.append((path, path.read_bytes()))


@pytest.fixture
def fake_compiler(monkeypatch: pytest.MonkeyPatch) -> FakeCompiler:
    fake = FakeCompiler()
    monkeypatch.setattr(build, "_compile", fake.compile)
    monkeypatch.setattr(build, "_load_library", fake.load)
    return fake


def owned_by_other(path: Path, mode: int) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, OTHER_UID, OTHER_UID)
    path.chmod(mode)
    return path


def name() -> str:
    return f"gatedrnn_cpu_{build.build_key()}"


# --- the private cache ----------------------------------------------------------------------------------------------

def test_a_fresh_cache_is_private(caches: Path, fake_compiler: FakeCompiler) -> None:
    library = build.compile_and_load()
    assert library.path.parent == caches / "xdg" / "gatedrnn" / "extensions" / name()
    for folder in (caches / "xdg" / "gatedrnn", caches / "xdg" / "gatedrnn" / "extensions", library.path.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    record = library.path.parent / build.RECORD
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    assert record.read_text() == f"{build._sha256(library.path)}  {library.path.name}\n"


@as_root
def test_a_cache_owned_by_another_user_is_not_used(caches: Path, monkeypatch: pytest.MonkeyPatch,
                                                   fake_compiler: FakeCompiler) -> None:
    theirs = owned_by_other(caches / "theirs", 0o755)
    monkeypatch.setenv("GATEDRNN_CACHE", str(theirs))
    with pytest.warns(RuntimeWarning, match=rf"cached in {caches}/tmp/gatedrnn-0 instead: {theirs} belongs to uid "
                                            rf"{OTHER_UID}, not to this user \(uid 0\)"):
        library = build.compile_and_load()
    assert library.path.is_relative_to(caches / "tmp" / "gatedrnn-0")
    assert list(theirs.iterdir()) == []
    assert [p for p, _ in fake_compiler.loaded] == [] and fake_compiler.compiled == [library.path]


@as_root
def test_a_cache_that_others_can_write_is_not_used(caches: Path, monkeypatch: pytest.MonkeyPatch,
                                                   fake_compiler: FakeCompiler) -> None:
    """The attack: another user makes $TMPDIR/gatedrnn-<uid> with mode 0777 before this user's first build (whose
    usual cache cannot be made: here a file stands where it would be). The build goes to a fresh private directory
    instead, kept for this process only, and a library planted in the 0777 directory is never loaded."""
    (caches / "xdg").write_text("not a directory")
    planted = owned_by_other(caches / "tmp" / "gatedrnn-0", 0o777) / "extensions" / name()
    planted.mkdir(parents=True)
    (planted / f"{name()}.so").write_bytes(b"their code")
    build._record(planted / f"{name()}.so")
    with pytest.warns(RuntimeWarning) as caught:
        library = build.compile_and_load()
    (message,) = [str(w.message) for w in caught]
    assert re.fullmatch(rf"gatedrnn: no private cache directory for the cpu engine \({caches}/tmp/gatedrnn-0 "
                        rf"belongs to uid {OTHER_UID}, not to this user \(uid 0\)\), so it compiles into "
                        rf"{caches}/tmp/gatedrnn-\w+ for this process only; set GATEDRNN_CACHE to a directory only "
                        rf"you can write to keep it", message), message
    root = library.path.parents[2]
    assert root.parent == caches / "tmp" and root.name != "gatedrnn-0" and root.stat().st_uid == 0
    assert stat.S_IMODE(root.stat().st_mode) == 0o700 and not library.kept
    assert fake_compiler.loaded == [] and fake_compiler.compiled == [library.path]


def test_a_cache_writable_by_everyone_is_not_used_even_when_it_is_ones_own(
        caches: Path, monkeypatch: pytest.MonkeyPatch, fake_compiler: FakeCompiler) -> None:
    mine = caches / "mine"
    mine.mkdir()
    mine.chmod(0o777)
    monkeypatch.setenv("GATEDRNN_CACHE", str(mine))
    with pytest.warns(RuntimeWarning, match=rf"{mine} is writable by every user \(mode 777\)"):
        library = build.compile_and_load()
    assert not library.path.is_relative_to(mine)


@pytest.mark.parametrize("mode, private", [(0o777, False), (0o1777, True)], ids=["open", "sticky"])
def test_every_folder_above_the_cache_is_checked(caches: Path, monkeypatch: pytest.MonkeyPatch,
                                                 fake_compiler: FakeCompiler, mode: int, private: bool) -> None:
    """A folder above the cache that others can write lets them rename the cache and put theirs in its place,
    unless its sticky bit keeps them from renaming what is not theirs (as /tmp's)."""
    shared = caches / "shared"
    shared.mkdir()
    shared.chmod(mode)
    monkeypatch.setenv("GATEDRNN_CACHE", str(shared / "cache"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        library = build.compile_and_load()
    assert library.path.is_relative_to(shared / "cache") == private
    assert [str(w.message) for w in caught] == ([] if private else [
        f"gatedrnn: the cpu engine is cached in {caches}/tmp/gatedrnn-{os.getuid()} instead: {shared} is writable by "
        f"every user (mode 777)"])


@as_root
def test_group_write_is_others_write_except_for_the_users_private_group(caches: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    cache = caches / "cache"
    cache.mkdir()
    cache.chmod(0o770)
    os.chown(cache, 0, OTHER_UID)
    with pytest.raises(build.NotPrivate, match=rf"^{cache} is writable by group {OTHER_UID} \(mode 770\)$"):
        build.check_private(cache)
    os.chown(cache, 0, os.getgid())
    if not build._user_private_group(os.getgid()):
        pytest.skip("this user has no private group")
    build.check_private(cache)


def test_a_symlinked_build_directory_is_not_used(caches: Path, monkeypatch: pytest.MonkeyPatch,
                                                 fake_compiler: FakeCompiler) -> None:
    cache = caches / "cache"
    (cache / "extensions").mkdir(parents=True)
    elsewhere = caches / "elsewhere"
    elsewhere.mkdir()
    (cache / "extensions" / name()).symlink_to(elsewhere)
    monkeypatch.setenv("GATEDRNN_CACHE", str(cache))
    with pytest.warns(RuntimeWarning, match=rf"{cache}/extensions/{name()} is a symbolic link"):
        library = build.compile_and_load()
    assert not library.path.is_relative_to(cache) and list(elsewhere.iterdir()) == []


def test_no_private_directory_at_all_is_a_clear_reason(caches: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where even a fresh directory would not be private (the temporary directory is writable by everyone and not
    sticky), the cpu engine is unavailable, and its reason says why and what to do."""
    (caches / "xdg").write_text("not a directory")
    (caches / "tmp").chmod(0o777)
    monkeypatch.setattr(build, "_outcome", None)
    available, reason = build.status()
    assert not available
    assert re.fullmatch(rf"the C\+\+ extension could not be built or loaded: NotPrivate: no private directory for the "
                        rf"compiled cpu engine: {caches}/tmp is writable by every user \(mode 777\); set "
                        rf"GATEDRNN_CACHE to a directory only you can write", reason), reason


# --- the recorded hash ----------------------------------------------------------------------------------------------

def test_a_cached_library_is_loaded_only_with_its_recorded_hash(caches: Path, fake_compiler: FakeCompiler,
                                                                capfd: pytest.CaptureFixture[str]) -> None:
    first = build.compile_and_load()
    assert not first.cached and fake_compiler.loaded == []  # the build loads what it built (cpp_extension.load)
    capfd.readouterr()
    again = build.compile_and_load()
    assert again.cached and again.path == first.path
    assert fake_compiler.loaded == [(first.path, first.path.read_bytes())] and len(fake_compiler.compiled) == 1
    assert capfd.readouterr().err == ""  # no notice where nothing is compiled

    first.path.write_bytes(b"\x7fELF someone else's code")
    with pytest.warns(RuntimeWarning, match=rf"^gatedrnn: not loading the cached cpu engine: {first.path} does not "
                                            rf"have the sha256 recorded when it was built; compiling it again$"):
        rebuilt = build.compile_and_load()
    assert not rebuilt.cached and len(fake_compiler.compiled) == 2
    assert all(b"someone else" not in content for _, content in fake_compiler.loaded)
    assert "compiling the cpu engine once" in capfd.readouterr().err
    assert build.compile_and_load().cached


@pytest.mark.parametrize("change", ["group-writable", "not the format", "missing library"])
def test_a_record_that_cannot_be_trusted_means_a_new_build(caches: Path, fake_compiler: FakeCompiler,
                                                           change: str) -> None:
    library = build.compile_and_load().path
    record = library.parent / build.RECORD
    if change == "group-writable":
        record.chmod(0o620)
        why = f"its record {record} is not a file that only this user can write"
    elif change == "not the format":
        record.write_text(f"{build._sha256(library)}  ../{library.name}\n")
        why = f"its record {record} is not '<sha256>  <file name>'"
    else:
        library.unlink()
        why = f"{library} is missing"
    with pytest.warns(RuntimeWarning, match=f"not loading the cached cpu engine: {re.escape(why)}; compiling it again"):
        assert not build.compile_and_load().cached
    assert fake_compiler.loaded == [] and len(fake_compiler.compiled) == 2
    assert stat.S_IMODE(record.stat().st_mode) == 0o600


# --- notices, the lock, failures ------------------------------------------------------------------------------------

def test_the_first_build_says_so_before_and_after(caches: Path, fake_compiler: FakeCompiler,
                                                  capfd: pytest.CaptureFixture[str]) -> None:
    library = build.compile_and_load()
    before, after = capfd.readouterr().err.splitlines()
    assert before == (f"gatedrnn: compiling the cpu engine once (about {build.expected_seconds()} s); cached in "
                      f"{library.path.parent}")
    assert re.fullmatch(r"gatedrnn: compiled the cpu engine in \d+ s", after)


def test_the_expected_time_follows_the_cores_and_the_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """On an idle machine one core takes the build's CPU time, two half of it, many at least the longest unit; on
    two cores busy with 7 other runnable tasks the build's 3 units get 3/10 of them."""
    def expected(cores: int, load: float) -> int:
        monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(cores)))
        monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
        seconds = build.expected_seconds()
        assert seconds % 5 == 0
        return seconds

    monkeypatch.delenv("MAX_JOBS", raising=False)
    assert abs(expected(1, 0.0) - build.COMPILE_CPU_SECONDS) <= 2.5
    assert abs(expected(2, 0.0) - build.COMPILE_CPU_SECONDS / 2) <= 2.5
    assert build.LONGEST_UNIT_CPU_SECONDS - 2.5 <= expected(1000, 0.0) <= expected(2, 0.0)
    assert abs(expected(2, 7.0) - build.COMPILE_CPU_SECONDS / (2 * 3 / 10)) <= 2.5
    monkeypatch.setenv("MAX_JOBS", "1")
    assert abs(expected(2, 0.0) - build.COMPILE_CPU_SECONDS) <= 2.5


def test_a_lock_left_by_an_interrupted_build_is_cleared(tmp_path: Path) -> None:
    lock = tmp_path / build.LOCK
    assert not build.clear_stale_lock(tmp_path)  # no lock
    lock.write_text(f"{os.getpid()} {socket.gethostname()}\n")
    assert not build.clear_stale_lock(tmp_path) and lock.exists()  # a build in progress keeps its lock
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(f"{gone.stdout.strip()} {socket.gethostname()}\n")
    assert build.clear_stale_lock(tmp_path) and not lock.exists()  # its process has exited: stale at once
    lock.write_text(f"{os.getpid()} another-host\n")
    assert not build.clear_stale_lock(tmp_path) and lock.exists()  # a process elsewhere: only its age tells
    old = time.time() - build.STALE_LOCK_SECONDS - 60
    os.utime(lock, (old, old))
    assert build.clear_stale_lock(tmp_path) and not lock.exists()


def test_a_build_waits_for_another_process_and_says_so(caches: Path, fake_compiler: FakeCompiler,
                                                       capfd: pytest.CaptureFixture[str]) -> None:
    """Another live process holds the lock (this test's parent stands in for it); the build waits, then finds the
    library that the other process built and loads it without compiling."""
    build_dir = build.build_directory(name())
    lock = build_dir / build.LOCK
    lock.write_text(f"{os.getppid()} {socket.gethostname()}\n")
    library = fake_compiler.compile(name(), build_dir)
    fake_compiler.compiled.clear()

    def finish_other_build(seconds: float) -> None:
        time.sleep(seconds)
        build._record(library)
        lock.unlink()

    other = threading.Thread(target=finish_other_build, args=(0.5,))
    other.start()
    (torch_lock := build_dir / "lock").touch()  # and torch's lock, left by a build killed inside torch
    try:
        result = build.compile_and_load()
    finally:
        other.join()
    assert result.cached and fake_compiler.compiled == [] and fake_compiler.loaded[0][0] == library
    assert capfd.readouterr().err == f"gatedrnn: waiting for another process to finish compiling the cpu engine in " \
                                     f"{build_dir}\n"
    assert torch_lock.exists()  # only a build clears torch's lock; this process did not build
    assert not lock.exists()


def test_failed_build_falls_back_with_one_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_compiler() -> None:
        raise OSError("c++: command not found")

    engine = registry._REGISTRY["cpu"]
    monkeypatch.setattr(build, "compile_and_load", no_compiler)
    monkeypatch.setattr(build, "_outcome", None)
    monkeypatch.setattr(engine, "_warned", False)
    lstm = gatedrnn.LSTM(2, 3)
    x = torch.randn(4, 1, 2)
    with pytest.warns(RuntimeWarning, match=r"cpu engine is not available.*reference engine.*c\+\+: command not found"):
        out, _ = lstm(x)
    assert registry.resolve("auto", lstm.spec, x).name == "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # only one warning, however often auto resolves
        lstm(x)
    lstm.engine = "reference"
    torch.testing.assert_close(out, lstm(x)[0], rtol=0, atol=0)
    lstm.engine = "cpu"
    with pytest.raises(RuntimeError, match=r"engine: 'cpu' is not available on this machine: the C\+\+ extension "
                                           r"could not be built or loaded: OSError: c\+\+: command not found"):
        lstm(x)


def blocking_compiler(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A stand-in for the C++ compiler: answers torch's questions about its version; asked to compile (``-c``), says
    it started, waits until released, then fails."""
    started, release = tmp_path / "started", tmp_path / "release"
    compiler = tmp_path / "c++"
    compiler.write_text(f"""#!/bin/sh
case " $* " in *" -c "*) ;; *) echo 12.2.0; exit 0;; esac
touch {started}
for i in $(seq 600); do [ -e {release} ] && break; sleep 0.1; done
echo 'lstm.cpp:1:1: error: this compiler only waits' >&2
exit 1
""")
    compiler.chmod(0o755)
    return compiler, started, release


def test_the_notice_comes_at_once_in_a_library_users_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh process with an empty cache, as a user's script: the notice is on stderr (a pipe, not a terminal)
    while the compiler still runs; then the build fails and the reference engine runs, with the reason."""
    compiler, started, release = blocking_compiler(tmp_path)
    monkeypatch.setenv("CXX", str(compiler))  # part of the cache key, so of the build directory's name()
    env = {**os.environ, "GATEDRNN_CACHE": str(tmp_path / "cache"), "CXX": str(compiler)}
    code = ("import warnings, torch, gatedrnn\n"
            "with warnings.catch_warnings(record=True) as caught:\n"
            "    warnings.simplefilter('always')\n"
            "    out, _ = gatedrnn.GRU(2, 3)(torch.randn(4, 1, 2))\n"
            "print(caught[-1].message)\n"
            "print({e.name: e.available for e in gatedrnn.engines()}['cpu'])\n")
    child = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        deadline = time.monotonic() + 120
        while not started.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert started.exists(), "the compiler was never called"
        ready, _, _ = select.select([child.stderr], [], [], 10)
        assert ready, "nothing on stderr while the compiler runs"
        first = child.stderr.readline()
        build_dir = tmp_path / "cache" / "extensions" / name()
        assert first == (f"gatedrnn: compiling the cpu engine once (about {build.expected_seconds()} s); cached in "
                         f"{build_dir}\n")
    finally:
        release.touch()
        out, err = child.communicate(timeout=300)
    assert child.returncode == 0, err
    warning, available = out.splitlines()[-2:]
    assert warning.startswith("gatedrnn: the cpu engine is not available, so the slower reference engine runs "
                              "instead: the C++ extension could not be built or loaded: RuntimeError: ")
    assert warning.endswith(f"error: this compiler only waits (the whole output: {build_dir}/build.log)")
    assert available == "False"
    assert "this compiler only waits" in (build_dir / "build.log").read_text()


# --- gatedrnn build -------------------------------------------------------------------------------------------------

def test_gatedrnn_build_compiles_then_finds_the_cache(caches: Path, fake_compiler: FakeCompiler,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(build, "_outcome", None)
    assert cli.main(["build"]) == 0
    out, err = capsys.readouterr()
    library = caches / "xdg" / "gatedrnn" / "extensions" / name() / f"{name()}.so"
    assert re.fullmatch(rf"cpu engine: compiled in \d+ s: {library}\n", out)
    assert err.startswith("gatedrnn: compiling the cpu engine once")
    build.reset()
    assert cli.main(["build"]) == 0
    assert capsys.readouterr() == (f"cpu engine: already cached: {library}\n", "")


def test_the_cache_key_follows_the_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cached library is loaded without running the build, so a build with another compiler is another library."""
    key = build.build_key()
    monkeypatch.setenv("CXX", "clang++")
    assert build.build_key() != key


def test_gatedrnn_build_without_a_cache_to_keep_the_library_is_an_error(
        caches: Path, fake_compiler: FakeCompiler, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Compiling into a directory removed at exit would prepare nothing for later processes (the point of the
    command): exit 2, with what to do."""
    (caches / "xdg").write_text("not a directory")
    (caches / "tmp" / f"gatedrnn-{os.getuid()}").write_text("not a directory either")
    monkeypatch.setattr(build, "_outcome", None)
    with pytest.warns(RuntimeWarning, match="for this process only"):
        assert cli.main(["build"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and re.fullmatch(rf"(?s).*\ngatedrnn: error: cpu engine: built in {caches}/tmp/gatedrnn-\w+/"
                                      rf"extensions/{name()}, which is removed when this process exits: there is no "
                                      rf"private cache directory to keep it in; set GATEDRNN_CACHE to a directory "
                                      rf"only you can write\n", err), err


def test_gatedrnn_build_of_the_real_library_is_cached() -> None:
    """``python -m gatedrnn build`` in a fresh process, once this process has the library: already cached, there."""
    library = build.load()
    done = subprocess.run([sys.executable, "-m", "gatedrnn", "build"], capture_output=True, text=True, timeout=300)
    assert (done.returncode, done.stdout, done.stderr) == (0, f"cpu engine: already cached: {library.path}\n", "")


def test_gatedrnn_build_that_fails_is_one_line_and_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-c++"))
    env = {**os.environ, "GATEDRNN_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "gatedrnn", "build"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2 and done.stdout == ""
    lines = [line for line in done.stderr.splitlines() if line.startswith("gatedrnn: ")]
    log = tmp_path / "cache" / "extensions" / name() / "build.log"
    assert lines[0].startswith("gatedrnn: compiling the cpu engine once")
    assert lines[1] == (f"gatedrnn: error: cpu engine: the C++ extension could not be built or loaded: RuntimeError: "
                        f"/bin/sh: 1: {tmp_path}/no-such-c++: not found (the whole output: {log})")
    assert len(lines) == 2 and "Traceback" not in done.stderr
