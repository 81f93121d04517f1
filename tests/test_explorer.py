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
import unicodedata
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


def language_model(cell: str = "lstm", layers: int = 2, text: str = TEXT) -> charlm.LanguageModel:
    """An untrained model whose vocabulary is the characters of ``text``."""
    torch.manual_seed(0)
    config = dataclasses.replace(charlm.CharLMConfig(), cell=cell, layers=layers, hidden=6, embed=4)
    vocab = charlm.Vocab.of(text)
    return charlm.LanguageModel(charlm.CharLM(len(vocab), config), vocab, config)


EMOJI_TEXT = "🙂 Hi, 𝔐acbeth 🎉\nsaid the 👩‍🔬 to Mme\u0301 👍🏽 in 🇬🇧.🎉"
"""Characters outside the Basic Multilingual Plane (two UTF-16 units each in JavaScript) in the middle and at the end;
a ZWJ sequence, a skin tone, a flag (several code points each: as many steps of the model) and a combining accent."""
MARKUP_TEXT = "MACBETH <!--<script> & </script><script>alert(1)</script> <img src=x onerror=alert(2)> \u2028 ]]> end"
"""What could end or rewrite the page's data block if it were not escaped (after ``<!--<script>`` the HTML parser
skips ``</script>`` end tags until a ``-->``), and markup that would run if it were inserted as HTML."""


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


def test_embedded_json_holds_no_markup_and_reads_back_the_same() -> None:
    data = {"text": MARKUP_TEXT + "\u2029", "title": "__DATA__ </title>", "lone": "\ud83d"}
    payload = explorer.embedded_json(data)
    assert not set(payload) & set("<>&\u2028\u2029") and "\ud83d" not in payload
    assert json.loads(payload) == data
    page = explorer.render({**data, "title": "__DATA__ </title>"})
    assert page.count("<script") == 2 and page.count("</script>") == 2  # the data's element and the page's script
    assert "<title>gatedrnn explorer: __DATA__ &lt;/title&gt;</title>" in page  # no placeholder brought in
    assert page.encode("utf-8")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return tiny_run(tmp_path_factory.mktemp("runs") / "lstm")


def test_cli_explore_writes_the_page(run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "page.html"
    assert main(["explore", "--model", str(run), "--chars", "300", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    held_out = charlm.load(run).validation_text()[:300]
    assert held_out in json.loads(re.search(r'type="application/json">(.*?)</script>', out.read_text(), re.S)
                                  .group(1))["text"]
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


def browse(path: Path, check) -> list[str]:
    """Opens the page in headless Chromium (no network), runs ``check(page)``, and returns the page's errors and
    warnings, and any dialog a script opened."""
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("dialog", lambda d: (errors.append(f"dialog: {d.message}"), d.dismiss()))
            page.route("**/*", lambda route: route.abort() if not route.request.url.startswith("file:")
                       else route.continue_())
            page.goto(path.as_uri())
            check(page)
        finally:
            browser.close()
    return errors


@pytest.mark.parametrize("text", [EMOJI_TEXT, MARKUP_TEXT], ids=["emoji", "markup"])
def test_any_text_in_headless_chromium(tmp_path: Path, text: str) -> None:
    """One span per character (code point) as the model read them, the header's count, the gates and predictions
    of the last characters (the emoji among them), markup shown as text and never run, and Chromium's own
    ``--dump-dom`` of the page."""
    assert CHROMIUM, "the explorer test needs Debian's chromium: apt-get install -y chromium (make test does it)"
    lm = language_model(layers=1, text=text)
    data = explorer.explorer_data(lm, text, title=text)
    path = explorer.write(explorer.render(data), tmp_path / "explorer.html")
    chars = list(text)  # code points

    def shown(c: str) -> str:  # as the page's text shows a character: each step visible on its own
        if c == "\n":
            return "↵\n"
        if c != "\t" and unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp"):
            return f"U+{ord(c):04X}"
        return "◌" + c if unicodedata.category(c).startswith("M") else c

    def visible(c: str) -> str:  # as the step panel shows it
        return {"\n": "↵", " ": "␣", "\t": "⇥"}.get(c, shown(c))

    def check(page) -> None:
        spans = page.locator("#text span[data-t]")
        assert spans.all_text_contents() == [shown(c) for c in chars]
        assert f"; {len(chars)} characters, " in page.inner_text("#meta")
        assert page.title() == "gatedrnn explorer: " + re.sub(r"[ \t\n\f\r]+", " ", text).strip()
        assert page.locator("#text img, #text script, #ranking img").count() == 0
        for t in range(len(chars)):  # every step is a box of its own to point at, the last ones too
            spans.nth(t).hover(timeout=5000)
            after = f" — next in the text: {visible(chars[t + 1])}" if t + 1 < len(chars) else ""
            assert page.inner_text("#step-info") == f"step {t}: read {visible(chars[t])}{after}"
            predicted = page.locator("#predictions li .char").all_inner_texts()
            assert predicted == [visible(c) for c, _ in data["predictions"][t]]
            input_gate = page.locator("#step-gates tr").nth(1).locator("td").all_inner_texts()  # i: unit 0, mean
            assert input_gate[0] == "i"
            assert float(input_gate[1]) == pytest.approx(decode(data["layers"][0]["signals"]["i"])[t, 0], abs=5e-4)

    assert browse(path, check) == []
    dumped = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", path.as_uri()],
                            capture_output=True, text=True, timeout=120)
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    assert dumped.stdout.count("data-t=") == len(chars) and f"; {len(chars)} characters, " in dumped.stdout


def test_cli_explore_screenshot(run: Path, tmp_path: Path, capsys) -> None:
    assert CHROMIUM, "the explorer test needs Debian's chromium: apt-get install -y chromium (make test does it)"
    page, shot = tmp_path / "explorer.html", tmp_path / "explorer.png"
    assert main(["explore", "--model", str(run), "--chars", "200", "--out", str(page), "--screenshot", str(shot)]) == 0
    assert capsys.readouterr().out.splitlines() == [str(page), str(shot)]
    image = imread(shot)
    assert image.shape[:2] == (900, 1400) and image.std() > 0.05  # a page, not a blank
    assert main(["explore", "--model", str(run), "--out", str(page), "--screenshot", str(tmp_path / "x.jpg")]) == 2
    assert "screenshot: expected a .png file name in an existing directory" in capsys.readouterr().err
