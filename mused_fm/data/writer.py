"""Write one dataset's shards, per-subject preprocessing and manifest to a folder or S3 prefix.

    writer = DatasetWriter(out_url, DatasetInfo(dataset="nsd", kind="roi", classes=[...], ...))
    with writer.subject("nsd/subj01", fingerprint={"roi_dim": 268, ...}) as sub:   # None: already packed
        sub.save_preproc({"pca_V1": ..., ...})
        for sample in samples:                       # any order of splits; deterministic per subject
            sub.add(sample)
    writer.finish()                                  # manifest.json, written last

Layout under OUT:
    shards/<name>-<split>-NNNNNN.tar   one subject and split per shard, `maxcount` samples each, in records
                                       (blocks) of `block_size` samples (schema.py)
    preproc/<name>.npz                 the subject's preprocessing (PCA bases, means, masks)
    parts/<name>.json                  the subject's record; written once all its shards exist
    parts/<name>.pending.json          the settings of a subject being packed (removed when it is done)
    info.json                          the dataset-level settings, pinned before the first shard
    manifest.json                      dataset facts + every subject and shard; written last

Nothing partial is ever visible: each shard is written to a local temporary file and renamed or
uploaded when complete. A rerun skips subjects whose record exists with the same fingerprint
(the arguments that shape their samples) and, inside an interrupted subject, shards that already
exist; tars are byte-deterministic (fixed mtime, owner, order), so a rerun ends with the same
manifest. A subject already in the output with a different fingerprint is an error.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import tarfile
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mused_fm.data import storage
from mused_fm.data.manifest import MANIFEST
from mused_fm.data.schema import META, SCHEMA_VERSION, SPLITS, Block, Sample, ShardSchemaError, member_shapes
from mused_fm.data.tarfiles import open_hashed
from mused_fm.subject_ids import name_of

__all__ = ["DatasetInfo", "DatasetWriter", "SubjectWriter", "check_settings", "encode_block", "is_packed"]

logger = logging.getLogger(__name__)
INFO = "info.json"


@dataclass
class DatasetInfo:
    """Dataset-level facts every subject of one output shares (checked when a pack appends)."""

    dataset: str
    kind: Literal["roi", "volume"]
    classes: list[str]
    clip: dict[str, Any]
    """CLIP model, layers, post-processing and llv reduction (with its measured fidelity)."""
    llv_dim: int
    hlv_dim: int
    rois: list[dict[str, Any]] = field(default_factory=list)
    """ROI datasets: [{"name", "labels"}...] in token order."""
    roi_dim: int = 0
    volume_shape: list[int] = field(default_factory=list)
    """Volume datasets: the cropped grid (X, Y, Z) that bold's masked vector fills."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Packer-specific facts (crop, delay, label threshold, ...)."""


def _stored_fingerprint(fingerprint: dict[str, Any], maxcount: int, block_size: int) -> dict[str, Any]:
    stored = {**fingerprint, "maxcount": maxcount, "block_size": block_size}
    return json.loads(json.dumps(stored))  # as stored: tuples become lists


def is_packed(out_url: str, subject_id: str, fingerprint: dict[str, Any], maxcount: int, block_size: int = 128) -> bool:
    """Whether `subject_id` is already complete in `out_url` with these settings (so it can be skipped unread)."""
    part_url = storage.join(str(out_url).rstrip("/"), "parts", f"{name_of(subject_id)}.json")
    if not storage.exists(part_url):
        return False
    stored = _stored_fingerprint(fingerprint, maxcount, block_size)
    return json.loads(storage.read_bytes(part_url))["fingerprint"] == stored


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def encode_block(block: Block) -> list[tuple[str, bytes]]:
    """(member name, bytes) in tar order: the stacked arrays as .npy, then the metas as sorted JSON."""
    members = [(f"{block.key}.{name}", _npy(array)) for name, array in block.arrays().items()]
    members.append((f"{block.key}.{META}", json.dumps(block.metas, sort_keys=True).encode()))
    return members


def _write_tar(path: Path, blocks: list[Block]) -> None:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for block in blocks:
            for name, data in encode_block(block):
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), 0, 0o444  # fixed: byte-identical reruns
                tar.addfile(info, io.BytesIO(data))


