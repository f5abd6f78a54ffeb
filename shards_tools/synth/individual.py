"""How simulated subjects differ, declared once with sources, and the noise model the writers share.

Each subject draws a `Profile` from its own seed stream. Sizes come from the literature, fixed before
any decoding result was seen (they are not tuned to make a method win; only NOISE_SCALE is calibrated,
against published decoding difficulty, see its comment):

- signal-to-noise per subject: noise SD x a log-uniform factor in SUBJECT_SNR (0.8-1.25, noise variance
  within ~2.4x across subjects). Allen et al. 2022 (Nat Neurosci 25:116, NSD): single-trial noise ceilings
  differ between the 8 subjects.
- signal-to-noise per ROI: noise SD / ROI_SNR of the voxel's group (1.0 in V1-V2 down to 0.6 in PHC and
  IPS), times a per-subject x ROI lognormal factor (sd ROI_SNR_SD = 0.15). Allen et al. 2022: noise
  ceilings are highest in early visual cortex and fall along the hierarchy.
- response gain and category selectivity per subject x ROI: the low-level and the category gain each x an
  independent lognormal factor (sd GAIN_SD = 0.25). Handwerker et al. 2004 (NeuroImage 21:1639): BOLD
  amplitude differs across subjects and regions.
- functional misalignment left after anatomical alignment: the cohort template is read at the subject's
  displacement x MISALIGNMENT of the voxel's group (1x in V1 to 3x in PHC and IPS; on the surface the
  displacement is a rotation). Wang et al. 2015 (Cereb Cortex 25:3911): the inter-subject overlap of
  probabilistic visual areas falls from V1 to higher areas; Haxby et al. 2011 (Neuron 72:404).
- hemodynamic delay (HCP): 3, 4 or 5 s per subject (p 0.25, 0.5, 0.25) around the 4 s the packer assumes.
  Handwerker et al. 2004: the HRF's time to peak differs across subjects by 1-2 s.
- spatially correlated noise: CORRELATED_SHARE (half) of the noise variance comes from NOISE_MAPS smooth
  maps per subject with random weights per trial. Kay et al. 2013 (Front Neurosci 7:247, GLMdenoise):
  fMRI noise is shared across voxels.
- session drift: a per-session, per-voxel offset of 0.5 % signal change (the writers); the reason NSD
  users z-score per session.
- saturating response: r -> SATURATION * tanh(r / SATURATION), so the best decoder is not a linear
  readout of the planted model. Boynton et al. 1996 (J Neurosci 16:4207): BOLD responses saturate.
- amount of data: NSD-like subjects complete different numbers of sessions (demo preset 10, 10, 9, 8, 10,
  9; NSD 40, 40, 32, 30, 40, 32, 40, 30: Allen et al. 2022).

Tests (tests/test_synth_individual.py) recover each difference from the written files at its size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shards_tools.synth import brain as B

__all__ = [
    "GROUPS",
    "MISALIGNMENT",
    "NOISE_SCALE",
    "ROI_SNR",
    "Profile",
    "correlated_noise",
    "draw_profile",
    "group_of_labels",
    "misalignment_of_groups",
    "profile_of",
    "saturate",
]

GROUPS = tuple(B.ROI_GROUPS)  # V1 ... IPS
# Signal-to-noise of each ROI group relative to V1 (noise SD is divided by it), along the visual hierarchy.
ROI_SNR = {"V1": 1.0, "V2": 1.0, "V3": 0.95, "V3ab": 0.8, "hV4": 0.8, "VO": 0.7, "PHC": 0.6, "MT": 0.75, "LO": 0.7}
ROI_SNR["IPS"] = 0.6
OTHER_SNR = 0.6  # labelled areas outside the ten groups, and unlabelled cortex
# How far each group's layout is displaced from the cohort template, in units of brain.TEMPLATE_SHIFT.
MISALIGNMENT = {"V1": 1.0, "V2": 1.25, "V3": 1.5, "V3ab": 2.0, "hV4": 2.0, "VO": 2.5, "PHC": 3.0, "MT": 2.5, "LO": 2.5}
MISALIGNMENT["IPS"] = 3.0
OTHER_MISALIGNMENT = 2.5
SUBJECT_SNR = (0.8, 1.25)  # range of the per-subject noise-SD factor (log-uniform)
ROI_SNR_SD = 0.15  # lognormal sd of the per-subject x ROI SNR factor
GAIN_SD = 0.25  # lognormal sd of the per-subject x ROI gain factors
DELAYS_S = (3, 4, 5)
DELAY_P = (0.25, 0.5, 0.25)
NOISE_MAPS = 16
CORRELATED_SHARE = 0.5  # of the noise variance
SATURATION = 1.5  # in units of the maps (unit variance at gain 1)
# Overall noise, in units of the writers' base noise SD. Calibrated once against published difficulty:
# single-trial semantic decoding on NSD reaches mAP 0.258 over 80 COCO classes (CLIP-MUSED, Zhou et al. 2024), far
# from perfect; at 1x a per-subject ridge decoded the demo cohort at mAP 0.997. The test in
# tests/test_synth_individual.py holds a per-subject ridge between chance + 0.05 and 0.75.
NOISE_SCALE = 3.0


@dataclass(frozen=True)
class Profile:
    """One subject's draw: factors per ROI group (index as GROUPS; the last entry: outside the groups)."""

    noise: float  # noise-SD factor of the subject
    snr: np.ndarray  # (11,) SNR factor per group (ROI_SNR x the subject's lognormal)
    gain_ll: np.ndarray  # (11,) low-level gain factor per group
    gain_cat: np.ndarray  # (11,) category gain factor per group
    delay_s: int  # hemodynamic delay (HCP)


