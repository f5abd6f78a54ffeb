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

# The mission on the simulated cohort, on 2 CPU ranks (or 2 GPUs where present). DEMO_DIR=path to move it.
DEMO_DIR ?= demo_out
DEMO_NSD := subj01,subj02,subj03,subj04,subj05,subj06
DEMO_HCP := 100610,102311,102816
demo: install
	@echo "== 1/6 simulated cohort in the real NSD/HCP layouts -> $(DEMO_DIR)/raw"
	$(PY) -m shards_tools synth --out $(DEMO_DIR)/raw --preset demo
	@echo "== 2/6 shards (subj06 is packed but held out of training: step 6 adds it)"
	$(PY) -m shards_tools pack-nsd --root $(DEMO_DIR)/raw/nsd --subjects $(DEMO_NSD) --roi-dim 16 \
		--clip-model $(DEMO_DIR)/raw/clip --out $(DEMO_DIR)/shards/nsd
	$(PY) -m shards_tools pack-hcp --root $(DEMO_DIR)/raw/hcp --subjects $(DEMO_HCP) \
		--clip-model $(DEMO_DIR)/raw/clip --out $(DEMO_DIR)/shards/hcp
	@echo "== 3/6 DeepSpeed ZeRO-2 training on 2 ranks -> $(DEMO_DIR)/run"
	$(VENV)/bin/deepspeed --num_gpus 2 launch/train.py recipes/demo.yaml run.out_dir=$(DEMO_DIR)/run \
		data.datasets.nsd.url=$(DEMO_DIR)/shards/nsd data.datasets.hcp.url=$(DEMO_DIR)/shards/hcp
	@echo "== 4/6 evaluation on the test split -> $(DEMO_DIR)/eval.json"
	$(PY) launch/evaluate.py --checkpoint $(DEMO_DIR)/run/export --shards $(DEMO_DIR)/shards/nsd \
		--shards $(DEMO_DIR)/shards/hcp --split test --json $(DEMO_DIR)/eval.json
	@echo "== 5/6 comparison run with subj06 in pretraining (the reference of the new-subject curve)"
	$(VENV)/bin/deepspeed --num_gpus 2 launch/train.py recipes/demo.yaml run.out_dir=$(DEMO_DIR)/run_with_subj06 \
		data.datasets.nsd.url=$(DEMO_DIR)/shards/nsd data.datasets.hcp.url=$(DEMO_DIR)/shards/hcp \
		data.datasets.nsd.subjects=$(DEMO_NSD)
	@echo "== 6/6 subj06 added by token-only fine-tuning, data-efficiency sweep -> $(DEMO_DIR)/adapt"
	$(PY) launch/adapt_subject.py --checkpoint $(DEMO_DIR)/run/export --shards $(DEMO_DIR)/shards/nsd \
		--subjects nsd/subj06 --fractions 0.01,0.05,0.1,0.25,1.0 --reference $(DEMO_DIR)/run_with_subj06/export \
		--out $(DEMO_DIR)/adapt

clean:
	rm -rf $(VENV) .cache .pytest_cache
