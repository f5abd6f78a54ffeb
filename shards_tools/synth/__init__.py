"""Simulated fMRI cohort in the real on-disk layouts of NSD, HCP 7T movie and a BIDS site, plus a tiny CLIP.

    from shards_tools.synth import synth
    summary = synth("RAW", preset="test", seed=0)   # RAW/{nsd,hcp,bids,clip}, RAW/synth_summary.json

Packers written for the real releases read RAW/nsd, RAW/hcp and RAW/bids unchanged (the layouts
are those of nsd_files.py, hcp_files.py and bids_files.py). The planted ground truth (stimuli.py, brain.py): multi-label
stimuli whose images' low-level statistics depend on their classes; each subject responds through its
own smooth maps of the class vector and of those statistics, low-level tuning early in the visual
hierarchy and category tuning later, plus noise. Output is a function of (preset, seed) alone.

A rerun into the same RAW replaces the previous cohort: RAW/synth_summary.json marks a folder as
ours, and only then are RAW/{nsd,hcp,bids,clip} removed first (so a smaller preset leaves no stale
subjects behind). A folder holding any of those without the marker is refused.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from mused_fm.errors import InputError
from mused_fm.files import write_json
from shards_tools.synth.presets import PRESETS, get_preset

__all__ = ["PRESETS", "SUMMARY_FILE", "synth"]

logger = logging.getLogger(__name__)
SUMMARY_FILE = "synth_summary.json"
PARTS = ("nsd", "hcp", "bids", "clip")


def _clear_previous(out: Path) -> None:
    present = [out / part for part in PARTS if (out / part).exists()]
    if present and not (out / SUMMARY_FILE).exists():
        raise InputError(
            f"{present[0]} exists but {out / SUMMARY_FILE} does not, so it was not written by synth; "
            f"refusing to overwrite it. Choose an empty --out folder, or remove {', '.join(map(str, present))}."
        )
    for path in present:
        shutil.rmtree(path)


def synth(out_dir: str | Path, preset: str = "test", seed: int = 0, *, clip: bool = True) -> dict:
    """Write the cohort under `out_dir`; returns a summary (also saved as `out_dir/synth_summary.json`).

    Args:
        out_dir: RAW_DIR; created if missing.
        preset: "test" (a few seconds, for tests) or "demo" (enough trials for a small model to learn).
        seed: every random draw derives from it; the same seed gives the same bytes.
        clip: write the tiny CLIP to out_dir/clip (importing transformers costs ~5 s; layout-only tests skip it).
    """
    from shards_tools.synth.bids import write_bids
    from shards_tools.synth.coco import COCO_CATEGORIES
    from shards_tools.synth.hcp import write_hcp
    from shards_tools.synth.nsd import make_stimuli, write_nsd

    p = get_preset(preset)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _clear_previous(out)
    write_json(out / SUMMARY_FILE, {"status": "writing", "preset": preset, "seed": seed})
    start = time.perf_counter()
    stimuli = make_stimuli(p.nsd, seed)
    nsd, nsd_text = write_nsd(out / "nsd", p.nsd, seed, stimuli)
    hcp, hcp_text = write_hcp(out / "hcp", p.hcp, seed)
    bids, bids_text = write_bids(out / "bids", p.bids, seed)
    summary = {"status": "complete", "preset": preset, "seed": seed, "out": str(out), "nsd": nsd, "hcp": hcp}
    summary["bids"] = bids
    if clip:
        from shards_tools.tiny_clip import build_tiny_clip, clip_alignment

        corpus = nsd_text + bids_text + [name for _, name, _ in COCO_CATEGORIES] + hcp_text
        # Trained contrastively on the NSD stimuli's (image, captions) pairs: its embeddings carry their content.
        pairs = stimuli.images_and_captions
        summary["clip"] = str(build_tiny_clip(out / "clip", corpus, seed=seed, pairs=pairs))
        summary["clip_alignment"] = clip_alignment(
            out / "clip", stimuli.images, stimuli.captions, stimuli.labels, stimuli.lowlevel
        )
    write_json(out / SUMMARY_FILE, summary)
    summary["seconds"] = round(time.perf_counter() - start, 2)
    logger.info("synth preset=%s seed=%d: %s in %.1f s", preset, seed, out, summary["seconds"])
    return summary
