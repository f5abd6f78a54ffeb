# MUSED-FM developer entry points.
#   make install   build .venv (idempotent): pinned torch first, then this package with its dev extra
#   make test      install if needed, then run the test suite
#   make lint      ruff
#   make recipe-doc  regenerate the README's recipe reference from mused_fm/config.py
# GPU users: make install TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
# DeepSpeed compiles a comm op on first use; keep the build cache so tests and CI pay once.
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions
# The tiny CLIP of the simulated cohort is trained once per preset and seed, then copied from here.
export MUSED_FM_CACHE ?= $(CURDIR)/.cache/mused_fm
export HF_HUB_OFFLINE := 1
export WANDB_MODE ?= disabled

.PHONY: install test test-fast lint bench demo demo-compare clean recipe-doc gpu-wheels gpu-check

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

# The README's recipe reference, from the dataclasses in mused_fm/config.py (a test checks it is current).
recipe-doc: install
	$(PY) -m mused_fm.recipe_reference --write README.md

bench: install
	$(PY) -m mused_fm.bench model --rounds 9 --json docs/bench_model.json
	$(PY) -m mused_fm.bench loader --json docs/bench_loader.json
	$(PY) -m mused_fm.bench pack --json docs/bench_pack.json
	$(PY) -m mused_fm.bench doc --doc docs/BENCHMARKS.md --json-dir docs

# The mission on the simulated cohort, on 2 CPU ranks (or 2 GPUs where present). DEMO_DIR=path to move it;
# S3=1 streams the training shards from a local S3 server (moto on 127.0.0.1). The DEMO_* variables
# shrink it (the end-to-end test runs it on the `test` preset in a minute or two).
DEMO_DIR       ?= demo_out
DEMO_PRESET    ?= demo
DEMO_NSD       ?= subj01,subj02,subj03,subj04,subj05,subj06
DEMO_TRAIN_NSD ?= subj01,subj02,subj03,subj04,subj05
DEMO_HCP       ?= 100610,102311,102816,104416
DEMO_TRAIN_HCP ?= 100610,102311,102816
# NSD is packed on fsaverage with one cohort basis, fitted on DEMO_TRAIN_NSD; the others are appended with it.
# Held out of training, then added by token-only fine-tuning: DEMO_NEW -> adapt/ (HCP: volumes in a space
# shared by all subjects), DEMO_NEW_NSD -> adapt_nsd/ (NSD: fsaverage, the cohort's basis; empty to skip).
DEMO_NEW       ?= hcp/104416
DEMO_NEW_NSD   ?= nsd/subj06
DEMO_FRACTIONS ?= 0.01,0.05,0.1,0.25,1.0
# The HCP sweep trains 3D CNNs from scratch and in full at each point: three points and shorter runs keep
# make demo under 10 minutes on 2 cores (the NSD sweep runs all five).
DEMO_NEW_FRACTIONS ?= 0.01,0.1,1.0
DEMO_NEW_ARGS  ?= train.max_steps=160
# Token-only runs of the sweeps at these seeds (scratch and full at the first); the sweeps also score zero-shot.
DEMO_SEEDS     ?= 0,1,2
# A subject of pretraining re-learnt by token-only fine-tuning (--replace): how much of its own tokens' score
# token-only recovers -> adapt_replace/ (empty to skip).
DEMO_REPLACE   ?= nsd/subj01
DEMO_REPLACE_FRACTIONS ?= 0.1,1.0
DEMO_ROI_DIM   ?= 16
DEMO_ARGS      ?=
DEMO_ADAPT_ARGS ?=
DEMO_RANKS     ?= 2
DEMO_PORT      ?= 29500
DS             := $(VENV)/bin/deepspeed --num_gpus $(DEMO_RANKS) --master_port $(DEMO_PORT)
LOCAL_URLS     := data.datasets.nsd.url=$(DEMO_DIR)/shards/nsd data.datasets.hcp.url=$(DEMO_DIR)/shards/hcp
ifeq ($(S3),1)
S3_PREFIX      := s3://mused-demo/shards
TRAIN_VIA      := $(PY) -m shards_tools local-s3 --upload $(DEMO_DIR)/shards=$(S3_PREFIX) --
TRAIN_URLS     := data.datasets.nsd.url=$(S3_PREFIX)/nsd data.datasets.hcp.url=$(S3_PREFIX)/hcp
else
TRAIN_VIA      :=
TRAIN_URLS     := $(LOCAL_URLS)
endif
TRAIN          := launch/train.py recipes/demo.yaml data.datasets.nsd.subjects=$(DEMO_TRAIN_NSD) \
				  data.datasets.hcp.subjects=$(DEMO_TRAIN_HCP) $(DEMO_ARGS)
