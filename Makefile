# cemkit developer commands. `make demo` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip
STAMP   = $(VENV)/.installed
DEV     = $(VENV)/.installed-dev
export WANDB_MODE ?= offline
export WANDB_SILENT ?= true

.PHONY: venv install display test test-all demo bench clean

# The napari plugin's tests draw with OpenGL (Mesa) in a virtual X display (pytest-xvfb starts Xvfb): Xvfb and
# the X libraries of Qt's xcb platform, by their Debian names. Installed when missing where we may (root with
# apt-get: about 10 s); elsewhere install them, or run the tests in a desktop session.
DISPLAY_PACKAGES = xvfb libgl1-mesa-dri libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-image0 \
	libxcb-render-util0 libxcb-randr0 libxcb-shape0 libxcb-xfixes0 libxcb-cursor0 libxkbcommon-x11-0

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

display:
	@if ! command -v Xvfb > /dev/null || ! ldconfig -p | grep -q libxcb-icccm.so.4 || ! ldconfig -p | grep -q libxcb-cursor.so.0; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get > /dev/null; then \
	    echo "installing Xvfb and Qt's X libraries for the napari tests"; \
	    apt-get update -qq > /dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends $(DISPLAY_PACKAGES) > /dev/null; \
	  else echo "the napari tests need an X display, or Xvfb and: $(DISPLAY_PACKAGES)"; fi; \
	fi

# lint-imports: the layer contracts in pyproject.toml (no stage imports another; nothing imports upward)
test: $(DEV) display
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -m "not slow"

test-all: $(DEV) display
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
