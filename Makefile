# `make demo` and `make test` work on a fresh machine with only Python 3 and make: they create .venv,
# install torch if it is not importable there, install gatedrnn in editable mode with its dev extras, then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.gatedrnn-installed
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test install clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# The demo trains the default character-level LSTM on Macbeth for 4 minutes, then samples from its best weights.
DEMO_RUN := runs/demo
demo: $(STAMP)
	rm -rf $(DEMO_RUN)
	$(VENV)/bin/gatedrnn charlm train --minutes 4 --out $(DEMO_RUN)
	$(VENV)/bin/gatedrnn charlm sample --model $(DEMO_RUN) --prime "MACBETH." --length 600 --temperature 0.8

test: $(STAMP)
	$(VENV)/bin/ruff check src tests
	$(PY) -m pytest -n 2 -q

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
