"""pack-bids: a new site from a BIDS dataset -> volume (or ROI) shards with the site's labels and CLIP features.

    python -m shards_tools pack-bids --root BIDS_ROOT --site mysite --labels LABELS.tsv \\
        --clip-model openai/clip-vit-base-patch16 --out s3://bucket/shards/mysite

One sample per event whose stim_file is listed in LABELS.tsv: the volume at onset + --delay-s (4 s),
i.e. index round((onset + delay) / TR) with TR from the run's (inherited) sidecar. Subject ids are
'<site>/sub-XX'. Splits are by stimulus and shared by all subjects: a seeded --test-fraction of the
stimuli is test, --val-fraction validation, so no stimulus is in two splits. Classes: the sorted
union of LABELS.tsv's names, or the order of --classes FILE (one name per line). Volume samples (the
default) store the brain-masked run as float16 like pack-hcp; with --atlas (a label volume on the
bold grid) and --atlas-labels (a FreeSurfer .ctab), samples are per-ROI PCA tokens like pack-nsd.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
from pathlib import Path

import numpy as np

from mused_fm.data.schema import make_sample
from mused_fm.data.writer import DatasetInfo, DatasetWriter, check_settings
from mused_fm.errors import InputError, MissingFileError
from mused_fm.subject_ids import global_id
from shards_tools.bids_files import find_runs, read_events, read_labels, repetition_time
from shards_tools.clip_features import ClipFeaturizer, ClipStore
from shards_tools.common_args import add_output_arguments
from shards_tools.nsd_files import read_ctab
from shards_tools.roi_features import RoiPca, resolve_groups
from shards_tools.volumes import center_runs, load_masked_runs, train_std

__all__ = ["add_arguments", "run"]

logger = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", required=True, type=Path, help="BIDS dataset root")
    p.add_argument("--site", required=True, help="site name: the dataset name and the prefix of subject ids")
    p.add_argument("--labels", required=True, type=Path, help="LABELS.tsv: stim_file, labels (a;b), caption")
    p.add_argument("--subjects", default=None, help="comma list of sub-XX (default: all)")
    p.add_argument("--classes", type=Path, default=None, help="class order, one name per line")
    p.add_argument("--delay-s", type=float, default=4.0, help="hemodynamic delay in seconds")
    p.add_argument("--atlas", type=Path, default=None, help="ROI label volume on the bold grid (ROI samples)")
    p.add_argument("--atlas-labels", type=Path, default=None, help="FreeSurfer .ctab of --atlas")
    p.add_argument("--roi-groups", default=None, help="with --atlas: NAME=label+label,... (default: one per label)")
    p.add_argument("--roi-dim", type=int, default=268)
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--val-fraction", type=float, default=0.1)
    add_output_arguments(p, maxcount=1000)


def _splits(stimuli: list[str], test: float, val: float, seed: int) -> dict[str, str]:
    order = np.random.default_rng(seed).permutation(len(stimuli))
    n_test, n_val = round(test * len(stimuli)), round(val * len(stimuli))
    return {stimuli[i]: "test" if k < n_test else "val" if k < n_test + n_val else "train" for k, i in enumerate(order)}


def run(args: argparse.Namespace) -> int:
    from PIL import Image

    if "/" in args.site or "." in args.site or not args.site:
        raise InputError(f"--site {args.site!r}: a site name may not contain '/' or '.' (it prefixes subject ids).")
    labels = read_labels(args.labels, args.root)
    names = sorted({c for cls, _ in labels.values() for c in cls})
    classes = [c.strip() for c in args.classes.read_text().splitlines() if c.strip()] if args.classes else names
    unknown = sorted(set(names) - set(classes))
    if unknown:
        raise InputError(f"{args.labels} uses classes {unknown} that --classes {args.classes} does not list.")
    runs = find_runs(args.root, [s.strip() for s in args.subjects.split(",")] if args.subjects else None)
    events = {
        r.path: [e for e in read_events(r.events, args.root) if e["stim_file"] in labels]
        for rs in runs.values()
        for r in rs
    }
    shown_by = {e["stim_file"]: r for rs in runs.values() for r in rs for e in events[r.path]}
    shown = sorted({e["stim_file"] for ev in events.values() for e in ev})
    if not shown:
        raise InputError(f"no event of any *_events.tsv names a stim_file listed in {args.labels}.")
    split_of = _splits(shown, args.test_fraction, args.val_fraction, args.seed)

    featurizer = ClipFeaturizer(args.clip_model, args.batch_size, args.device)
    store = ClipStore(args.out, featurizer, args.llv_dim, seed=args.seed)

    def load(stim: str) -> tuple[np.ndarray, str]:
        path = args.root / "stimuli" / stim
        if not path.exists():
            run = shown_by[stim]
            raise MissingFileError(
                f"{path} is missing: {run.subject}'s {run.events.name} names stim_file {stim!r}, which must be a "
                "file under stimuli/ (written as img.png or stimuli/img.png)."
            )
        names_, caption = labels[stim]
        return np.asarray(Image.open(path).convert("RGB")), caption or ", ".join(names_)

    roi_mode = args.atlas is not None
    groups = _groups(args) if roi_mode else []
    info = DatasetInfo(
        dataset=args.site,
        kind="roi" if roi_mode else "volume",
        classes=classes,
        clip={},  # the CLIP spec, once the features are computed
        llv_dim=args.llv_dim,
        hlv_dim=featurizer.hlv_dim,
        roi_dim=args.roi_dim if roi_mode else 0,
        rois=[{"name": g, "labels": lab} for g, lab, _ in groups],
        volume_shape=[] if roi_mode else _common_grid(runs),
        extra={
            "delay_s": args.delay_s,
            "test_fraction": args.test_fraction,
            "val_fraction": args.val_fraction,
            "seed": args.seed,
        },
    )
    check_settings(args.out, info, skip=("clip",))  # a pack that will be refused computes no features
    features = store.features(shown, load)
    info = dataclasses.replace(info, clip=store.spec)
    writer = DatasetWriter(args.out, info, maxcount=args.maxcount, tool="shards_tools pack-bids")
    class_index = {c: i for i, c in enumerate(classes)}
    for subject, subject_runs in runs.items():
        subject_id = global_id(args.site, subject)
        fingerprint = {
            "runs": [r.unit for r in subject_runs],
            "delay_s": args.delay_s,
            "atlas": str(args.atlas),
            "roi_dim": args.roi_dim,
            "splits": [args.test_fraction, args.val_fraction],
            "seed": args.seed,
        }
        sub = writer.subject(subject_id, fingerprint)
        if sub is None:
            continue
        series, mask = load_masked_runs({r.unit: r.path for r in subject_runs})
        lengths = {unit: len(s) for unit, s in series.items()}
        rows = []  # (run unit, volume index, event number, stim_file)
        for r in subject_runs:
            tr = repetition_time(args.root, r.path)
            outside = 0
            for k, e in enumerate(events[r.path]):
                t = math.floor((float(e["onset"]) + args.delay_s) / tr + 1e-6)  # the volume acquired then
                if 0 <= t < lengths[r.unit]:
                    rows.append((r.unit, t, k, e["stim_file"]))
                else:  # before the first volume (BIDS allows negative onsets) or after the last
                    outside += 1
            if outside:
                logger.warning(
                    "%s: %d events fall outside the run's volumes (onset + delay), skipped", r.events, outside
                )
        train = {u: [t for uu, t, _, s in rows if uu == u and split_of[s] == "train"] for u in lengths}
        test = {u: {t for uu, t, _, s in rows if uu == u and split_of[s] == "test"} for u in lengths}
        center_runs(series, {u: [t for t in range(n) if t not in test[u]] for u, n in lengths.items()})
        with sub:
            bold_of, preproc = _bold_transform(series, mask, train, groups, args.roi_dim, args.atlas)
            sub.save_preproc(preproc)
            for unit, t, k, stim in rows:
                target = np.zeros(len(classes), dtype=np.uint8)
                target[[class_index[c] for c in labels[stim][0]]] = 1
                sample = make_sample(
                    subject_id, unit, k, stim, split_of[stim], bold_of(unit, t), *features[stim], target, volume=t
                )
                sub.add(sample)
    manifest = writer.finish()
    print(
        f"{args.out}: {sum(s['count'] for s in manifest['shards'])} samples of {len(manifest['subjects'])} "
        f"{args.site} subjects, {len(classes)} classes"
    )
    return 0


def _common_grid(runs: dict) -> list[int]:
    """The (X, Y, Z) grid every subject's runs share (read from the headers): one volume shape per shard set."""
    import nibabel as nib

    grids: dict[tuple[int, ...], list[str]] = {}
    for subject, subject_runs in runs.items():
        for r in subject_runs:
            grids.setdefault(tuple(int(n) for n in nib.load(r.path).shape[:3]), []).append(f"{subject} {r.unit}")
    if len(grids) != 1:
        listed = "; ".join(
            f"{'x'.join(map(str, g))}: {', '.join(w[:3])}{' ...' if len(w) > 3 else ''}" for g, w in grids.items()
        )
        raise InputError(
            f"the runs are on different grids ({listed}); volume mode needs one grid for all "
            "subjects: use runs resampled to a common space (e.g. fMRIPrep's MNI152 outputs), or "
            "ROI mode (--atlas) on each subject's own grid."
        )
    return list(next(iter(grids)))


