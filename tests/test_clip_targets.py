"""The shuffled-CLIP negative control: a fixed derangement of stimuli, consistent across repeats and subjects."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest

from mused_fm.data import storage
from mused_fm.data.clip_targets import CLIP_CACHE
from mused_fm.data.manifest import Manifest
from mused_fm.data.pipeline import DatasetStream, eval_batches
from mused_fm.errors import ClipTargetError, MissingFileError

from train_helpers import pack_cohort


@pytest.fixture(scope="module")
def nsd(tmp_path_factory):
    return pack_cohort(tmp_path_factory.mktemp("clip_targets"))["nsd"]


def _samples(stream, split="test"):  # test: shared images, seen 3 times each
    out = {"stimulus": [], "subject": [], "clip_llv": [], "clip_hlv": []}
    for batch in eval_batches(stream, split, 64):
        for k in ("stimulus", "subject"):
            out[k] += batch[k]
        for k in ("clip_llv", "clip_hlv"):
            out[k].append(batch[k].numpy())
    return out["stimulus"], out["subject"], np.concatenate(out["clip_llv"]), np.concatenate(out["clip_hlv"])


def test_shuffled_features_are_another_stimulus_and_consistent(nsd):
    manifest = Manifest.read(str(nsd))
    rows = {s: i for i, s in enumerate(manifest.subjects)}
    own = DatasetStream(manifest, rows)
    shuffled = DatasetStream(manifest, rows, shuffled_clip=3)
    stimuli, subjects, own_llv, _ = _samples(own)
    stimuli2, _, llv, hlv = _samples(shuffled)
    assert stimuli == stimuli2 and len(set(stimuli)) >= 10
    with np.load(io.BytesIO(storage.read_bytes(f"{nsd}/{CLIP_CACHE}"))) as f:
        cache = {s: (a, b) for s, a, b in zip(f["ids"].tolist(), f["llv"], f["hlv"], strict=True)}
    by_stimulus: dict[str, bytes] = {}
    for i, s in enumerate(stimuli):
        np.testing.assert_array_equal(own_llv[i], cache[s][0])  # the cache holds the samples' own features
        assert not np.array_equal(llv[i], own_llv[i])  # nobody keeps their own
        assert any(np.array_equal(llv[i], a) and np.array_equal(hlv[i], b) for a, b in cache.values())
        assert by_stimulus.setdefault(s, llv[i].tobytes()) == llv[i].tobytes()  # same substitute every time
    shared = [s for s in set(stimuli) if len({subjects[i] for i, x in enumerate(stimuli) if x == s}) > 1]
    assert shared, "the cohort has stimuli seen by several subjects"
    other_seed = _samples(DatasetStream(manifest, rows, shuffled_clip=4))[2]
    assert not np.array_equal(other_seed, llv)


def test_missing_cache_is_a_named_error(nsd, tmp_path):
    copy = tmp_path / "nsd"
    shutil.copytree(nsd, copy)
    (copy / CLIP_CACHE).unlink()
    with pytest.raises(MissingFileError, match=r"clip_features=shuffled needs the CLIP feature cache"):
        DatasetStream(Manifest.read(str(copy)), {}, shuffled_clip=0)


def test_a_stimulus_missing_from_the_cache_stops_the_stream_by_name(nsd, tmp_path):
    """Not a damaged record to skip: a control that silently trained on less data than BCE-only would mislead."""
    copy = tmp_path / "nsd"
    shutil.copytree(nsd, copy)
    with np.load(copy / CLIP_CACHE) as f:
        kept = {k: f[k][::2] for k in f.files}  # every other stimulus
    np.savez(copy / CLIP_CACHE, **kept)
    stream = DatasetStream(
        Manifest.read(str(copy)), {s: i for i, s in enumerate(Manifest.read(str(copy)).subjects)}, shuffled_clip=0
    )
    with pytest.raises(ClipTargetError, match=r"not in the cache .*clip_features=own"):
        _samples(stream)
