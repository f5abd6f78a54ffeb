"""Stream samples out of one shard: group tar members by key, decode .npy (no pickle) and JSON.

Used by `shards_tools verify` and `inspect`; it reads every byte once and hashes as it reads.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterator

import numpy as np

from mused_fm.data import storage
from mused_fm.data.schema import MEMBERS, META, Sample, ShardSchemaError

__all__ = ["HashingReader", "decode_sample", "iter_raw_samples"]


class HashingReader(io.RawIOBase):
    """A read-only stream that feeds a sha256 and a byte count as it is read."""

    def __init__(self, raw) -> None:
        self.raw, self.sha256, self.size = raw, hashlib.sha256(), 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.raw.read(len(buffer))
        buffer[: len(data)] = data
        self.sha256.update(data)
        self.size += len(data)
        return len(data)

    def drain(self) -> None:
        while self.read(2**20):
            pass


def iter_raw_samples(stream) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {member: bytes}) for each run of consecutive members that share a key."""
    key, members = None, {}
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for info in tar:
            if not info.isfile():
                continue
            k, _, member = info.name.rpartition("/")[-1].partition(".")
            if k != key and key is not None:
                yield key, members
                members = {}
            key = k
            if member in members:
                raise ShardSchemaError(f"sample {k!r} has member {member!r} twice (keys must be contiguous).")
            members[member] = tar.extractfile(info).read()
    if key is not None:
        yield key, members


def decode_sample(key: str, members: dict[str, bytes]) -> Sample:
    missing = [m for m in (*MEMBERS, META) if m not in members]
    if missing:
        raise ShardSchemaError(f"sample {key!r} lacks {missing}.")
    arrays = {}
    for name in MEMBERS:
        try:
            arrays[name] = np.lib.format.read_array(io.BytesIO(members[name]), allow_pickle=False)
        except ValueError as err:
            raise ShardSchemaError(f"{key}.{name} is not a plain .npy array ({err}).") from None
    try:
        meta = json.loads(members[META])
    except json.JSONDecodeError as err:
        raise ShardSchemaError(f"{key}.{META} is not valid JSON ({err}).") from None
    return Sample(key, arrays["bold.npy"], arrays["clip_llv.npy"], arrays["clip_hlv.npy"], arrays["labels.npy"], meta)


def open_hashed(url: str) -> HashingReader:
    return HashingReader(storage.open_read(url))
