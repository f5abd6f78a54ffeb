"""The simulated HCP 7T movies: run structure, per-second WordNet labels, and the mp4 files (24 fps).

Mirrors the real stimulus package of the HCP 7T movie release: four runs MOVIE1_CC1,
MOVIE2_HO1, MOVIE3_CC2, MOVIE4_HO2; each starts with 20 s of rest (480 frames at 24 fps), has clips
separated by 20 s rest blocks, then a validation clip identical in all four runs, then 20 s of rest;
a run lasts a whole number of seconds (the real ones 921/918/915/901 s), so the last regular clip is
trimmed to make it so. Clip lengths are whole frames, so clip boundaries fall between seconds as in
the real timing table. V1 files (`Pre_20140821_version/7T_MOVIE1_CC1.mp4`) and V2 files
(`Post_20140821_version/7T_MOVIE1_CC1_v2.mp4`) share the timing; V2 has a small colour shift.

A clip is a sequence of shots (2-5 s); a shot shows the image drawn for its WordNet classes
(stimuli.render), drifting sideways. The label of second s is the shot of frame 24·s (readers map
frames to TRs by frame // 24), all-zero during rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mused_fm.files import atomic_path
from shards_tools.synth import stimuli

__all__ = ["FPS", "MOVIES", "Block", "make_runs", "opening_frames", "per_second_labels", "run_seconds", "write_movies"]

FPS = 24
REST_FRAMES = 20 * FPS
MOVIES = (("MOVIE1_CC1", "AP"), ("MOVIE2_HO1", "PA"), ("MOVIE3_CC2", "PA"), ("MOVIE4_HO2", "AP"))
GREY = 128
# V2 = V1 with a small per-channel gain and offset (the real versions differ in ways nobody documented).
V2_LUT = np.stack(
    [np.clip(np.round(np.arange(256) * g + o), 0, 255) for g, o in ((1.04, 3), (1.0, 0), (0.95, -2))]
).astype(np.uint8)  # (3, 256)


@dataclass
class Shot:
    frames: int
    labels: np.ndarray  # (K,) uint8
    image: np.ndarray  # (H, W, 3) uint8
    speed: float  # sideways drift, pixels per frame


@dataclass
class Block:
    label: str  # "0" for rest, "N.M" for clip M of run N (as in HCP_7T_Movie_Clip_Timing.csv)
    start: int  # first frame
    frames: int
    validation: bool = False
    shots: list[Shot] = field(default_factory=list)


def _shots(frames: int, cats: stimuli.Categories, size: tuple[int, int], rng: np.random.Generator) -> list[Shot]:
    out, left = [], frames
    while left > 0:
        n = min(left, int(rng.integers(2 * FPS, 5 * FPS + 1)))
        labels = stimuli.sample_labels(cats, 1, rng, max_labels=3)[0]
        image, _ = stimuli.render(cats, labels, size[1], size[0], rng)
        out.append(Shot(n, labels, image, float(rng.uniform(-0.4, 0.4))))
        left -= n
    return out


def make_runs(
    clips_per_run: tuple[int, ...],
    clip_seconds: tuple[float, float],
    validation_seconds: float,
    cats: stimuli.Categories,
    size: tuple[int, int],
    rng: np.random.Generator,
) -> list[list[Block]]:
    """Blocks of each run, in frames. The validation clip (shots included) is the same object in every run."""
    val_frames = round(validation_seconds * FPS) + int(rng.integers(1, FPS))
    val_shots = _shots(val_frames, cats, size, rng)
    runs = []
    for n, num_clips in enumerate(clips_per_run, start=1):
        lengths = [round(rng.uniform(*clip_seconds) * FPS) for _ in range(num_clips)]
        total = REST_FRAMES * (num_clips + 2) + sum(lengths) + val_frames
        lengths[-1] -= total % FPS  # whole seconds per run
        blocks, t = [], 0
        for m, length in enumerate([*lengths, val_frames], start=1):
            blocks.append(Block("0", t, REST_FRAMES))
            t += REST_FRAMES
            is_val = m == num_clips + 1
            shots = val_shots if is_val else _shots(length, cats, size, rng)
            blocks.append(Block(f"{n}.{m}", t, length, validation=is_val, shots=shots))
            t += length
        blocks.append(Block("0", t, REST_FRAMES))
        runs.append(blocks)
    return runs


def run_seconds(blocks: list[Block]) -> int:
    return (blocks[-1].start + blocks[-1].frames) // FPS


def _shot_seconds(blocks: list[Block]):
    """Yield (block, shot, its first frame, the seconds s whose opening frame 24·s lies in the shot)."""
    for b in blocks:
        t = b.start
        for shot in b.shots:
            yield b, shot, t, np.arange(-(-t // FPS), -(-(t + shot.frames) // FPS))
            t += shot.frames


def per_second_labels(blocks: list[Block], num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(T, K) labels, (T,) est and (T,) val 0/1 masks of one run, from the frame that opens each second."""
    T = run_seconds(blocks)
    labels = np.zeros((T, num_classes), dtype=np.uint8)
    est, val = np.zeros(T, dtype=np.uint8), np.zeros(T, dtype=np.uint8)
    for b, shot, _, seconds in _shot_seconds(blocks):
        labels[seconds] = shot.labels
        (val if b.validation else est)[seconds] = 1
    return labels, est, val


