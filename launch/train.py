"""Train (or resume) a MUSED-FM run on every rank.

    deepspeed launch/train.py recipes/nsd_hcp.yaml data.datasets.nsd.url=s3://bucket/shards/nsd ...
    deepspeed --num_gpus 2 launch/train.py recipes/demo.yaml train.max_steps=50
    deepspeed --num_gpus 2 launch/train.py recipes/demo.yaml recipes/compare/ms_emb.yaml   # layered recipes
    torchrun --nproc_per_node 8 launch/train.py recipes/nsd_hcp.yaml
    python launch/train.py recipes/demo.yaml            # one process

Rerunning the same command continues from the newest complete checkpoint in RUN_DIR/checkpoints/.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", help="recipes/*.yaml")
    parser.add_argument(
        "overrides", nargs="*", help="more recipes layered on the first (*.yaml), then section.key=value overrides"
    )
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help="set by the deepspeed launcher")
    args = parser.parse_args(argv)
    from mused_fm.entry import run_entry
    from mused_fm.log import init_logging

    init_logging()
    return run_entry(lambda: _train(args))


def _train(args: argparse.Namespace) -> int:
    from mused_fm.config import load_recipe
    from mused_fm.train.loop import train

    layers = [a for a in args.overrides if "=" not in a and a.endswith((".yaml", ".yml"))]
    overrides = [a for a in args.overrides if a not in layers]
    export = train(load_recipe([args.recipe, *layers], overrides))
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"exported to {export}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
