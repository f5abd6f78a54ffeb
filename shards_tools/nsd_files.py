"""Readers of the files the Natural Scenes Dataset ships, in its release layout.

Paths and conventions of the NSD release (its data manual, naturalscenesdataset.org):
    nsddata/experiments/nsd/nsd_expdesign.mat         masterordering (1 x 30000), subjectim (8 x 10000),
                                                      sharedix (1 x 1000); all 1-based
    nsddata/experiments/nsd/nsd_stim_info_merged.csv  index column 0; cocoId, cocoSplit, nsdId, ...
    nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5      imgBrick (73000 x 425 x 425 x 3 uint8) by 0-based nsdId
    nsddata_stimuli/stimuli/nsd/annotations/{instances,captions}_{train,val}2017.json   COCO
    nsddata_betas/ppdata/subjAA/func1pt8mm/betas_fithrf_GLMdenoise_RR/betas_sessionNN.nii.gz
        int16 X x Y x Z x 750; divide by 300 for percent signal change; or betas_sessionNN.hdf5
        with /betas as written by MATLAB, which h5py shows reversed (750 x Z x Y x X)
    nsddata/ppdata/subjAA/func1pt8mm/roi/<atlas>.nii.gz   integer labels on the betas grid
    nsddata_betas/ppdata/subjAA/fsaverage/betas_fithrf_GLMdenoise_RR/{lh,rh}.betas_sessionNN.mgh
        MGH big-endian float32 (163842, 1, 1, 750) per hemisphere: percent signal change (no /300)
    nsddata/freesurfer/fsaverage/label/{lh,rh}.<atlas>.mgz    integer label per fsaverage vertex
    nsddata/freesurfer/fsaverage/label/<atlas>.mgz.ctab   FreeSurfer colour table: index name R G B A

Trial t (0-based, counted over all sessions) of subject s shows nsdId
`subjectim[s-1, masterordering[t]-1] - 1`; it is a shared-1000 (test) trial when masterordering[t] <= 1000.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mused_fm.errors import InputError, MissingFileError
from shards_tools.volumes import damaged_file_errors

__all__ = [
    "HEMISPHERES",
    "SURFACE_SPACES",
    "NsdLayout",
    "NsdMissingError",
    "betas_grid",
    "read_ctab",
    "read_session_betas",
]

BETA_SCALE = 300.0  # NSD stores volume betas as int16 percent signal change x 300 (surface betas: float, x1)
HEMISPHERES = ("lh", "rh")
SURFACE_SPACES = ("fsaverage",)


class NsdMissingError(MissingFileError):
    """A file the NSD layout must have is not under --root."""


def read_ctab(path: Path) -> dict[int, str]:
    """FreeSurfer colour table: {label index: name} (comment lines and index 0 'Unknown' skipped)."""
    table = {}
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit() and int(parts[0]) > 0:  # '#' comments and 0 Unknown skipped
            table[int(parts[0])] = parts[1]
    if not table:
        raise InputError(f"{path}: no 'index name R G B A' lines; is it a FreeSurfer .ctab file?")
    return table


@dataclass
class NsdLayout:
    root: Path
    space: str = "func1pt8mm"
    betas: str = "betas_fithrf_GLMdenoise_RR"

    def _need(self, path: Path, what: str) -> Path:
        if not path.exists():
            raise NsdMissingError(
                f"{path} is missing ({what}). --root must be the NSD release root that holds nsddata/, "
                "nsddata_betas/ and nsddata_stimuli/, as downloaded from s3://natural-scenes-dataset/."
            )
        return path

    # --- experiment design and stimuli ---------------------------------------------------------

    def expdesign(self) -> dict[str, np.ndarray]:
        from scipy.io import loadmat

        path = self._need(self.root / "nsddata/experiments/nsd/nsd_expdesign.mat", "the experiment design")
        mat = loadmat(path)
        keys = ("masterordering", "subjectim", "sharedix")
        missing = [k for k in keys if k not in mat]
        if missing:
            raise InputError(
                f"{path} lacks {missing} (it has {sorted(k for k in mat if not k.startswith('__'))}); it is not the "
                "release's nsd_expdesign.mat: download it again from nsddata/experiments/nsd/."
            )
        return {k: np.asarray(mat[k]).astype(np.int64) for k in keys}

    def stim_info(self) -> dict[int, tuple[int, str]]:
        """{nsdId: (cocoId, cocoSplit)} from nsd_stim_info_merged.csv."""
        import csv

        path = self._need(self.root / "nsddata/experiments/nsd/nsd_stim_info_merged.csv", "the stimulus table")
        with open(path, newline="") as f:
            return {int(r["nsdId"]): (int(r["cocoId"]), r["cocoSplit"]) for r in csv.DictReader(f)}

    def stimuli_path(self) -> Path:
        return self._need(self.root / "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5", "the stimulus images")

    def coco(self, kind: str, split: str) -> dict:
        path = self.root / f"nsddata_stimuli/stimuli/nsd/annotations/{kind}_{split}.json"
        return json.loads(self._need(path, f"COCO {kind} annotations").read_text())

    # --- per subject -------------------------------------------------------------------------

    def subject_dir(self, subject: str) -> Path:
        if not re.fullmatch(r"subj0[1-9]", subject):
            raise InputError(f"NSD subject {subject!r}: expected subj01 ... subj08.")
        return self._need(
            self.root / f"nsddata_betas/ppdata/{subject}/{self.space}/{self.betas}",
            f"the {self.betas} betas of {subject}",
        )

    def sessions(self, subject: str) -> dict[int, Path]:
        """{session number: file} for every session present (.nii.gz preferred over .hdf5)."""
        if self.space in SURFACE_SPACES:
            raise InputError(f"--space {self.space} stores sessions per hemisphere: use surface_sessions().")
        found: dict[int, Path] = {}
        for path in sorted(self.subject_dir(subject).iterdir()):
            m = re.fullmatch(r"betas_session(\d+)\.(nii\.gz|nii|hdf5)", path.name)
            if m and (int(m.group(1)) not in found or m.group(2) != "hdf5"):
                found[int(m.group(1))] = path
        if not found:
            raise NsdMissingError(f"{self.subject_dir(subject)} holds no betas_sessionNN.nii.gz or .hdf5 files.")
        return dict(sorted(found.items()))

    def surface_sessions(self, subject: str) -> dict[int, tuple[Path, Path]]:
        """{session number: (lh file, rh file)} for every session present; a session with one hemisphere is an error."""
        found: dict[int, dict[str, Path]] = {}
        folder = self.subject_dir(subject)
        for path in sorted(folder.iterdir()):
            m = re.fullmatch(r"(lh|rh)\.betas_session(\d+)\.mgh", path.name)
            if m:
                found.setdefault(int(m.group(2)), {})[m.group(1)] = path
        if not found:
            raise NsdMissingError(f"{folder} holds no {{lh,rh}}.betas_sessionNN.mgh files.")
        for session, pair in sorted(found.items()):
            for hemi in HEMISPHERES:
                if hemi not in pair:
                    raise NsdMissingError(
                        f"{folder / f'{hemi}.betas_session{session:02d}.mgh'} is missing, but the other hemisphere "
                        f"of {subject} session {session} is there; download it (every session has lh and rh)."
                    )
        return {s: (pair["lh"], pair["rh"]) for s, pair in sorted(found.items())}

    def surface_labels(self, atlas: str) -> tuple[dict[str, np.ndarray], dict[int, str], dict[str, Path]]:
        """({hemi: (vertices,) labels}, {label: name}, {hemi: path}) of an fsaverage atlas (one for all subjects)."""
        from shards_tools.mgh_files import read_mgh_labels

        folder = self.root / "nsddata/freesurfer/fsaverage/label"
        paths = {h: folder / f"{h}.{atlas}.mgz" for h in HEMISPHERES}
        ctab = folder / f"{atlas}.mgz.ctab"
        if not ctab.exists() or not all(p.exists() for p in paths.values()):
            known = (
                sorted(p.name.removesuffix(".mgz.ctab") for p in folder.glob("*.mgz.ctab")) if folder.is_dir() else []
            )
            raise NsdMissingError(
                f"atlas {atlas!r}: {folder} needs lh.{atlas}.mgz, rh.{atlas}.mgz and {atlas}.mgz.ctab. Atlases "
                f"there: {', '.join(known) or 'none'} (NSD ships Kastner2015, nsdgeneral, HCP_MMP1, streams); pick "
                "one with --atlas."
            )
        return {h: read_mgh_labels(p) for h, p in paths.items()}, read_ctab(ctab), paths

    def roi(self, subject: str, atlas: str) -> tuple[np.ndarray, dict[int, str], Path]:
        """(integer label volume X x Y x Z, {label: name}, path) of an atlas on the subject's grid."""
        import nibabel as nib

        path = self._need(
            self.root / f"nsddata/ppdata/{subject}/{self.space}/roi/{atlas}.nii.gz",
            f"the {atlas} ROI volume of {subject}",
        )
        ctab = self._need(
            self.root / f"nsddata/freesurfer/fsaverage/label/{atlas}.mgz.ctab", f"the {atlas} label names"
        )
        return np.asarray(nib.load(path).dataobj).astype(np.int64), read_ctab(ctab), path


