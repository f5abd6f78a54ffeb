"""A throw-away S3 protocol server (moto) on 127.0.0.1: the one used by `local-s3`, the tests and benchmarks.

    with local_s3_server() as server, pointed_at(server.endpoint):   # s3fs here and in child processes
        ...

It binds to loopback only, on a port the OS picks, and keeps everything in memory; the credentials are
dummies. `in_process=False` runs it as its own process (the loader benchmark: its CPU time is measured
apart from the client's).
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["DUMMY_CREDENTIALS", "LocalS3", "client_env", "local_s3_server", "pointed_at"]

DUMMY_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "local-s3",
    "AWS_SECRET_ACCESS_KEY": "local-s3",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@dataclass(frozen=True)
class LocalS3:
    endpoint: str
    """http://127.0.0.1:PORT"""
    pid: int
    """The process serving it (this one when in process)."""


@contextmanager
def local_s3_server(in_process: bool = True) -> Iterator[LocalS3]:
    """Start moto on 127.0.0.1, yield where it is, stop it afterwards."""
    if in_process:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            yield LocalS3(f"http://{host}:{port}", os.getpid())
        finally:
            server.stop()
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(150):  # the server takes a few seconds to import
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/").close()
                break
            except OSError:
                time.sleep(0.2)
        yield LocalS3(endpoint, process.pid)
    finally:
        process.terminate()
        process.wait(timeout=30)


def client_env(endpoint: str) -> dict[str, str]:
    """The AWS variables that point s3fs at `endpoint` with the dummy credentials (AWS_PROFILE must be unset)."""
    return {**DUMMY_CREDENTIALS, "AWS_ENDPOINT_URL": endpoint}


@contextmanager
def pointed_at(endpoint: str) -> Iterator[None]:
    """This process's AWS variables (inherited by child processes) set for `endpoint`, restored afterwards."""
    wanted = client_env(endpoint)
    saved = {key: os.environ.get(key) for key in [*wanted, "AWS_PROFILE"]}
    os.environ.update(wanted)
    os.environ.pop("AWS_PROFILE", None)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # instances cache their endpoint
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        s3fs.S3FileSystem.clear_instance_cache()
