# `make demo` and `make test` work on a fresh machine with only Python 3 and make: they create .venv,
# install torch if it is not importable there, install gatedrnn in editable mode with its dev extras (plots, docs,
# test tools), then run. `make docs` builds the documentation site into site/.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.gatedrnn-installed
TORCH_SPEC ?= torch==2.13.0
# With a CPU build of torch the tests run the gpu engine's Triton kernels in triton's CPU interpreter; 3.9 is the
# first whose interpreter works with NumPy >= 2.4. A CUDA build of torch brings its own triton, left as it is.
TRITON_SPEC ?= triton==3.9.0
CPU_TORCH_ON_LINUX_X86 := import platform, sys, torch; \
	sys.exit(torch.version.cuda is not None or sys.platform != "linux" or platform.machine() != "x86_64")

.PHONY: demo demo-inspect test docs install clean browser

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[dev]"
	if $(PY) -c '$(CPU_TORCH_ON_LINUX_X86)'; then $(PY) -m pip install "$(TRITON_SPEC)"; fi
	touch $(STAMP)

install: $(STAMP)

# The demo trains the default character-level LSTM on Macbeth for at most 4 minutes (it stops early once the
# held-out loss stops improving), then samples from its best weights. The cpu engine is compiled first (once per
# cache), so that the 4 minutes are training.
DEMO_RUN := runs/demo
demo: $(STAMP)
	$(VENV)/bin/gatedrnn build
	rm -rf $(DEMO_RUN)
	$(VENV)/bin/gatedrnn charlm train --minutes 4 --out $(DEMO_RUN)
	$(VENV)/bin/gatedrnn charlm sample --model $(DEMO_RUN) --prime "MACBETH." --length 600 --temperature 0.8
	$(MAKE) --no-print-directory demo-inspect

# Inside the demo model: the explorer page, its gates, and the gradient flow of RNN, LSTM and GRU models trained
# briefly for the comparison. Runs on any existing $(DEMO_RUN).
demo-inspect: $(STAMP)
	$(VENV)/bin/gatedrnn explore --model $(DEMO_RUN) --out $(DEMO_RUN)/explorer.html
	$(VENV)/bin/gatedrnn viz gates --model $(DEMO_RUN) --out $(DEMO_RUN)/gates.png
	$(VENV)/bin/gatedrnn viz gradient-flow --out $(DEMO_RUN)/gradient-flow.png --quiet
	@echo "Explorer page: $(DEMO_RUN)/explorer.html (open it in a browser, or: gatedrnn explore --model $(DEMO_RUN) --serve)"
	@echo "Plots: $(DEMO_RUN)/gates.png $(DEMO_RUN)/gradient-flow.png"

# The explorer test drives Debian's chromium; install it when missing (as root, as on CI).
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium)

# The cpu engine's kernels are compiled before the tests start (once per cache): tests that run it in
# subprocesses with a time limit (torchrun) would otherwise wait on another worker's build.
test: $(STAMP) browser
	$(VENV)/bin/ruff check src tests examples scripts
	$(VENV)/bin/gatedrnn build
	$(MAKE) --no-print-directory docs
	$(PY) -m pytest -n 2 -q

# The documentation site: --strict fails on a broken link, a missing page or an API object that does not exist.
# The Performance page is rendered from the benchmark JSON in docs/benchmarks/ (scripts/perf_page.py).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

clean:
	rm -rf $(VENV) build site src/*.egg-info .pytest_cache
