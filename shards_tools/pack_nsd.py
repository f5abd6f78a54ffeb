"""pack-nsd: NSD single-trial betas -> ROI-token shards with COCO labels and cached CLIP features.

    python -m shards_tools pack-nsd --root NSD_ROOT --subjects subj01,subj02 \\
        --clip-model openai/clip-vit-base-patch16 --out s3://bucket/shards/nsd

Two input spaces. `--space fsaverage` (default): the betas NSD maps onto the fsaverage surface
({lh,rh}.betas_sessionNN.mgh, percent signal change), where vertex v is the same place in every
subject, so one per-ROI basis serves the cohort (`--roi-basis cohort`, default): fitted once on the
first pack's training trials, reused for every subject packed later into the same output; a new
subject then needs only its tokens. `--space func1pt8mm` (or func1mm): the paper's per-subject
volumes (betas_sessionNN.nii.gz or .hdf5 in MATLAB axis order, int16 / 300), with the paper's
per-subject PCA (`--roi-basis subject`, the only basis there).

Per subject: every session present (the log says which were read and which are missing); trial ->
image through nsd_expdesign.mat; test = the shared-1000 trials; a seeded validation split of the other
images (an image's repeats stay in one split); z-score per session with statistics from training
trials; the paper's ten Kastner2015 ROI groups (--roi-groups to change); per-ROI PCA to --roi-dim
(268), zero-padded; optional averaging of repeats. Labels: the 80 COCO categories in COCO's canonical
order (by category id, which has gaps); text for the high-level feature: one caption chosen as in the
paper. One sample per trial (or per image and split with --average-repeats):
bold (rois, roi_dim) float16, clip_llv (--llv-dim), clip_hlv, labels (80), meta.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import logging
from pathlib import Path

import h5py
import numpy as np

from mused_fm.data.schema import make_sample
from mused_fm.data.writer import DatasetInfo, DatasetWriter, check_settings, is_packed
from mused_fm.errors import InputError
from mused_fm.subject_ids import global_id
from shards_tools import nsd_fsaverage as fsavg
from shards_tools.clip_features import ClipFeaturizer, ClipStore
from shards_tools.common_args import add_output_arguments
from shards_tools.nsd_files import SURFACE_SPACES, NsdLayout, betas_grid, read_session_betas
from shards_tools.roi_features import RoiPca, resolve_groups, zscore_by_session

__all__ = ["add_arguments", "run"]

logger = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", required=True, type=Path, help="NSD release root (holds nsddata/, nsddata_betas/, ...)")
    p.add_argument("--subjects", required=True, help="comma list, e.g. subj01,subj02")
    p.add_argument(
        "--atlas",
        default="Kastner2015",
        help="ROI atlas with its .mgz.ctab: fsaverage/label/{lh,rh}.ATLAS.mgz, or the volume space's roi/ATLAS.nii.gz",
    )
    p.add_argument("--roi-groups", default=None, help="default: the paper's V1,V2,V3,V3ab,hV4,VO,PHC,MT,LO,IPS")
    p.add_argument("--roi-dim", type=int, default=268, help="PCA components per ROI (paper: 268)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of non-test images held for validation")
    p.add_argument("--average-repeats", action="store_true", help="one sample per image and split (mean of repeats)")
    p.add_argument(
        "--space",
        default="fsaverage",
        choices=("fsaverage", "func1pt8mm", "func1mm"),
        help="fsaverage: surface betas shared by all subjects (default); func1pt8mm: the paper's per-subject volumes",
    )
    p.add_argument(
        "--roi-basis",
        default=None,
        choices=("cohort", "subject"),
        help="cohort: one PCA basis per ROI for every subject, fitted on the first pack (default on fsaverage); "
        "subject: each subject's own (the paper's; the only choice on volumes)",
    )
    p.add_argument("--betas", default="betas_fithrf_GLMdenoise_RR", help="beta version folder")
    add_output_arguments(p, maxcount=1000)


def coco_tables(layout: NsdLayout) -> tuple[list[str], dict[int, set[int]], dict[int, list[str]]]:
    """(80 class names by category id, {cocoId: category indices}, {cocoId: captions}) over train+val."""
    categories: dict[int, str] = {}
    labels: dict[int, set[int]] = {}
    captions: dict[int, list[str]] = {}
    instances = [layout.coco("instances", split) for split in ("train2017", "val2017")]
    for data in instances:
        categories.update({c["id"]: c["name"] for c in data["categories"]})
    order = {cid: i for i, cid in enumerate(sorted(categories))}  # canonical order: by id (ids 1..90 have gaps)
    for data in instances:
        for ann in data["annotations"]:
            labels.setdefault(ann["image_id"], set()).add(order[ann["category_id"]])
    for split in ("train2017", "val2017"):
        for ann in layout.coco("captions", split)["annotations"]:
            captions.setdefault(ann["image_id"], []).append(ann["caption"].strip())
    return [categories[c] for c in sorted(categories)], labels, captions


def subject_trials(layout: NsdLayout, subject: str, design: dict, sessions: dict[int, Path], trials: int):
    """(session, global trial index, nsdId, is_test) per trial of the sessions present, in order."""
    order, subjectim = design["masterordering"].ravel(), design["subjectim"]
    n_shared = design["sharedix"].size
    rows = []
    for session in sessions:
        t = (session - 1) * trials + np.arange(trials)
        if t[-1] >= order.size:
            raise InputError(
                f"{sessions[session]}: session {session} x {trials} trials goes past the "
                f"{order.size} trials of nsd_expdesign.mat masterordering."
            )
        image = subjectim[int(subject[-2:]) - 1, order[t] - 1] - 1
        rows.append(np.stack([np.full(trials, session), t, image, order[t] <= n_shared], axis=1))
    return np.concatenate(rows)


def run(args: argparse.Namespace) -> int:
    layout = NsdLayout(args.root, args.space, args.betas)
    args.roi_basis = _roi_basis(args)
    surface = args.space in SURFACE_SPACES
    subjects = [s.strip() for s in args.subjects.split(",") if s.strip()]
    design, stim_info = layout.expdesign(), layout.stim_info()
    classes, coco_labels, coco_captions = coco_tables(layout)
    featurizer = ClipFeaturizer(args.clip_model, args.batch_size, args.device)
    store = ClipStore(args.out, featurizer, args.llv_dim, seed=args.seed)

    # Settings first (a folder listing and the atlas table): subjects already packed with them are not read.
    rois = fsavg.SurfaceRois.read(layout, args.atlas, args.roi_groups) if surface else None
    fingerprints = {s: _fingerprint(layout, s, args, rois) for s in subjects}
    todo = [s for s in subjects if not is_packed(args.out, global_id("nsd", s), fingerprints[s], args.maxcount)]
    prepare = _prepare_surface if surface else _prepare
    prepared = {s: prepare(layout, s, design, args, rois) for s in todo}  # every subject to pack, checked first
    images = sorted({int(i) for p in prepared.values() for i in p["trials"][:, 2]})
    info = DatasetInfo(
        dataset="nsd",
        kind="roi",
        classes=classes,
        clip={},  # the CLIP spec, once the features are computed
        llv_dim=args.llv_dim,
        hlv_dim=featurizer.hlv_dim,
        roi_dim=args.roi_dim,
        rois=[{"name": g, "labels": lab} for g, lab in next(iter(fingerprints.values()))["rois"]],
        extra={
            "atlas": args.atlas,
            "betas": args.betas,
            "space": args.space,
            "roi_basis": args.roi_basis,
            "beta_scale": 1 if surface else 300,
            "zscore": "per session and voxel, statistics from training trials",
            "val_fraction": args.val_fraction,
            "average_repeats": args.average_repeats,
            "seed": args.seed,
        },
    )
    check_settings(args.out, info, skip=("clip",))  # a pack that will be refused computes no features
    cohort = _cohort_basis(args, rois, prepared) if surface and args.roi_basis == "cohort" and prepared else None
    with h5py.File(layout.stimuli_path(), "r") as h5:

        def load(stim: str) -> tuple[np.ndarray, str]:
            nsd_id = int(stim.removeprefix("nsd"))
            image = h5["imgBrick"][nsd_id]
            return image, coco_captions.get(stim_info[nsd_id][0]) or [" "]  # the featurizer picks one

        test_images = {f"nsd{int(t[2]):05d}" for p in prepared.values() for t in p["trials"] if t[3]}
        features = store.features([f"nsd{i:05d}" for i in images], load, fit_exclude=test_images)

    info = dataclasses.replace(info, clip=store.spec)
    writer = DatasetWriter(args.out, info, maxcount=args.maxcount, tool="shards_tools pack-nsd")
    for subject, prep in prepared.items():
        sub = writer.subject(global_id("nsd", subject), fingerprints[subject])
        if surface:
            bold, preproc = _surface_tokens(prep, cohort, sub, args.roi_dim)
        else:
            bold, preproc = _volume_tokens(prep, args.roi_dim)
        sub.save_preproc(preproc)
        _write_samples(sub, prep, bold, features, coco_labels, stim_info, len(classes), args)
    manifest = writer.finish()
    total = sum(s["count"] for s in manifest["shards"])
    print(
        f"{args.out}: {total} samples of {len(manifest['subjects'])} NSD subjects; "
        f"llv similarity r = {store.spec['llv']['fidelity_r']:.4f}"
    )
    return 0


def _roi_basis(args: argparse.Namespace) -> str:
    """--roi-basis, defaulting by space; a cohort basis on per-subject volumes is refused."""
    surface = args.space in SURFACE_SPACES
    if args.roi_basis is None:
        return "cohort" if surface else "subject"
    if args.roi_basis == "cohort" and not surface:
        raise InputError(
            f"--roi-basis cohort needs a space shared by all subjects, and --space {args.space} is each subject's "
            "own grid (voxel i is a different place in every brain, so one basis cannot serve them). Use "
            "--space fsaverage for a cohort basis, or --roi-basis subject (the paper's setting) on volumes."
        )
    return args.roi_basis


def _fingerprint(layout: NsdLayout, subject: str, args: argparse.Namespace, rois) -> dict:
    """The settings that shape a subject's samples, from the session listing and the atlas table only."""
    if rois is not None:  # fsaverage: one atlas for every subject
        sessions = list(layout.surface_sessions(subject))
        names = list(zip(rois.names, rois.labels, strict=True))
    else:
        sessions = list(layout.sessions(subject))  # first: a missing subject is named by its betas folder
        _, ctab, _ = layout.roi(subject, args.atlas)
        groups = resolve_groups(args.roi_groups, ctab, f"{args.atlas}.mgz.ctab")
        names = [(g, [ctab[i] for i in lab]) for g, lab in groups]
    return {
        "sessions": sessions,
        "rois": names,
        "roi_dim": args.roi_dim,
        "val_fraction": args.val_fraction,
        "average_repeats": args.average_repeats,
        "seed": args.seed,
    }


