"""The shard schema (version 1): the contract between shards_tools (writer) and mused_fm.data (reader).

One sample = one stimulus presentation (an NSD trial or trial average, an HCP TR, a BIDS event)
of one subject, with these members:

    bold.npy      float16  ROI datasets: (num_rois, roi_dim) per-ROI PCA scores, zero-padded;
                           volume datasets: (num_voxels,) values inside the subject's brain mask
                           (preproc/<subject>.npz holds the mask over the cropped volume)
    clip_llv.npy  float16  (llv_dim,) low-level CLIP feature, clipped at +-1.5, unit norm
    clip_hlv.npy  float16  (hlv_dim,) high-level CLIP feature, clipped at +-1.5, unit norm
    labels.npy    uint8    (num_classes,) multi-hot over the manifest's class list
    meta.json              {key, dataset, subject, site, stimulus, split, unit, index, schema}

Sample keys carry no dots: `nsd_subj01_s03_t000512`.

Records: a tar record (WebDataset: `<record key>.<member>`) holds a block of up to `block_size`
consecutive samples of one subject and split, each array member stacked along a new first axis
(bold.npy is (n, num_rois, roi_dim)) and meta.json a list of n sample metas. Decoding one record of
128 samples costs about what one single-sample record does, which is what lets a CPU core feed
tens of thousands of samples per second (one record per sample decoded ~2,100 samples/s here in a one-off probe). Every
array is .npy (no pickle); the manifest (manifest.json, written last) says what shape every member
has for its dataset and subject.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mused_fm.errors import ShardSchemaError
from mused_fm.subject_ids import dataset_of, name_of

__all__ = [
    "BOLD",
    "CLIP_HLV",
    "CLIP_LLV",
    "LABELS",
    "MEMBERS",
    "META",
    "META_KEYS",
    "SCHEMA_VERSION",
    "SPLITS",
    "Block",
    "Sample",
    "ShardSchemaError",
    "all_finite",
    "make_sample",
    "member_shapes",
    "sample_key",
]

SCHEMA_VERSION = 1
BOLD, CLIP_LLV, CLIP_HLV, LABELS, META = "bold.npy", "clip_llv.npy", "clip_hlv.npy", "labels.npy", "meta.json"
MEMBERS: dict[str, np.dtype] = {
    BOLD: np.dtype(np.float16),
    CLIP_LLV: np.dtype(np.float16),
    CLIP_HLV: np.dtype(np.float16),
    LABELS: np.dtype(np.uint8),
}
META_KEYS = ("dataset", "subject", "site", "stimulus", "split", "unit", "index", "schema")
ARRAYS = ("bold", "clip_llv", "clip_hlv", "labels")
SPLITS = ("train", "val", "test")
_KEY_OK = re.compile(r"^[A-Za-z0-9_\-]+$")


def all_finite(array: np.ndarray) -> bool:
    """No NaN or infinity in `array`. float16 (every array member of the schema) is checked on its bits:
    exponent all ones means not finite. That is ~10x faster than np.isfinite on float16, which the
    loader runs on every block it reads."""
    if array.dtype == np.float16:
        return not np.any((array.view(np.uint16) & 0x7C00) == 0x7C00)
    return bool(np.isfinite(array).all())


def sample_key(dataset: str, subject: str, unit: str, index: int) -> str:
    """`nsd_subj01_s03_t000512`: dots and slashes become '-', so WebDataset keeps the key whole."""
    parts = [dataset, name_of(subject) if "/" in subject else subject, unit, f"t{index:06d}"]
    key = "_".join(re.sub(r"[^A-Za-z0-9\-]", "-", p) for p in parts)
    assert _KEY_OK.match(key), key
    return key


@dataclass
class Sample:
    key: str
    bold: np.ndarray
    clip_llv: np.ndarray
    clip_hlv: np.ndarray
    labels: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def arrays(self) -> dict[str, np.ndarray]:
        return {BOLD: self.bold, CLIP_LLV: self.clip_llv, CLIP_HLV: self.clip_hlv, LABELS: self.labels}

    def check(self, shapes: dict[str, tuple[int, ...]], where: str = "") -> None:
        """Raise ShardSchemaError naming the key and member when a dtype, shape or meta field is off.

        Args:
            shapes: expected shape of each array member (from the manifest).
        """
        origin = f"{where}: " if where else ""
        if not _KEY_OK.match(self.key):
            raise ShardSchemaError(f"{origin}sample key {self.key!r} may hold only letters, digits, '_' and '-'.")
        _check_arrays(self.arrays(), shapes, f"{origin}{self.key}")
        _check_meta(self.meta, f"{origin}{self.key}")


def make_sample(
    subject: str,
    unit: str,
    index: int,
    stimulus: str,
    split: str,
    bold: np.ndarray,
    clip_llv: np.ndarray,
    clip_hlv: np.ndarray,
    labels: np.ndarray,
    site: str | None = None,
    **extra: Any,
) -> Sample:
    """A sample with its key and meta: the one place a packer's meta dict is built.

    Args:
        subject: global id ('nsd/subj01'); its dataset part is the meta's dataset (and site, by default).
        unit: session or run ('s03', 'run1'); index: position within the unit.
        extra: dataset-specific meta fields after the schema's (NSD: trials, BIDS: volume).
    """
    dataset = dataset_of(subject)
    meta = {
        "dataset": dataset,
        "subject": subject,
        "site": site or dataset,
        "stimulus": stimulus,
        "split": split,
        "unit": unit,
        "index": index,
        "schema": SCHEMA_VERSION,
        **extra,
    }
    return Sample(sample_key(dataset, subject, unit, index), bold, clip_llv, clip_hlv, labels, meta)


@dataclass
class Block:
    """A tar record: n samples of one subject and split, arrays stacked on a leading axis."""

    key: str
    bold: np.ndarray
    clip_llv: np.ndarray
    clip_hlv: np.ndarray
    labels: np.ndarray
    metas: list[dict[str, Any]]

    def __len__(self) -> int:
        return len(self.metas)

    @classmethod
    def from_samples(cls, key: str, samples: list[Sample]) -> Block:
        stacked = {name: np.stack([getattr(s, name) for s in samples]) for name in ARRAYS}
        return cls(key=key, **stacked, metas=[{"key": s.key, **s.meta} for s in samples])

    def arrays(self) -> dict[str, np.ndarray]:
        return {BOLD: self.bold, CLIP_LLV: self.clip_llv, CLIP_HLV: self.clip_hlv, LABELS: self.labels}

    def samples(self) -> list[Sample]:
        out = []
        for i, meta in enumerate(self.metas):
            meta = dict(meta)
            key = meta.pop("key")
            out.append(Sample(key, self.bold[i], self.clip_llv[i], self.clip_hlv[i], self.labels[i], meta))
        return out

    def check(self, shapes: dict[str, tuple[int, ...]], where: str = "") -> None:
        """Raise ShardSchemaError naming the record and member when a dtype, shape or meta is off."""
        origin = f"{where}: " if where else ""
        _check_arrays(
            self.arrays(), {k: (len(self.metas), *v) for k, v in shapes.items()}, f"{origin}record {self.key}"
        )
        for meta in self.metas:
            if "key" not in meta:
                raise ShardSchemaError(f"{origin}record {self.key}: a sample's meta lacks its 'key'.")
            _check_meta(meta, f"{origin}{meta['key']}")


def member_shapes(bold_shape, llv_dim: int, hlv_dim: int, num_classes: int) -> dict[str, tuple[int, ...]]:
    """The shape of each array member of one sample, from a dataset's facts (as in the manifest)."""
    return {BOLD: tuple(bold_shape), CLIP_LLV: (llv_dim,), CLIP_HLV: (hlv_dim,), LABELS: (num_classes,)}


def _check_arrays(arrays: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]], label: str) -> None:
    for name, array in arrays.items():
        if not isinstance(array, np.ndarray) or array.dtype != MEMBERS[name]:
            got = array.dtype if isinstance(array, np.ndarray) else type(array).__name__
            raise ShardSchemaError(f"{label}.{name} has dtype {got}; expected {MEMBERS[name]}.")
        if array.shape != tuple(shapes[name]):
            raise ShardSchemaError(f"{label}.{name} has shape {array.shape}; the manifest says {tuple(shapes[name])}.")
        if array.dtype.kind == "f" and not all_finite(array):
            raise ShardSchemaError(f"{label}.{name} holds NaN or infinite values.")


def _check_meta(meta: dict[str, Any], label: str) -> None:
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise ShardSchemaError(f"{label}.{META} lacks {missing}.")
    if meta["split"] not in SPLITS:
        raise ShardSchemaError(f"{label}: split {meta['split']!r} is not one of {SPLITS}.")
    if meta["schema"] != SCHEMA_VERSION:
        raise ShardSchemaError(
            f"{label}: schema {meta['schema']!r}; this reader knows {SCHEMA_VERSION}. "
            "Re-pack the shards with this version of shards_tools."
        )