def draw_profile(rng: np.random.Generator) -> Profile:
    base = np.array([ROI_SNR[g] for g in GROUPS] + [OTHER_SNR])
    n = len(base)
    return Profile(
        noise=float(np.exp(rng.uniform(*np.log(SUBJECT_SNR)))),
        snr=base * np.exp(rng.normal(0, ROI_SNR_SD, n)),
        gain_ll=np.exp(rng.normal(0, GAIN_SD, n)),
        gain_cat=np.exp(rng.normal(0, GAIN_SD, n)),
        delay_s=int(rng.choice(DELAYS_S, p=DELAY_P)),
    )


def profile_of(seed: int, dataset: str, subject: str) -> Profile:
    """The subject's profile, from its own stream: the same in every space a subject is written in."""
    from shards_tools.synth.files import rng_for

    return draw_profile(rng_for(seed, "profile", dataset, subject))


def group_of_labels(labels: np.ndarray) -> np.ndarray:
    """Group index (0..9 as GROUPS, 10 outside them) of every Kastner label value (0 = unlabelled)."""
    table = {k: len(GROUPS) for k in range(len(B.KASTNER_NAMES) + 1)}
    for g, (names, _) in enumerate(B.ROI_GROUPS.values()):
        for name in names:
            table[B.KASTNER_NAMES.index(name) + 1] = g
    lookup = np.array([table[k] for k in range(len(B.KASTNER_NAMES) + 1)])
    return lookup[np.clip(labels, 0, None)]


def misalignment_of_groups(groups: np.ndarray) -> np.ndarray:
    scale = np.array([MISALIGNMENT[g] for g in GROUPS] + [OTHER_MISALIGNMENT], dtype=np.float32)
    return scale[groups]


def saturate(response: np.ndarray) -> np.ndarray:
    return (SATURATION * np.tanh(response / SATURATION)).astype(np.float32)


def correlated_noise(rng: np.random.Generator, maps_MV: np.ndarray, num_trials: int, sd_V: np.ndarray) -> np.ndarray:
    """(trials, V) noise of SD `sd_V` per voxel: CORRELATED_SHARE of the variance from the subject's smooth
    maps (M, V) with per-trial weights, the rest independent."""
    unit = maps_MV / np.sqrt((maps_MV**2).sum(0, keepdims=True))  # each voxel's loadings: unit norm
    shared = rng.standard_normal((num_trials, len(maps_MV))).astype(np.float32) @ unit
    white = rng.standard_normal((num_trials, maps_MV.shape[1])).astype(np.float32)
    return (np.sqrt(CORRELATED_SHARE) * shared + np.sqrt(1 - CORRELATED_SHARE) * white) * sd_V
