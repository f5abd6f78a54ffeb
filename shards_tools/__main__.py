"""python -m shards_tools <verb> [options]: pack raw releases into WebDataset shards and check them.

Verbs (each a module with add_arguments(parser) and run(args) -> exit code):
    synth    write the simulated cohort in the real NSD / HCP / BIDS layouts, with a tiny CLIP
    pack-nsd NSD single-trial betas -> ROI-token shards with COCO labels and cached CLIP features
    pack-hcp HCP 7T movie runs -> brain-masked volume shards with WordNet labels and CLIP frame features
    pack-bids a new site from a BIDS dataset -> volume (or ROI) shards with the site's labels and CLIP features
    clip-features  compute and cache CLIP features of a stimulus list into OUT/clip/
    verify   check every shard against the manifest and the schema; exit 1 naming every bad shard
    inspect  per-subject and per-split counts, classes and bytes per sample
    local-s3 run a command against a throw-away S3 server on 127.0.0.1 with folders uploaded to it
"""

from __future__ import annotations

import argparse
import importlib
import sys

from mused_fm.entry import run_entry
from mused_fm.log import init_logging

VERBS = {
    "synth": "shards_tools.synth.cli",
    "pack-nsd": "shards_tools.pack_nsd",
    "pack-hcp": "shards_tools.pack_hcp",
    "pack-bids": "shards_tools.pack_bids",
    "clip-features": "shards_tools.clip_cli",
    "verify": "shards_tools.verify",
    "inspect": "shards_tools.inspect_shards",
    "local-s3": "shards_tools.local_s3",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="python -m shards_tools", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="verb", required=True, metavar="verb")
    chosen = argv[0] if argv and argv[0] in VERBS else None
    for verb, module_name in VERBS.items():
        # Import only the verb being run: each packer pulls in its own heavy readers.
        module = importlib.import_module(module_name) if verb == chosen else None
        help_line = (module.__doc__ or "").strip().splitlines()[0] if module else None
        p = sub.add_parser(
            verb,
            help=help_line,
            description=module.__doc__ if module else None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if module is not None:
            module.add_arguments(p)
            p.set_defaults(run=module.run)
    args = parser.parse_args(argv)
    init_logging()
    return run_entry(lambda: int(args.run(args) or 0))  # bad input: one clear line, no traceback


if __name__ == "__main__":
    sys.exit(main())
