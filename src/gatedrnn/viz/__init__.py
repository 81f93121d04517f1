"""Pictures of the gates: matplotlib plots (:mod:`.plots`) and the explorer web page (:mod:`.explorer`).

The command line (:mod:`.commands`) adds ``gatedrnn viz gates``, ``gatedrnn viz gradient-flow`` and
``gatedrnn explore``. This package loads neither submodule itself, so that the command line starts without
matplotlib: ``from gatedrnn.viz import plots``. matplotlib comes with the ``viz`` extra
(``pip install 'gatedrnn[viz]'``); without it the commands that draw stop with one line saying so.
"""

from __future__ import annotations

import importlib

INSTALL_VIZ = "pip install 'gatedrnn[viz]'"


def has_matplotlib() -> bool:
    """Whether matplotlib can be imported here."""
    try:
        importlib.import_module("matplotlib")
    except ImportError:
        return False
    return True


def require_matplotlib(what: str) -> None:
    """``ValueError`` naming ``what`` and the install command when matplotlib is missing (one line in the CLI)."""
    if not has_matplotlib():
        raise ValueError(f"{what}: drawing needs matplotlib, which is not installed; install it with: {INSTALL_VIZ}")
