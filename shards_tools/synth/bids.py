"""Simulated BIDS 1.x site under RAW/bids: an image-viewing task with one run per subject.

    dataset_description.json, participants.tsv, README
    task-images_bold.json                              top-level sidecar inherited by every run: RepetitionTime
    sub-XX/func/sub-XX_task-images_run-1_bold.nii.gz   float32 X×Y×Z×T
    sub-XX/func/sub-XX_task-images_run-1_events.tsv    onset, duration, trial_type, stim_file
    stimuli/<name>.png                                 stim_file names are relative to stimuli/, as BIDS says
    LABELS.tsv                                         stim_file, labels (class names joined by ';'), caption

This is what `pack-bids` reads (shards_tools/bids_files.py). Onsets fall on TRs, several TRs apart; each subject
sees every image once, in its own order. The planted response (brain.py, with this subject's own
maps) sits in the volume at onset + 4 s, on top of a baseline intensity, plus noise.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np

from mused_fm.files import write_bytes, write_json
from shards_tools.synth import brain as B
from shards_tools.synth import stimuli
from shards_tools.synth.files import rng_for, save_nifti, write_text
from shards_tools.synth.presets import NSD_CATEGORIES, BidsPreset

__all__ = ["DELAY_S", "write_bids"]

logger = logging.getLogger(__name__)
DELAY_S = 4.0
VOXEL_MM = 3.0
LEAD_TRS = 3  # volumes before the first onset
SIGNAL_PCT, NOISE_PCT = 2.0, 1.0


def _png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    write_bytes(path, buf.getvalue())


def write_bids(root: Path, p: BidsPreset, seed: int) -> tuple[dict, list[str]]:
    """Write the BIDS site; returns a summary and the text corpus (captions, class names) for CLIP."""
    rng = rng_for(seed, "bids", "stimuli")
    cats = stimuli.make_categories(NSD_CATEGORIES[:10], rng)
    labels = stimuli.sample_labels(cats, p.num_images, rng)  # (n, K)
    images = np.stack([stimuli.render(cats, row, p.image_size, p.image_size, rng)[0] for row in labels])
    lowlevel = stimuli.standardize(stimuli.lowlevel_features(images))  # (n, F)
    names = [f"img{i + 1:03d}.png" for i in range(p.num_images)]
    present = [[cats.names[k] for k in np.flatnonzero(row)] for row in labels]
    captions = [stimuli.captions_for(classes, rng, n=1, shuffle=False)[0] for classes in present]
    for name, image in zip(names, images, strict=True):
        _png(root / "stimuli" / name, image)
    table = ["stim_file\tlabels\tcaption"]
    table += [f"{n}\t{';'.join(c)}\t{cap}" for n, c, cap in zip(names, present, captions, strict=True)]
    write_text(root / "LABELS.tsv", "\n".join(table) + "\n")

    tr = p.repetition_time
    write_json(
        root / "dataset_description.json",
        {
            "Name": "Simulated image-viewing site",
            "BIDSVersion": "1.8.0",
            "DatasetType": "raw",
            "Authors": ["shards_tools synth"],
        },
    )
    write_json(root / "task-images_bold.json", {"RepetitionTime": tr, "TaskName": "images"})
    write_text(root / "README", "Simulated BIDS site written by `python -m shards_tools synth` (planted signal).\n")
    subjects = [f"sub-{i + 1:02d}" for i in range(p.num_subjects)]
    write_text(root / "participants.tsv", "\n".join(["participant_id", *subjects]) + "\n")

    num_vols = LEAD_TRS + p.num_images * p.trs_between_onsets + int(np.ceil(DELAY_S / tr)) + 2
    affine = np.diag([VOXEL_MM, VOXEL_MM, VOXEL_MM, 1.0])
    template = B.cohort_template(len(cats.names), lowlevel.shape[1], rng_for(seed, "bids", "template"))
    for sub in subjects:
        srng = rng_for(seed, "bids", sub)
        brain = B.make_brain(p.grid, srng)
        m = brain.mask
        post = -brain.u[1][m]  # (V,) 1 at the occipital pole
        ll_gain, cat_gain = np.clip(1.6 * post - 0.6, 0, 1), np.clip(1 - np.abs(post - 0.45) / 0.35, 0, 1)
        w_cat, w_ll = B.subject_maps(brain, len(cats.names), lowlevel.shape[1], srng, template=template)
        order = srng.permutation(p.num_images)
        onset_trs = LEAD_TRS + p.trs_between_onsets * np.arange(p.num_images)
        pct = srng.normal(0, NOISE_PCT, (num_vols, int(m.sum()))).astype(np.float32)  # (T, V)
        resp = B.neural_response(labels[order], lowlevel[order], w_cat, w_ll, cat_gain, ll_gain)  # (n, V)
        pct[onset_trs + round(DELAY_S / tr)] += SIGNAL_PCT * resp
        baseline = (700 + 100 * B.subject_maps(brain, 1, 0, srng, sigma=2.0)[0][0]).astype(np.float32)
        vol = np.zeros((*p.grid, num_vols), dtype=np.float32)  # (X, Y, Z, T)
        vol[m] = (baseline * (1 + 0.01 * pct)).T
        func = root / sub / "func"
        save_nifti(func / f"{sub}_task-images_run-1_bold.nii.gz", vol, (VOXEL_MM,) * 3 + (tr,), affine)
        events = ["onset\tduration\ttrial_type\tstim_file"]
        events += [f"{t * tr:.1f}\t{tr:.1f}\timage\t{names[i]}" for t, i in zip(onset_trs, order, strict=True)]
        write_text(func / f"{sub}_task-images_run-1_events.tsv", "\n".join(events) + "\n")
    logger.info("BIDS: %d subjects, %d images, written under %s", len(subjects), p.num_images, root)
    summary = {
        "root": str(root),
        "subjects": subjects,
        "num_images": p.num_images,
        "num_volumes": num_vols,
        "repetition_time": tr,
        "grid": list(p.grid),
        "classes": list(cats.names),
        "delay_s": DELAY_S,
    }
    return summary, captions
