"""local-s3: run a command against a throw-away S3 server (moto) on 127.0.0.1, with folders uploaded to it.

    python -m shards_tools local-s3 --upload demo_out/shards=s3://mused-demo/shards -- \
        deepspeed --num_gpus 2 launch/train.py recipes/demo.yaml data.datasets.nsd.url=s3://mused-demo/shards/nsd ...

For trying the S3 path without a cloud account (make demo S3=1) and for debugging a pipeline against
a real S3 protocol server. The server binds to loopback only, on a port the OS picks; the command gets
AWS_ENDPOINT_URL and dummy credentials in its environment (no real credentials are read or printed).
Everything lives in memory and is gone when the command ends; the exit code is the command's.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
from pathlib import Path

from mused_fm.errors import InputError, MissingFileError
from shards_tools.s3_server import local_s3_server, pointed_at

__all__ = ["add_arguments", "run"]

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--upload",
        action="append",
        default=[],
        metavar="DIR=s3://BUCKET/PREFIX",
        help="copy a local folder to the server before the command runs (repeatable)",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")


def _parse_upload(item: str) -> tuple[Path, str, str]:
    src, sep, dest = item.partition("=")
    if not sep or not dest.startswith("s3://") or len(dest) <= len("s3://"):
        raise InputError(f"--upload {item!r}: expected DIR=s3://bucket/prefix.")
    if not Path(src).is_dir():
        raise MissingFileError(f"--upload {item!r}: {src} is not a folder.")
    return Path(src), dest.rstrip("/"), dest[len("s3://") :].split("/", 1)[0]


def run(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise InputError("local-s3 needs a command after `--` (e.g. -- deepspeed --num_gpus 2 launch/train.py ...).")
    uploads = [_parse_upload(item) for item in args.upload]
    with local_s3_server() as server, pointed_at(server.endpoint):  # the command inherits the variables
        import s3fs

        fs = s3fs.S3FileSystem()
        for src, dest, bucket in uploads:
            if not fs.exists(bucket):
                fs.mkdir(bucket)
            files = [p for p in sorted(src.rglob("*")) if p.is_file()]
            for path in files:
                fs.put_file(str(path), f"{dest}/{path.relative_to(src).as_posix()}".removeprefix("s3://"))
            size = sum(p.stat().st_size for p in files)
            logger.info("uploaded %d files (%.1f MB) from %s to %s", len(files), size / 1e6, src, dest)
        logger.info("local S3 server at %s; running: %s", server.endpoint, " ".join(command))
        return subprocess.run(command).returncode
