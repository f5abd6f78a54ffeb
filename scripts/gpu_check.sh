#!/usr/bin/env bash
# make gpu-check: the first run on a GPU, prepared as one command (python -m mused_fm.bench gpu; what it
# measures: mused_fm/bench/gpu.py). Runs as it is on a GPU machine with no network: its own python3 (torch,
# transformers, numpy, ...) plus the wheels of `make gpu-wheels` in .gpu-wheels/, installed into a venv that
# sees the machine's torch. GPU_CHECK_DEVICE=cpu runs its CPU twin at tiny sizes (CI does). Writes
# bench_gpu.json into $OUT when set, else docs/; `python -m mused_fm.bench doc` renders it into BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
device="${GPU_CHECK_DEVICE:-cuda}"
python="${PYTHON:-python3}"
if ! "$python" -c "import deepspeed, webdataset" 2>/dev/null; then
  if [ ! -d .gpu-wheels ]; then
    echo "gpu-check: $python cannot import deepspeed and webdataset, and there is no .gpu-wheels/:" \
         "run make gpu-wheels where there is network, and carry .gpu-wheels with the tree." >&2
    exit 2
  fi
  venv="${TMPDIR:-/tmp}/mused-fm-gpu-venv"
  [ -x "$venv/bin/python" ] || "$python" -m venv --system-site-packages "$venv"
  "$venv/bin/python" -m pip install --quiet --no-index --find-links .gpu-wheels .gpu-wheels/*.whl
  python="$venv/bin/python"
fi
out="${OUT:-docs}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 WANDB_MODE=disabled
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}"
args=(--device "$device" --json "$out/bench_gpu.json")
if [ "$device" = cpu ]; then args+=(--reduced); fi
"$python" -m mused_fm.bench gpu "${args[@]}"
