"""Add unseen subjects to a trained model by fitting only their fresh tokens.

    python launch/adapt_subject.py --checkpoint runs/nsd_hcp/export --shards s3://bucket/shards/nsd_new \
        --subjects nsd/subj08 [--fraction 0.1] --out runs/adapt_subj08
    python launch/adapt_subject.py ... --fractions 0.01,0.05,0.1,0.25,1.0 [--seeds 0,1,2] [--reference RUN/export]
    python launch/adapt_subject.py ... --subjects nsd/subj01 --replace     # re-learn a pretraining subject
    deepspeed launch/adapt_subject.py recipes/new_subject.yaml [adapt.subjects=nsd/subj07,nsd/subj08 ...]

Every weight but the new subjects' two tokens stays bit-for-bit unchanged (checked before the
export is written). The fine-tuning loss is the one the model was trained with (its export's
config.json), except the loss.* keys the recipe or the overrides set. The out directory gets export/
(the model with the subjects added), eval.json (their test metrics), curve.json (one point per run),
config.yaml (the resolved recipe) and runs/<method>_f<fraction>_s<seed>/metrics.jsonl; with --fractions
(the sweep: zero-shot, token-only at each seed, single-subject from scratch and full fine-tuning at each
fraction) also curve.png.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DEFAULT_RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "new_subject.yaml"
FLAGS = {"checkpoint": "adapt.checkpoint", "shards": "adapt.shards", "subjects": "adapt.subjects", "out": "adapt.out"}
FLAGS |= {"reference": "adapt.reference", "fraction": "adapt.fractions", "fractions": "adapt.fractions"}
FLAGS |= {"seeds": "adapt.seeds"}
SWEEP = "adapt.methods=tokens,scratch,full"  # a sweep also scores zero-shot


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", nargs="?", default=str(DEFAULT_RECIPE), help="default: recipes/new_subject.yaml")
    parser.add_argument("overrides", nargs="*", help="section.key=value")
    parser.add_argument("--checkpoint", help="export (or run) directory of the trained model")
    parser.add_argument("--shards", help="shard sets holding the new subjects, comma-separated")
    parser.add_argument("--subjects", help="global ids to add, comma-separated (nsd/subj08)")
    amount = parser.add_mutually_exclusive_group()
    amount.add_argument("--fraction", help="share of the new subjects' training samples (default 1)")
    amount.add_argument("--fractions", help="sweep: e.g. 0.01,0.05,0.1,0.25,1.0 (every method; curve.png)")
    parser.add_argument("--seeds", help="seeds of the token-only runs, comma-separated (default 0)")
    parser.add_argument("--reference", help="export of a model pretrained with these subjects (in_pretraining)")
    parser.add_argument("--replace", action="store_true", help="re-learn subjects already in the registry")
    parser.add_argument("--out", help="output directory")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.recipe and "=" in args.recipe:  # only overrides were given
        args.overrides, args.recipe = [args.recipe, *args.overrides], str(DEFAULT_RECIPE)
    overrides = [f"{key}={getattr(args, flag)}" for flag, key in FLAGS.items() if getattr(args, flag) is not None]
    overrides += [SWEEP] if args.fractions else []
    overrides += ["adapt.replace=true"] if args.replace else []
    from mused_fm.entry import run_entry
    from mused_fm.log import init_logging

    init_logging()
    return run_entry(lambda: _adapt(args.recipe, [*overrides, *args.overrides]))


def _adapt(recipe_path: str, overrides: list[str]) -> int:
    from mused_fm.adapt import adapt, load_adapt_recipe

    result = adapt(load_adapt_recipe(recipe_path, overrides))
    if len(result.curve) > 1:  # rank 0 holds the points; a sweep gets its figure
        from mused_fm.report.figures import plot_curve

        plot_curve(result.curve, result.out / "curve.png", ", ".join(result.subjects))
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"wrote {result.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
