"""Simulated brains: masks, visual ROIs, and each subject's own linear maps of stimulus → response.

Response model (the planted ground truth shared by NSD, HCP and BIDS):

    response_NV = cat_gain_V * (labels_NK @ W_cat_KV) / sqrt(mean labels)
                + ll_gain_V  * (lowlevel_NF @ W_ll_FV) / sqrt(F)

`W_cat` and `W_ll` mix a cohort template with the subject's own field: the template is a smooth random
function of normalised brain coordinates (`Brain.u`, so anatomically corresponding voxels of brains of
different size and position get the same value), read at a small subject-specific displacement; the
individual part is a smooth random field from the subject's own seed. So every subject has its own
functional topography (not just its own noise) that still shares a common layout with the cohort, as
real brains do after anatomical alignment, while the gains put low-level tuning early in the visual
hierarchy and category tuning late. Noise is added by the dataset writers. Axes are RAS
voxel axes: X left-right, Y posterior-anterior, Z inferior-superior.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from mused_fm.errors import InputError

__all__ = [
    "KASTNER_NAMES",
    "ROI_GROUPS",
    "Brain",
    "Template",
    "cohort_template",
    "kastner_atlas",
    "make_brain",
    "neural_response",
    "roi_gains",
    "standardize",
    "subject_maps",
]

# Kastner2015 labels 1..25 (NSD ships them as Kastner2015.nii.gz with Kastner2015.mgz.ctab).
KASTNER_NAMES = (
    "V1v",
    "V1d",
    "V2v",
    "V2d",
    "V3v",
    "V3d",
    "hV4",
    "VO1",
    "VO2",
    "PHC1",
    "PHC2",
    "TO2",
    "TO1",
    "LO2",
    "LO1",
    "V3b",
    "V3a",
    "IPS0",
    "IPS1",
    "IPS2",
    "IPS3",
    "IPS4",
    "IPS5",
    "SPL1",
    "FEF",
)
# The ten ROI groups of the CLIP-MUSED paper, and (low-level gain, category gain) of each.
ROI_GROUPS = {
    "V1": (("V1v", "V1d"), (1.0, 0.15)),
    "V2": (("V2v", "V2d"), (0.9, 0.25)),
    "V3": (("V3v", "V3d"), (0.8, 0.35)),
    "V3ab": (("V3a", "V3b"), (0.6, 0.5)),
    "hV4": (("hV4",), (0.6, 0.6)),
    "VO": (("VO1", "VO2"), (0.3, 1.0)),
    "PHC": (("PHC1", "PHC2"), (0.2, 1.0)),
    "MT": (("TO1", "TO2"), (0.5, 0.6)),
    "LO": (("LO1", "LO2"), (0.3, 1.0)),
    "IPS": (tuple(f"IPS{i}" for i in range(6)), (0.2, 0.8)),
}
OTHER_GAINS = (0.1, 0.4)  # SPL1, FEF
# Cohort template of the maps (see subject_maps): smoothness in units of the brain's radii (~1.5 voxels
# of the simulated grids), per-subject displacement (std, same units) and the share of variance that
# is the subject's own.
TEMPLATE_LENGTH = 0.15
TEMPLATE_SHIFT = 0.04
INDIVIDUAL_SHARE = 0.3
# Seed direction of each label on the cortical shell: (|x| lateral, y anterior, z superior), unit-less.
ANCHORS = {
    "V1v": (0.15, -0.95, -0.1),
    "V1d": (0.15, -0.95, 0.1),
    "V2v": (0.25, -0.88, -0.28),
    "V2d": (0.25, -0.88, 0.28),
    "V3v": (0.35, -0.8, -0.42),
    "V3d": (0.35, -0.8, 0.42),
    "hV4": (0.45, -0.68, -0.55),
    "VO1": (0.4, -0.55, -0.7),
    "VO2": (0.4, -0.42, -0.78),
    "PHC1": (0.35, -0.3, -0.85),
    "PHC2": (0.35, -0.15, -0.9),
    "TO2": (0.85, -0.4, -0.1),
    "TO1": (0.8, -0.52, -0.05),
    "LO2": (0.72, -0.6, -0.3),
    "LO1": (0.6, -0.7, -0.2),
    "V3b": (0.55, -0.7, 0.45),
    "V3a": (0.42, -0.72, 0.55),
    "IPS0": (0.5, -0.58, 0.65),
    "IPS1": (0.48, -0.46, 0.74),
    "IPS2": (0.46, -0.34, 0.8),
    "IPS3": (0.44, -0.22, 0.85),
    "IPS4": (0.42, -0.1, 0.88),
    "IPS5": (0.4, 0.02, 0.9),
    "SPL1": (0.2, -0.2, 0.95),
    "FEF": (0.55, 0.45, 0.7),
}


class Brain:
    """A brain mask on a grid, with normalised ellipsoid coordinates of every voxel."""

    def __init__(self, shape: tuple[int, int, int], center: np.ndarray, radii: np.ndarray) -> None:
        self.shape = shape
        grid = np.indices(shape, dtype=np.float32)  # (3, X, Y, Z)
        self.u = (grid - center[:, None, None, None]) / radii[:, None, None, None]  # (3, X, Y, Z)
        self.rho = np.sqrt((self.u**2).sum(axis=0))  # (X, Y, Z), 1 on the brain surface
        self.mask = self.rho <= 1.0  # (X, Y, Z) bool

    @property
    def num_voxels(self) -> int:
        return int(self.mask.sum())


def make_brain(shape: tuple[int, int, int], rng: np.random.Generator, box: tuple[slice, ...] | None = None) -> Brain:
    """An ellipsoid filling ~85% of `box` (default the whole grid), jittered per subject."""
    box = box or tuple(slice(0, n) for n in shape)
    lo = np.array([s.start for s in box], dtype=np.float32)
    size = np.array([s.stop - s.start for s in box], dtype=np.float32)
    center = lo + (size - 1) / 2 + rng.uniform(-0.5, 0.5, 3)
    radii = size * 0.42 * rng.uniform(0.95, 1.0, 3)
    return Brain(shape, center.astype(np.float32), radii.astype(np.float32))


def kastner_atlas(brain: Brain, rng: np.random.Generator, min_voxels: int = 3) -> np.ndarray:
    """(X, Y, Z) int16 Kastner2015 labels on the cortical shell (0 elsewhere); sizes vary per subject."""
    shell = brain.mask & (brain.rho >= 0.6)
    idx = np.flatnonzero(shell)
    u = brain.u.reshape(3, -1)[:, idx].T.copy()  # (n, 3)
    u[:, 0] = np.abs(u[:, 0])  # labels exist in both hemispheres
    seeds = np.array([ANCHORS[n] for n in KASTNER_NAMES], dtype=np.float32)
    seeds += rng.normal(0, 0.05, seeds.shape)
    seeds *= 0.85 / np.linalg.norm(seeds, axis=1, keepdims=True)  # onto the middle of the shell
    reach = rng.uniform(0.7, 1.3, len(seeds))  # per-label size factor: group sizes differ by subject
    dist = np.linalg.norm(u[:, None, :] - seeds[None], axis=2) / reach  # (n, 25)
    nearest = dist.argmin(axis=1)
    keep = dist.min(axis=1) < 0.32
    labels = np.where(keep, nearest + 1, 0)
    for k in range(len(seeds)):  # every label gets voxels whatever the jitter: take its closest ones
        if (labels == k + 1).sum() < min_voxels:
            labels[np.argsort(dist[:, k])[:min_voxels]] = k + 1
    out = np.zeros(brain.shape, dtype=np.int16)
    out.reshape(-1)[idx] = labels
    return out


def roi_gains(atlas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(low-level gain, category gain) per voxel of the grid from Kastner labels (0 outside ROIs)."""
    ll, cat = np.zeros(atlas.shape, np.float32), np.zeros(atlas.shape, np.float32)
    table = {n: g for names, g in ROI_GROUPS.values() for n in names}
    for k, name in enumerate(KASTNER_NAMES, start=1):
        ll[atlas == k], cat[atlas == k] = table.get(name, OTHER_GAINS)
    return ll, cat


