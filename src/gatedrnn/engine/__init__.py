"""Engines and their registry: which engines exist, which are available here, and which one runs a given call.

An engine registers itself with :func:`register`; layers ask :func:`resolve` for the engine of each call, so a new
engine plugs in without touching the layers.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..cells import CellSpec
from .base import Engine
from .cpu import CPUEngine
from .gpu import GPUEngine
from .reference import ReferenceEngine
from .scan import ScanEngine

_REGISTRY: dict[str, Engine] = {}
_BY_PRIORITY: list[Engine] = []
"""The registered engines, highest priority first (what ``"auto"`` tries in turn)."""


@dataclass(frozen=True)
class EngineInfo:
    """What :func:`engines` reports about one engine."""

    name: str
    available: bool
    reason: str
    priority: int


def register(engine: Engine) -> None:
    """Add an engine to the registry (replacing one of the same name)."""
    _REGISTRY[engine.name] = engine
    _BY_PRIORITY[:] = sorted(_REGISTRY.values(), key=lambda e: -e.priority)


def engines() -> list[EngineInfo]:
    """Every registered engine, whether it is available on this machine, and why (or why not)."""
    infos = []
    for engine in sorted(_REGISTRY.values(), key=lambda e: -e.priority):
        available, reason = engine.status()
        infos.append(EngineInfo(engine.name, available, reason, engine.priority))
    return infos


def check_name(name: object) -> str:
    """Validate an ``engine=`` argument: ``"auto"`` or a registered engine's name."""
    if not isinstance(name, str):
        raise TypeError(f"engine: expected a string, got {type(name).__name__}")
    if name != "auto" and name not in _REGISTRY:
        known = ", ".join(["auto", *sorted(_REGISTRY)])
        raise ValueError(f"engine: unknown engine {name!r}; expected one of: {known}")
    return name


def resolve(name: str, spec: CellSpec, x: Tensor) -> Engine:
    """The engine that runs ``spec`` on tensors like ``x``: the named one, or for ``"auto"`` the best available."""
    if name == "auto":
        # covers() first: it reads only the spec and x, where status() may probe the machine (the gpu engine asks
        # torch.cuda on every call), and this runs on every forward call, one-step generation calls included.
        for engine in _BY_PRIORITY:
            if engine.covers(spec, x) and engine.status()[0]:
                return engine
        raise RuntimeError(f"engine: no engine runs {spec} on {x.device} {x.dtype}")
    engine = _REGISTRY[check_name(name)]
    available, reason = engine.status()
    if not available:
        raise RuntimeError(f"engine: {name!r} is not available on this machine: {reason}")
    if not engine.covers(spec, x):
        raise ValueError(f"engine: {name!r} does not run {spec} on {x.device} {x.dtype}")
    return engine


register(ReferenceEngine())
register(ScanEngine())
register(CPUEngine())
register(GPUEngine())

__all__ = ["Engine", "EngineInfo", "check_name", "engines", "register", "resolve"]
