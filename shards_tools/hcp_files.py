"""Readers of the HCP 7T movie release: runs, clip timing, stimulus versions, WordNet labels, movies.

Layout and conventions of the HCP 7T movie release (ConnectomeDB, HCP 1200 reference manual):
    {subject}/MNINonLinear/Results/tfMRI_MOVIE{n}_7T_{AP|PA}/tfMRI_MOVIE{n}_7T_{AP|PA}_hp2000_clean.nii.gz
        MOVIE1 AP, MOVIE2 PA, MOVIE3 PA, MOVIE4 AP; 113 x 136 x 113 x T float, TR 1 s
    found by release name anywhere below the resources folder (however the zips were unpacked):
    WordNetFeatures.hdf5                 MOVIE1_CC1 ... (seconds x categories, 0/1), synsets (bytes)
    HCP_7T_Movie_Clip_Timing.csv         bare CR line endings; sections '7T_MOVIE1_CC1_v2 Video Timing';
                                         rows 'block,start,end,duration' with block 0 = 20 s REST; times in s,
                                         end = the block's last frame (24 fps), inclusive
    HCP_7T_movie_V1_ReleasedSubjs.csv    Subject,M/F (CRLF): subjects shown version 1 (before 2014-08-22)
    HCP_7T_movie_V2_ReleasedSubjs.csv    version 2
    7T_MOVIE{n}_{CC|HO}{k}.mp4 (V1), 7T_MOVIE{n}_{CC|HO}{k}_v2.mp4 (V2), 24 fps
Only the v2 timing is published; V1 runs have the same durations, so V1 subjects use it (logged).
TR t (0-based seconds from the run's first volume) shows the frames of second t of the movie.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mused_fm.errors import InputError, MissingFileError

__all__ = ["MOVIES", "Block", "HcpResources", "parse_clip_timing", "run_path"]

MOVIES = {1: ("MOVIE1_CC1", "AP"), 2: ("MOVIE2_HO1", "PA"), 3: ("MOVIE3_CC2", "PA"), 4: ("MOVIE4_HO2", "AP")}
FPS = 24


@dataclass(frozen=True)
class Block:
    label: str
    """'0' for REST, 'N.M' for clip M of run N."""
    start: float
    end: float
    """Time of the block's last frame (inclusive), in seconds."""

    @property
    def is_rest(self) -> bool:
        return self.label in ("0", "0.0")

    def seconds(self) -> np.ndarray:
        """Whole seconds whose 24 frames all belong to the block (times are frame times, 4 decimals)."""
        first, last = round(self.start * FPS), round(self.end * FPS)  # frame numbers, last inclusive
        return np.arange(-(-first // FPS), (last + 1) // FPS)


def parse_clip_timing(path: Path) -> dict[str, list[Block]]:
    """{'MOVIE1_CC1_v2': [Block, ...], ...} from HCP_7T_Movie_Clip_Timing.csv (CR, LF or CRLF lines)."""
    text = Path(path).read_bytes().decode("utf-8-sig").replace("\r\n", "\n").replace("\r", "\n")
    sections: dict[str, list[Block]] = {}
    current = None
    for row in csv.reader(text.split("\n")):
        cells = [c.strip() for c in row]
        if not cells or not any(cells):
            continue
        title = re.match(r"7T_(MOVIE\d_[A-Z]{2}\d(?:_v2)?) Video Timing", cells[0])
        if title:
            current = sections.setdefault(title.group(1), [])
        elif current is not None and re.fullmatch(r"\d+(\.\d+)?", cells[0]) and len(cells) >= 3:
            current.append(Block(cells[0], float(cells[1]), float(cells[2])))
    if not sections:
        raise InputError(f"{path}: no '7T_MOVIEn_XXn Video Timing' sections; is it HCP_7T_Movie_Clip_Timing.csv?")
    return sections


def run_path(root: Path, subject: str, run: int) -> Path:
    name, phase = MOVIES[run]
    folder = f"tfMRI_{name.split('_')[0]}_7T_{phase}"
    path = root / subject / "MNINonLinear/Results" / folder / f"{folder}_hp2000_clean.nii.gz"
    if not path.exists():
        raise MissingFileError(
            f"{path} is missing: subject {subject} needs the four 7T movie runs "
            "(package 'Movie Task fMRI 1.6mm/59k FIX-Denoised') under --root."
        )
    return path


class HcpResources:
    """The movie resources, each found by its release file name anywhere below `root`."""

    NAMES = (
        "WordNetFeatures.hdf5",
        "HCP_7T_Movie_Clip_Timing.csv",
        "HCP_7T_movie_V1_ReleasedSubjs.csv",
        "HCP_7T_movie_V2_ReleasedSubjs.csv",
    )

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.files = {p.name: p for p in sorted(self.root.rglob("*")) if p.is_file()}
        missing = [n for n in self.NAMES if n not in self.files]
        if missing:
            raise MissingFileError(
                f"{self.root} lacks {missing}: point --resources at the unpacked 7T movie "
                "resources (default HCP_ROOT/7T_movie_resources)."
            )

    def versions(self) -> dict[str, str]:
        """{subject: 'V1' | 'V2'} from the two released-subject lists."""
        out = {}
        for version in ("V1", "V2"):
            text = self.files[f"HCP_7T_movie_{version}_ReleasedSubjs.csv"].read_text().replace("\r", "\n")
            for row in csv.DictReader(line for line in text.split("\n") if line.strip()):
                out[row["Subject"].strip()] = version
        return out

    def movie(self, run: int, version: str) -> Path:
        name = f"7T_{MOVIES[run][0]}{'_v2' if version == 'V2' else ''}.mp4"
        if name not in self.files:
            raise MissingFileError(
                f"{self.root} lacks the movie {name} (stimulus version {version}); unpack the "
                "'7T Movie Stimulus Files' package below --resources."
            )
        return self.files[name]

    def timing(self, run: int, version: str) -> list[Block]:
        sections = parse_clip_timing(self.files["HCP_7T_Movie_Clip_Timing.csv"])
        name = MOVIES[run][0]
        return sections.get(name if version == "V1" else f"{name}_v2") or sections[f"{name}_v2"]

    def wordnet(self) -> tuple[dict[int, np.ndarray], list[str]]:
        """({run: seconds x categories uint8}, synset names like 'dog.n.01')."""
        import h5py

        with h5py.File(self.files["WordNetFeatures.hdf5"], "r") as f:
            synsets = [s.decode("ascii") if isinstance(s, bytes) else str(s) for s in f["synsets"][()].ravel()]
            labels = {run: np.asarray(f[name][()]).astype(np.uint8) for run, (name, _) in MOVIES.items()}
        for run, table in labels.items():
            if table.shape[1] != len(synsets) and table.shape[0] == len(synsets):
                labels[run] = table.T  # written from MATLAB as categories x seconds
        return labels, synsets


def read_frames(movie: Path, seconds: np.ndarray) -> dict[int, np.ndarray]:
    """{second: H x W x 3 uint8} of the frame in the middle of each requested second (one decoding pass)."""
    import av

    wanted = {int(s) * FPS + FPS // 2: int(s) for s in seconds}
    frames: dict[int, np.ndarray] = {}
    with av.open(str(movie)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index in wanted:
                frames[wanted[index]] = frame.to_ndarray(format="rgb24")
                if len(frames) == len(wanted):
                    break
    missing = sorted(set(wanted.values()) - set(frames))
    if missing:
        raise InputError(f"{movie}: the movie ends before seconds {missing[:5]}...; is it the right version's file?")
    return frames