def _frames(blocks: list[Block]):
    """Yield (H, W, 3) uint8 frames of one run; None stands for a grey rest frame (encoded once, reused)."""
    for b in blocks:
        if not b.shots:
            yield from (None for _ in range(b.frames))
        for shot in b.shots:
            for i in range(shot.frames):
                yield np.roll(shot.image, int(i * shot.speed), axis=1)


def _open(path: Path, size: tuple[int, int]):
    import av

    container = av.open(str(path), "w", format="mp4")
    stream = container.add_stream("libx264", rate=FPS)
    stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
    stream.options = {"preset": "ultrafast", "crf": "18", "threads": "1"}  # one thread: identical bytes per run
    return container, stream


def opening_frames(blocks: list[Block], size: tuple[int, int], version: str) -> np.ndarray:
    """(T, H, W, 3) uint8: the frame that opens each second of one run (frame 24·s), as `version` shows it."""
    frames = np.full((run_seconds(blocks), size[1], size[0], 3), GREY, dtype=np.uint8)
    for _, shot, t, seconds in _shot_seconds(blocks):
        for s in seconds:
            frames[s] = np.roll(shot.image, int((s * FPS - t) * shot.speed), axis=1)  # as _frames draws it
    return frames if version == "V1" else _shift(frames)


def write_movies(res_dir: Path, runs: list[list[Block]], size: tuple[int, int]) -> list[Path]:
    """Encode the V1 (Pre_20140821_version) and V2 (Post_20140821_version) file of every run."""
    import av

    grey = np.full((size[1], size[0], 3), GREY, dtype=np.uint8)
    still = {"V1": grey, "V2": _shift(grey)}  # rest frames
    written = []
    for (movie, _), blocks in zip(MOVIES, runs, strict=True):
        paths = {
            "V1": res_dir / "Pre_20140821_version" / f"7T_{movie}.mp4",
            "V2": res_dir / "Post_20140821_version" / f"7T_{movie}_v2.mp4",
        }
        with atomic_path(paths["V1"]) as tmp1, atomic_path(paths["V2"]) as tmp2:
            outs = {"V1": _open(tmp1, size), "V2": _open(tmp2, size)}
            rest = {v: av.VideoFrame.from_ndarray(a, format="rgb24") for v, a in still.items()}
            for frame in _frames(blocks):
                for v, (container, stream) in outs.items():
                    if frame is None:
                        vf = rest[v]
                    else:
                        vf = av.VideoFrame.from_ndarray(frame if v == "V1" else _shift(frame), format="rgb24")
                    for packet in stream.encode(vf):
                        container.mux(packet)
            for container, stream in outs.values():
                for packet in stream.encode():
                    container.mux(packet)
                container.close()
        written += paths.values()
    return written


def _shift(frames: np.ndarray) -> np.ndarray:
    """The V2 colour shift of uint8 frames (..., H, W, 3)."""
    return np.stack([V2_LUT[c][frames[..., c]] for c in range(3)], axis=-1)
