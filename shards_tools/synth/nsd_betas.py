"""Simulated NSD subjects: single-trial betas and ROI volumes on each subject's own func1pt8mm grid.

Per subject, as the real release (the paths of shards_tools/nsd_files.py):

    nsddata_betas/ppdata/subjAA/func1pt8mm/betas_fithrf_GLMdenoise_RR/betas_sessionNN.nii.gz
        int16 X×Y×Z×trials_per_session, value = % signal change × 300, 0 outside the brain mask
    .../betas_sessionNN.hdf5 (one session of one subject, instead of its .nii.gz)
        dataset /betas int16 as h5py sees a MATLAB-written X×Y×Z×T array: T×Z×Y×X, chunks (T, 1, 1, 1)
    nsddata/ppdata/subjAA/func1pt8mm/roi/Kastner2015.nii.gz   labels 1..25, 0 = none, -1 outside the brain
    nsddata/ppdata/subjAA/func1pt8mm/roi/nsdgeneral.nii.gz    -1 outside the brain, 0 brain, 1 nsdgeneral
    nsddata/freesurfer/fsaverage/label/Kastner2015.mgz.ctab   `index name R G B A`, 0 = Unknown

Each subject has its own grid size, brain mask, ROI sizes and response maps (brain.py). Trials of
session NN are trials (NN-1)·tps .. NN·tps-1 of the design. One session is left without a file
(NsdPreset.missing_session), as real downloads have gaps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.ndimage import binary_dilation

from mused_fm.files import atomic_path
from shards_tools.synth import brain as B
from shards_tools.synth import individual as I
from shards_tools.synth.files import rng_for, save_nifti, write_text
from shards_tools.synth.presets import NSD_GRIDS, NsdPreset

__all__ = ["profile_summary", "write_ctab", "write_subject"]

VOXEL_MM = 1.8
SCALE = 300  # betas are stored as percent signal change × 300 (divide by 300 to read)
NOISE_PSC = 1.5  # trial-to-trial noise, % signal change
SESSION_DRIFT_PSC = 0.5  # per-session, per-voxel offset (why packers z-score per session)


def write_ctab(root: Path) -> None:
    """FreeSurfer colour table for the Kastner2015 labels."""
    rng = rng_for(0, "kastner", "colors")  # fixed colours: the table is release-wide, not per seed
    lines = [f"{0:>3d}  {'Unknown':<8s} {0:>3d} {0:>3d} {0:>3d} {0:>3d}"]
    for k, name in enumerate(B.KASTNER_NAMES, start=1):
        r, g, b = rng.integers(0, 256, 3)
        lines.append(f"{k:>3d}  {name:<8s} {r:>3d} {g:>3d} {b:>3d} {0:>3d}")
    write_text(
        root / "nsddata" / "freesurfer" / "fsaverage" / "label" / "Kastner2015.mgz.ctab", "\n".join(lines) + "\n"
    )


def profile_summary(profile: I.Profile) -> dict:
    """The subject's drawn differences for synth_summary.json (per ROI group, then 'other')."""
    names = [*I.GROUPS, "other"]
    return {
        "noise": round(profile.noise, 4),
        "delay_s": profile.delay_s,
        **{
            k: dict(zip(names, np.round(v, 4).tolist(), strict=True))
            for k, v in (("snr", profile.snr), ("gain_ll", profile.gain_ll), ("gain_cat", profile.gain_cat))
        },
    }


def _affine(grid: tuple[int, int, int]) -> np.ndarray:
    affine = np.diag([VOXEL_MM, VOXEL_MM, VOXEL_MM, 1.0])
    affine[:3, 3] = -VOXEL_MM * (np.array(grid) - 1) / 2
    return affine


