"""The explorer page: its data, its text features, the CLI, the server, and the page itself in headless Chromium."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.image import imread

import gatedrnn
from charlm_runs import tiny_run
from gatedrnn.cli import main
from gatedrnn.tasks import charlm
from gatedrnn.viz import explorer, features

TEXT = 'FIRST WITCH.\nWhen shall we three meet again?\n[Thunder.]\n"Aroint thee," she said.\n\nMACBETH.\nSo foul.'


def language_model(cell: str = "lstm", layers: int = 2) -> charlm.LanguageModel:
    torch.manual_seed(0)
    config = dataclasses.replace(charlm.CharLMConfig(), cell=cell, layers=layers, hidden=6, embed=4)
    vocab = charlm.Vocab.of(TEXT)
    return charlm.LanguageModel(charlm.CharLM(len(vocab), config), vocab, config)


def decode(encoded: dict) -> np.ndarray:
    """The page's decoding of one signal, in NumPy: ``(T, U)``."""
    q = np.frombuffer(base64.b64decode(encoded["data"]), dtype=np.uint8).reshape(-1, encoded["units"])
    lo, hi = np.array(encoded["lo"]), np.array(encoded["hi"])
    return lo + q / 255 * (hi - lo)


def test_features_of_a_play() -> None:
    text = 'AB C.\n"x y"\n[Go.]'
    np.testing.assert_array_equal(features.speaker_name(text), [1] * 5 + [0] * 12)
    np.testing.assert_array_equal(features.inside_quotes(text), [0] * 6 + [1] * 5 + [0] * 6)
    np.testing.assert_array_equal(features.after_newline(text), [0] * 5 + [1] + [0] * 5 + [1] + [0] * 5)
    np.testing.assert_array_equal(features.position_in_line(text), [1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5])
    np.testing.assert_array_equal(features.stage_direction(text), [0] * 12 + [1] * 5)
    assert features.inside_quotes('"open\n\nclosed by the blank line')[8:].sum() == 0
    values = np.random.default_rng(0).normal(size=(17, 3))
    values[:, 2] = 1.0  # a unit that never changes correlates 0
    column = features.position_in_line(text)
    r = features.correlations(values, column)
    np.testing.assert_allclose(r[:2], [np.corrcoef(values[:, u], column)[0, 1] for u in (0, 1)])
    assert r[2] == 0 and features.correlations(values, np.ones(17)) is None


def test_explorer_data_is_what_the_model_computes() -> None:
    lm = language_model()
    data = explorer.explorer_data(lm, TEXT)
    assert data["text"] == TEXT and [layer["key"] for layer in data["layers"]] == ["rnn_l0", "rnn_l1"]
    with torch.no_grad():
        logits, _ = lm.model(lm.vocab.encode(TEXT).unsqueeze(0))
    probs = torch.softmax(logits[0].double(), -1)
    for t in (0, 17, len(TEXT) - 1):
        top = probs[t].topk(5)
        assert [c for c, _ in data["predictions"][t]] == [lm.vocab.chars[i] for i in top.indices]
        np.testing.assert_allclose([p for _, p in data["predictions"][t]], top.values, atol=5e-5)
    ids = lm.vocab.encode(TEXT)
    nats = -probs[torch.arange(len(TEXT) - 1), ids[1:]].log().mean().item()  # one pass over the whole text
    assert data["bits_per_char"] == pytest.approx(nats / np.log(2), abs=1e-4)
    with torch.no_grad(), gatedrnn.inspect.record(lm.model) as rec:
        lm.model(lm.vocab.encode(TEXT).unsqueeze(0))
    for layer, trace in zip(data["layers"], rec):
        assert list(layer["signals"]) == ["i", "f", "g", "o", "h", "c"]
        for name, encoded in layer["signals"].items():
            exact = trace[name][0].double().numpy()
            assert encoded["kind"] == ("gate" if name in "ifo" else "signed")
            np.testing.assert_allclose(decode(encoded), exact, atol=(exact.max(0) - exact.min(0)).max() / 500)
    by_name = {f["name"]: f for f in data["features"]}
    assert list(by_name) == list(features.FEATURES) and all(f["varies"] for f in data["features"])
    line = by_name["position in line"]["top"]
    assert [abs(row["r"]) for row in line] == sorted((abs(row["r"]) for row in line), reverse=True)
    best = line[0]
    trace = rec.trace(layer=int(best["layer"][-1]))
    r = np.corrcoef(trace[best["signal"]][0, :, best["unit"]].double().numpy(), features.position_in_line(TEXT))
    assert best["r"] == pytest.approx(r[0, 1], abs=1e-3)


def test_page_is_self_contained_and_escapes_the_text() -> None:
    lm = language_model(cell="gru", layers=1)
    text = "When </script><script>alert(1)</script> so"
    lm = charlm.LanguageModel(lm.model, charlm.Vocab.of(text + TEXT), lm.config)
    lm.model.embed = torch.nn.Embedding(len(lm.vocab), 4)
    lm.model.head = torch.nn.Linear(6, len(lm.vocab))
    page = explorer.render(explorer.explorer_data(lm, text, title="<b>t</b>"))
    assert page.count("</script>") == 2  # the data's own script and the page's: the text cannot close either
    assert "&lt;b&gt;t&lt;/b&gt;" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page) and "@import" not in page
    data = json.loads(re.search(r'<script id="data" type="application/json">(.*?)</script>', page, re.S).group(1))
    assert data["text"] == text and data["layers"][0]["family"] == "gru"
    assert [f["varies"] for f in data["features"]] == [False, True, False, False, False]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return tiny_run(tmp_path_factory.mktemp("runs") / "lstm")


