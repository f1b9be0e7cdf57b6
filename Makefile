# cemkit developer commands. `make demo` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip
STAMP   = $(VENV)/.installed
DEV     = $(VENV)/.installed-dev
export WANDB_MODE ?= offline
export WANDB_SILENT ?= true

.PHONY: venv install test test-all demo bench clean

# cemkit and its dependencies: all that `make demo` needs (76 + 29 s on 2 cores; with the test and export
# extras 84 + 37 s, which `make test` adds on top)
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q --no-compile -c constraints.txt -e .
	@# pip byte-compiles on one core; compileall uses them all (2 cores: 110 instead of 125 s for the whole install).
	@# A few files in the installed packages are not Python 3 (templates, test data): their errors are ignored.
	$(PY) -m compileall -q -j 0 $(VENV)/lib > /dev/null 2>&1 || true
	touch $(STAMP)

$(DEV): $(STAMP)
	$(PIP) install -q --no-compile -c constraints.txt -e ".[dev]"
	$(PY) -m compileall -q -j 0 $(VENV)/lib > /dev/null 2>&1 || true
	touch $(DEV)

venv install: $(DEV)

# lint-imports: the layer contracts in pyproject.toml (no stage imports another; nothing imports upward)
test: $(DEV)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -m "not slow"

test-all: $(DEV)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/cemkit demo

bench: $(DEV)
	$(PIP) install -q -c constraints.txt -e ".[dev,bench]"
	$(PY) scripts/bench_curate.py
	$(PY) scripts/bench_pretrain.py
	$(PY) scripts/bench_predict.py
	$(PY) scripts/bench_finetune_step.py
	$(PY) scripts/bench_demo_threads.py
	$(PY) scripts/bench_watershed.py

clean:
	rm -rf $(VENV) build *.egg-info outputs .pytest_cache