def _splits(trials: np.ndarray, subject: str, args: argparse.Namespace) -> np.ndarray:
    """train / val / test per trial: test = shared-1000; val = a seeded share of the other images."""
    test = trials[:, 3].astype(bool)
    rng = np.random.default_rng([args.seed, int(subject[-2:])])
    train_images = np.unique(trials[~test, 2])
    val_images = rng.choice(train_images, size=round(args.val_fraction * train_images.size), replace=False)
    return np.where(test, "test", np.where(np.isin(trials[:, 2], val_images), "val", "train"))


def _trial_table(layout, subject, design, sessions, counts: set[int]) -> np.ndarray:
    if len(counts) != 1:
        raise InputError(f"{subject}: sessions hold different trial counts {sorted(counts)}; NSD sessions hold 750.")
    trials = subject_trials(layout, subject, design, sessions, counts.pop())
    missing = [s for s in range(1, max(sessions) + 1) if s not in sessions]
    logger.info("%s: sessions %s%s", subject, list(sessions), f"; missing {missing}" if missing else "")
    return trials


def _prepare_surface(layout: NsdLayout, subject: str, design: dict, args: argparse.Namespace, rois) -> dict:
    sessions = layout.surface_sessions(subject)
    reader = fsavg.SurfaceSubject(subject, sessions, rois)  # headers only: the betas are read when packed
    trials = _trial_table(layout, subject, design, sessions, reader.trials_per_session)
    return {"trials": trials, "split": _splits(trials, subject, args), "reader": reader}