def _differences(theirs: Any, mine: Any, key: str) -> list[tuple[str, Any, Any]]:
    """(dotted key, theirs, mine) for every leaf where two settings trees differ."""
    if isinstance(theirs, dict) and isinstance(mine, dict):
        return [
            d for k in dict.fromkeys([*theirs, *mine]) for d in _differences(theirs.get(k), mine.get(k), f"{key}.{k}")
        ]
    return [] if theirs == mine else [(key, theirs, mine)]


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_settings(out_url: str, info: DatasetInfo, skip: Sequence[str] = ()) -> bool:
    """Are `info`'s settings those an output was packed with (its info.json)? False when it has none yet.

    Packers call it with skip=("clip",) before computing CLIP features, so a pack that will be refused writes
    nothing; DatasetWriter calls it again with every key. A mismatch is a named error that names each differing
    key in full (values shortened).
    """
    info_url = storage.join(str(out_url).rstrip("/"), INFO)
    if not storage.exists(info_url):
        return False
    theirs = json.loads(storage.read_bytes(info_url))
    mine = json.loads(json.dumps(dataclasses.asdict(info)))
    diffs = [d for key in mine if key not in skip for d in _differences(theirs.get(key), mine[key], key)]
    if diffs:
        listed = "; ".join(f"{key} = {_short(old)}, this pack has {_short(new)}" for key, old, new in diffs[:5])
        more = f" (and {len(diffs) - 5} more)" if len(diffs) > 5 else ""
        raise ShardSchemaError(
            f"{info_url}: {out_url} was packed with {listed}{more}. Pack into a new --out, or with the same settings."
        )
    return True


def _digest(url: str) -> tuple[str, int]:
    """(sha256, bytes) of a file, read once."""
    with open_hashed(url) as reader:
        reader.drain()
    return reader.sha256.hexdigest(), reader.size


class DatasetWriter:
    def __init__(
        self, out_url: str, info: DatasetInfo, maxcount: int = 2000, tool: str = "shards_tools", block_size: int = 128
    ) -> None:
        self.out, self.info, self.maxcount, self.tool = str(out_url).rstrip("/"), info, maxcount, tool
        self.block_size = block_size
        self._tmp = tempfile.TemporaryDirectory(prefix="mused-shards-")
        # info.json is written before any shard, so even an interrupted pack pins the dataset's settings.
        if not check_settings(self.out, info):
            storage.write_json(storage.join(self.out, INFO), json.loads(json.dumps(dataclasses.asdict(info))))

    def subject(self, subject_id: str, fingerprint: dict[str, Any]) -> SubjectWriter | None:
        """A writer for one subject, or None when it is already packed with the same fingerprint."""
        fingerprint = _stored_fingerprint(fingerprint, self.maxcount, self.block_size)
        if not subject_id.startswith(f"{self.info.dataset}/"):
            raise ShardSchemaError(f"subject id {subject_id!r} must start with '{self.info.dataset}/'.")
        name = name_of(subject_id)
        part_url = storage.join(self.out, "parts", f"{name}.json")
        if storage.exists(part_url):
            done = json.loads(storage.read_bytes(part_url))
            if done["fingerprint"] == fingerprint:
                logger.info("%s is already packed in %s; skipping it", subject_id, self.out)
                return None
            raise ShardSchemaError(
                f"subject {subject_id} is already in {self.out} (packed with {done['fingerprint']}; this pack "
                f"has {fingerprint}). Pack it into a new --out, or remove {part_url} and its shards to re-pack it."
            )
        # An interrupted earlier pack of this subject left a pending record: its finished shards are kept
        # only if they were made with the same settings; otherwise they are removed before packing.
        pending_url = storage.join(self.out, "parts", f"{name}.pending.json")
        if storage.exists(pending_url) and json.loads(storage.read_bytes(pending_url)) != fingerprint:
            stale = [n for n in storage.listdir(storage.join(self.out, "shards")) if n.startswith(f"{name}-")]
            logger.warning("%s: removing %d shards of an interrupted pack with other settings", subject_id, len(stale))
            for shard in stale:
                storage.remove(storage.join(self.out, "shards", shard))
        storage.write_json(pending_url, fingerprint)
        return SubjectWriter(self, subject_id, fingerprint)

    def finish(self) -> dict:
        """Gather every subject's record into manifest.json (written last, atomically) and return it."""
        subjects, shards = {}, []
        for entry in storage.listdir(storage.join(self.out, "parts")):
            if not entry.endswith(".json") or entry.endswith(".pending.json"):
                continue
            part = json.loads(storage.read_bytes(storage.join(self.out, "parts", entry)))
            subjects[part["subject"]] = {k: part[k] for k in ("counts", "bold_shape", "preproc", "fingerprint")}
            subjects[part["subject"]]["facts"] = part.get("facts", {})
            shards.extend(part["shards"])
        manifest = {
            "schema": SCHEMA_VERSION,
            "dataset": self.info.dataset,
            "info": dataclasses.asdict(self.info),
            "subjects": dict(sorted(subjects.items())),
            "shards": sorted(shards, key=lambda s: s["name"]),
            "tool": self.tool,
        }
        storage.write_json(storage.join(self.out, MANIFEST), manifest)
        self._tmp.cleanup()
        return manifest


