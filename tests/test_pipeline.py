"""Training and evaluation pipelines over shards written by the real writer, on disk and on S3."""

from __future__ import annotations

import io
import logging
import tarfile

import numpy as np
import pytest
import torch

from mused_fm.data.pipeline import DatasetStream, eval_batches, split_batch, train_loader
from mused_fm.data.schema import Sample, make_sample
from mused_fm.data.writer import DatasetWriter
from mused_fm.errors import ShardSchemaError, UnknownSubjectError

from shard_helpers import info, make_samples, write_set

ROWS = {"nsd/subj01": 0, "nsd/subj02": 1, "nsd/subj03": 2}


@pytest.fixture
def nsd(tmp_path) -> str:
    write_set(str(tmp_path / "nsd"), {"nsd/subj01": 90, "nsd/subj02": 60, "nsd/subj03": 45}, maxcount=20)
    return str(tmp_path / "nsd")


def written(subject_counts) -> dict[bytes, Sample]:
    return {s.bold.tobytes(): s for subject, n in subject_counts.items() for s in make_samples(subject, n)}


def test_batches_are_real_samples_with_their_subject_rows(nsd):
    truth = written({"nsd/subj01": 90, "nsd/subj02": 60, "nsd/subj03": 45})
    loader = train_loader(
        DatasetStream.open(nsd, ROWS), "train", batch_size=8, epoch_batches=6, seed=0, num_workers=0, buffer=32
    )
    batches = list(loader)
    assert len(batches) == 6
    for batch in batches:
        assert batch["bold"].shape == (8, 3, 5) and batch["bold"].dtype == torch.float16
        assert batch["labels"].dtype == torch.uint8 and batch["clip_llv"].shape == (8, 11)
        for i in range(8):
            sample = truth[batch["bold"][i].numpy().tobytes()]  # every row is a written training sample
            assert sample.meta["split"] == "train" and sample.meta["subject"] == batch["subject"][i]
            assert batch["subject_row"][i] == ROWS[sample.meta["subject"]]
            np.testing.assert_array_equal(batch["labels"][i].numpy(), sample.labels)
    assert len({s for b in batches for s in b["subject"]}) == 3  # the buffer mixes subjects


@pytest.mark.slow
@pytest.mark.parametrize("num_workers", [0, 2])
def test_every_rank_gets_the_same_number_of_batches(nsd, monkeypatch, num_workers):
    counts = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        loader = train_loader(
            DatasetStream.open(nsd, ROWS),
            "train",
            batch_size=4,
            epoch_batches=7,
            seed=rank,
            num_workers=num_workers,
            buffer=16,
        )
        counts.append(sum(1 for _ in loader))
        counts.append(sum(1 for _ in loader))  # a second epoch of the same loader
    assert counts == [7, 7, 7, 7]


def test_unknown_subject_is_an_error_naming_the_shard(nsd):
    loader = train_loader(
        DatasetStream.open(nsd, {"nsd/subj01": 0}),
        "train",
        batch_size=4,
        epoch_batches=20,
        seed=0,
        num_workers=0,
        buffer=4,
    )
    with pytest.raises(UnknownSubjectError, match=r"shards/subj0[23]-train-\d+\.tar: subject 'nsd/subj0[23]'"):
        list(loader)


