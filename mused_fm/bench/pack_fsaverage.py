"""The pack benchmark's fsaverage case: NSD surface betas at their real size, packed on one core.

A simulated release of two subjects with one session each, at fsaverage's 163842 vertices per
hemisphere and NSD's 750 trials (each .mgh 491 MB, as NSD's), then pack-nsd on one pinned core
(OMP/MKL/OpenBLAS and torch at one thread): first subj01 alone (the cohort basis is fitted on it, so
its betas are read twice), then subj02 appended (projected with that basis: read once). Each pack runs
in its own process, which reports the seconds inside pack-nsd (imports excluded) and its peak RSS
(VmHWM: ru_maxrss would carry over the benchmark process's own peak across fork and exec).
MB/s is the MB of betas files of the packed subject over those seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REAL_VERTICES = 163842
CHILD = """
import json, os, sys, time
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
import torch
torch.set_num_threads(1)
import shards_tools.pack_nsd, shards_tools.clip_features
from shards_tools.__main__ import main
start = time.perf_counter()
code = main(sys.argv[1:])
seconds = time.perf_counter() - start
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")]  # this process's own peak
print("BENCH " + json.dumps({"code": code, "seconds": seconds, "peak_rss_mb": int(hwm[0].split()[1]) / 1024}))
"""


def write_release(raw: Path, vertices: int) -> None:
    """Two subjects, one session of 750 trials each, `vertices` per hemisphere (NaN vertices in subj02)."""
    from shards_tools.synth.nsd import write_nsd
    from shards_tools.synth.presets import NsdPreset
    from shards_tools.tiny_clip import build_tiny_clip

    preset = NsdPreset(
        2, (1, 1), 750, 50, 200, 32, 8, surface_vertices=vertices, nan_subjects=("subj02",), missing_session=("", 0)
    )
    summary, text = write_nsd(raw / "nsd", preset, seed=0)
    build_tiny_clip(raw / "clip", text + summary["classes"], seed=0)


def _pack_on_one_core(argv: list[str]) -> dict:
    threads = {k: "1" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, *argv], env={**os.environ, **threads}, capture_output=True, text=True
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("BENCH ")]
    if proc.returncode or not lines or json.loads(lines[-1][6:])["code"]:
        raise RuntimeError(f"pack-nsd {' '.join(argv)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][6:])


def run_fsaverage(tmp: Path, vertices: int = REAL_VERTICES, roi_dim: int = 268) -> dict:
    raw = tmp / "fsaverage-raw"
    write_release(raw, vertices)
    out = tmp / "fsaverage-shards"
    result: dict = {"vertices_per_hemisphere": vertices, "trials_per_session": 750, "roi_dim": roi_dim}
    for case, subject in (("first_pack", "subj01"), ("append", "subj02")):
        betas = sorted((raw / f"nsd/nsddata_betas/ppdata/{subject}/fsaverage").rglob("*.mgh"))
        mb = sum(p.stat().st_size for p in betas) / 1e6
        argv = ["pack-nsd", "--root", str(raw / "nsd"), "--subjects", subject, "--roi-dim", str(roi_dim)]
        figures = _pack_on_one_core([*argv, "--clip-model", str(raw / "clip"), "--out", str(out)])
        result[case] = {
            "betas_mb": mb,
            "seconds": figures["seconds"],
            "mb_per_s": mb / figures["seconds"],
            "peak_rss_mb": figures["peak_rss_mb"],
        }
    manifest = json.loads((out / "manifest.json").read_text())
    result["nan_vertices_subj02"] = sum(manifest["subjects"]["nsd/subj02"]["facts"]["nan_vertices"].values())
    with np.load(out / "preproc/cohort-basis.npz", allow_pickle=False) as f:
        result["roi_vertices"] = sum(f[k].size for k in f.files if k.startswith("vertices_"))  # both hemispheres
    return result
