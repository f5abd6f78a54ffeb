"""Write a run's report: DIR/report/report.md with PNG figures.

    python launch/report.py demo_out                 # a `make demo` directory (run/, eval.json, adapt/, compare/)
    python launch/report.py runs/nsd_hcp --shards s3://bucket/shards/nsd --shards /data/shards/hcp

Sections: training and validation curves; per-subject test mAP/AUC/Hamming; the paper's comparison
and the loss ablation (when compare/ holds them: make demo-compare); whether the model uses its
subject tokens; last-layer attention of the subject tokens over ROIs; token similarity across
subjects; the new-subject data-efficiency curve (when adapt/curve.json exists).
--shards (repeatable) replaces the shard sets named in the run's config.yaml, matched by dataset.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", help="a run directory (run.out_dir) or a make demo directory")
    parser.add_argument("--shards", action="append", default=[], help="shard folder or s3:// prefix (repeatable)")
    parser.add_argument("--attention-samples", type=int, default=256, help="test samples per subject for attention")
    args = parser.parse_args(argv)
    from mused_fm.entry import run_entry
    from mused_fm.log import init_logging

    init_logging()
    return run_entry(lambda: _report(args))


def _report(args: argparse.Namespace) -> int:
    from mused_fm.report import write_report

    print(f"wrote {write_report(args.dir, args.shards, args.attention_samples)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
