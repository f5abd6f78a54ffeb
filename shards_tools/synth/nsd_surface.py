"""Simulated NSD subjects on the fsaverage surface: per-hemisphere betas and the cohort's Kastner2015 labels.

As the real release (the paths of shards_tools/nsd_files.py):

    nsddata_betas/ppdata/subjAA/fsaverage/betas_fithrf_GLMdenoise_RR/{lh,rh}.betas_sessionNN.mgh
        MGH, big-endian float32, shape (vertices, 1, 1, trials_per_session), percent signal change (no x300);
        in some subjects a patch of vertices is NaN for all trials of a session, as in NSD's subj06 and subj08
    nsddata/freesurfer/fsaverage/label/{lh,rh}.Kastner2015.mgz   int32 label per vertex, 0 = none (one atlas
        for all subjects: vertex v is the same cortical location in everyone)

The mesh is a sphere per hemisphere: `vertices` points of a Fibonacci lattice (the real fsaverage has
163842 = 10·4^7 + 2; the presets use the smaller icosphere counts 642, 2562, 10242). A vertex's label is
its nearest Kastner anchor (brain.ANCHORS, in hemisphere coordinates: x lateral). Responses follow the
same model as the volumes (brain.py, individual.py): each subject's maps are the cohort template, read at
the subject's own small rotation of the sphere (its misalignment, a displacement on the surface, larger
in higher-order areas), mixed with a smooth field of its own; the subject's gains, SNR and noise are
those of its volumes (the same individual.Profile).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mused_fm.files import atomic_path
from shards_tools.synth import brain as B
from shards_tools.synth import individual as I
from shards_tools.synth.files import rng_for
from shards_tools.synth.nsd_betas import NOISE_PSC, SESSION_DRIFT_PSC
from shards_tools.synth.presets import NsdPreset

__all__ = ["HEMISPHERES", "sphere_vertices", "surface_atlas", "write_surface_labels", "write_surface_subject"]

HEMISPHERES = ("lh", "rh")
LABEL_REACH = 0.24  # chord distance to the nearest anchor (lh V1v: 1303 vertices of 163842; NSD: 1106)
NAN_PATCH = (0.55, 0.1, -0.83)  # where NaN vertices sit (ventral anterior temporal: signal dropout there)
NAN_PATCH_RADIUS = 0.25  # chord distance: about 1.5% of a hemisphere


def sphere_vertices(n: int) -> np.ndarray:
    """(3, n) unit vectors of a Fibonacci lattice: near-uniform, deterministic, any count."""
    i = np.arange(n, dtype=np.float64) + 0.5
    z = 1 - 2 * i / n
    r = np.sqrt(1 - z**2)
    phi = np.pi * (3 - np.sqrt(5)) * i
    return np.stack([r * np.cos(phi), r * np.sin(phi), z]).astype(np.float32)


def _brain_coordinates(p_3V: np.ndarray, hemisphere: str) -> np.ndarray:
    """Where the template is read: each hemisphere's sphere squeezed onto its own side of the brain, so the
    two hemispheres' maps differ and a vertex's neighbours on the sphere stay its neighbours."""
    side = -1.0 if hemisphere == "lh" else 1.0
    return np.stack([side * (0.55 + 0.45 * p_3V[0]), p_3V[1], p_3V[2]]) * 0.9


def surface_atlas(p_3V: np.ndarray) -> np.ndarray:
    """(V,) int32 Kastner2015 labels 1..25 (0 = none) on a hemisphere sphere; the same for every subject."""
    anchors = np.array([B.ANCHORS[n] for n in B.KASTNER_NAMES], dtype=np.float32)
    anchors /= np.linalg.norm(anchors, axis=1, keepdims=True)
    dist = np.linalg.norm(p_3V.T[:, None, :] - anchors[None], axis=2)  # (V, 25)
    return np.where(dist.min(axis=1) < LABEL_REACH, dist.argmin(axis=1) + 1, 0).astype(np.int32)


def _save_mgh(path: Path, data: np.ndarray) -> None:
    """MGH as FreeSurfer writes it: big-endian, shape (vertices, 1, 1) for labels, (vertices, 1, 1, frames)."""
    import nibabel as nib

    img = nib.MGHImage(data.reshape(data.shape[0], 1, 1, *data.shape[1:]), np.eye(4))
    with atomic_path(path) as tmp:
        nib.save(img, tmp)


def write_surface_labels(root: Path, vertices: int) -> None:
    label_dir = root / "nsddata" / "freesurfer" / "fsaverage" / "label"
    for hemi in HEMISPHERES:
        _save_mgh(label_dir / f"{hemi}.Kastner2015.mgz", surface_atlas(sphere_vertices(vertices)))


def write_surface_subject(
    root: Path,
    p: NsdPreset,
    name: str,
    seed: int,
    trial_ids: np.ndarray,
    labels_NK: np.ndarray,
    lowlevel_NF: np.ndarray,
) -> dict:
    """Write one subject's fsaverage betas for `trial_ids` (0-based nsdId per trial); returns its summary."""
    rng = rng_for(seed, "nsd-fsaverage", name)
    num_k, num_f = labels_NK.shape[1], lowlevel_NF.shape[1]
    template = B.cohort_template(num_k, num_f, rng_for(seed, "nsd", "template"))
    own = B.Template(num_k + num_f, rng)  # the subject's own smooth field, the same smoothness as the template
    tps, num_sessions = p.trials_per_session, len(trial_ids) // p.trials_per_session
    sphere = sphere_vertices(p.surface_vertices)
    beta_dir = root / "nsddata_betas" / "ppdata" / name / "fsaverage" / "betas_fithrf_GLMdenoise_RR"
    nan_vertices = {}
    profile = I.profile_of(seed, "nsd", name)  # the subject's differences, as in its volumes
    noise_field = B.Template(I.NOISE_MAPS, rng_for(seed, "nsd-fsaverage-noise", name))
    for hemi in HEMISPHERES:
        atlas = surface_atlas(sphere)
        groups = I.group_of_labels(atlas)
        ll_gain, cat_gain = B.roi_gains(atlas)
        # The subject's displacement: a small rotation of the sphere, larger in higher-order areas.
        turn = rng.normal(0, B.TEMPLATE_SHIFT, 3).astype(np.float32)
        moved = sphere + I.misalignment_of_groups(groups)[None, :] * np.cross(turn, sphere.T).T
        moved /= np.linalg.norm(moved, axis=0, keepdims=True)
        shared = B.standardize(template(_brain_coordinates(moved, hemi)))
        individual = B.standardize(own(_brain_coordinates(sphere, hemi)))
        w = B.standardize(np.sqrt(1 - B.INDIVIDUAL_SHARE) * shared + np.sqrt(B.INDIVIDUAL_SHARE) * individual)
        ll_v, cat_v = ll_gain * profile.gain_ll[groups], cat_gain * profile.gain_cat[groups]
        resp = I.saturate(
            B.neural_response(labels_NK[trial_ids], lowlevel_NF[trial_ids], w[:num_k], w[num_k:], cat_v, ll_v)
        )
        visual = (ll_gain + cat_gain) / 2
        noise_maps = B.standardize(noise_field(_brain_coordinates(sphere, hemi)))
        noise_sd = NOISE_PSC * p.noise_scale * profile.noise / profile.snr[groups]
        psc = 1.2 * visual + 1.5 * resp + I.correlated_noise(rng, noise_maps, len(trial_ids), noise_sd)  # (N, V)
        dropout = np.zeros(sphere.shape[1], dtype=bool)
        if name in p.nan_subjects:  # signal dropout: the same patch in every session
            dropout = np.linalg.norm(sphere.T - np.array(NAN_PATCH, dtype=np.float32), axis=1) < NAN_PATCH_RADIUS
        nan_vertices[hemi] = int(dropout.sum())
        for s in range(1, num_sessions + 1):
            session = psc[(s - 1) * tps : s * tps] + rng.normal(0, SESSION_DRIFT_PSC, psc.shape[1]).astype(np.float32)
            if (name, s) == p.missing_session:
                continue
            session[:, dropout] = np.nan
            _save_mgh(beta_dir / f"{hemi}.betas_session{s:02d}.mgh", session.T.astype(np.float32))
    return {"vertices_per_hemisphere": p.surface_vertices, "nan_vertices": nan_vertices}
