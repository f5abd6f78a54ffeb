"""Shard writer, verify and inspect on local folders: atomic, resumable, deterministic, checked."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest

from mused_fm.data.manifest import read_manifest
from mused_fm.data.schema import SCHEMA_VERSION, Sample, ShardSchemaError, sample_key
from mused_fm.data.tarfiles import iter_raw_records, iter_samples
from mused_fm.data.writer import DatasetWriter
from shards_tools.__main__ import main as cli
from shards_tools.inspect_shards import summarize
from shards_tools.verify import verify

from shard_helpers import info, make_samples, write_set


def read_all(folder) -> dict[str, Sample]:
    out = {}
    for tar in sorted((folder / "shards").glob("*.tar")):
        with open(tar, "rb") as f:
            for sample in iter_samples(f):
                out[sample.key] = sample
    return out


def test_manifest_counts_and_sha256(tmp_path):
    manifest = write_set(str(tmp_path), {"nsd/subj01": 23, "nsd/subj02": 9})
    assert manifest["schema"] == SCHEMA_VERSION and manifest["dataset"] == "nsd"
    assert manifest["subjects"]["nsd/subj01"]["counts"] == {"train": 15, "val": 3, "test": 5}
    assert manifest["subjects"]["nsd/subj01"]["preproc"] == "preproc/subj01.npz"
    assert sum(s["count"] for s in manifest["shards"]) == 32
    assert all(s["count"] <= 4 for s in manifest["shards"])
    for shard in manifest["shards"]:
        data = (tmp_path / shard["name"]).read_bytes()
        assert shard["bytes"] == len(data) and shard["sha256"] == hashlib.sha256(data).hexdigest()
    assert read_manifest(str(tmp_path)) == manifest
    assert not list(tmp_path.rglob("*.tmp")) and not list(tmp_path.rglob(".tmp-*"))  # no unfinished write left


def test_round_trip_dtypes_and_precision(tmp_path):
    write_set(str(tmp_path), {"nsd/subj01": 12})
    back = read_all(tmp_path)
    for sample in make_samples("nsd/subj01", 12):
        got = back[sample.key]
        assert got.meta == sample.meta
        for name, array in sample.arrays().items():
            assert got.arrays()[name].dtype == array.dtype
            np.testing.assert_array_equal(got.arrays()[name], array)
    # float32 responses survive the float16 storage to 1e-3 relative precision
    x = np.random.default_rng(1).standard_normal((3, 5)).astype(np.float32)
    np.testing.assert_allclose(x.astype(np.float16).astype(np.float32), x, rtol=1e-3, atol=1e-3)


def test_rerun_skips_and_ends_with_the_same_manifest(tmp_path):
    first = (write_set(str(tmp_path), {"nsd/subj01": 10}), (tmp_path / "manifest.json").read_bytes())
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "shards").iterdir()}
    write_set(str(tmp_path), {"nsd/subj01": 10})
    assert (tmp_path / "manifest.json").read_bytes() == first[1]
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "shards").iterdir()} == mtimes  # nothing rewritten


def test_interrupted_pack_resumes_to_the_clean_result(tmp_path):
    clean = write_set(str(tmp_path / "clean"), {"nsd/subj01": 20})
    out = str(tmp_path / "broken")
    writer = DatasetWriter(out, info(), maxcount=4)
    with pytest.raises(RuntimeError, match="disk full"), writer.subject("nsd/subj01", fingerprint={"n": 20}) as sub:
        sub.save_preproc({"pca": np.eye(3, dtype=np.float32)})
        for i, sample in enumerate(make_samples("nsd/subj01", 20)):
            if i == 13:
                raise RuntimeError("disk full")
            sub.add(sample)
    partial = sorted(p.name for p in (tmp_path / "broken" / "shards").iterdir())
    assert partial and not (tmp_path / "broken" / "manifest.json").exists()
    assert not (tmp_path / "broken" / "parts" / "subj01.json").exists()  # the subject is not recorded as done
    assert (tmp_path / "broken" / "parts" / "subj01.pending.json").exists()
    assert write_set(out, {"nsd/subj01": 20}) == clean
    assert verify(out) == {}
    assert not (tmp_path / "broken" / "parts" / "subj01.pending.json").exists()


def test_interrupted_pack_rerun_with_other_settings_drops_its_stale_shards(tmp_path):
    out = str(tmp_path / "broken")
    writer = DatasetWriter(out, info(), maxcount=4)
    with pytest.raises(RuntimeError), writer.subject("nsd/subj01", fingerprint={"n": 20}) as sub:
        for i, sample in enumerate(make_samples("nsd/subj01", 20)):
            if i == 13:
                raise RuntimeError("killed")
            sub.add(sample)
    # The rerun uses other settings (maxcount 3): the old partial shards must not be kept.
    assert write_set(out, {"nsd/subj01": 20}, maxcount=3) == write_set(
        str(tmp_path / "clean"), {"nsd/subj01": 20}, maxcount=3
    )
    assert verify(out) == {}


def test_dataset_settings_are_pinned_before_the_manifest_exists(tmp_path):
    writer = DatasetWriter(str(tmp_path), info())
    with pytest.raises(RuntimeError), writer.subject("nsd/subj01", {}) as sub:
        sub.add(make_samples("nsd/subj01", 1)[0])
        raise RuntimeError("killed before the manifest")
    with pytest.raises(ShardSchemaError, match=r"info\.json: .* was packed with classes = "):
        DatasetWriter(str(tmp_path), info(classes=list(reversed(info().classes))))


def test_appending_a_subject_and_refusing_conflicts(tmp_path):
    write_set(str(tmp_path), {"nsd/subj01": 6})
    manifest = write_set(str(tmp_path), {"nsd/subj05": 6})  # a held-out subject packed later
    assert list(manifest["subjects"]) == ["nsd/subj01", "nsd/subj05"]
    with pytest.raises(ShardSchemaError, match=r"subject nsd/subj01 is already in .* Pack it into a new --out"):
        write_set(str(tmp_path), {"nsd/subj01": 8})
    with pytest.raises(ShardSchemaError, match=r"was packed with classes = .* Pack into a new --out"):
        DatasetWriter(str(tmp_path), info(classes=["a", "b"]))


def test_writer_rejects_bad_samples(tmp_path):
    writer = DatasetWriter(str(tmp_path), info())
    sample = make_samples("nsd/subj01", 2)[1]
    with writer.subject("nsd/subj01", {}) as sub:
        sub.add(sample)
        with pytest.raises(ShardSchemaError, match=r"labels\.npy has shape \(6,\); the manifest says \(7,\)"):
            sub.add(Sample(sample.key, sample.bold, sample.clip_llv, sample.clip_hlv, sample.labels[:6], sample.meta))
        with pytest.raises(ShardSchemaError, match=r"bold\.npy has dtype float32; expected float16"):
            sub.add(
                Sample(
                    sample.key,
                    sample.bold.astype(np.float32),
                    sample.clip_llv,
                    sample.clip_hlv,
                    sample.labels,
                    sample.meta,
                )
            )
        nan = sample.bold.copy()
        nan[0, 0] = np.nan
        with pytest.raises(ShardSchemaError, match=r"bold\.npy holds NaN"):
            sub.add(Sample(sample.key, nan, sample.clip_llv, sample.clip_hlv, sample.labels, sample.meta))
    assert sample_key("nsd", "nsd/subj01", "s03", 512) == "nsd_subj01_s03_t000512"
    assert "." not in sample_key("bids", "site.a/sub-01.5", "run-1", 3)


def test_verify_names_every_bad_shard(tmp_path, capsys):
    manifest = write_set(str(tmp_path), {"nsd/subj01": 20})
    assert verify(str(tmp_path)) == {}
    assert cli(["verify", str(tmp_path)]) == 0
    first, second = manifest["shards"][0]["name"], manifest["shards"][1]["name"]
    data = (tmp_path / first).read_bytes()
    (tmp_path / first).write_bytes(data[: len(data) // 2])  # truncated
    flipped = bytearray((tmp_path / second).read_bytes())
    flipped[700] ^= 0xFF  # one byte inside the first array's payload
    (tmp_path / second).write_bytes(bytes(flipped))
    (tmp_path / "shards" / "stray-000000.tar").write_bytes(b"")
    bad = verify(str(tmp_path))
    assert set(bad) == {first, second, "shards/stray-000000.tar"}
    assert any("unreadable" in p or "samples; the manifest says" in p for p in bad[first])
    assert any("sha256" in p for p in bad[second])
    assert cli(["verify", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"BAD {first}" in out and f"BAD {second}" in out and "3 bad shard(s)" in out


def test_verify_without_manifest_says_how_to_finish(tmp_path):
    with pytest.raises(ShardSchemaError, match=r"manifest\.json does not exist.*Rerun the pack command"):
        verify(str(tmp_path))


def test_inspect_counts(tmp_path, capsys):
    write_set(str(tmp_path), {"nsd/subj01": 23, "nsd/subj02": 9})
    summary = summarize(str(tmp_path))
    assert summary["subjects"]["nsd/subj02"] == {"train": 6, "val": 1, "test": 2}
    assert summary["splits"] == {"train": 21, "val": 4, "test": 7}
    assert summary["samples"] == 32 and len(summary["classes"]) == 7
    # bold is 3 x 5 float16 per sample; the .npy header (128 bytes) is shared by a record's samples
    assert 3 * 5 * 2 < summary["member_bytes_per_sample"]["bold.npy"] < 3 * 5 * 2 + 128
    assert cli(["inspect", str(tmp_path)]) == 0
    assert "nsd/subj01" in capsys.readouterr().out


def test_meta_json_is_sorted_and_plain(tmp_path):
    write_set(str(tmp_path), {"nsd/subj01": 3})
    with open(next((tmp_path / "shards").glob("*.tar")), "rb") as f:
        _key, members = next(iter_raw_records(io.BufferedReader(f)))
    metas = json.loads(members["meta.json"])
    assert isinstance(metas, list) and all(list(m) == sorted(m) for m in metas)


def test_verify_reports_instead_of_crashing(tmp_path):
    manifest = write_set(str(tmp_path), {"nsd/subj01": 12})
    first, second = manifest["shards"][0]["name"], manifest["shards"][1]["name"]
    (tmp_path / first).unlink()
    (tmp_path / first).mkdir()  # a folder where a shard should be
    (tmp_path / "shards" / ".subj01-train-000009.tar.1a2b3c4d.tmp").write_bytes(b"partial")  # ignored
    (tmp_path / "shards" / ".tmp-123-1a2b3c4d-subj01-train-000009.tar").write_bytes(b"partial")  # ignored
    edited = json.loads((tmp_path / "manifest.json").read_text())
    edited["shards"][1]["subject"] = "nsd/subj09"
    edited["shards"].append(dict(edited["shards"][2], name=edited["shards"][2]["name"]))  # listed twice
    (tmp_path / "manifest.json").write_text(json.dumps(edited))
    bad = verify(str(tmp_path))
    assert "unreadable" in bad[first][0]
    assert "'nsd/subj09' is not among the manifest's subjects" in bad[second][0]
    assert any("is also in" in p for p in bad[edited["shards"][2]["name"]])
    assert not any(".tmp" in name for name in bad)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ShardSchemaError, match=r"manifest\.json is not valid JSON"):
        verify(str(tmp_path))


def test_all_finite_agrees_with_numpy_on_every_float16_bit_pattern():
    from mused_fm.data.schema import all_finite

    every = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    expected = np.isfinite(every)
    assert [all_finite(every[i : i + 1]) for i in range(0, 2**16, 97)] == expected[::97].tolist()
    assert all_finite(every[expected]) and not all_finite(every[~expected][:1])
    assert all_finite(np.ones(3, np.float32)) and not all_finite(np.array([1.0, np.nan], np.float32))
