# Two commands do all the set-up on a fresh machine:
#   make demo   installs what it needs into .venv and runs the demo (train, eval, predict)
#   make test   installs what it needs into .venv and runs the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
SAM := $(VENV)/bin/sam-medft

.PHONY: setup demo test lint wheel clean

setup: $(VENV)/.installed

# torch is pinned first: 2.13.0 is the CPU build; an unpinned torch pulls a CUDA build of
# several GB. Use your own CUDA torch by installing it into the venv before `make`.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip show torch >/dev/null 2>&1 || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps segment-anything segment-anything-hq mobilesam-mirror
	touch $@

demo: setup
	$(SAM) train recipes/demo.yaml --overwrite
	$(SAM) eval runs/demo --baseline
	$(SAM) data synth runs/demo_data --overwrite
	$(SAM) predict runs/demo runs/demo_data/test.csv --out runs/demo/predictions --overwrite

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check sam_medft tests

# dist/sam_medft-*.whl, with the recipes and accelerate configs inside (see setup.py)
wheel: setup
	rm -rf build/lib
	$(PY) -m pip wheel . --no-deps --no-build-isolation --no-index -w dist

clean:
	rm -rf runs .pytest_cache
