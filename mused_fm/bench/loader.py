"""Loader benchmark: samples/s of the training pipeline from local shards and from S3, against training.

    python -m mused_fm.bench loader --json docs/bench_loader.json

Writes NSD-shaped shards with the real writer (bold 10 x 268 float16, llv 1024, hlv 512, 80 labels,
records of 128 samples), then times `train_loader` (batch 64, shuffle buffer 2048, in the main
process on one thread: per core) reading them from a folder, and from a moto S3 server on loopback
in a process of its own (on the machine's other core, as a remote store would not use ours); the
server's CPU seconds over the timed batches are reported next to ours (`s3_server_cpu_s`,
`s3_client_cpu_s`), so what the store costs on this machine is visible, not hidden.
`train_samples_per_s` is what one flagship training step (24 x 512, fwd+bwd, the model benchmark's
step) consumes on this device.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time

import numpy as np
import torch

from mused_fm.bench.targets import Target
from mused_fm.data.pipeline import DatasetStream, train_loader
from mused_fm.data.schema import make_sample
from mused_fm.data.writer import DatasetInfo, DatasetWriter

SUBJECTS = [f"nsd/subj0{i}" for i in range(1, 9)]
TARGETS = (
    Target("samples_per_s", ">=", 10_000, "local shards, samples/s on one core"),
    Target("s3_ratio_to_local", ">=", 0.5, "S3 samples/s over local"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--samples", type=int, default=16384, help="NSD-shaped samples to write")
    parser.add_argument("--batches", type=int, default=200, help="batches of 64 to time per source")
    parser.add_argument("--no-s3", action="store_true", help="skip the moto S3 measurement")


def _write(url: str, n: int) -> None:
    info = DatasetInfo(
        dataset="nsd",
        kind="roi",
        classes=[f"c{i}" for i in range(80)],
        clip={},
        llv_dim=1024,
        hlv_dim=512,
        rois=[{"name": f"r{i}"} for i in range(10)],
        roi_dim=268,
    )
    writer = DatasetWriter(url, info, maxcount=2048)
    rng = np.random.default_rng(0)
    for subject in SUBJECTS:
        with writer.subject(subject, {}) as sub:
            for i in range(n // len(SUBJECTS)):
                arrays = [rng.standard_normal(shape).astype(np.float16) for shape in ((10, 268), 1024, 512)]
                labels = (rng.random(80) < 0.05).astype(np.uint8)
                sub.add(make_sample(subject, "s01", i, f"nsd{i:05d}", "train", *arrays, labels))
    writer.finish()


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (Linux /proc; None elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rate(url: str, batches: int, server_pid: int | None = None) -> dict:
    """samples/s over `batches` timed batches, with this process's and the server's CPU seconds meanwhile."""
    rows = {s: i for i, s in enumerate(SUBJECTS)}
    loader = train_loader(
        DatasetStream.open(url, rows),
        "train",
        batch_size=64,
        epoch_batches=batches + 10,
        seed=0,
        num_workers=0,
        buffer=2048,
    )
    it = iter(loader)
    for _ in range(10):  # warm-up: fill the shuffle buffer, open the first shards
        next(it)
    server = _cpu_seconds(server_pid) if server_pid else None
    cpu, start = time.process_time(), time.perf_counter()
    n = sum(len(next(it)["subject"]) for _ in range(batches))
    seconds = time.perf_counter() - start
    out = {"samples_per_s": n / seconds, "seconds": seconds, "cpu_s": time.process_time() - cpu}
    if server is not None:
        out["server_cpu_s"] = _cpu_seconds(server_pid) - server
    return out


@contextlib.contextmanager
def _moto_bucket():
    """A moto S3 server in its own process on loopback (in-process, its threads would share our core)."""
    import s3fs

    from shards_tools.s3_server import local_s3_server, pointed_at

    with local_s3_server(in_process=False) as server, pointed_at(server.endpoint):
        s3fs.S3FileSystem().mkdir("mused-bench")
        yield "s3://mused-bench", server.pid


def _train_rate() -> float:
    from mused_fm.bench.model import add_arguments as model_args
    from mused_fm.bench.model import run as model_run

    parser = argparse.ArgumentParser()
    model_args(parser)
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    try:
        return model_run(parser.parse_args(["--rounds", "2", "--hcp-rounds", "0"]))["samples_per_s"]
    finally:
        torch.set_num_threads(threads)


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)  # per core
    with tempfile.TemporaryDirectory(prefix="mused-bench-loader-") as tmp:
        _write(f"{tmp}/nsd", args.samples)
        timed = _rate(f"{tmp}/nsd", args.batches)
    local = timed["samples_per_s"]
    result = {
        "samples_per_s": local,
        "samples": args.samples,
        "batch_size": 64,
        "cores": 1,
        "local_seconds": timed["seconds"],
        "local_cpu_s": timed["cpu_s"],
    }
    if not args.no_s3:
        with _moto_bucket() as (bucket, server_pid):
            _write(f"{bucket}/nsd", args.samples)
            timed = _rate(f"{bucket}/nsd", args.batches, server_pid)
        result.update(
            {
                "s3_samples_per_s": timed["samples_per_s"],
                "s3_seconds": timed["seconds"],
                "s3_client_cpu_s": timed["cpu_s"],
            }
        )
        if "server_cpu_s" in timed:
            result["s3_server_cpu_s"] = timed["server_cpu_s"]
        result["s3_ratio_to_local"] = result["s3_samples_per_s"] / local
    result["train_samples_per_s"] = _train_rate()
    result["ratio_to_training"] = local / result["train_samples_per_s"]
    return result


def report(result: dict) -> str:
    lines = [f"local shards     {result['samples_per_s']:10.0f} samples/s (one core, batch 64)"]
    if "s3_samples_per_s" in result:
        lines.append(
            f"moto S3          {result['s3_samples_per_s']:10.0f} samples/s  "
            f"(ratio to local {result['s3_ratio_to_local']:.2f})"
        )
        r = result
        server = f" + moto server {r['s3_server_cpu_s']:.2f} s" if "s3_server_cpu_s" in r else ""
        lines.append(
            f"CPU while timed  local {r['local_cpu_s']:.2f} s in {r['local_seconds']:.2f} s; "
            f"S3 loader {r['s3_client_cpu_s']:.2f} s{server} in {r['s3_seconds']:.2f} s"
        )
    lines.append(
        f"flagship step    {result['train_samples_per_s']:10.1f} samples/s consumed  "
        f"(loader / training = {result['ratio_to_training']:.0f})"
    )
    return "\n".join(lines)
