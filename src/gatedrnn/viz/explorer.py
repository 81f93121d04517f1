"""The explorer: one self-contained HTML page showing what every unit of a trained character model does on a text.

:func:`explorer_data` runs the model once over the text under :func:`gatedrnn.inspect.record` and gathers, per
character: every layer's gates, cell and hidden states (8-bit quantised per unit, base64), the model's top-5
next-character predictions, and the units most correlated with the text features of :mod:`.features`.
:func:`render` puts that JSON and the page's own script and style (``explorer.html``, no external resource) into
one file; :func:`serve` serves it on localhost.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import shutil
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..inspect import record
from ..tasks.charlm import LanguageModel
from ..training import atomic_write, check_output_file
from .features import FEATURES, correlations
from .plots import SIGMOID_GATES

TOP_PREDICTIONS = 5
TOP_UNITS = 8
"""Units listed per feature in the ranking."""


def _quantise(values: np.ndarray) -> dict[str, Any]:
    """``(T, U)`` floats -> 8 bits per value with each unit's own range: ``v ≈ lo + q / 255 * (hi - lo)``."""
    lo, hi = values.min(axis=0), values.max(axis=0)  # (U,)
    span = np.where(hi > lo, hi - lo, 1.0)
    q = np.rint((values - lo) / span * 255).astype(np.uint8)  # (T, U), row t holds every unit at step t
    return {"lo": lo.round(6).tolist(), "hi": hi.round(6).tolist(),
            "data": base64.b64encode(q.tobytes()).decode("ascii")}


def explorer_data(lm: LanguageModel, text: str, *, title: str = "") -> dict[str, Any]:
    """Everything the page shows about ``lm`` reading ``text`` (each character must be in its vocabulary)."""
    if len(text) < 2:
        raise ValueError(f"text: expected at least 2 characters, got {len(text)}")
    ids = lm.vocab.encode(text, "text").unsqueeze(0).to(lm.device)  # (1, T)
    model = lm.model.eval()
    with torch.no_grad(), record(model) as rec:
        logits, _ = model(ids)  # (1, T, V)
    probs = torch.softmax(logits[0].double(), dim=-1)  # (T, V): the next character after reading text[:t+1]
    top = probs.topk(min(TOP_PREDICTIONS, probs.shape[1]), dim=-1)
    predictions = [[[lm.vocab.chars[int(i)], round(float(p), 4)] for p, i in zip(ps, js)]
                   for ps, js in zip(top.values, top.indices)]
    nats = -torch.log(probs[:-1].gather(1, ids[0, 1:].unsqueeze(1).cpu())).mean().item()

    layers, ranking_pool = [], []
    for trace in rec:
        signals = {}
        for name in trace.names:
            values = trace[name][0].double().cpu().numpy()  # (T, U)
            kind = "gate" if name in SIGMOID_GATES[trace.family] else "signed"
            signals[name] = {"kind": kind, "units": values.shape[1], **_quantise(values)}
            ranking_pool.append((trace.key, name, values))
        layers.append({"key": trace.key, "family": trace.family, "signals": signals})

    features = []
    for name, (meaning, function) in FEATURES.items():
        feature = function(text)
        scored = []
        for key, signal, values in ranking_pool:
            r = correlations(values, feature)
            if r is None:  # the feature is constant on this text: nothing correlates with it
                break
            scored += [(abs(float(r[u])), float(r[u]), key, signal, u) for u in range(len(r))]
        scored.sort(key=lambda item: -item[0])
        features.append({
            "name": name, "meaning": meaning, "varies": bool(scored),
            "top": [{"layer": key, "signal": signal, "unit": u, "r": round(r, 3)}
                    for _, r, key, signal, u in scored[:TOP_UNITS]],
        })

    config = lm.config
    return {
        "title": title or f"{config.cell.upper()} {config.layers}×{config.hidden}",
        "model": {"cell": config.cell, "layers": config.layers, "hidden": config.hidden,
                  "parameters": sum(p.numel() for p in model.parameters())},
        "text": text,
        "bits_per_char": round(nats / np.log(2), 4),
        "layers": layers,
        "predictions": predictions,
        "features": features,
    }


