# MUSED-FM developer entry points.
#   make install   build .venv (idempotent): pinned torch first, then this package with its dev extra
#   make test      install if needed, then run the test suite
#   make lint      ruff
# GPU users: make install TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
# DeepSpeed compiles a comm op on first use; keep the build cache so tests and CI pay once.
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions
export HF_HUB_OFFLINE := 1
export WANDB_MODE ?= disabled

.PHONY: install test test-fast lint bench demo clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip setuptools wheel
	# torch first and pinned: anything unpinned would pull several GB of CUDA wheels.
	$(PIP) install --quiet $(TORCH)
	$(PIP) install --quiet -e ".[dev]"
	$(PIP) check
	touch $(STAMP)

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: install
	$(PY) -m mused_fm.bench model --rounds 9 --json docs/bench_model.json
	$(PY) -m mused_fm.bench loader --json docs/bench_loader.json
	$(PY) -m mused_fm.bench pack --json docs/bench_pack.json

demo:
	@echo "make demo arrives with the trainer (issue: DeepSpeed ZeRO trainer); nothing to run yet." >&2
	@exit 2

clean:
	rm -rf $(VENV) .cache .pytest_cache
