"""Named sizes of the simulated cohort: `test` (seconds, used by many tests) and `demo` (enough to learn from).

Only numbers live here; the writers in nsd.py, hcp.py and bids.py hold the logic. The `test` preset is
for plumbing: a few trials per subject at a third of the calibrated noise (individual.NOISE_SCALE), so
small models still learn in a few steps; figures about decoding come from `demo`. Grid sizes are the
real per-subject NSD func1pt8mm grids (subj01 81×104×83, ...) divided by
about four, with three distinct axis lengths per subject so that a swapped axis fails loudly.
"""

from __future__ import annotations

from dataclasses import dataclass

from mused_fm.errors import InputError
from shards_tools.synth.individual import NOISE_SCALE

__all__ = ["PRESETS", "BidsPreset", "HcpPreset", "NsdPreset", "Preset", "get_preset"]

# Real NSD func1pt8mm grids / ~4 (subj01 81x104x83 -> 20x26x21, ...).
NSD_GRIDS = ((20, 26, 21), (21, 27, 22), (20, 27, 23), (22, 25, 20), (19, 24, 21), (22, 28, 21))
# COCO categories used by the simulated images, most frequent first (all 80 are still listed in COCO JSON).
NSD_CATEGORIES = (
    "person",
    "car",
    "dog",
    "chair",
    "cat",
    "dining table",
    "bird",
    "bus",
    "pizza",
    "horse",
    "umbrella",
    "bottle",
    "train",
    "giraffe",
    "laptop",
    "bed",
    "clock",
    "boat",
    "cake",
    "surfboard",
)


@dataclass(frozen=True)
class NsdPreset:
    num_subjects: int
    sessions: tuple[int, ...]  # sessions each subject completed (the design covers max(sessions))
    trials_per_session: int  # real NSD: 750
    num_shared: int  # the "shared1000" analogue; each shared image is shown 3 times
    num_unique: int  # images per subject outside the shared set, each shown 3 times if sessions allow
    image_size: int  # imgBrick is (n, S, S, 3); real NSD S = 425
    num_categories: int
    held_out: str | None = None  # subject meant for the new-subject protocol (not trained on)
    missing_session: tuple[str, int] = ("subj02", 2)  # no file for this session (a gap users meet)
    hdf5_session: tuple[str, int] = ("subj03", 1)  # written only as betas_sessionNN.hdf5
    surface_vertices: int = 642  # fsaverage-like sphere per hemisphere (real fsaverage: 163842)
    noise_scale: float = NOISE_SCALE  # overall noise (individual.NOISE_SCALE: calibrated; `test`: 1, for plumbing)
    nan_subjects: tuple[str, ...] = ("subj03", "subj06")  # a patch of NaN vertices on the surface (real: 06, 08)

    @property
    def num_images_per_subject(self) -> int:
        return self.num_shared + self.num_unique


@dataclass(frozen=True)
class HcpPreset:
    subjects: tuple[tuple[str, str, str], ...]  # (id, stimulus version V1/V2, sex)
    clips_per_run: tuple[int, ...]  # regular clips in MOVIE1..4 (the validation clip comes on top)
    clip_seconds: tuple[float, float]  # range of a regular clip's length
    validation_seconds: float  # the clip repeated at the end of every run (real: 83.375 s)
    frame_size: tuple[int, int] = (64, 48)  # (width, height); real 1024×720
    num_categories: int = 16
    raw_grid: tuple[int, int, int] = (26, 37, 26)  # crop [2:, 4:-5, :-2] -> 24×28×24 (real 113×136×113)
    noise_scale: float = NOISE_SCALE


@dataclass(frozen=True)
class BidsPreset:
    num_subjects: int
    num_images: int
    grid: tuple[int, int, int] = (18, 22, 16)
    repetition_time: float = 2.0
    trs_between_onsets: int = 3
    image_size: int = 64


@dataclass(frozen=True)
class Preset:
    name: str
    nsd: NsdPreset
    hcp: HcpPreset
    bids: BidsPreset


PRESETS = {
    "test": Preset(
        "test",
        NsdPreset(5, (3, 3, 3, 2, 2), 40, 10, 30, 64, 12, noise_scale=1.0),
        HcpPreset(
            (("100610", "V1", "M"), ("102311", "V1", "F"), ("102816", "V2", "F")),
            clips_per_run=(2, 3, 2, 2),
            clip_seconds=(10.0, 16.0),
            validation_seconds=10.0,
            noise_scale=1.0,
        ),
        BidsPreset(2, 24),
    ),
    "demo": Preset(
        "demo",
        NsdPreset(6, (10, 10, 9, 8, 10, 9), 60, 40, 160, 64, 20, held_out="subj06", surface_vertices=2562),
        HcpPreset(
            (("100610", "V1", "M"), ("102311", "V1", "F"), ("102816", "V2", "F"), ("104416", "V2", "F")),
            clips_per_run=(3, 3, 3, 3),
            clip_seconds=(35.0, 50.0),
            validation_seconds=30.0,
        ),
        BidsPreset(3, 60),
    ),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[name]