def _cohort_basis(args: argparse.Namespace, rois, prepared: dict) -> list[RoiPca]:
    """The output's cohort basis; fitted here (and stored) only when the output has none yet."""
    basis = fsavg.load_basis(args.out, rois, args.roi_dim)
    if basis is not None:
        logger.info("projecting %s with the cohort basis of %s", list(prepared), args.out)
        return basis
    logger.info("fitting the cohort basis on the training trials of %s", list(prepared))
    fit_on = [(p["reader"], p["trials"][:, 0], p["split"] == "train") for p in prepared.values()]
    basis = fsavg.fit_basis(fit_on, args.roi_dim)
    fsavg.save_basis(args.out, rois, basis, fitted_on=list(prepared))
    return basis


def _surface_tokens(prep: dict, cohort, sub, roi_dim: int) -> tuple[np.ndarray, dict]:
    """(trials, R, K) tokens and the preproc arrays of a subject on the surface."""
    reader, session_T, train_T = prep["reader"], prep["trials"][:, 0], prep["split"] == "train"
    basis = cohort or fsavg.fit_basis([(reader, session_T, train_T)], roi_dim)
    bold = fsavg.project(reader, session_T, train_T, basis)
    sub.facts["nan_vertices"] = reader.nan_counts()
    sub.facts["roi_basis"] = fsavg.COHORT_BASIS if cohort else f"preproc/{sub.name}.npz"
    own = {} if cohort else fsavg.basis_arrays(reader.rois, basis, [reader.subject])
    return bold, {**reader.nan_masks(), **own}


