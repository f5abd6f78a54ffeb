"""Metrics of a trained (or adapted) model on a split of one or more shard sets, per subject and dataset.

    python launch/evaluate.py --checkpoint runs/nsd_hcp/export --shards s3://bucket/shards/nsd \
        --shards /data/shards/hcp --split test --json eval.json

--checkpoint is an export directory (or a run directory, whose export/ is used). Each shard set is
matched to the model's dataset of the same name; its subjects that the model knows are evaluated
(--subjects to choose), each test sample exactly once. The JSON has the form
{"datasets": {"nsd": {"mAP", "AUC", "hamming", "n", "n_skipped", "subject_mean"}}, "subjects": {"nsd/subj01": {...}}};
n_skipped counts samples of unreadable shards or records (named in the log).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from mused_fm.entry import add_export_arguments, run_entry

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_export_arguments(parser, "evaluate")
    parser.add_argument("--json", required=True, help="where to write the metrics (a file or an s3:// URL)")
    args = parser.parse_args(argv)
    from mused_fm.log import init_logging

    init_logging()
    return run_entry(lambda: _evaluate(args))


def _evaluate(args: argparse.Namespace) -> int:
    import torch

    from mused_fm.data.storage import write_json
    from mused_fm.evaluate import evaluate_model

    wanted = [s for s in args.subjects.split(",") if s]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    metrics = evaluate_model(Path(args.checkpoint), args.shards, args.split, args.batch_size, wanted, device)
    write_json(args.json, metrics)
    if args.split == "test" and not wanted:  # the export's model card gains its test metrics
        from mused_fm.model import export_dir, load_export

        directory = export_dir(args.checkpoint)
        load_export(directory).write_card(directory, metrics)
    for name, m in metrics["datasets"].items():
        print(f"{name}: mAP {m['mAP']:.4f}  AUC {m['AUC']:.4f}  hamming {m['hamming']:.4f}  (n={m['n']}, {args.split})")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
