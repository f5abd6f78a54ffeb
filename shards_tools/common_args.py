"""Arguments every packer takes: where the shards go, and how CLIP features are computed."""

from __future__ import annotations

import argparse

__all__ = ["add_output_arguments"]


def add_output_arguments(p: argparse.ArgumentParser, maxcount: int) -> None:
    p.add_argument("--clip-model", required=True, help="CLIP folder or hub id (transformers)")
    p.add_argument("--out", required=True, help="output folder or s3://bucket/prefix")
    p.add_argument("--llv-dim", type=int, default=1024, help="reduced low-level CLIP width (default 1024)")
    p.add_argument("--seed", type=int, default=0, help="seeds splits, caption choice and the llv fit sample")
    p.add_argument("--maxcount", type=int, default=maxcount, help=f"samples per shard (default {maxcount})")
    p.add_argument("--batch-size", type=int, default=32, help="CLIP batch size")
    p.add_argument("--device", default="cpu", help="CLIP device (cuda on a GPU machine)")
