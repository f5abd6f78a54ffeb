"""The paper's comparison on seeds with baselines and controls (make demo-compare runs it).

    python launch/compare.py recipes/compare/protocol.yaml --shards nsd=demo_out/shards/nsd \
        --shards hcp=demo_out/shards/hcp --out demo_out/compare [--jobs 2] [--datasets nsd]

Trains every run of the protocol in single-process workers, evaluates each run's best/ export on the test
split, fits the ridge and chance baselines; rerunning skips what is done. The report (launch/report.py)
reads the results.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("protocol", help="recipes/compare/protocol.yaml")
    parser.add_argument("--shards", action="append", default=[], help="DATASET=URL, once per dataset")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2); cores are split")
    parser.add_argument("--datasets", help="comma-separated subset of the protocol's datasets")
    args = parser.parse_args(argv)
    from mused_fm.entry import run_entry
    from mused_fm.log import init_logging

    init_logging()
    return run_entry(lambda: _compare(args))


def _compare(args: argparse.Namespace) -> int:
    from mused_fm.compare import Protocol, run_protocol
    from mused_fm.errors import InputError

    shards = {}
    for item in args.shards:
        name, sep, url = item.partition("=")
        if not sep or not name or not url:
            raise InputError(f"--shards {item!r}: expected DATASET=URL, e.g. --shards nsd=demo_out/shards/nsd.")
        shards[name] = url
    if args.jobs < 1:
        raise InputError(f"--jobs must be at least 1, got {args.jobs}.")
    only = args.datasets.split(",") if args.datasets else None
    failed = run_protocol(Protocol.read(args.protocol), shards, args.out, args.jobs, only)
    if failed:
        print("failed runs (rerun the same command to retry them):\n  " + "\n  ".join(failed), file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