def betas_grid(path: Path) -> list[tuple[int, int, int]]:
    """The (X, Y, Z) grids a session file can be on, from its header: one for NIfTI; for .hdf5 the
    MATLAB order as h5py shows it (T x Z x Y x X) first, then X x Y x Z x T."""
    if path.name.endswith(".hdf5"):
        import h5py

        with h5py.File(path, "r") as f:
            shape = tuple(int(n) for n in f["betas"].shape)
        return [shape[1:][::-1], shape[:3]]
    import nibabel as nib

    return [tuple(int(n) for n in nib.load(path).shape[:3])]


def read_session_betas(path: Path, grid: tuple[int, int, int], voxels: np.ndarray) -> np.ndarray:
    """Betas of the selected voxels as float32 percent signal change, (trials, voxels).

    Args:
        grid: the ROI volume's (X, Y, Z); the betas must be on it.
        voxels: flat indices (C order over X, Y, Z) of the voxels to keep.
    """
    if path.name.endswith(".hdf5"):
        import h5py

        with h5py.File(path, "r") as f:
            betas = f["betas"]
            if tuple(betas.shape[1:]) == tuple(grid[::-1]):  # MATLAB order as h5py shows it: T x Z x Y x X
                x, y, z = np.unravel_index(voxels, grid)
                flat_zyx = np.ravel_multi_index((z, y, x), grid[::-1])
                data = betas[()].reshape(betas.shape[0], -1)[:, flat_zyx]
            elif tuple(betas.shape[:3]) == tuple(grid):  # already X x Y x Z x T
                data = betas[()].reshape(-1, betas.shape[3])[voxels].T
            else:
                raise InputError(
                    f"{path}: /betas has shape {betas.shape}; expected T x {grid[::-1]} (MATLAB order) "
                    f"or {grid} x T to match the ROI grid."
                )
    else:
        import nibabel as nib

        with damaged_file_errors(path):
            image = nib.load(path)
            if tuple(image.shape[:3]) != tuple(grid):
                raise InputError(
                    f"{path}: betas grid {image.shape[:3]} differs from the ROI grid {tuple(grid)}; "
                    "use ROI volumes of the same space (--space) as the betas."
                )
            data = np.asarray(image.dataobj).reshape(-1, image.shape[3])[voxels].T
    data = data.astype(np.float32) / BETA_SCALE
    if not np.isfinite(data).all():
        raise InputError(f"{path}: NaN or infinite betas inside the ROIs; the file is damaged, download it again.")
    return data
