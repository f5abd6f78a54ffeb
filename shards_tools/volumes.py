"""4D runs -> brain-masked time series, as volume datasets (HCP, BIDS sites) store them.

Shape legend: T volumes of a run, V voxels inside the mask, X/Y/Z the (cropped) grid.

The mask keeps voxels that are non-zero and vary in every run of the subject (preprocessed releases
are zero outside the brain); samples store the masked vector as float16 and preproc/<subject>.npz
the mask, so the volume can be rebuilt. Each run's mean is removed (run baselines differ), computed
without the test volumes (`center_runs`); the per-voxel scale comes from the training volumes only
(`train_std`): no statistic ever sees a test volume.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from mused_fm.errors import InputError

__all__ = ["center_runs", "damaged_file_errors", "load_masked_runs", "train_std"]


@contextmanager
def damaged_file_errors(path: str | Path) -> Iterator[None]:
    """Errors of reading `path` as one named error: the header of a truncated .nii.gz loads, and the data
    then fails deep in gzip, zlib or numpy, naming no file."""
    try:
        yield
    except (FileNotFoundError, InputError):
        raise
    except (OSError, EOFError, ValueError, zlib.error) as err:  # what nibabel, gzip and numpy raise
        raise InputError(
            f"{path} cannot be read ({type(err).__name__}: {str(err)[:200]}); the file is truncated or damaged: "
            "download or copy it again."
        ) from None


def load_masked_runs(paths: dict, crop: tuple[slice, ...] = (slice(None),) * 3):
    """({run: (T, V) float32}, mask (X, Y, Z) bool) of one subject's runs.

    Runs are read one at a time and reduced to their own in-brain voxels at once, so the peak memory
    is one full run plus the masked series of the others (a real HCP run is ~6 GB as float32).
    """
    import nibabel as nib

    kept, run_masks, grid = {}, {}, None
    for run, path in paths.items():
        with damaged_file_errors(path):
            data = np.asarray(nib.load(Path(path)).dataobj, dtype=np.float32)
        if data.ndim != 4:
            raise InputError(f"{path}: expected a 4D run (X, Y, Z, T), got shape {data.shape}.")
        data = data[(*crop, slice(None))]
        if grid is not None and data.shape[:3] != grid:
            raise InputError(f"{path}: grid {data.shape[:3]} differs from the subject's other runs {grid}.")
        grid = data.shape[:3]
        if not np.isfinite(data).all():
            raise InputError(f"{path}: NaN or infinite values; the file is damaged, download it again.")
        run_masks[run] = (data != 0).all(-1) & (data.std(-1) > 0)
        kept[run] = data[run_masks[run]]  # (V_run, T)
        del data
    mask = np.logical_and.reduce(list(run_masks.values()))
    if not mask.any():
        raise InputError(f"no voxel is non-zero and varying in every run of {[str(p) for p in paths.values()]}.")
    runs = {run: np.ascontiguousarray(series[mask[run_masks[run]]].T) for run, series in kept.items()}  # (T, V)
    return runs, mask


def center_runs(runs: dict, reference_rows: dict) -> None:
    """Remove each run's per-voxel mean, taken over its `reference_rows` only (never test volumes), in place."""
    for run, series in runs.items():
        rows = reference_rows[run]
        series -= series[rows].mean(0) if len(rows) else series.mean(0)


def train_std(runs: dict, train_rows: dict) -> np.ndarray:
    """Per-voxel standard deviation over the training volumes ({run: row indices}); 1 where it is 0."""
    std = np.concatenate([runs[r][rows] for r, rows in train_rows.items() if len(rows)]).std(0)
    return np.where(std > 0, std, 1.0).astype(np.float32)
