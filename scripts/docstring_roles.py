"""A griffe extension for the API reference: the docstrings' reStructuredText (Sphinx roles, ``.. math::``
blocks, simple tables) shown as Markdown, so the reference reads as the source does.

- ``:class:`X``` (and the other roles) becomes inline code ``X``;
- a ``.. math::`` block becomes a fenced ``tex`` block of its (dedented) lines;
- a simple table (rows between ``=====  =====`` borders) becomes a Markdown table.
"""

from __future__ import annotations

import re
import textwrap
from typing import Any

import griffe

ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):`~?([^`]+)`")
BORDER = re.compile(r"^( *)=+( +=+)+ *$")


def _math(lines: list[str], k: int) -> tuple[list[str], int]:
    """The fenced block of the ``.. math::`` at ``lines[k]``, and the index after its body."""
    indent = len(lines[k]) - len(lines[k].lstrip())
    end = k + 1
    while end < len(lines) and (not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > indent):
        end += 1
    body = textwrap.dedent("\n".join(lines[k + 1 : end])).strip("\n")
    pad = " " * indent
    return [f"{pad}```tex", *(pad + line for line in body.splitlines()), f"{pad}```", ""], end


def _table(lines: list[str], k: int) -> tuple[list[str], int]:
    """The Markdown table of the simple table whose first border is ``lines[k]``, and the index after it."""
    border = lines[k]
    starts = [m.start() for m in re.finditer(r"=+", border)]
    rows, end, borders = [], k + 1, 1
    while end < len(lines) and borders < 3:
        if BORDER.match(lines[end]):
            borders += 1
        elif lines[end].strip():
            line = lines[end]
            rows.append([line[a:b].strip() for a, b in zip(starts, [*starts[1:], None])])
        end += 1
    pad = BORDER.match(border).group(1)  # type: ignore[union-attr]
    out = [pad + "| " + " | ".join(rows[0]) + " |", pad + "|" + "---|" * len(starts)]
    return [*out, *(pad + "| " + " | ".join(row) + " |" for row in rows[1:]), ""], end


def markdown(text: str) -> str:
    lines, out, k = text.splitlines(), [], 0
    while k < len(lines):
        if lines[k].strip() == ".. math::":
            block, k = _math(lines, k)
        elif BORDER.match(lines[k]):
            block, k = _table(lines, k)
        else:
            block, k = [lines[k]], k + 1
        out += block
    return ROLE.sub(r"`\1`", "\n".join(out))


class SphinxRolesAsCode(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)
