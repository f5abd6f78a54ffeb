"""pack-hcp: HCP 7T movie runs -> brain-masked volume shards with WordNet labels and CLIP frame features.

    python -m shards_tools pack-hcp --root HCP_ROOT --subjects 100610,102311 \\
        --clip-model openai/clip-vit-base-patch16 --out s3://bucket/shards/hcp [--resources RES_DIR]

Per subject: the four runs (MOVIE1 AP, MOVIE2 PA, MOVIE3 PA, MOVIE4 AP, *_hp2000_clean.nii.gz), cropped
[2:, 4:-5, :-2] (--crop) to 111 x 127 x 111; a brain mask (voxels that are non-zero and vary in every
run); per-subject normalisation: each run's mean removed, then each voxel scaled by its standard
deviation over the subject's training seconds; a 4-TR hemodynamic delay (--delay): second t of the
movie is decoded from volume t + 4; rest blocks dropped with the clip timing of the subject's stimulus
version (V1/V2); test = movie 4 without its final, repeated clip; validation = whole clips of movies
1-3 (seeded), so neighbouring seconds never straddle splits. Labels: WordNet categories whose
frequency over all clip seconds exceeds --label-threshold (0.1), recorded in the manifest. CLIP: the
middle frame of each second, decoded from the subject's version of the movie; text = that second's
WordNet label names. bold is the masked vector as float16 (the mask is in preproc/<subject>.npz):
about 22% of the float32 volume's bytes for an MNI brain.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

import numpy as np

from mused_fm.data.schema import make_sample
from mused_fm.data.writer import DatasetInfo, DatasetWriter, check_settings
from mused_fm.errors import InputError
from mused_fm.subject_ids import global_id
from shards_tools.clip_features import ClipFeaturizer, ClipStore
from shards_tools.common_args import add_output_arguments
from shards_tools.hcp_files import MOVIES, HcpResources, read_frames, run_path
from shards_tools.volumes import center_runs, load_masked_runs, train_std

__all__ = ["add_arguments", "parse_crop", "run"]

logger = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", required=True, type=Path, help="HCP release root with {subject}/MNINonLinear/...")
    p.add_argument("--subjects", required=True, help="comma list, e.g. 100610,102311")
    p.add_argument("--resources", type=Path, default=None, help="7T movie resources (default ROOT/7T_movie_resources)")
    p.add_argument("--movie-version", choices=("V1", "V2"), default=None, help="for subjects in neither list")
    p.add_argument("--crop", default="2:,4:-5,:-2", help="numpy crop of the 113x136x113 grid (CLIP-MUSED's)")
    p.add_argument("--delay", type=int, default=4, help="hemodynamic delay in TRs (1 TR = 1 s)")
    p.add_argument("--label-threshold", type=float, default=0.1, help="keep categories more frequent than this")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of movie 1-3 clips held for validation")
    add_output_arguments(p, maxcount=500)


def parse_crop(text: str) -> tuple[slice, slice, slice]:
    """'2:,4:-5,:-2' -> three slices."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3:
        raise InputError(f"--crop {text!r}: expected three comma-separated slices such as 2:,4:-5,:-2.")
    return tuple(slice(*[int(v) if v.strip() else None for v in p.split(":")]) for p in parts)


def validation_clips(resources: HcpResources, frac: float, seed: int) -> set[tuple[int, str]]:
    """(run, clip label) of the whole clips of movies 1-3 held out for validation, the same for everyone.

    Every subject watched the same movie, so a clip validated for one subject must not be trained on
    for another: the choice depends on the seed alone.
    """
    regular = [
        (run, b.label) for run in (1, 2, 3) for b in [c for c in resources.timing(run, "V2") if not c.is_rest][:-1]
    ]
    n_val = max(1, round(frac * len(regular))) if frac > 0 else 0
    return {regular[i] for i in np.random.default_rng(seed).choice(len(regular), size=n_val, replace=False)}


def seconds_by_split(resources: HcpResources, version: str, delay: int, lengths: dict[int, int], held: set):
    """{run: [(second, split)]}: clip seconds whose delayed volume exists, with their split.

    The last clip of every run is the repeated validation clip: in movie 4 it is left out (test is
    movie 4 without it), in movies 1-3 it is training data; `held` clips of movies 1-3 are validation.
    """
    out: dict[int, list[tuple[int, str]]] = {}
    for run in MOVIES:
        blocks = [b for b in resources.timing(run, version) if not b.is_rest]
        rows = []
        for block in blocks if run < 4 else blocks[:-1]:
            split = "test" if run == 4 else "val" if (run, block.label) in held else "train"
            rows += [(int(s), split) for s in block.seconds() if s + delay < lengths[run]]
        out[run] = rows
    return out


def label_frequency(resources: HcpResources, wordnet: dict, held: set) -> np.ndarray:
    """Share of training seconds (movies 1-3, validation clips left out) in which each category is present."""
    rows = [
        wordnet[run][[s for s in b.seconds() if s < len(wordnet[run])]]
        for run in (1, 2, 3)
        for b in resources.timing(run, "V2")
        if not b.is_rest and (run, b.label) not in held
    ]
    return np.concatenate(rows).mean(0)