class Template:
    """Cohort-level smooth random maps as functions of normalised brain coordinates.

    Each map is a sum of random Fourier features, f(u) = sqrt(2/R) sum_r cos(w_r . u + phi_r), with
    w_r ~ N(0, I / (2 length^2)): the spectrum of white noise smoothed by a Gaussian of width `length`
    (in units of the brain's radii), so it can be read at any point, whatever the subject's grid.
    """

    def __init__(self, num_maps: int, rng: np.random.Generator, length: float = TEMPLATE_LENGTH, rank: int = 256):
        self.omega = rng.normal(0, 1 / (np.sqrt(2) * length), (num_maps, rank, 3)).astype(np.float32)
        self.phase = rng.uniform(0, 2 * np.pi, (num_maps, rank)).astype(np.float32)

    @property
    def num_maps(self) -> int:
        return self.omega.shape[0]

    def __call__(self, u_3V: np.ndarray) -> np.ndarray:
        """(num_maps, V) template values at normalised coordinates u (3, V)."""
        u = u_3V.astype(np.float32)
        # One map at a time: (rank, V) at once, not (maps, rank, V) (GBs at fsaverage's 163842 vertices).
        maps = [
            np.cos(omega @ u + phase[:, None]).sum(axis=0) for omega, phase in zip(self.omega, self.phase, strict=True)
        ]
        return np.sqrt(2 / self.omega.shape[1]) * np.stack(maps)


