"""Atomic, byte-deterministic writers for the simulated cohort (NIfTI, HDF5, .mat, text, JSON).

Every file is written to a hidden temporary name in its final folder and renamed over the target
only when complete, so an interrupted run never leaves a half-written file under a release name.
The temporary name keeps the full suffix (`.nii.gz`, `.mp4`) because nibabel and PyAV pick the
format from it. Outputs are identical for the same inputs: nibabel's gzip writer stores no mtime or
file name, HDF5 files are written without timestamps, and the MAT-file header (which scipy stamps
with the current date) is replaced by a fixed text.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from mused_fm.files import atomic_path, write_bytes

__all__ = ["rng_for", "save_mat", "save_nifti", "write_text"]

MAT_HEADER = b"MATLAB 5.0 MAT-file, written by shards_tools synth (simulated NSD design)"


def rng_for(seed: int, *keys: str | int) -> np.random.Generator:
    """An independent generator per (seed, component) so that adding draws in one part never shifts another."""
    words = [int(seed)] + [zlib.crc32(str(k).encode()) for k in keys]
    return np.random.default_rng(words)


def write_text(path: str | Path, text: str, newline: str = "\n") -> None:
    """Write `text` with `\\n` translated to `newline` (CSV files of the HCP release use CR or CRLF)."""
    write_bytes(path, text.replace("\n", newline).encode())


def save_nifti(path: str | Path, data: np.ndarray, zooms: tuple[float, ...], affine: np.ndarray) -> None:
    """Save `data` (X, Y, Z[, T]) as NIfTI-1 with voxel sizes `zooms` (mm, and seconds or trials for T)."""
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.header.set_data_dtype(data.dtype)
    img.header.set_zooms(zooms)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(img, tmp)


def save_mat(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """scipy.io.savemat (MAT 5), with the dated header text replaced so reruns give identical bytes."""
    import scipy.io

    with atomic_path(path) as tmp:
        scipy.io.savemat(tmp, arrays, do_compression=False, oned_as="row")
        with open(tmp, "r+b") as f:
            f.write(MAT_HEADER.ljust(116, b" "))  # bytes 0..115 are free text in the MAT 5 header
