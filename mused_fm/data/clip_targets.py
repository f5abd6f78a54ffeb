"""CLIP features shuffled across stimuli: the negative control of the CLIP guidance.

Every stimulus gets the features of another stimulus, by one fixed permutation of the shard set's feature
cache (CLIP_CACHE, written by the packers next to the shards; its rows equal the samples' own features).
The pairing is consistent: every repeat and every subject who saw a stimulus gets the same substitute, so
the RSA targets keep their structure but lose their relation to what was seen. If CLIP guidance helps by
its semantics, this control should do no better than the classification loss alone.

Shape legend: N stimuli in the cache, B samples, F feature width.
"""

from __future__ import annotations

import io

import numpy as np

from mused_fm.data import storage
from mused_fm.data.manifest import Manifest
from mused_fm.errors import MissingFileError, ShardSchemaError

__all__ = ["CLIP_CACHE", "ShuffledClip"]

CLIP_CACHE = "clip/features.npz"


class ShuffledClip:
    """stimulus id -> the (llv, hlv) features of its substitute, a derangement seeded by `seed`."""

    def __init__(self, manifest: Manifest, seed: int, key: str) -> None:
        url = storage.join(manifest.url, CLIP_CACHE)
        if not storage.exists(url):
            raise MissingFileError(
                f"{key}=shuffled needs the CLIP feature cache of the shard set, {url}, which the packers write "
                "(python -m shards_tools pack-...); repack, or set it to own."
            )
        with np.load(io.BytesIO(storage.read_bytes(url))) as f:
            ids, llv_NF, hlv_NF = f["ids"].tolist(), f["llv"], f["hlv"]
        order = np.random.default_rng([seed, 7]).permutation(len(ids))
        substitute = np.empty(len(ids), dtype=np.int64)
        substitute[order] = np.roll(order, -1)  # a cycle through a random order: nobody keeps their own
        self.url, self.row = url, {s: i for i, s in enumerate(ids)}
        self.llv_NF, self.hlv_NF = llv_NF[substitute], hlv_NF[substitute]

    def __call__(self, stimuli: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(B, F_llv), (B, F_hlv) features of the substitutes of `stimuli`."""
        try:
            rows = [self.row[s] for s in stimuli]
        except KeyError as err:
            raise ShardSchemaError(f"stimulus {err.args[0]!r} is not in the CLIP feature cache {self.url}.") from None
        return self.llv_NF[rows], self.hlv_NF[rows]