def cohort_template(num_classes: int, num_lowlevel: int, rng: np.random.Generator) -> Template:
    """The cohort's template for (K category + F low-level) maps, drawn from a dataset-level stream."""
    return Template(num_classes + num_lowlevel, rng)


def subject_maps(
    brain: Brain,
    num_classes: int,
    num_lowlevel: int,
    rng: np.random.Generator,
    sigma: float = 1.5,
    template: Template | None = None,
    individual: float = INDIVIDUAL_SHARE,
    shift_scale_V: np.ndarray | None = None,
):
    """Smooth maps of the subject, unit variance over the brain: (W_cat (K, V), W_ll (F, V)).

    Without a template, fully individual smooth random fields (sigma in voxels). With one,
    W = sqrt(1 - individual) * template(u + shift) + sqrt(individual) * own field, where `shift` is a
    small displacement of the subject's functional layout relative to its anatomy, times `shift_scale_V`
    per voxel (larger in higher-order areas: individual.MISALIGNMENT).
    """
    fields = rng.standard_normal((num_classes + num_lowlevel, *brain.shape)).astype(np.float32)
    fields = gaussian_filter(fields, sigma=(0, sigma, sigma, sigma), mode="nearest")
    w = standardize(fields[:, brain.mask])  # (K + F, V)
    if template is not None:
        if template.num_maps != len(w):
            raise InputError(f"template has {template.num_maps} maps, the subject needs {len(w)}")
        shift = rng.normal(0, TEMPLATE_SHIFT, 3).astype(np.float32)
        scale = np.ones(w.shape[1], np.float32) if shift_scale_V is None else shift_scale_V  # per voxel
        shared = standardize(template(brain.u[:, brain.mask] + shift[:, None] * scale[None, :]))
        w = standardize(np.sqrt(1 - individual) * shared + np.sqrt(individual) * w)
    return w[:num_classes], w[num_classes:]


def standardize(w: np.ndarray) -> np.ndarray:
    return ((w - w.mean(axis=1, keepdims=True)) / w.std(axis=1, keepdims=True)).astype(np.float32)


def neural_response(
    labels_NK: np.ndarray,
    lowlevel_NF: np.ndarray,
    w_cat_KV: np.ndarray,
    w_ll_FV: np.ndarray,
    cat_gain_V: np.ndarray,
    ll_gain_V: np.ndarray,
) -> np.ndarray:
    """(N, V) stimulus-driven response in units of the maps (about unit variance where a gain is 1)."""
    m = max(float(labels_NK.sum(axis=1).mean()), 1.0)
    cat = (labels_NK.astype(np.float32) @ w_cat_KV) / np.sqrt(m)
    ll = (lowlevel_NF @ w_ll_FV) / np.sqrt(w_ll_FV.shape[0])
    return cat_gain_V * cat + ll_gain_V * ll
