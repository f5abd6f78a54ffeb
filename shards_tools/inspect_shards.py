"""inspect URL: per-subject and per-split sample counts, classes and bytes per sample of a shard set.

python -m shards_tools inspect /data/shards/nsd
"""

from __future__ import annotations

import argparse
import io

from mused_fm.data.manifest import Manifest
from mused_fm.data.schema import SPLITS
from mused_fm.data.tarfiles import decode_block, iter_raw_records, open_hashed

__all__ = ["add_arguments", "run", "summarize"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", help="shard set: a folder or s3://bucket/prefix holding manifest.json")


def summarize(url: str) -> dict:
    """Counts per subject and split, classes, and bytes per sample (whole set and per member)."""
    manifest = Manifest.read(url)
    info, shards = manifest.info, manifest.shards()
    samples = sum(s["count"] for s in shards)
    member_bytes: dict[str, float] = {}
    if shards:  # member sizes from the first shard: every sample of a subject has the same shapes
        with open_hashed(manifest.shard_url(shards[0])) as raw:
            seen = 0
            for key, members in iter_raw_records(io.BufferedReader(raw, 2**20)):
                seen += len(decode_block(key, members))
                for name, data in members.items():
                    member_bytes[name] = member_bytes.get(name, 0) + len(data)
        member_bytes = {k: v / seen for k, v in member_bytes.items()}
    return {
        "dataset": manifest.dataset,
        "kind": info["kind"],
        "subjects": {sid: sub["counts"] for sid, sub in manifest.subjects.items()},
        "splits": {split: sum(sub["counts"][split] for sub in manifest.subjects.values()) for split in SPLITS},
        "samples": samples,
        "shards": len(shards),
        "classes": info["classes"],
        "bytes_per_sample": sum(s["bytes"] for s in shards) / max(samples, 1),
        "member_bytes_per_sample": member_bytes,
        "clip": info["clip"],
    }


def run(args: argparse.Namespace) -> int:
    s = summarize(args.url)
    print(
        f"{args.url}: dataset {s['dataset']} ({s['kind']}), {s['samples']} samples in {s['shards']} shards, "
        f"{s['bytes_per_sample'] / 1024:.1f} KiB/sample"
    )
    print(f"{'subject':<24}" + "".join(f"{split:>8}" for split in SPLITS))
    for sid, counts in s["subjects"].items():
        print(f"{sid:<24}" + "".join(f"{counts[split]:>8}" for split in SPLITS))
    print(f"{'all':<24}" + "".join(f"{s['splits'][split]:>8}" for split in SPLITS))
    names = ", ".join(s["classes"][:12]) + (", ..." if len(s["classes"]) > 12 else "")
    print(f"{len(s['classes'])} classes: {names}")
    members = ", ".join(f"{k} {v:.0f} B" for k, v in s["member_bytes_per_sample"].items())
    print(f"per sample: {members}")
    llv = s["clip"].get("llv", {})
    if "fidelity_r" in llv:
        print(
            f"llv reduction: {llv['full_dim']} -> {llv['dim']} dims, similarity r = {llv['fidelity_r']:.4f} "
            f"({'held-out' if llv.get('fidelity_held_out') else 'fitted'} stimuli)"
        )
    return 0