_SCRIPT_UNSAFE = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def embedded_json(data: Any) -> str:
    """``data`` as JSON that a ``<script type="application/json">`` element holds as is, whatever its strings say.

    The element ends at the first ``</script``, and after ``<!--`` a ``<script`` makes the parser skip that end tag
    too, so that the page's own script becomes part of the data; so ``<``, ``>`` and ``&`` are written as JSON's
    ``\\u`` escapes (``JSON.parse`` gives the same string back), as are U+2028 and U+2029 (line ends to older
    JavaScript) and lone surrogates (not UTF-8: the page could not be written, and a browser would replace them).
    """
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    payload = re.sub("[<>&\u2028\u2029]", lambda m: _SCRIPT_UNSAFE[m.group()], payload)
    return re.sub("[\ud800-\udfff]", lambda m: f"\\u{ord(m.group()):04x}", payload)


def render(data: dict[str, Any]) -> str:
    """The page: the template with ``data`` inlined (:func:`embedded_json`) and the title escaped, both in one pass
    (so that neither can bring in the other's placeholder)."""
    template = resources.files(__package__).joinpath("explorer.html").read_text(encoding="utf-8")
    fill = {"__TITLE__": html.escape(data["title"]), "__DATA__": embedded_json(data)}
    return re.sub("__TITLE__|__DATA__", lambda m: fill[m.group()], template)


def check_path(path: str | os.PathLike[str]) -> Path:
    """``path`` if the page can be written there (an existing directory), else ``ValueError``."""
    path = Path(path)
    if not Path(os.path.abspath(path)).parent.is_dir():
        raise ValueError(f"out: directory {str(path.parent)!r} does not exist")
    if os.path.isdir(path):
        raise ValueError(f"out: {str(path)!r} is a directory; expected a file name such as explorer.html")
    return check_output_file("out", path)


def write(page: str, path: str | os.PathLike[str]) -> Path:
    """Write the page atomically (temp file + rename)."""
    path = check_path(path)
    atomic_write(path, page)
    return path


def chromium() -> str:
    """The path of a Chromium browser on this machine (Debian's ``chromium``), else ``ValueError`` saying how."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise ValueError("screenshot: needs a Chromium browser; install one with: apt-get install -y chromium")


def check_screenshot_path(path: str | os.PathLike[str]) -> Path:
    """``path`` if a screenshot can be saved there (``.png`` in an existing directory), else ``ValueError``."""
    path = Path(path)
    if path.suffix.lower() != ".png" or not path.parent.is_dir():
        raise ValueError(f"screenshot: expected a .png file name in an existing directory, got {str(path)!r}")
    return check_output_file("screenshot", path)


def screenshot(page: str | os.PathLike[str], out: str | os.PathLike[str], *, size: tuple[int, int] = (1400, 900),
               hover: int = 60) -> Path:
    """A PNG of the page as a reader sees it: the unit most correlated with a feature selected, the mouse over
    character ``hover``.

    Drives the system's Chromium headless with Playwright (``pip install playwright``; no browser download).
    """
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise ValueError("screenshot: needs the playwright package: pip install playwright") from None
    out = check_screenshot_path(out)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            view = browser.new_page(viewport={"width": size[0], "height": size[1]})
            view.goto(Path(page).resolve().as_uri())
            ranked = view.locator("#ranking tr")
            if ranked.count():
                strength = [abs(float(text.rsplit("=", 1)[1])) for text in ranked.locator("td.num:last-child")
                            .all_inner_texts()]
                ranked.nth(strength.index(max(strength))).click()
            spans = view.locator("#text span[data-t]")
            spans.nth(min(hover, spans.count() - 1)).hover()
            view.screenshot(path=str(out))
        finally:
            browser.close()
    return out


def serve(page: str, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    """A server (not yet started: call ``serve_forever``) answering every GET with the page."""
    body = page.encode("utf-8")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # quiet: the CLI prints the address once
            pass

    try:
        return ThreadingHTTPServer((host, port), Handler)
    except OSError as error:
        raise ValueError(f"port: cannot serve on {host}:{port}: {error.strerror}") from None