def run(args: argparse.Namespace) -> int:
    import nibabel as nib

    resources = HcpResources(args.resources or args.root / "7T_movie_resources")
    versions = resources.versions()
    wordnet, synsets = resources.wordnet()
    subjects = [s.strip() for s in args.subjects.split(",") if s.strip()]
    unknown = [s for s in subjects if s not in versions and args.movie_version is None]
    if unknown:
        raise InputError(
            f"subjects {unknown} are in neither HCP_7T_movie_V1/V2_ReleasedSubjs.csv; say which movie "
            "version they saw with --movie-version V1|V2."
        )
    held = validation_clips(resources, args.val_fraction, args.seed)
    frequency = label_frequency(resources, wordnet, held)
    keep = np.flatnonzero(frequency > args.label_threshold)
    classes = [synsets[i] for i in keep]
    crop = parse_crop(args.crop)
    # Plans from the run headers only (no volume is read yet): every subject's stimuli, so that the llv
    # basis is fitted once on all of them, whatever the order of --subjects.
    plans, grids = {}, set()
    for subject in subjects:
        version = versions.get(subject, args.movie_version)
        paths = {r: run_path(args.root, subject, r) for r in MOVIES}  # all four runs exist before any work
        shapes = {r: nib.load(p).shape for r, p in paths.items()}
        grids.add(tuple(len(range(n)[c]) for n, c in zip(shapes[1][:3], crop, strict=True)))
        lengths = {r: shape[3] for r, shape in shapes.items()}
        plans[subject] = (version, paths, seconds_by_split(resources, version, args.delay, lengths, held))
    if len(grids) != 1:
        raise InputError(
            f"subjects' runs have different grids after --crop {args.crop}: {sorted(grids)}; one "
            "output holds one grid (HCP MNI runs are all 113x136x113)."
        )
    featurizer = ClipFeaturizer(args.clip_model, args.batch_size, args.device)
    store = ClipStore(args.out, featurizer, args.llv_dim, seed=args.seed)
    info = DatasetInfo(
        dataset="hcp",
        kind="volume",
        classes=classes,
        clip={},  # the CLIP spec, once the features are computed
        llv_dim=args.llv_dim,
        hlv_dim=featurizer.hlv_dim,
        volume_shape=list(grids.pop()),
        extra={
            "crop": args.crop,
            "delay": args.delay,
            "label_threshold": args.label_threshold,
            "label_frequency": [float(frequency[i]) for i in keep],
            "storage": "brain mask + float16",
            "normalisation": "run mean over the run's non-test volumes removed; voxel std over training volumes",
            "val_fraction": args.val_fraction,
            "seed": args.seed,
        },
    )
    check_settings(args.out, info, skip=("clip",))  # a pack that will be refused computes no features
    features = _features(store, resources, plans, wordnet, synsets)
    info = dataclasses.replace(info, clip=store.spec)
    writer = DatasetWriter(args.out, info, maxcount=args.maxcount, tool="shards_tools pack-hcp")
    for subject, (version, paths, plan) in plans.items():
        fingerprint = {
            "version": version,
            "crop": args.crop,
            "delay": args.delay,
            "classes": classes,
            "val_fraction": args.val_fraction,
            "seed": args.seed,
        }
        subject_id = global_id("hcp", subject)
        sub = writer.subject(subject_id, fingerprint)
        if sub is None:
            continue
        volumes, mask = load_masked_runs(paths, crop)
        test_volumes = {r: {s + args.delay for s, split in rows if split == "test"} for r, rows in plan.items()}
        center_runs(volumes, {r: [t for t in range(len(v)) if t not in test_volumes[r]] for r, v in volumes.items()})
        std = train_std(volumes, {r: [s + args.delay for s, sp in rows if sp == "train"] for r, rows in plan.items()})
        with sub:
            sub.save_preproc({"mask": mask, "std": std})
            for r, rows in plan.items():
                for second, split in rows:
                    bold = (volumes[r][second + args.delay] / std).astype(np.float16)
                    llv, hlv = features[f"hcp-{version}-{r}-{second:04d}"]
                    stimulus = f"{MOVIES[r][0]}-{version}-t{second:04d}"
                    labels = wordnet[r][second, keep].astype(np.uint8)
                    sub.add(make_sample(subject_id, f"run{r}", second, stimulus, split, bold, llv, hlv, labels))
    manifest = writer.finish()
    print(
        f"{args.out}: {sum(s['count'] for s in manifest['shards'])} samples of {len(manifest['subjects'])} HCP "
        f"subjects, {len(classes)} classes kept of {len(synsets)}"
    )
    return 0


def _features(store: ClipStore, resources: HcpResources, plans: dict, wordnet, synsets) -> dict:
    """CLIP features of every planned second of every subject's movie version; test seconds not in the fit."""
    loaders, ids, test_ids = {}, [], set()
    for version, _, plan in plans.values():
        for r, rows in plan.items():
            loaders[(version, r)] = (resources.movie(r, version), np.array(sorted({s for s, _ in rows})))
            for s, split in rows:
                ids.append(f"hcp-{version}-{r}-{s:04d}")
                if split == "test":
                    test_ids.add(ids[-1])
    frames: dict[tuple[str, int], dict[int, np.ndarray]] = {}

    def load(stim: str) -> tuple[np.ndarray, str]:
        _, version, r, s = stim.split("-")
        key, s = (version, int(r)), int(s)
        if key not in frames:  # decode a movie once, on first need
            frames[key] = read_frames(*loaders[key])
        words = [synsets[i].split(".")[0].replace("_", " ") for i in np.flatnonzero(wordnet[key[1]][s])]
        return frames[key][s], ", ".join(words) or "nothing"

    return store.features(sorted(set(ids)), load, fit_exclude=test_ids)
