#!/usr/bin/env bash
# make gpu-wheels: the wheels `make gpu-check` needs on a GPU machine with no network, for its Python 3.12 on
# x86-64, into .gpu-wheels/ (git-ignored; carried with the working tree, 64 MiB at most with it). The machine's
# own python3 already has torch, transformers, numpy, scipy, pyyaml, safetensors and tqdm: only what the
# check imports beyond them goes here, at the versions this project's .venv pins (pip freeze), without deps.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-.venv/bin/python}"
dest=.gpu-wheels
rm -rf "$dest.partial" && mkdir -p "$dest.partial"
pinned() { "$python" -m pip freeze 2>/dev/null | grep -iE "^($(IFS='|'; echo "$*"))==" ; }
# Binary wheels for CPython 3.12 (pure-Python ones are the same file for every version).
binary=(einops hjson msgpack ninja py-cpuinfo pydantic pydantic_core annotated-types typing-inspection
        typing_extensions webdataset braceexpand psutil packaging)
mapfile -t specs < <(pinned "${binary[@]}")
[ "${#specs[@]}" -eq "${#binary[@]}" ] || { echo "gpu-wheels: $python lacks some of ${binary[*]}: make install first" >&2; exit 2; }
"$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --abi cp312 --abi abi3 --abi none --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d "$dest.partial" "${specs[@]}"
# DeepSpeed ships only an sdist: build its wheel here (pure Python; its ops compile on first use there).
"$python" -m pip wheel --quiet --no-deps --no-build-isolation -w "$dest.partial" "$(pinned deepspeed)"
rm -rf "$dest" && mv "$dest.partial" "$dest"
du -sh "$dest" && ls "$dest"
