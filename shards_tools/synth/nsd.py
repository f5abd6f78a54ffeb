"""Simulated NSD release under RAW/nsd: design, stimulus table, images, COCO annotations (betas: nsd_betas.py).

Written exactly where the real release keeps them (the paths of shards_tools/nsd_files.py):

    nsddata/experiments/nsd/nsd_expdesign.mat          masterordering (1 × trials), subjectim (8 × images
                                                        per subject), sharedix (1 × shared); all 1-based
    nsddata/experiments/nsd/nsd_stim_info_merged.csv   index column, cocoId, cocoSplit, cropBox, loss, nsdId,
                                                        flagged, BOLD5000, shared1000, subject1..8,
                                                        subjectN_rep0..2 (1-based trial, 0 = not shown)
    nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5       imgBrick (images, S, S, 3) uint8 by 0-based nsdId
    nsddata_stimuli/stimuli/nsd/annotations/{instances,captions}_{train2017,val2017}.json
    betas in both spaces: func1pt8mm volumes (nsd_betas.py) and fsaverage surfaces (nsd_surface.py)

The reader's rule holds as in NSD: the 0-based nsdId of trial t (0-based) for subject s is
`subjectim[s-1, masterordering[t]-1] - 1`, and the shared test trials are those with
`masterordering[t] <= num_shared`. As in NSD, the first `num_shared` columns of every subjectim row
are the shared images (= sharedix), every image is planned 3 times, the ordering is the same for all
subjects, and a subject who completed fewer sessions simply stops early; all shared presentations fall
within the sessions every subject completed, so every subject sees every shared image 3 times.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mused_fm.errors import InputError
from mused_fm.files import atomic_path, write_json
from shards_tools.synth import coco, stimuli
from shards_tools.synth.files import rng_for, save_mat, write_text
from shards_tools.synth.presets import NSD_CATEGORIES, NsdPreset

__all__ = ["NsdStimuli", "make_design", "make_stimuli", "write_nsd"]

logger = logging.getLogger(__name__)
MAX_SUBJECTS = 8  # NSD's subjectim has 8 rows; rows past the simulated subjects are zeros


@dataclass
class NsdStimuli:
    categories: stimuli.Categories
    class_ids: list[int]  # COCO category id of each used class
    labels: np.ndarray  # (n_images, K) uint8 multi-hot, by 0-based nsdId
    images: np.ndarray  # (n_images, S, S, 3) uint8
    lowlevel: np.ndarray  # (n_images, F) float32, standardised over all images
    boxes: list  # per image: [(class, x0, y0, w, h)] in crop units
    captions: list  # per image: 5 strings
    identity: dict  # COCO identity (cocoId, cocoSplit, size, cropBox)

    @property
    def images_and_captions(self) -> tuple[np.ndarray, list]:
        """The (image, captions) pairs the tiny CLIP is trained on."""
        return self.images, self.captions


def make_stimuli(p: NsdPreset, seed: int) -> NsdStimuli:
    names = NSD_CATEGORIES[: p.num_categories]
    by_name = {n: i for i, n, _ in coco.COCO_CATEGORIES}
    rng = rng_for(seed, "nsd", "stimuli")
    cats = stimuli.make_categories(names, rng)
    n = p.num_shared + p.num_subjects * p.num_unique
    labels = stimuli.sample_labels(cats, n, rng)
    drawn = [stimuli.render(cats, row, p.image_size, p.image_size, rng) for row in labels]
    images = np.stack([img for img, _ in drawn])  # (n, S, S, 3)
    caps = [stimuli.captions_for([names[k] for k in np.flatnonzero(row)], rng) for row in labels]
    return NsdStimuli(
        categories=cats,
        class_ids=[by_name[c] for c in names],
        labels=labels,
        images=images,
        lowlevel=stimuli.standardize(stimuli.lowlevel_features(images)),
        boxes=[b for _, b in drawn],
        captions=caps,
        identity=coco.coco_identity(n, rng),
    )


def make_design(p: NsdPreset, seed: int) -> dict[str, np.ndarray]:
    """masterordering (T,), subjectim (8, n_img) and sharedix (n_shared,), 1-based as in nsd_expdesign.mat."""
    rng = rng_for(seed, "nsd", "design")
    n_img, tps = p.num_images_per_subject, p.trials_per_session
    total = 3 * n_img
    if total != max(p.sessions) * tps or min(p.sessions) * tps < 3 * p.num_shared:
        raise InputError(f"NSD preset {p}: 3 × images must fill the sessions and the shared trials fit the shortest")
    order = np.zeros(total, dtype=np.int32)
    shared_slots = np.sort(rng.choice(min(p.sessions) * tps, 3 * p.num_shared, replace=False))
    order[shared_slots] = rng.permutation(np.repeat(np.arange(1, p.num_shared + 1), 3))
    other = np.setdiff1d(np.arange(total), shared_slots)
    order[other] = rng.permutation(np.repeat(np.arange(p.num_shared + 1, n_img + 1), 3))
    perm = rng.permutation(p.num_shared + p.num_subjects * p.num_unique)  # scatter shared ids over nsdId
    shared = np.sort(perm[: p.num_shared])
    subjectim = np.zeros((MAX_SUBJECTS, n_img), dtype=np.int32)
    for s in range(p.num_subjects):
        own = np.sort(perm[p.num_shared + s * p.num_unique : p.num_shared + (s + 1) * p.num_unique])
        subjectim[s] = np.concatenate([shared, own]) + 1
    return {"masterordering": order, "subjectim": subjectim, "sharedix": (shared + 1).astype(np.int32)}


def trial_nsd_ids(design: dict[str, np.ndarray], subject_index: int, num_trials: int) -> np.ndarray:
    """(num_trials,) 0-based nsdId of each trial of subject `subject_index` (0-based), by the NSD rule."""
    return design["subjectim"][subject_index, design["masterordering"][:num_trials] - 1] - 1


def _stim_info_csv(p: NsdPreset, stim: NsdStimuli, design: dict[str, np.ndarray], seed: int) -> str:
    n = len(stim.labels)
    reps = np.zeros((MAX_SUBJECTS, n, 3), dtype=np.int64)  # 1-based trial of each presentation, 0 = none
    seen = np.zeros((MAX_SUBJECTS, n), dtype=np.int64)
    for s in range(p.num_subjects):
        seen[s, design["subjectim"][s] - 1] = 1
        count = np.zeros(n, dtype=np.int64)
        for t, nsd_id in enumerate(trial_nsd_ids(design, s, p.sessions[s] * p.trials_per_session)):
            reps[s, nsd_id, count[nsd_id]] = t + 1
            count[nsd_id] += 1
    shared = set((design["sharedix"] - 1).tolist())
    loss = np.round(rng_for(seed, "nsd", "loss").uniform(0, 0.3, n), 6)
    subj_cols = [f"subject{s}" for s in range(1, 9)]
    rep_cols = [f"subject{s}_rep{r}" for s in range(1, 9) for r in range(3)]
    header = ",".join(["", "cocoId", "cocoSplit", "cropBox", "loss", "nsdId", "flagged", "BOLD5000", "shared1000"])
    lines = [header + "," + ",".join(subj_cols + rep_cols)]
    for i in range(n):
        crop = '"' + str(tuple(stim.identity["cropBox"][i])) + '"'  # the tuple text holds commas: quote it
        row = [i, int(stim.identity["cocoId"][i]), stim.identity["cocoSplit"][i], crop, loss[i], i, False, False]
        row += [i in shared, *seen[:, i], *reps[:, i].reshape(-1)]
        lines.append(",".join(str(v) for v in row))
    return "\n".join(lines) + "\n"


def write_nsd(root: Path, p: NsdPreset, seed: int, stim: NsdStimuli | None = None) -> tuple[dict, list[str]]:
    """Write the NSD-like release; returns a summary and the text corpus (captions, class names) for CLIP.

    Args:
        stim: the stimuli, when the caller made them already (make_stimuli(p, seed)); they are a function
            of (p, seed), so passing them changes nothing written.
    """
    import h5py

    from shards_tools.synth.nsd_betas import write_ctab, write_subject
    from shards_tools.synth.nsd_surface import write_surface_labels, write_surface_subject

    stim = stim or make_stimuli(p, seed)
    design = make_design(p, seed)
    exp = root / "nsddata" / "experiments" / "nsd"
    # 1 × n row vectors, as MATLAB stores them (readers flatten or index [0]).
    save_mat(exp / "nsd_expdesign.mat", {k: v[None] if v.ndim == 1 else v for k, v in design.items()})
    write_text(exp / "nsd_stim_info_merged.csv", _stim_info_csv(p, stim, design, seed))
    stim_dir = root / "nsddata_stimuli" / "stimuli" / "nsd"
    with atomic_path(stim_dir / "nsd_stimuli.hdf5") as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("imgBrick", data=stim.images, chunks=(1, *stim.images.shape[1:]))  # one image per chunk
    for split in ("train2017", "val2017"):
        inst, caps = coco.coco_json(stim.identity, stim.labels, stim.boxes, stim.captions, stim.class_ids, split)
        write_json(stim_dir / "annotations" / f"instances_{split}.json", inst)
        write_json(stim_dir / "annotations" / f"captions_{split}.json", caps)
    write_ctab(root)
    write_surface_labels(root, p.surface_vertices)
    subjects = {}
    for s in range(p.num_subjects):
        name = f"subj{s + 1:02d}"
        ids = trial_nsd_ids(design, s, p.sessions[s] * p.trials_per_session)
        subjects[name] = write_subject(root, p, name, seed, ids, stim.labels, stim.lowlevel)
        subjects[name]["fsaverage"] = write_surface_subject(root, p, name, seed, ids, stim.labels, stim.lowlevel)
        # Trials a packer will find on disk (the missing session's trials are gone).
        on_disk = np.isin(np.arange(len(ids)) // p.trials_per_session + 1, subjects[name]["sessions_on_disk"])
        test = design["masterordering"][: len(ids)] <= p.num_shared
        subjects[name]["test_trials"] = int((test & on_disk).sum())
        subjects[name]["train_trials"] = int((~test & on_disk).sum())
    logger.info("NSD: %d subjects, %d images, written under %s", p.num_subjects, len(stim.labels), root)
    summary = {
        "root": str(root),
        "subjects": subjects,
        "held_out": p.held_out,
        "num_images": len(stim.labels),
        "num_shared": p.num_shared,
        "trials_per_session": p.trials_per_session,
        "classes": list(stim.categories.names),
    }
    return summary, [c for caps in stim.captions for c in caps]