def write_subject(
    root: Path,
    p: NsdPreset,
    name: str,
    seed: int,
    trial_ids: np.ndarray,
    labels_NK: np.ndarray,
    lowlevel_NF: np.ndarray,
) -> dict:
    """Write one subject's ROIs and betas for `trial_ids` (0-based nsdId per trial); returns its summary."""
    import h5py

    rng = rng_for(seed, "nsd", name)
    grid = NSD_GRIDS[int(name[4:]) - 1]
    brain = B.make_brain(grid, rng)
    atlas = B.kastner_atlas(brain, rng)
    ll_gain, cat_gain = B.roi_gains(atlas)
    general = binary_dilation(atlas > 0) & brain.mask & (brain.u[1] < 0.3)
    weak = general & (atlas == 0)
    ll_gain[weak], cat_gain[weak] = 0.1, 0.2  # nsdgeneral voxels outside the 25 labels: weakly driven
    m = brain.mask
    num_k, num_f = labels_NK.shape[1], lowlevel_NF.shape[1]
    template = B.cohort_template(num_k, num_f, rng_for(seed, "nsd", "template"))
    profile = I.profile_of(seed, "nsd", name)
    groups = I.group_of_labels(atlas[m])  # (V,) ROI group of each voxel
    shift_scale = I.misalignment_of_groups(groups)
    w_cat, w_ll = B.subject_maps(brain, num_k, num_f, rng, template=template, shift_scale_V=shift_scale)
    ll_v, cat_v = ll_gain[m] * profile.gain_ll[groups], cat_gain[m] * profile.gain_cat[groups]

    resp = I.saturate(B.neural_response(labels_NK[trial_ids], lowlevel_NF[trial_ids], w_cat, w_ll, cat_v, ll_v))
    visual = (ll_gain[m] + cat_gain[m]) / 2  # (V,) mean evoked response of visual voxels
    noise_maps = B.subject_maps(brain, I.NOISE_MAPS, 0, rng_for(seed, "nsd-noise", name), sigma=2.0)[0]
    noise_sd = NOISE_PSC * p.noise_scale * profile.noise / profile.snr[groups]  # (V,)
    psc = 1.2 * visual + 1.5 * resp + I.correlated_noise(rng, noise_maps, len(trial_ids), noise_sd)  # (N, V)
    tps = p.trials_per_session
    num_sessions = len(trial_ids) // tps
    for s in range(num_sessions):
        psc[s * tps : (s + 1) * tps] += rng.normal(0, SESSION_DRIFT_PSC, psc.shape[1])
    betas = np.clip(np.round(psc * SCALE), -32768, 32767).astype(np.int16)

    roi_dir = root / "nsddata" / "ppdata" / name / "func1pt8mm" / "roi"
    kastner = np.where(m, atlas, -1).astype(np.int16)
    save_nifti(roi_dir / "Kastner2015.nii.gz", kastner, (VOXEL_MM,) * 3, _affine(grid))
    nsdgeneral = np.where(m, general.astype(np.int16), -1).astype(np.int16)
    save_nifti(roi_dir / "nsdgeneral.nii.gz", nsdgeneral, (VOXEL_MM,) * 3, _affine(grid))

    beta_dir = root / "nsddata_betas" / "ppdata" / name / "func1pt8mm" / "betas_fithrf_GLMdenoise_RR"
    on_disk, hdf5 = [], []
    for s in range(1, num_sessions + 1):
        if (name, s) == p.missing_session:
            continue
        vol = np.zeros((*grid, tps), dtype=np.int16)  # (X, Y, Z, T)
        vol[m] = betas[(s - 1) * tps : s * tps].T
        if (name, s) == p.hdf5_session:
            # MATLAB writes X×Y×Z×T column-major; h5py (row-major) sees the axes reversed: T×Z×Y×X.
            with atomic_path(beta_dir / f"betas_session{s:02d}.hdf5") as tmp, h5py.File(tmp, "w") as f:
                f.create_dataset("betas", data=vol.T, chunks=(tps, 1, 1, 1))
            hdf5.append(s)
        else:
            save_nifti(beta_dir / f"betas_session{s:02d}.nii.gz", vol, (VOXEL_MM,) * 3 + (1.0,), _affine(grid))
        on_disk.append(s)
    return {
        "grid": list(grid),
        "brain_voxels": int(m.sum()),
        "nsdgeneral_voxels": int(general.sum()),
        "sessions": num_sessions,
        "sessions_on_disk": on_disk,
        "hdf5_sessions": hdf5,
        "profile": profile_summary(profile),
        "roi_voxels": {
            g: int(np.isin(atlas, [B.KASTNER_NAMES.index(n) + 1 for n in names]).sum())
            for g, (names, _) in B.ROI_GROUPS.items()
        },
    }
