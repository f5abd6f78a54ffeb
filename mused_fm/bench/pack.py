"""Pack benchmark: samples/s and bytes/sample of each packer, against only reading its inputs.

    python -m mused_fm.bench pack --json docs/bench_pack.json [--preset demo] [--raw RAW_DIR]

Writes the simulated cohort (unless --raw points at one), then times pack-nsd, pack-hcp and pack-bids
into a temporary folder, and separately the time to just read the same inputs with nibabel/h5py, so
the packers' own overhead (preprocessing, CLIP features, encoding, hashing) shows. The fsaverage case
(pack_fsaverage.py) packs NSD surface betas at their real size on one core: MB/s and peak RSS.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from mused_fm.bench.pack_fsaverage import REAL_VERTICES, run_fsaverage
from mused_fm.bench.targets import Target
from mused_fm.data.manifest import Manifest
from mused_fm.errors import InputError

NSD_SUBJECTS = ("subj01", "subj02", "subj03", "subj04", "subj05")
CASES = ("nsd", "hcp", "bids", "fsaverage")
TARGETS = (
    Target("nsd.bytes_per_sample", "<=", 32_000, "bytes of an NSD sample at the paper's shape: 32 KB"),
    Target("fsaverage.append.mb_per_s", ">=", 100, "fsaverage betas read and packed with the cohort basis, 1 core"),
    Target("fsaverage.append.peak_rss_mb", "<=", 3000, "peak RSS of that pack (one session pair of 2 x 491 MB)"),
    Target("fsaverage.first_pack.mb_per_s", ">=", 100, "the same, fitting the cohort basis (betas read twice)"),
    Target("fsaverage.first_pack.peak_rss_mb", "<=", 3000, "peak RSS of the pack that fits the basis"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="demo", help="simulated cohort preset (test or demo)")
    parser.add_argument("--raw", type=Path, default=None, help="an existing simulated cohort (skips synth)")
    parser.add_argument("--llv-dim", type=int, default=1024, help="as pack-nsd's default, for real-sized samples")
    parser.add_argument("--roi-dim", type=int, default=268, help="NSD PCA width (the paper's 268)")
    parser.add_argument("--cases", default=",".join(CASES), help="comma list of %(default)s")
    parser.add_argument(
        "--fsaverage-vertices", type=int, default=REAL_VERTICES, help="vertices per hemisphere (%(default)s: real)"
    )


def _read_inputs(raw: Path) -> dict[str, float]:
    """Seconds to read every input file each packer reads (volumes and HDF5), without processing."""
    import h5py
    import nibabel as nib

    def read_all(paths) -> float:
        start = time.perf_counter()
        for path in paths:
            if path.suffix == ".hdf5":
                with h5py.File(path, "r") as f:
                    for key in f:
                        f[key][()]
            else:
                np.asarray(nib.load(path).dataobj)
        return time.perf_counter() - start

    nsd = sorted((raw / "nsd").glob("nsddata_betas/ppdata/subj0*/func1pt8mm/betas_fithrf_GLMdenoise_RR/betas_session*"))
    nsd += sorted((raw / "nsd").glob("nsddata/ppdata/subj0*/func1pt8mm/roi/Kastner2015.nii.gz"))
    nsd.append(raw / "nsd/nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5")
    hcp = sorted((raw / "hcp").glob("*/MNINonLinear/Results/*/*_hp2000_clean.nii.gz"))
    hcp.append(raw / "hcp/7T_movie_resources/WordNetFeatures.hdf5")
    bids = sorted((raw / "bids").glob("sub-*/func/*_bold.nii*"))
    return {"nsd": read_all(nsd), "hcp": read_all(hcp), "bids": read_all(bids)}


def run(args: argparse.Namespace) -> dict:
    from shards_tools.__main__ import main as shards_cli
    from shards_tools.synth import synth

    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        raise InputError(f"--cases: unknown {unknown}; expected a comma list of {', '.join(CASES)}.")
    result: dict = {"preset": None if args.raw else args.preset}
    with tempfile.TemporaryDirectory(prefix="mused-bench-pack-") as tmp:
        if "fsaverage" in cases:
            result["fsaverage"] = run_fsaverage(Path(tmp), args.fsaverage_vertices, args.roi_dim)
        if not set(cases) & {"nsd", "hcp", "bids"}:
            return result
        raw = args.raw
        if raw is None:
            raw = Path(tmp) / "raw"
            synth(raw, preset=args.preset, seed=0)
        hcp_subjects = [p.name for p in sorted((raw / "hcp").iterdir()) if p.name.isdigit()]
        commands = {
            "nsd": [
                "pack-nsd",
                "--root",
                str(raw / "nsd"),
                "--subjects",
                ",".join(NSD_SUBJECTS),
                "--roi-dim",
                str(args.roi_dim),
                "--space",
                "func1pt8mm",  # the paper's volumes (what _read_inputs reads); the fsaverage case is its own
            ],
            "hcp": ["pack-hcp", "--root", str(raw / "hcp"), "--subjects", ",".join(hcp_subjects)],
            "bids": [
                "pack-bids",
                "--root",
                str(raw / "bids"),
                "--site",
                "site",
                "--labels",
                str(raw / "bids/LABELS.tsv"),
            ],
        }
        read = _read_inputs(raw)
        for name, argv in commands.items():
            if name not in cases:
                continue
            out = Path(tmp) / f"shards-{name}"
            start = time.perf_counter()
            code = shards_cli(
                [*argv, "--clip-model", str(raw / "clip"), "--out", str(out), "--llv-dim", str(args.llv_dim)]
            )
            seconds = time.perf_counter() - start
            if code:
                raise RuntimeError(f"{name}: the packer exited with {code}")
            manifest = Manifest.read(str(out))
            shards = manifest.shards()
            samples = sum(s["count"] for s in shards)
            result[name] = {
                "samples": samples,
                "pack_s": seconds,
                "samples_per_s": samples / seconds,
                "bytes_per_sample": sum(s["bytes"] for s in shards) / samples,
                "read_inputs_s": read[name],
                "overhead_share": 1 - read[name] / seconds,
                "llv_fidelity_r": manifest.info["clip"]["llv"]["fidelity_r"],
            }
    return result


def report(result: dict) -> str:
    lines = []
    if any(name in result for name in ("nsd", "hcp", "bids")):
        head = f"{'dataset':<8}{'samples':>9}{'pack s':>9}{'samples/s':>11}{'KiB/sample':>12}"
        lines.append(f"{head}{'read-only s':>13}{'llv r':>8}")
    for name in ("nsd", "hcp", "bids"):
        if name not in result:
            continue
        r = result[name]
        lines.append(
            f"{name:<8}{r['samples']:>9}{r['pack_s']:>9.1f}{r['samples_per_s']:>11.1f}"
            f"{r['bytes_per_sample'] / 1024:>12.1f}{r['read_inputs_s']:>13.2f}"
            f"{r['llv_fidelity_r']:>8.4f}"
        )
    if "fsaverage" in result:
        f = result["fsaverage"]
        lines.append(
            f"\nfsaverage, {f['vertices_per_hemisphere']} vertices x {f['trials_per_session']} trials per hemisphere "
            f"and session, {f['roi_vertices']} ROI vertices kept, --roi-dim {f['roi_dim']}, one core:"
        )
        lines.append(f"{'case':<12}{'betas MB':>10}{'seconds':>9}{'MB/s':>8}{'peak RSS MB':>13}")
        for case in ("first_pack", "append"):
            c = f[case]
            lines.append(
                f"{case:<12}{c['betas_mb']:>10.0f}{c['seconds']:>9.1f}{c['mb_per_s']:>8.0f}{c['peak_rss_mb']:>13.0f}"
            )
    return "\n".join(lines)