def _prepare(layout: NsdLayout, subject: str, design: dict, args: argparse.Namespace, rois=None) -> dict:
    sessions = layout.sessions(subject)
    labels_vol, ctab, roi_path = layout.roi(subject, args.atlas)
    first = next(iter(sessions.values()))
    if labels_vol.shape not in betas_grid(first):
        raise InputError(
            f"{first}: betas grid {betas_grid(first)[0]} differs from the ROI grid {labels_vol.shape} of "
            f"{roi_path}; use ROI volumes of the betas' space (--space {args.space})."
        )
    groups = resolve_groups(args.roi_groups, ctab, f"{args.atlas}.mgz.ctab")
    voxels = [np.flatnonzero(np.isin(labels_vol, lab)) for _, lab in groups]
    empty = [g for (g, _), v in zip(groups, voxels, strict=True) if v.size == 0]
    if empty:
        raise InputError(f"{roi_path}: ROI groups {empty} have no voxels in {subject}; drop them with --roi-groups.")
    data = [read_session_betas(path, labels_vol.shape, np.concatenate(voxels)) for path in sessions.values()]
    trials = _trial_table(layout, subject, design, sessions, {d.shape[0] for d in data})
    return {"data": np.concatenate(data), "trials": trials, "voxels": voxels, "split": _splits(trials, subject, args)}


def _volume_tokens(prep: dict, roi_dim: int) -> tuple[np.ndarray, dict]:
    """(trials, R, K) tokens of a subject's volume ROIs with its own per-ROI PCA, and that PCA."""
    trials, split = prep["trials"], prep["split"]
    data = zscore_by_session(prep["data"], trials[:, 0], split == "train")  # statistics from training trials only
    bounds = np.cumsum([0] + [v.size for v in prep["voxels"]])
    spans = list(itertools.pairwise(bounds))  # each ROI's columns in `data`
    pcas = [RoiPca.fit(data[split == "train", a:b], roi_dim) for a, b in spans]
    bold = np.stack([p.transform(data[:, a:b]) for p, (a, b) in zip(pcas, spans, strict=True)], axis=1)
    preproc = {
        f"{k}_{i}": v
        for i, p in enumerate(pcas)
        for k, v in (("mean", p.mean_V), ("components", p.components_KV), ("voxels", prep["voxels"][i]))
    }
    return bold, preproc


def _write_samples(sub, prep, bold, features, coco_labels, stim_info, num_classes, args) -> None:
    subject_id, trials, split = sub.subject_id, prep["trials"], prep["split"]
    rows = [(f"s{s:02d}", int(t), [i]) for i, (s, t) in enumerate(trials[:, :2])]
    if args.average_repeats:  # one sample per (split, image): the mean of its repeats
        keys = {}
        for i, (name, image) in enumerate(zip(split, trials[:, 2], strict=True)):
            keys.setdefault((name, int(image)), []).append(i)
        rows = [("avg", image, idx) for (_, image), idx in sorted(keys.items(), key=lambda kv: kv[1][0])]
    with sub:
        for unit, index, idx in rows:
            nsd_id = int(trials[idx[0], 2])
            llv, hlv = features[f"nsd{nsd_id:05d}"]
            labels = np.zeros(num_classes, dtype=np.uint8)
            labels[list(coco_labels.get(stim_info[nsd_id][0], ()))] = 1
            bold_mean = bold[idx].mean(0).astype(np.float16)
            trial_numbers = [int(trials[i, 1]) for i in idx]
            stimulus, split_name = f"nsd{nsd_id:05d}", str(split[idx[0]])
            sample = make_sample(
                subject_id, unit, index, stimulus, split_name, bold_mean, llv, hlv, labels, trials=trial_numbers
            )
            sub.add(sample)
