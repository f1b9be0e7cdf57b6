# cemkit developer commands. `make demo` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip
STAMP   = $(VENV)/.installed
export WANDB_MODE ?= offline
export WANDB_SILENT ?= true

.PHONY: venv install test test-all demo bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

venv install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/cemkit demo

bench: $(STAMP)
	$(PIP) install -q -c constraints.txt -e ".[dev,bench]"
	$(PY) scripts/bench_curate.py
	$(PY) scripts/bench_pretrain.py
	$(PY) scripts/bench_predict.py
	$(PY) scripts/bench_demo_threads.py

clean:
	rm -rf $(VENV) build *.egg-info outputs .pytest_cache