def test_cli_explore_writes_the_page(run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "page.html"
    assert main(["explore", "--model", str(run), "--chars", "300", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    held_out = charlm.load(run).validation_text()[:300]
    assert held_out in json.loads(re.search(r'type="application/json">(.*?)</script>', out.read_text(), re.S)
                                  .group(1).replace("<\\/", "</"))["text"]
    text = tmp_path / "speech.txt"
    text.write_text("MACBETH.\nIs this a dagger which I see before me,\n")
    assert main(["explore", "--model", str(run), "--text", str(text), "--out", str(out)]) == 0
    assert "Is this a dagger" in out.read_text()


@pytest.mark.parametrize("argv, message", [
    (["--out", "missing/page.html"], "out: directory 'missing' does not exist"),
    (["--text", "no-such-file.txt"], "text: no-such-file.txt: no such file"),
    (["--chars", "0"], "chars: expected an int >= 1, got 0"),
])
def test_cli_explore_errors(run: Path, capsys, argv: list[str], message: str) -> None:
    assert main(["explore", "--model", str(run), *argv]) == 2
    assert capsys.readouterr().err == f"gatedrnn: error: {message}\n"


def test_server_answers_with_the_page() -> None:
    server = explorer.serve("<html>page ✓</html>", port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        with urllib.request.urlopen(f"http://{host}:{port}/", timeout=10) as response:
            assert response.headers["Content-Type"] == "text/html; charset=utf-8"
            assert response.read().decode() == "<html>page ✓</html>"
    finally:
        server.shutdown()
        server.server_close()


def test_cli_explore_serve_until_interrupted(run: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "gatedrnn", "explore", "--model", str(run), "--chars", "200",
               "--out", str(tmp_path / "page.html"), "--serve", "--port", "0"]
    # An xdist worker ignores SIGINT, and a child inherits that; give the child the default, as a terminal does.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert process.stdout.readline().strip() == str(tmp_path / "page.html")
        address = re.match(r"serving the explorer on (http://\S+) \(Ctrl-C to stop\)", process.stdout.readline())
        with urllib.request.urlopen(address.group(1), timeout=30) as response:
            assert response.read().decode() == (tmp_path / "page.html").read_text()
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()


# ---------------------------------------------------------------------------------------------------------------
# The page in a real browser: Debian's chromium, driven by Playwright (no browser download; `make test` installs
# chromium when it is missing).

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_page_in_headless_chromium(run: Path, tmp_path: Path) -> None:
    assert CHROMIUM, "the explorer test needs Debian's chromium: apt-get install -y chromium (make test does it)"
    from playwright.sync_api import sync_playwright

    page_path = tmp_path / "explorer.html"
    assert main(["explore", "--model", str(run), "--chars", "400", "--out", str(page_path)]) == 0
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.route("**/*", lambda route: route.abort() if not route.request.url.startswith("file:")
                       else route.continue_())  # any network request would fail the page
            page.goto(page_path.as_uri())
            spans = page.locator("#text span[data-t]")
            assert spans.count() == 400
            colours = lambda: page.eval_on_selector_all(  # noqa: E731
                "#text span[data-t]", "spans => spans.map(s => s.style.backgroundColor)")
            before = colours()
            assert len(set(before)) > 1  # the text is coloured by unit 0 of the cell state
            unit = page.locator("#unit")
            unit.fill("5")
            unit.dispatch_event("input")
            after = colours()
            assert after != before and len(set(after)) > 1
            page.select_option("#signal", "f")
            assert colours() != after
            row = page.locator("#ranking tr").first
            layer, signal, unit, _ = row.locator("td").all_inner_texts()
            row.click()  # a ranked unit selects its layer, signal and unit
            assert page.eval_on_selector("#layer", "s => s.selectedOptions[0].textContent") == layer
            assert page.input_value("#signal") == signal and f"unit {page.input_value('#unit')}" == unit
            spans.nth(42).hover()
            predictions = page.locator("#predictions li")
            assert predictions.count() == 5
            probabilities = [float(t.rstrip("%")) for t in predictions.locator(".num").all_inner_texts()]
            assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 100.05
            assert page.locator("#step-info").inner_text().startswith("step 42: read")
            assert page.locator("#step-gates tr").count() == 7  # header, i, f, g, o, h, c
            shot = tmp_path / "explorer.png"
            page.screenshot(path=str(shot))
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
    assert errors == []


def test_cli_explore_screenshot(run: Path, tmp_path: Path, capsys) -> None:
    assert CHROMIUM, "the explorer test needs Debian's chromium: apt-get install -y chromium (make test does it)"
    page, shot = tmp_path / "explorer.html", tmp_path / "explorer.png"
    assert main(["explore", "--model", str(run), "--chars", "200", "--out", str(page), "--screenshot", str(shot)]) == 0
    assert capsys.readouterr().out.splitlines() == [str(page), str(shot)]
    image = imread(shot)
    assert image.shape[:2] == (900, 1400) and image.std() > 0.05  # a page, not a blank
    assert main(["explore", "--model", str(run), "--out", str(page), "--screenshot", str(tmp_path / "x.jpg")]) == 2
    assert "screenshot: expected a .png file name in an existing directory" in capsys.readouterr().err