def _groups(args) -> list[tuple[str, list[str], list[int]]]:
    if args.atlas_labels is None:
        raise InputError("--atlas needs --atlas-labels, a FreeSurfer .ctab naming its labels.")
    ctab = read_ctab(args.atlas_labels)
    spec = args.roi_groups or ",".join(f"{name}={name}" for name in ctab.values())
    return [(g, [ctab[i] for i in lab], lab) for g, lab in resolve_groups(spec, ctab, str(args.atlas_labels))]


def _bold_transform(series, mask, train, groups, roi_dim, atlas_path):
    """(bold(unit, t) -> float16 sample, preproc arrays): masked vectors, or per-ROI PCA tokens."""
    std = train_std(series, train)
    if not groups:
        return (lambda unit, t: (series[unit][t] / std).astype(np.float16)), {"mask": mask, "std": std}
    import nibabel as nib

    atlas = np.asarray(nib.load(atlas_path).dataobj).astype(np.int64)
    if atlas.shape != mask.shape:
        raise InputError(
            f"{atlas_path}: grid {atlas.shape} differs from the bold grid {mask.shape}; resample the "
            "atlas into the bold space first."
        )
    columns = [np.flatnonzero(np.isin(atlas[mask], labels)) for _, _, labels in groups]
    empty = [g for (g, _, _), c in zip(groups, columns, strict=True) if c.size == 0]
    if empty:
        raise InputError(f"{atlas_path}: ROIs {empty} have no voxels inside this subject's brain mask.")
    fit = np.concatenate([series[u][rows] for u, rows in train.items() if len(rows)]) / std
    pcas = [RoiPca.fit(fit[:, c], roi_dim) for c in columns]

    def bold_of(unit: str, t: int) -> np.ndarray:
        x = series[unit][t] / std
        return np.stack([p.transform(x[None, c])[0] for p, c in zip(pcas, columns, strict=True)]).astype(np.float16)

    preproc = {"mask": mask, "std": std}
    for i, (p, c) in enumerate(zip(pcas, columns, strict=True)):
        preproc.update({f"mean_{i}": p.mean_V, f"components_{i}": p.components_KV, f"columns_{i}": c})
    return bold_of, preproc
