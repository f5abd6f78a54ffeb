"""Small shard sets written by the real writer, for the data tests."""

from __future__ import annotations

import zlib

import numpy as np

from mused_fm.data.schema import Sample, make_sample
from mused_fm.data.writer import DatasetInfo, DatasetWriter

CLASSES = [f"class{i}" for i in range(7)]  # distinct sizes: 7 classes, bold 3 x 5, llv 11, hlv 6


def info(**overrides) -> DatasetInfo:
    base = dict(
        dataset="nsd",
        kind="roi",
        classes=CLASSES,
        clip={"model": "tiny", "llv_dim": 11},
        llv_dim=11,
        hlv_dim=6,
        rois=[{"name": n} for n in ("V1", "V2", "LO")],
        roi_dim=5,
    )
    return DatasetInfo(**{**base, **overrides})


def make_samples(subject: str, n: int) -> list[Sample]:
    """n samples of one subject (seeded by its name); every 5th is test and every 7th validation."""
    rng = np.random.default_rng(zlib.crc32(subject.encode()))
    out = []
    for i in range(n):
        split = "test" if i % 5 == 0 else "val" if i % 7 == 0 else "train"
        out.append(
            make_sample(
                subject,
                f"s{i // 10 + 1:02d}",
                i,
                f"img{i % 9}",
                split,
                bold=rng.standard_normal((3, 5)).astype(np.float16),
                clip_llv=rng.standard_normal(11).astype(np.float16),
                clip_hlv=rng.standard_normal(6).astype(np.float16),
                labels=(rng.random(7) < 0.3).astype(np.uint8),
            )
        )
    return out


def write_set(out: str, subjects: dict[str, int], maxcount: int = 4, **info_overrides) -> dict:
    writer = DatasetWriter(out, info(**info_overrides), maxcount=maxcount)
    for subject, n in subjects.items():
        sub = writer.subject(subject, fingerprint={"n": n})
        if sub is None:
            continue
        with sub:
            sub.save_preproc({"pca": np.eye(3, dtype=np.float32)})
            for sample in make_samples(subject, n):
                sub.add(sample)
    return writer.finish()
