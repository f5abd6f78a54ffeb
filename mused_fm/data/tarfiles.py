"""Stream records out of one shard: group tar members by key, decode .npy (no pickle) and JSON.

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
from mused_fm.data.schema import BOLD, CLIP_HLV, CLIP_LLV, LABELS, MEMBERS, META, Block, Sample, ShardSchemaError

__all__ = ["HashingReader", "decode_array", "decode_block", "iter_raw_records", "iter_samples", "open_hashed"]


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


def iter_raw_records(stream) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(record key, {member: bytes}) for each run of consecutive members that share a key."""
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
                raise ShardSchemaError(f"record {k!r} has member {member!r} twice (keys must be contiguous).")
            members[member] = tar.extractfile(info).read()
    if key is not None:
        yield key, members


def decode_array(data: bytes, where: str) -> np.ndarray:
    try:
        return np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
    except ValueError as err:
        raise ShardSchemaError(f"{where} is not a plain .npy array ({err}).") from None


def decode_block(key: str, members: dict[str, bytes]) -> Block:
    missing = [m for m in (*MEMBERS, META) if m not in members]
    if missing:
        raise ShardSchemaError(f"record {key!r} lacks {missing}.")
    arrays = {name: decode_array(members[name], f"{key}.{name}") for name in MEMBERS}
    try:
        metas = json.loads(members[META])
    except json.JSONDecodeError as err:
        raise ShardSchemaError(f"{key}.{META} is not valid JSON ({err}).") from None
    if not isinstance(metas, list):
        raise ShardSchemaError(f"{key}.{META} must be a list of sample metas, got {type(metas).__name__}.")
    return Block(key, arrays[BOLD], arrays[CLIP_LLV], arrays[CLIP_HLV], arrays[LABELS], metas)


def iter_samples(stream) -> Iterator[Sample]:
    """Every sample of a shard, in order."""
    for key, members in iter_raw_records(stream):
        yield from decode_block(key, members).samples()


def open_hashed(url: str) -> HashingReader:
    return HashingReader(storage.open_read(url))