dataset_of      = $(firstword $(subst /, ,$(1)))

demo: install
	@echo "== 1/7 simulated cohort in the real NSD/HCP layouts -> $(DEMO_DIR)/raw"
	$(PY) -m shards_tools synth --out $(DEMO_DIR)/raw --preset $(DEMO_PRESET)
	@echo "== 2/7 shards ($(DEMO_NEW) $(DEMO_NEW_NSD) packed but held out of training and of the NSD basis: step 6 adds them)"
	$(PY) -m shards_tools pack-nsd --root $(DEMO_DIR)/raw/nsd --subjects $(DEMO_TRAIN_NSD) --roi-dim $(DEMO_ROI_DIM) \
		--clip-model $(DEMO_DIR)/raw/clip --out $(DEMO_DIR)/shards/nsd
	$(PY) -m shards_tools pack-nsd --root $(DEMO_DIR)/raw/nsd --subjects $(DEMO_NSD) --roi-dim $(DEMO_ROI_DIM) \
		--clip-model $(DEMO_DIR)/raw/clip --out $(DEMO_DIR)/shards/nsd
	$(PY) -m shards_tools pack-hcp --root $(DEMO_DIR)/raw/hcp --subjects $(DEMO_HCP) \
		--clip-model $(DEMO_DIR)/raw/clip --out $(DEMO_DIR)/shards/hcp
	@echo "== 3/7 DeepSpeed ZeRO-2 training on $(DEMO_RANKS) ranks$(if $(TRAIN_VIA), streaming from a local S3 server,) -> $(DEMO_DIR)/run"
	$(TRAIN_VIA) $(DS) $(TRAIN) run.out_dir=$(DEMO_DIR)/run $(TRAIN_URLS)
	@echo "== 4/7 evaluation on the test split -> $(DEMO_DIR)/eval.json (and the export's model card), predictions -> $(DEMO_DIR)/predictions.jsonl"
	$(PY) launch/evaluate.py --checkpoint $(DEMO_DIR)/run/export --shards $(DEMO_DIR)/shards/nsd \
		--shards $(DEMO_DIR)/shards/hcp --split test --json $(DEMO_DIR)/eval.json
	$(PY) launch/predict.py --checkpoint $(DEMO_DIR)/run/export --shards $(DEMO_DIR)/shards/nsd \
		--shards $(DEMO_DIR)/shards/hcp --split test --out $(DEMO_DIR)/predictions.jsonl
	@echo "== 5/7 comparison run with $(DEMO_NEW) $(DEMO_NEW_NSD) in pretraining (the reference of the new-subject curves)"
	$(DS) $(TRAIN) run.out_dir=$(DEMO_DIR)/run_with_new $(LOCAL_URLS) data.datasets.nsd.subjects=$(DEMO_NSD) \
		data.datasets.hcp.subjects=$(DEMO_HCP)
	@echo "== 6/7 $(DEMO_NEW) added by token-only fine-tuning, data-efficiency sweep -> $(DEMO_DIR)/adapt"
	$(PY) launch/adapt_subject.py --checkpoint $(DEMO_DIR)/run/export --shards $(DEMO_DIR)/shards/$(call dataset_of,$(DEMO_NEW)) \
		--subjects $(DEMO_NEW) --fractions $(DEMO_NEW_FRACTIONS) --seeds $(DEMO_SEEDS) \
		--reference $(DEMO_DIR)/run_with_new/export --out $(DEMO_DIR)/adapt $(DEMO_NEW_ARGS) $(DEMO_ADAPT_ARGS)
	$(if $(DEMO_NEW_NSD),@echo "== 6/7 $(DEMO_NEW_NSD) likewise -> $(DEMO_DIR)/adapt_nsd")
	$(if $(DEMO_NEW_NSD),$(PY) launch/adapt_subject.py --checkpoint $(DEMO_DIR)/run/export --shards $(DEMO_DIR)/shards/nsd \
		--subjects $(DEMO_NEW_NSD) --fractions $(DEMO_FRACTIONS) --seeds $(DEMO_SEEDS) \
		--reference $(DEMO_DIR)/run_with_new/export --out $(DEMO_DIR)/adapt_nsd $(DEMO_ADAPT_ARGS))
	$(if $(DEMO_REPLACE),@echo "== 6/7 $(DEMO_REPLACE) (in pretraining) re-learnt by token-only fine-tuning -> $(DEMO_DIR)/adapt_replace")
	$(if $(DEMO_REPLACE),$(PY) launch/adapt_subject.py --checkpoint $(DEMO_DIR)/run/export \
		--shards $(DEMO_DIR)/shards/$(call dataset_of,$(DEMO_REPLACE)) --subjects $(DEMO_REPLACE) --replace \
		--fractions $(DEMO_REPLACE_FRACTIONS) --seeds $(DEMO_SEEDS) --reference $(DEMO_DIR)/run/export \
		--out $(DEMO_DIR)/adapt_replace adapt.methods=tokens adapt.zero_shot=true $(DEMO_ADAPT_ARGS))
	@echo "== 7/7 report -> $(DEMO_DIR)/report/report.md"
	$(PY) launch/report.py $(DEMO_DIR) --shards $(DEMO_DIR)/shards/nsd --shards $(DEMO_DIR)/shards/hcp

