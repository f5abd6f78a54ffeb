"""verify URL: check every shard against the manifest and the schema; exit 1 naming every bad shard.

    python -m shards_tools verify /data/shards/nsd
    python -m shards_tools verify s3://my-bucket/shards/nsd

Per shard: present, byte size and sha256 as recorded, every record complete (all members, keys
contiguous), arrays decode as plain .npy with the schema's dtype and the manifest's shape, finite
values, meta fields present, meta subject and split equal to the shard's, the sample count as
recorded, and sample keys unique across the set. Files under shards/ that the manifest does not list are reported too.
"""

from __future__ import annotations

import argparse
import io
import logging

from mused_fm.data import storage
from mused_fm.data.manifest import Manifest
from mused_fm.data.tarfiles import decode_block, iter_raw_records, open_hashed
from mused_fm.errors import ShardSchemaError
from mused_fm.files import TEMPORARY_PREFIX

__all__ = ["add_arguments", "run", "verify"]

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", help="shard set: a folder or s3://bucket/prefix holding manifest.json")


def check_shard(manifest: Manifest, shard: dict, keys: list[str] | None = None) -> list[str]:
    """Problems of one shard (empty when it is good); sample keys are appended to `keys`."""
    keys = [] if keys is None else keys
    problems: list[str] = []
    if shard.get("subject") not in manifest.subjects:
        return [f"its subject {shard.get('subject')!r} is not among the manifest's subjects"]
    try:
        raw = open_hashed(manifest.shard_url(shard))
    except FileNotFoundError:
        return ["missing"]
    except OSError as err:  # a folder where a file should be, no permission, ...
        return [f"unreadable ({type(err).__name__}: {err})"]
    shapes = manifest.expected_shapes(shard["subject"])
    count = 0
    with raw:
        try:
            for key, members in iter_raw_records(io.BufferedReader(raw, 2**20)):
                try:
                    block = decode_block(key, members)
                    count += len(block)
                    block.check(shapes)
                    keys.extend(m["key"] for m in block.metas)
                    owner = (shard["subject"], shard["split"])
                    wrong = [m["key"] for m in block.metas if (m["subject"], m["split"]) != owner]
                    if wrong:
                        problems.append(
                            f"{wrong[0]}: meta says another subject or split than the shard's {' '.join(owner)}"
                        )
                except ShardSchemaError as err:
                    problems.append(str(err))
        except Exception as err:  # a truncated or corrupt tar surfaces as tarfile/EOF errors
            problems.append(f"unreadable after {count} samples ({type(err).__name__}: {err})")
        raw.drain()
    if count != shard["count"]:
        problems.append(f"{count} samples; the manifest says {shard['count']}")
    if raw.size != shard["bytes"]:
        problems.append(f"{raw.size} bytes; the manifest says {shard['bytes']}")
    elif raw.sha256.hexdigest() != shard["sha256"]:
        problems.append("sha256 differs from the manifest (the file changed after packing)")
    return problems


def verify(url: str) -> dict[str, list[str]]:
    """{shard name: problems} for every bad shard; empty when the whole set is good."""
    manifest = Manifest.read(url)
    bad: dict[str, list[str]] = {}
    first_seen: dict[str, str] = {}
    for shard in manifest.shards():
        keys: list[str] = []
        problems = check_shard(manifest, shard, keys)
        for key in keys:
            if key in first_seen:
                problems.append(f"sample {key!r} is also in {first_seen[key]}")
            first_seen.setdefault(key, shard["name"])
        if problems:
            bad[shard["name"]] = problems
    listed = {s["name"] for s in manifest.shards()}
    for name in storage.listdir(storage.join(url, "shards")):
        # A temporary file of an interrupted local write (older versions named them .NAME.tmp): never read.
        if name.startswith(TEMPORARY_PREFIX) or (name.startswith(".") and name.endswith(".tmp")):
            continue
        if f"shards/{name}" not in listed:
            bad[f"shards/{name}"] = ["not in the manifest (left by another pack, or copied in by hand)"]
    return bad


def run(args: argparse.Namespace) -> int:
    manifest = Manifest.read(args.url)
    bad = verify(args.url)
    total = len(manifest.shards())
    if not bad:
        samples = sum(s["count"] for s in manifest.shards())
        print(f"{args.url}: all {total} shards good ({samples} samples, {len(manifest.subjects)} subjects)")
        return 0
    for name, problems in bad.items():
        print(f"BAD {name}")
        for problem in problems[:10]:
            print(f"    {problem}")
        if len(problems) > 10:
            print(f"    ... and {len(problems) - 10} more")
    print(f"{args.url}: {len(bad)} bad shard(s) of {total}: {', '.join(bad)}")
    return 1
