"""The Performance page and the README's headline table: rendered from real `gatedrnn bench --json` output."""

from __future__ import annotations

import importlib.util
import json
import shlex
import sys
from pathlib import Path

import pytest

from gatedrnn import bench
from gatedrnn.cli import main

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("perf_page", ROOT / "scripts" / "perf_page.py")
assert spec is not None and spec.loader is not None
perf_page = importlib.util.module_from_spec(spec)
sys.modules["perf_page"] = perf_page
spec.loader.exec_module(perf_page)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A benchmark directory with a tiny timing run under a known name and an extra one under its own name."""
    directory = tmp_path_factory.mktemp("benchmarks")
    argv = ["bench", "--shapes", "2x5x3x4", "--variants", "lstm,gru,lstm-peephole", "--impls", "torch.nn,cpu",
            "--repeats", "1", "--block-ms", "0", "--threads", "1", "--json", str(directory / "cpu-batches.json")]
    assert main(argv) == 0
    memory = ["bench", "--memory", "--shapes", "2x5x3x4", "--variants", "gru", "--impls", "cpu",
              "--json", str(directory / "my-memory.json")]
    assert main(memory) == 0
    return directory


def test_page_tables_come_from_the_json(recorded: Path) -> None:
    page = perf_page.render_page(recorded)
    result = json.loads((recorded / "cpu-batches.json").read_text())
    entries = {(e["variant"], e["implementation"], e["mode"]): e for e in result["results"]}
    gru = entries[("gru", "cpu", "fwd+bwd")]
    row = next(line for line in page.split("**B×T×I×H = 2×5×3×4, forward+backward**", 1)[1].splitlines()
               if line.startswith("| `gru` |"))
    torch_gru = entries[("gru", "torch.nn", "fwd+bwd")]
    assert row == (f"| `gru` | {torch_gru['median_ms']:.3g} | {gru['median_ms']:.3g} "
                   f"({gru['vs_torch_nn_family']:.2f}) |")
    assert "| `lstm-peephole` | – |" in page  # torch.nn has no peephole LSTM
    assert f"Machine: {bench.cpu_model()}, " in page and f"gatedrnn {result['gatedrnn']}" in page
    peak = json.loads((recorded / "my-memory.json").read_text())["memory"][0]["peak_mib"]
    assert "## my-memory" in page and f"| `gru` | {peak:.1f} |" in page
    # the sections without JSON give the command that records them
    assert "## GPU, bfloat16" in page and "gatedrnn bench --device cuda --dtype bfloat16" in page


def test_the_command_shown_reproduces_the_configuration(recorded: Path) -> None:
    result = json.loads((recorded / "cpu-batches.json").read_text())
    argv = shlex.split(perf_page.command_of(result, "cpu-batches"))
    assert argv[:2] == ["gatedrnn", "bench"]
    args = bench.build_parser().parse_args(argv[2:])
    assert [list(s) for s in args.shapes] == result["config"]["shapes"]
    assert (args.variants, args.impls, args.modes) == (result["config"]["variants"],
                                                       result["config"]["implementations"], result["config"]["modes"])
    assert (args.repeats, args.block_ms, args.threads, args.dtype) == (1, 0.0, 1, "float32")


def test_readme_headline_is_what_the_committed_json_renders(recorded: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    assert perf_page.readme_with_headline(readme) == readme, "run: python scripts/perf_page.py --readme"
    table = perf_page.render_headline(recorded)
    assert table.count("| `lstm` | 2×5×3×4 | `cpu`, float32 |") == 1 and "| `gru` |" in table
    assert "lstm-peephole" not in table


def test_mkdocs_hook_fills_only_the_marked_page(recorded: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(perf_page, "BENCH_DIR", recorded)
    filled = perf_page.on_page_markdown(f"# Performance\n\n{perf_page.PAGE_MARKER}\n", page=None)
    assert perf_page.PAGE_MARKER not in filled and "## CPU, larger batches" in filled
    assert perf_page.on_page_markdown("# Other\n", page=None) == "# Other\n"


def test_record_refuses_an_unknown_benchmark(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        perf_page.main(["--record", "cpu-everything"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--record: expected one of cpu-batch1, cpu-batches, cpu-memory, gpu-float32, gpu-bfloat16 or all" in err
