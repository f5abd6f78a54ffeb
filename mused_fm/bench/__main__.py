"""python -m mused_fm.bench {model,loader,pack} [--json OUT.json] [options]: print figures and write JSON.
python -m mused_fm.bench doc [--doc docs/BENCHMARKS.md] [--json-dir docs]: rewrite the doc's benchmark
sections from the JSON, without rerunning anything (`make bench` runs all three, then this).

Each benchmark's JSON also records, under "environment", the command, the machine and the date.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from mused_fm.bench.common import environment
from mused_fm.bench.doc import BENCHMARKS, update_doc
from mused_fm.data.storage import write_json
from mused_fm.errors import MusedError
from mused_fm.log import init_logging


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="python -m mused_fm.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="bench", required=True)
    for name, module in BENCHMARKS.items():
        p = sub.add_parser(name, help=module.__doc__.splitlines()[0])
        p.add_argument("--json", help="write the figures to this JSON file")
        module.add_arguments(p)
        p.set_defaults(module=module)
    p = sub.add_parser("doc", help="Rewrite the benchmark sections of docs/BENCHMARKS.md from the JSON files.")
    p.add_argument("--doc", default="docs/BENCHMARKS.md", help="Markdown file with bench markers (%(default)s)")
    p.add_argument("--json-dir", default="docs", help="folder of the bench_NAME.json files (%(default)s)")
    args = parser.parse_args(argv)
    if args.bench == "doc":
        try:
            changed = update_doc(args.doc, args.json_dir)
        except (OSError, MusedError) as exc:  # a bug (any other error) keeps its traceback
            raise SystemExit(f"python -m mused_fm.bench doc: {exc}") from exc
        print(
            f"{args.doc}: {'rewrote' if changed else 'already up to date with'} the sections of "
            f"{', '.join(BENCHMARKS)} from {args.json_dir}/bench_*.json"
        )
        return {"doc": args.doc, "changed": changed}

    init_logging()
    # Recorded before the run, so the date says when it started.
    env = environment(shlex.join(["python", "-m", "mused_fm.bench", *argv]))
    result = args.module.run(args)
    result["environment"] = env
    print(args.module.report(result))
    for target in args.module.TARGETS:
        print(f"target {target.describe(result, markdown=False)}")
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
