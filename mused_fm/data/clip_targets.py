"""CLIP features shuffled across stimuli: the negative control of the CLIP guidance.

Every stimulus gets the features of another stimulus, by one fixed permutation of the shard set's feature
cache (CLIP_CACHE, written by the packers next to the shards). A stimulus is recognised by its features,
which equal a row of the cache (NSD samples name their image, HCP samples a movie clip and time while the
cache names frames; both carry the frame's or image's features). The pairing is consistent: every repeat
and every subject who saw a stimulus gets the same substitute, so the RSA targets keep their structure but
lose their relation to what was seen. If CLIP guidance helps by its semantics, this control should do no
better than the classification loss alone.

Shape legend: N stimuli in the cache, B samples, F feature width.
"""

from __future__ import annotations

import io

import numpy as np

from mused_fm.data import storage
from mused_fm.data.manifest import Manifest
from mused_fm.errors import ClipTargetError, MissingFileError

__all__ = ["CLIP_CACHE", "ShuffledClip"]

CLIP_CACHE = "clip/features.npz"


class ShuffledClip:
    """A stimulus's features -> the (llv, hlv) features of its substitute, a derangement seeded by `seed`."""

    def __init__(self, manifest: Manifest, seed: int, key: str) -> None:
        url = storage.join(manifest.url, CLIP_CACHE)
        if not storage.exists(url):
            raise MissingFileError(
                f"{key}=shuffled needs the CLIP feature cache of the shard set, {url}, which the packers write "
                "(python -m shards_tools pack-...); repack, or set it to own."
            )
        with np.load(io.BytesIO(storage.read_bytes(url))) as f:
            llv_NF, hlv_NF = f["llv"], f["hlv"]
        _, unique = np.unique(llv_NF, axis=0, return_index=True)  # identical frames are one stimulus
        llv_NF, hlv_NF = llv_NF[np.sort(unique)], hlv_NF[np.sort(unique)]
        if len(llv_NF) < 2:
            raise ClipTargetError(f"{key}=shuffled needs at least 2 distinct stimuli in {url}; it has {len(llv_NF)}.")
        order = np.random.default_rng([seed, 7]).permutation(len(llv_NF))
        substitute = np.empty(len(llv_NF), dtype=np.int64)
        substitute[order] = np.roll(order, -1)  # a cycle through a random order: nobody keeps their own
        self.url, self.dtype = url, llv_NF.dtype
        self.row = {row.tobytes(): i for i, row in enumerate(llv_NF)}
        self.llv_NF, self.hlv_NF = llv_NF[substitute], hlv_NF[substitute]

    def __call__(self, llv_BF: np.ndarray, stimuli: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(B, F_llv), (B, F_hlv) features of the substitutes of the samples whose own features are `llv_BF`."""
        rows = []
        for own, stimulus in zip(llv_BF.astype(self.dtype, copy=False), stimuli, strict=True):
            row = self.row.get(own.tobytes())
            if row is None:
                raise ClipTargetError(
                    f"the CLIP features of stimulus {stimulus!r} are not in the cache {self.url}, so the shuffled-CLIP "
                    "control cannot substitute them: repack the shard set (the packers write the cache with the "
                    "shards), or set data.datasets.<name>.clip_features=own."
                )
            rows.append(row)
        return self.llv_NF[rows], self.hlv_NF[rows]
