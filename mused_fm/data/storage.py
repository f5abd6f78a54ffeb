"""Where shards live: a local folder or s3://bucket/prefix, through fsspec (s3fs for S3).

S3 endpoint, region and credentials come from the usual AWS environment variables and profiles
(`AWS_ENDPOINT_URL` for an S3-compatible store such as MinIO or moto), never from arguments, so
they reach DataLoader workers and launched ranks without plumbing and are never logged.

Writes are all-or-nothing: a local file is written under a temporary name in the same folder and
renamed; an S3 object becomes visible only when its upload completes.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager

import fsspec

from mused_fm import files
from mused_fm.errors import InputError

__all__ = [
    "exists",
    "filesystem",
    "is_remote",
    "join",
    "listdir",
    "open_read",
    "put_file",
    "read_bytes",
    "remove",
    "write_bytes",
    "write_json",
]


def is_remote(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def join(base: str, *parts: str) -> str:
    """`base/part/...` for folders and URLs alike (no os.path on URLs)."""
    return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts)])


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = fsspec.core.url_to_fs(str(url))
    return fs, path


@contextmanager
def _access(url: str) -> Iterator[None]:
    """A refused request (bad or missing credentials, no permission on the bucket) as one named error."""
    try:
        yield
    except PermissionError as err:
        where = "the S3 server" if is_remote(url) else "the file system"
        hint = (
            " Check the credentials (AWS_PROFILE or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), AWS_ENDPOINT_URL and "
            "the bucket's policy."
            if is_remote(url)
            else ""
        )
        raise InputError(f"{url}: access refused by {where} ({str(err)[:200]}).{hint}") from None


def exists(url: str) -> bool:
    with _access(url):
        fs, path = filesystem(url)
        return fs.exists(path)


def read_bytes(url: str) -> bytes:
    with _access(url):
        fs, path = filesystem(url)
        return fs.cat_file(path)


def open_read(url: str, block_size: int = 8 * 2**20):
    """A binary file object; remote files stream with read-ahead."""
    with _access(url):
        fs, path = filesystem(url)
        if is_remote(url):
            return fs.open(path, "rb", block_size=block_size, cache_type="readahead")
        return open(path, "rb")


def listdir(url: str) -> list[str]:
    """Names (not paths) of the entries of a folder or prefix; empty if it does not exist."""
    with _access(url):
        fs, path = filesystem(url)
        if not fs.exists(path):
            return []
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))


def write_bytes(url: str, data: bytes) -> None:
    """Write a whole file atomically."""
    with _access(url):
        if is_remote(url):
            fs, path = filesystem(url)
            fs.pipe_file(path, data)  # one PUT: the object appears complete or not at all
            return
        files.write_bytes(url.removeprefix("file://"), data)


def write_json(url: str, payload) -> None:
    """Strict JSON (NaN written as null), written atomically to a file or an s3:// URL."""
    write_bytes(url, files.dumps_json(payload).encode())


def remove(url: str) -> None:
    """Delete a file if it exists."""
    with _access(url):
        fs, path = filesystem(url)
        if fs.exists(path):
            fs.rm_file(path)


def put_file(local_path: str | os.PathLike, url: str) -> None:
    """Move a finished local file to `url` (rename on the same disk, upload to S3), atomically."""
    with _access(url):
        if is_remote(url):
            fs, path = filesystem(url)
            fs.put_file(str(local_path), path)  # multipart uploads become visible only when complete
            os.remove(local_path)
            return
        with files.atomic_path(url.removeprefix("file://")) as tmp:
            shutil.move(str(local_path), tmp)  # may cross file systems: copy to a temp name first
