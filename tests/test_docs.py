"""Every Python and shell block of the README and the docs runs, so that the examples cannot rot.

The blocks of one page run in order in one fresh process, in an empty directory (with ``runs/``), sharing one
namespace as a reader following the page would: Python blocks are executed, and each command of a shell block is
a ``gatedrnn …`` command, run through :func:`gatedrnn.cli.main` and required to exit with 0. A block preceded by
``<!-- not-run: reason -->`` is skipped; the reason shows in the page's source. Blocks of other languages
(``text`` diagrams) are not code.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
RUN = {"python": "python", "sh": "sh", "bash": "sh", "console": "sh"}
NOT_RUN = re.compile(r"<!--\s*not-run:\s*(.*?)\s*-->")
FENCE = re.compile(r"^```(\S*)\s*$")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    language: str
    code: str
    not_run: str | None
    """The reason given in the page for not running it, or None."""


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of ``page``, with the not-run reason of the comment just before each (if any)."""
    found, lines, k = [], page.read_text().splitlines(), 0
    while k < len(lines):
        fence = FENCE.match(lines[k])
        if not fence:
            k += 1
            continue
        before = next((lines[j] for j in range(k - 1, -1, -1) if lines[j].strip()), "")
        marker = NOT_RUN.search(before)
        end = next(j for j in range(k + 1, len(lines)) if lines[j].startswith("```"))
        found.append(Block(page, k + 1, fence.group(1), "\n".join(lines[k + 1 : end]) + "\n",
                           marker.group(1) if marker else None))
        k = end + 1
    return found


def shell_commands(code: str) -> list[list[str]]:
    """The ``gatedrnn`` commands of a shell block, one argv each (comments and line continuations handled)."""
    argvs = []
    for command in code.replace("\\\n", " ").splitlines():
        argv = shlex.split(command, comments=True)
        if argv:
            argvs.append(argv)
    return argvs


def page_script(page_blocks: list[Block]) -> str:
    """A Python program running the page's blocks in order (under a main guard: worker processes that the blocks
    start import it)."""
    parts = ["import sys", "from gatedrnn import cli", "namespace = {'__name__': '__main__'}",
             "if __name__ == '__main__':"]
    for b in page_blocks:
        where = f"{b.page.relative_to(ROOT)}:{b.line}"
        parts.append(f"    print({where!r}, file=sys.stderr, flush=True)")
        if RUN[b.language] == "python":
            parts.append(f"    exec(compile({b.code!r}, {where!r}, 'exec'), namespace)")
        else:
            for argv in shell_commands(b.code):
                parts.append(f"    assert cli.main({argv[1:]!r}) == 0, {where + ': ' + shlex.join(argv)!r}")
    return "\n".join(parts) + "\n"


def runnable(page: Path) -> list[Block]:
    return [b for b in blocks(page) if b.language in RUN and b.not_run is None]


def test_the_pages_hold_the_blocks_this_module_runs() -> None:
    readme = blocks(ROOT / "README.md")
    assert [b.language for b in readme if b.language == "python"], "the README's quick start is a Python block"
    assert any(b.not_run for b in readme), "the README's make/pip block is marked not-run"
    skipped = [b for page in PAGES for b in blocks(page) if b.language in RUN and b.not_run is not None]
    for b in skipped:
        assert len(b.not_run) >= 10, f"{b.page.name}:{b.line}: a not-run block needs its reason"
    ran = [b for page in PAGES for b in runnable(page)]
    assert len(ran) > len(skipped)  # exceptions stay few


def test_shell_blocks_are_gatedrnn_commands() -> None:
    for page in PAGES:
        for b in runnable(page):
            if RUN[b.language] == "sh":
                for argv in shell_commands(b.code):
                    assert argv[0] == "gatedrnn", f"{page.name}:{b.line}: only gatedrnn commands run: {argv}"


def test_shell_commands_split_like_a_shell() -> None:
    code = "gatedrnn a --x 1   # a comment\n\ngatedrnn b \\\n    --text 'two words'\n"
    assert shell_commands(code) == [["gatedrnn", "a", "--x", "1"], ["gatedrnn", "b", "--text", "two words"]]


@pytest.mark.parametrize("page", [p for p in PAGES if runnable(p)], ids=lambda p: str(p.relative_to(ROOT)))
def test_page_blocks_run(page: Path, tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()
    script = tmp_path / "page.py"
    script.write_text(page_script(runnable(page)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    run = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    # the pages use today's option names: a deprecated spelling still runs, but a reader should not copy it (torch's
    # own deprecation warnings, e.g. of the TorchScript ONNX exporter the Deploy page shows, are not ours)
    ours = [line for line in run.stderr.splitlines() if line.startswith("gatedrnn") and "deprecat" in line.lower()]
    assert not ours, "\n".join(ours)


def test_api_reference_shows_the_docstrings_rest_as_markdown() -> None:
    spec = importlib.util.spec_from_file_location("docstring_roles", ROOT / "scripts" / "docstring_roles.py")
    assert spec is not None and spec.loader is not None
    roles = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(roles)
    text = """See :class:`gatedrnn.cells.LSTMSpec` and :func:`~gatedrnn.engines`.

    .. math::
        h_t = o \\odot \\tanh(c_t)

    ======  =======
    name    shape
    ======  =======
    ``w``   ``(H,)``, only if peephole
    ======  =======
    after"""
    assert roles.markdown(text).splitlines() == [
        "See `gatedrnn.cells.LSTMSpec` and `gatedrnn.engines`.", "",
        "    ```tex", "    h_t = o \\odot \\tanh(c_t)", "    ```", "",
        "    | name | shape |", "    |---|---|", "    | ``w`` | ``(H,)``, only if peephole |", "",
        "    after"]
