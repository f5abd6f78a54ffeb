"""`s3://` URLs for webdataset: an s3fs-backed gopen handler, registered when this module is imported.

webdataset 1.0.2 has no S3 opener ("no gopen handler defined"). The registration happens at import,
so DataLoader workers started with spawn or forkserver (which re-import modules) have it too; the
pipeline module imports this one. Endpoint, region and credentials come from the usual AWS variables
(`AWS_ENDPOINT_URL` for MinIO or moto) inside each worker; no filesystem object crosses processes.
"""

from __future__ import annotations

import fsspec
import webdataset as wds

__all__ = ["gopen_s3"]


def gopen_s3(url: str, mode: str = "rb", bufsize: int = 8192, **_):
    # Per-file options belong on fs.open (fsspec.open would pass them to the filesystem constructor).
    fs, path = fsspec.core.url_to_fs(url)
    return fs.open(path, mode, block_size=8 * 2**20, cache_type="readahead")


wds.gopen_schemes["s3"] = gopen_s3
