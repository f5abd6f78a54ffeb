"""Predictions of a trained (or adapted) model, with class names: one row per sample of a split.

    python launch/predict.py --checkpoint runs/nsd_hcp/export --shards s3://bucket/shards/nsd \
        --shards /data/shards/hcp --split test --out predictions.jsonl [--top-k 5] [--threshold 0.5]
    python launch/predict.py ... --average-repeats --out predictions.csv     # one row per subject and stimulus

--checkpoint is an export directory (or a run directory, whose export/ is used); each shard set is matched
to the model's dataset of the same name, and its subjects the model knows are predicted (--subjects to
choose). A row holds subject, stimulus, split, the top-k classes with their probabilities, every class at or
above --threshold, and the true label names (mused_fm/predict.py). Under a launcher (deepspeed, torchrun)
each sample is read by exactly one rank and rank 0 writes the file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from mused_fm.entry import add_export_arguments, run_entry

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_export_arguments(parser, "predict")
    parser.add_argument("--out", required=True, help="predictions file: .jsonl or .csv (a path or an s3:// URL)")
    parser.add_argument("--top-k", type=int, default=5, help="most probable classes per row (default 5)")
    parser.add_argument(
        "--threshold", type=float, default=0.5, help="probability at or above which a class is predicted"
    )
    parser.add_argument("--average-repeats", action="store_true", help="one row per subject and stimulus")
    args = parser.parse_args(argv)
    from mused_fm.log import init_logging

    init_logging()
    return run_entry(lambda: _predict(args))


def _predict(args: argparse.Namespace) -> int:
    import os

    import torch

    from mused_fm.distributed import DistInfo, barrier
    from mused_fm.errors import InputError, UnknownSubjectError
    from mused_fm.evaluate import open_for_model
    from mused_fm.model import load_export
    from mused_fm.predict import predict_streams, write_predictions

    if not args.out.endswith((".jsonl", ".csv")):
        raise InputError(f"--out {args.out}: expected a .jsonl or .csv file name.")
    if args.top_k < 1 or not 0.0 <= args.threshold <= 1.0:
        raise InputError(f"--top-k must be >= 1 and --threshold in [0, 1]; got {args.top_k} and {args.threshold}.")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under a launcher: every rank reads its share of the shards
        from mused_fm.train.engine import init_distributed

        dist = init_distributed()
    else:
        dist = DistInfo.single("cuda" if torch.cuda.is_available() else "cpu")
    model = load_export(Path(args.checkpoint)).to(dist.device)
    wanted = [s for s in args.subjects.split(",") if s]
    unknown = [s for s in wanted if s not in model.registry]
    if unknown:
        raise UnknownSubjectError(
            f"--subjects {unknown} are not in the model's registry ({', '.join(model.registry.ids)}); add them with "
            "launch/adapt_subject.py first."
        )
    streams = {}
    for url in args.shards:
        stream = open_for_model(model, url)  # a dataset the model has no head for is a named error
        stream.subjects = [s for s in stream.subjects if (s in wanted if wanted else s in model.registry)]
        if stream.subjects:
            streams[stream.name] = stream
    missing = sorted(set(wanted) - {s for st in streams.values() for s in st.subjects})
    if missing or not streams:
        raise UnknownSubjectError(
            f"no shards given hold {missing or 'any subject of the model'} ({', '.join(args.shards)})."
        )
    rows = predict_streams(
        model, streams, args.split, args.top_k, args.threshold, args.average_repeats, args.batch_size, dist
    )
    if dist.is_main:
        write_predictions(rows, args.out)
        print(f"wrote {len(rows)} rows to {args.out}")
    if dist.world_size > 1:
        barrier()  # every rank leaves together, after rank 0 has written (no rank exits mid-collective)
        torch.distributed.destroy_process_group()  # an orderly teardown: nothing is in flight after the barrier
    return 0


if __name__ == "__main__":
    sys.exit(main())
