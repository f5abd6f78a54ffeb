"""Writing, verifying and inspecting shards on a real S3 protocol server (moto on loopback)."""

from __future__ import annotations

import pytest
import s3fs

from shards_tools.__main__ import main as cli
from shards_tools.inspect_shards import summarize
from shards_tools.verify import verify

from shard_helpers import write_set


def test_pack_verify_inspect_on_s3(s3_bucket, capsys):
    url = f"s3://{s3_bucket}/shards/nsd"
    manifest = write_set(url, {"nsd/subj01": 14, "nsd/subj02": 6})
    fs = s3fs.S3FileSystem()
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{s3_bucket}/shards/nsd")) == [
        "info.json",
        "manifest.json",
        "parts",
        "preproc",
        "shards",
    ]
    assert verify(url) == {}
    assert summarize(url)["samples"] == 20
    assert write_set(url, {"nsd/subj01": 14, "nsd/subj02": 6}) == manifest  # rerun on S3: same manifest

    name = manifest["shards"][2]["name"]
    data = fs.cat_file(f"{s3_bucket}/shards/nsd/{name}")
    fs.pipe_file(f"{s3_bucket}/shards/nsd/{name}", data[:-1024])  # truncated object
    s3fs.S3FileSystem.clear_instance_cache()
    assert list(verify(url)) == [name]
    assert cli(["verify", url]) == 1
    assert f"BAD {name}" in capsys.readouterr().out


def test_refused_credentials_are_one_named_error(s3_bucket, monkeypatch):
    """What S3 answers to wrong keys or a bucket policy (s3fs raises PermissionError: Forbidden)."""
    import s3fs

    from mused_fm.data.manifest import Manifest
    from mused_fm.errors import InputError

    async def refuse(self, path, *args, **kwargs):
        raise PermissionError("Forbidden")

    monkeypatch.setattr(s3fs.S3FileSystem, "_cat_file", refuse)
    s3fs.S3FileSystem.clear_instance_cache()
    url = f"s3://{s3_bucket}/shards/nsd"
    with pytest.raises(InputError, match=r"access refused by the S3 server \(Forbidden\)\. Check the credentials"):
        Manifest.read(url)