class SubjectWriter:
    def __init__(self, parent: DatasetWriter, subject_id: str, fingerprint: dict[str, Any]) -> None:
        self.parent, self.subject_id, self.fingerprint = parent, subject_id, fingerprint
        self.name = name_of(subject_id)
        self._pending: dict[str, list[Sample]] = defaultdict(list)
        self._next_index: dict[str, int] = defaultdict(int)
        self._shards: list[dict] = []
        self._counts = dict.fromkeys(SPLITS, 0)
        self._bold_shape: list[int] | None = None
        self._preproc = ""
        self.facts: dict[str, Any] = {}
        """Facts about the subject's inputs for the manifest (NaN vertices per ROI, the basis used, ...)."""

    def __enter__(self) -> SubjectWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()  # on an error nothing is recorded, so a rerun packs the subject again

    def save_preproc(self, arrays: dict[str, np.ndarray]) -> None:
        buf = io.BytesIO()
        np.savez(buf, **arrays)  # plain arrays only; loaded with allow_pickle=False
        self._preproc = f"preproc/{self.name}.npz"
        storage.write_bytes(storage.join(self.parent.out, self._preproc), buf.getvalue())

    def add(self, sample: Sample) -> None:
        split = sample.meta.get("split")
        if sample.meta.get("subject") != self.subject_id:
            raise ShardSchemaError(
                f"{sample.key}: meta subject {sample.meta.get('subject')!r} in the writer of {self.subject_id}."
            )
        if self._bold_shape is None:
            self._bold_shape = list(sample.bold.shape)
        sample.check(self._shapes(), where=self.subject_id)
        self._pending[split].append(sample)
        self._counts[split] += 1
        if len(self._pending[split]) >= self.parent.maxcount:
            self._flush(split)

    def _shapes(self) -> dict[str, tuple[int, ...]]:
        info = self.parent.info
        return member_shapes(self._bold_shape, info.llv_dim, info.hlv_dim, len(info.classes))

    def _flush(self, split: str) -> None:
        samples, self._pending[split] = self._pending[split], []
        if not samples:
            return
        index = self._next_index[split]
        self._next_index[split] += 1
        name = f"shards/{self.name}-{split}-{index:06d}.tar"
        url = storage.join(self.parent.out, name)
        if storage.exists(url):  # finished by an interrupted earlier run (shards appear only whole)
            logger.info("%s exists; keeping it", name)
            sha, nbytes = _digest(url)
        else:
            local = Path(self.parent._tmp.name) / f"{self.name}-{split}-{index:06d}.tar"
            size = self.parent.block_size
            blocks = [
                Block.from_samples(f"{self.name}-{split}-{index:06d}-b{j // size:04d}", samples[j : j + size])
                for j in range(0, len(samples), size)
            ]
            _write_tar(local, blocks)
            sha, nbytes = _digest(str(local))  # hashed on local disk: an S3 shard is not downloaded again
            storage.put_file(local, url)
        self._shards.append(
            {
                "name": name,
                "subject": self.subject_id,
                "split": split,
                "count": len(samples),
                "bytes": nbytes,
                "sha256": sha,
            }
        )

    def close(self) -> None:
        for split in SPLITS:
            self._flush(split)
        if not self._shards:
            raise ShardSchemaError(f"{self.subject_id}: no samples were written; check the subject's inputs.")
        part = {
            "subject": self.subject_id,
            "fingerprint": self.fingerprint,
            "counts": self._counts,
            "bold_shape": self._bold_shape,
            "preproc": self._preproc,
            "facts": self.facts,
            "shards": self._shards,
        }
        storage.write_json(storage.join(self.parent.out, "parts", f"{self.name}.json"), part)
        storage.remove(storage.join(self.parent.out, "parts", f"{self.name}.pending.json"))
        logger.info("%s: %s samples in %d shards", self.subject_id, self._counts, len(self._shards))
