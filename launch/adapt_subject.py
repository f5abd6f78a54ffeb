"""Add unseen subjects to a trained model by fitting only their fresh tokens.

    python launch/adapt_subject.py --checkpoint runs/nsd_hcp/export --shards s3://bucket/shards/nsd_new \
        --subjects nsd/subj08 [--fraction 0.1] --out runs/adapt_subj08
    python launch/adapt_subject.py ... --fractions 0.01,0.05,0.1,0.25,1.0 [--reference RUN/export]
    deepspeed launch/adapt_subject.py recipes/new_subject.yaml [adapt.subjects=nsd/subj07,nsd/subj08 ...]

Every weight but the new subjects' two tokens stays bit-for-bit unchanged (checked before the
export is written). The out directory gets export/ (the model with the subjects added), eval.json
(their test metrics), metrics.jsonl, and with --fractions curve.json and curve.png.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

DEFAULT_RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "new_subject.yaml"
FLAGS = {"checkpoint": "adapt.checkpoint", "shards": "adapt.shards", "subjects": "adapt.subjects", "out": "adapt.out",
         "fraction": "adapt.fraction", "fractions": "adapt.fractions", "reference": "adapt.reference"}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", nargs="?", default=str(DEFAULT_RECIPE), help="default: recipes/new_subject.yaml")
    parser.add_argument("overrides", nargs="*", help="section.key=value")
    parser.add_argument("--checkpoint", help="export (or run) directory of the trained model")
    parser.add_argument("--shards", help="shard sets holding the new subjects, comma-separated")
    parser.add_argument("--subjects", help="global ids to add, comma-separated (nsd/subj08)")
    parser.add_argument("--fraction", help="share of the new subjects' training samples (default 1)")
    parser.add_argument("--fractions", help="sweep: e.g. 0.01,0.05,0.1,0.25,1.0 (writes curve.json, curve.png)")
    parser.add_argument("--reference", help="sweep: export of a model pretrained with these subjects")
    parser.add_argument("--replace", action="store_true", help="re-learn subjects already in the registry")
    parser.add_argument("--out", help="output directory")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.recipe and "=" in args.recipe:  # only overrides were given
        args.overrides, args.recipe = [args.recipe, *args.overrides], str(DEFAULT_RECIPE)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s | rank {rank} | %(levelname)s | %(name)s | %(message)s")  # fmt: skip
    overrides = [f"{key}={getattr(args, flag)}" for flag, key in FLAGS.items() if getattr(args, flag) is not None]
    if args.replace:
        overrides.append("adapt.replace=true")
    from mused_fm.config import load_recipe

    try:
        recipe = load_recipe(args.recipe, [*overrides, *args.overrides])
        from mused_fm.adapt import adapt

        out = adapt(recipe)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if rank == 0:
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