# The paper's comparison on seeds, after `make demo` (its shards and its run, which the report is built around):
# recipes/compare/protocol.yaml trains each dataset alone with CLIP-MUSED, MS-EMB and MS-SMODEL at 6 seeds,
# SS-ViT, every loss-ablation subset and the shuffled-CLIP control at 3, in COMPARE_JOBS single-process
# workers -> $(DEMO_DIR)/compare/<dataset>/<method>/s<seed>/, plus the ridge and chance baselines; then the
# report again, which now shows means with 95% intervals, paired differences and the protocol's criteria.
# Rerunning skips finished runs. About 20 min on 2 cores (docs/BENCHMARKS.md).
# NSD is compared twice: `nsd` in the paper's setting (func1pt8mm volumes with per-subject PCA, packed here ->
# $(DEMO_DIR)/shards/nsd_volume; COMPARE_NSD=URL for other shards) and `nsd_fsaverage` on the demo's
# fsaverage shards with one cohort basis (the multi-subject methods and the shuffled-CLIP control).
COMPARE_PROTOCOL ?= recipes/compare/protocol.yaml
COMPARE_JOBS     ?= 2
COMPARE_ARGS     ?=
COMPARE_NSD      ?= $(DEMO_DIR)/shards/nsd_volume
demo-compare: install
	@test -f $(DEMO_DIR)/run/export/model.safetensors || { echo "run make demo first (no $(DEMO_DIR)/run/export)"; exit 2; }
	$(if $(filter $(DEMO_DIR)/shards/nsd_volume,$(COMPARE_NSD)),$(PY) -m shards_tools pack-nsd --root $(DEMO_DIR)/raw/nsd \
		--subjects $(DEMO_TRAIN_NSD) --space func1pt8mm --roi-basis subject --roi-dim $(DEMO_ROI_DIM) \
		--clip-model $(DEMO_DIR)/raw/clip --out $(DEMO_DIR)/shards/nsd_volume)
	$(PY) launch/compare.py $(COMPARE_PROTOCOL) --shards nsd=$(COMPARE_NSD) --shards nsd_fsaverage=$(DEMO_DIR)/shards/nsd \
		--shards hcp=$(DEMO_DIR)/shards/hcp \
		--out $(DEMO_DIR)/compare --jobs $(COMPARE_JOBS) $(COMPARE_ARGS)
	$(PY) launch/report.py $(DEMO_DIR) --shards $(DEMO_DIR)/shards/nsd --shards $(DEMO_DIR)/shards/hcp

# The first GPU run, prepared (docs/BENCHMARKS.md, "GPU check"): on a GPU machine, `bash scripts/gpu_check.sh`
# as it is (no make, no network there: gpu-wheels, run here, puts what its python3 lacks in .gpu-wheels/).
# GPU_CHECK_DEVICE=cpu: its CPU twin at tiny sizes, with this venv (CI runs it). OUT=dir: where bench_gpu.json goes.
gpu-wheels: install
	PYTHON=$(PY) bash scripts/gpu_wheels.sh

gpu-check:
	$(if $(filter cpu,$(GPU_CHECK_DEVICE)),PYTHON=$(PY) )bash scripts/gpu_check.sh

clean:
	rm -rf $(VENV) .cache .pytest_cache .gpu-wheels
