"""python -m mused_fm.bench {model,loader,pack} [--json OUT.json] [options]: print figures and write JSON.

Each benchmark module has add_arguments(parser), run(args) -> dict and report(dict) -> str.
"""

from __future__ import annotations

import argparse
import logging
import sys

from mused_fm.bench import loader, model, pack
from mused_fm.bench.common import write_json


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m mused_fm.bench", description=__doc__)
    sub = parser.add_subparsers(dest="bench", required=True)
    for name, module in (("model", model), ("loader", loader), ("pack", pack)):
        p = sub.add_parser(name, help=module.__doc__.splitlines()[0])
        p.add_argument("--json", help="write the figures to this JSON file")
        module.add_arguments(p)
        p.set_defaults(module=module)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(name)s | %(message)s")
    result = args.module.run(args)
    print(args.module.report(result))
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