def test_corrupt_shard_is_skipped_counted_and_named(nsd, tmp_path, caplog):
    manifest_shards = sorted((tmp_path / "nsd" / "shards").glob("subj01-train-*.tar"))
    data = manifest_shards[0].read_bytes()
    manifest_shards[0].write_bytes(data[: len(data) // 3])
    stream = DatasetStream.open(nsd, ROWS, subjects=["subj01"])
    loader = train_loader(stream, "train", batch_size=4, epoch_batches=40, seed=0, num_workers=0, buffer=4)
    with caplog.at_level(logging.WARNING, logger="mused_fm.data.pipeline"):
        batches = list(loader)
    assert len(batches) == 40 and sum(b["n_skipped"] for b in batches) >= 1
    assert manifest_shards[0].name in caplog.text


def test_evaluation_reads_each_sample_exactly_once(nsd):
    truth = {
        k: s
        for k, s in written({"nsd/subj01": 90, "nsd/subj02": 60, "nsd/subj03": 45}).items()
        if s.meta["split"] == "test"
    }
    stream = DatasetStream.open(nsd, ROWS)
    seen = [
        row.numpy().tobytes() for rank in (0, 1) for b in eval_batches(stream, "test", 7, rank, 2) for row in b["bold"]
    ]
    assert sorted(seen) == sorted(truth) and stream.count("test") == len(truth)


def test_volume_samples_are_unmasked_into_the_grid(tmp_path):
    grid = (3, 4, 5)
    mask = np.zeros(grid, bool)
    mask[1:, 1:3, ::2] = True
    writer = DatasetWriter(
        str(tmp_path), info(dataset="hcp", kind="volume", volume_shape=list(grid), rois=[], roi_dim=0)
    )
    rng = np.random.default_rng(0)
    with writer.subject("hcp/100610", {}) as sub:
        sub.save_preproc({"mask": mask})
        for i in range(10):
            sub.add(
                make_sample(
                    "hcp/100610",
                    "run4",
                    i,
                    f"t{i}",
                    "test",
                    rng.standard_normal(mask.sum()).astype(np.float16),
                    np.zeros(11, np.float16),
                    np.zeros(6, np.float16),
                    np.zeros(7, np.uint8),
                )
            )
    writer.finish()
    batch = next(eval_batches(DatasetStream.open(str(tmp_path), {"hcp/100610": 4}), "test", 10))
    assert batch["bold"].shape == (10, 3, 4, 5)
    assert torch.all(batch["bold"][:, ~torch.from_numpy(mask)] == 0)
    assert (batch["subject_row"] == 4).all()


def test_split_batch_follows_the_weights():
    assert split_batch(64, {"nsd": 1.0, "hcp": 1.0}) == {"nsd": 32, "hcp": 32}
    assert split_batch(10, {"nsd": 3.0, "hcp": 1.0}) == {"nsd": 7, "hcp": 3}
    assert split_batch(3, {"a": 100.0, "b": 0.01, "c": 0.01}) == {"a": 1, "b": 1, "c": 1}
    with pytest.raises(ValueError, match="cannot give each of the 3 datasets"):
        split_batch(2, {"a": 1, "b": 1, "c": 1})


@pytest.mark.slow
def test_streams_from_s3_with_spawned_workers(s3_bucket):
    url = f"s3://{s3_bucket}/shards/nsd"
    write_set(url, {"nsd/subj01": 40, "nsd/subj02": 40}, maxcount=10)
    loader = train_loader(
        DatasetStream.open(url, ROWS), "train", batch_size=4, epoch_batches=5, seed=0, num_workers=2, buffer=8
    )
    batches = list(loader)
    assert len(batches) == 5 and all(b["bold"].shape == (4, 3, 5) for b in batches)


def test_a_stream_with_no_readable_shard_stops_with_one_named_error(nsd, tmp_path, monkeypatch, caplog):
    """Every training shard gone (or the S3 server down): a bounded number of tries, then a named error."""
    import mused_fm.data.pipeline as pipeline

    monkeypatch.setattr(pipeline, "_BACKOFF_S", (0.0, 0.0))  # the bound, not the waiting, is under test
    stream = DatasetStream.open(nsd, ROWS)
    for path in (tmp_path / "nsd" / "shards").glob("*-train-*.tar"):
        path.unlink()
    loader = train_loader(stream, "train", batch_size=4, epoch_batches=5, seed=0, num_workers=0, buffer=4)
    with caplog.at_level(logging.WARNING, logger="mused_fm.data.pipeline"), pytest.raises(ShardSchemaError) as err:
        next(iter(loader))
    assert f"data.datasets.nsd: {pipeline.MAX_CONSECUTIVE_FAILURES} shard reads of {nsd} failed in a row" in str(
        err.value
    )
    assert "shards_tools verify" in str(err.value)
    assert len(caplog.records) <= 3  # rate-limited, not one line per retry


def _poison(shard, member: str = "bold.npy") -> None:
    """Rewrite a shard with NaN in every record's `member`, as a faulty writer upstream would (ours refuses)."""
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(shard, "w") as tar:
        for m, data in members:
            if m.name.endswith(member):
                array = np.load(io.BytesIO(data))
                array[:, 0] = np.nan
                buffer = io.BytesIO()
                np.save(buffer, array)
                data = buffer.getvalue()
                m.size = len(data)
            tar.addfile(m, io.BytesIO(data))


def test_records_with_non_finite_values_are_skipped_counted_and_named(tmp_path, caplog):
    """NaN in every record of one subject: no batch, in training or evaluation, holds them."""
    url = str(tmp_path / "nsd")
    write_set(url, {"nsd/subj01": 60, "nsd/subj02": 40}, maxcount=20)
    for shard in (tmp_path / "nsd" / "shards").glob("subj02-*.tar"):
        _poison(shard)
    stream = DatasetStream.open(url, ROWS)
    loader = train_loader(stream, "train", batch_size=4, epoch_batches=10, seed=0, num_workers=0, buffer=4)
    with caplog.at_level(logging.WARNING, logger="mused_fm.data.pipeline"):
        batches = list(loader)
    assert all(torch.isfinite(b["bold"].float()).all() for b in batches)
    assert {r for b in batches for r in b["subject_row"].tolist()} == {ROWS["nsd/subj01"]}
    assert sum(b["n_skipped"] for b in batches) >= 1 and "bold.npy holds NaN or infinite values" in caplog.text
    skipped: dict[str, int] = {}
    test = [s for b in eval_batches(stream, "test", 8, skipped=skipped) for s in b["subject"]]
    assert set(test) == {"nsd/subj01"}
    assert sum(skipped.values()) == sum(s["count"] for s in stream.shards("test") if s["subject"] == "nsd/subj02")


def test_evaluation_skips_a_damaged_shard_and_counts_its_samples(nsd, tmp_path, caplog):
    stream = DatasetStream.open(nsd, ROWS)
    damaged = stream.shards("test")[0]
    path = tmp_path / "nsd" / damaged["name"]
    path.write_bytes(path.read_bytes()[:700])  # the first header and part of a record
    skipped: dict[str, int] = {}
    with caplog.at_level(logging.WARNING, logger="mused_fm.data.pipeline"):
        seen = sum(len(b["subject"]) for b in eval_batches(stream, "test", 7, skipped=skipped))
    assert skipped == {stream.manifest.shard_url(damaged): damaged["count"]}
    assert seen == stream.count("test") - damaged["count"]
    assert damaged["name"] in caplog.text
