"""clip-features: compute and cache CLIP features of a stimulus list, as the packers do, into OUT/clip/.

    python -m shards_tools clip-features --stimuli STIMULI.tsv --clip-model openai/clip-vit-base-patch16 --out URL

STIMULI.tsv is tab-separated with a header: `stimulus` (an id), `image` (a path, relative to the
file's folder or absolute) and `text`. Features are computed once per stimulus id and cached in
OUT/clip/features.npz next to the fitted llv basis (llv_basis.npy) and spec.json; a later pack
into the same OUT reuses them. Run it before packing to compute features on a GPU machine.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from mused_fm.errors import InputError, MissingFileError
from shards_tools.clip_features import ClipFeaturizer, ClipStore

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stimuli", required=True, type=Path, help="TSV with stimulus, image, text columns")
    p.add_argument("--clip-model", required=True, help="CLIP folder or hub id (transformers)")
    p.add_argument("--out", required=True, help="output folder or s3://bucket/prefix (features go to OUT/clip/)")
    p.add_argument("--llv-dim", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu")


def run(args: argparse.Namespace) -> int:
    from PIL import Image

    with open(args.stimuli, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if not rows or not {"stimulus", "image", "text"} <= set(rows[0]):
        raise InputError(f"{args.stimuli}: expected a tab-separated header with stimulus, image and text.")
    table = {r["stimulus"]: (args.stimuli.parent / r["image"], r["text"]) for r in rows}

    def load(stimulus: str) -> tuple[np.ndarray, str]:
        path, text = table[stimulus]
        if not path.exists():
            raise MissingFileError(f"{path} (stimulus {stimulus!r} in {args.stimuli}) does not exist.")
        return np.asarray(Image.open(path).convert("RGB")), text

    store = ClipStore(
        args.out, ClipFeaturizer(args.clip_model, args.batch_size, args.device), args.llv_dim, seed=args.seed
    )
    features = store.features(list(table), load)
    llv = store.spec["llv"]
    print(
        f"{args.out}/clip: {len(features)} stimuli, llv {llv['full_dim']} -> {llv['dim']} dims "
        f"(similarity r = {llv['fidelity_r']:.4f}), hlv {store.spec['hlv']['dim']} dims"
    )
    return 0
