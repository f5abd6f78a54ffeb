"""Write a simulated NSD / HCP 7T movie / BIDS cohort in the real on-disk layouts, with a tiny CLIP.

    python -m shards_tools synth --out RAW_DIR [--preset test|demo] [--seed N]

Writes RAW_DIR/nsd (NSD release layout), RAW_DIR/hcp (HCP 7T movie subjects and 7T_movie_resources),
RAW_DIR/bids (a BIDS 1.x site with LABELS.tsv), RAW_DIR/clip (a CLIP checkpoint folder) and
RAW_DIR/synth_summary.json. `test` takes seconds; `demo` (under a minute on 2 cores) gives a few
hundred training trials per NSD subject and a few hundred TRs per HCP subject, with subj06 meant to
be held out. The same seed writes the same bytes; a rerun replaces the previous cohort.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from shards_tools.synth import PRESETS, synth

__all__ = ["add_arguments", "format_summary", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, metavar="RAW_DIR", help="folder to write (created)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="test", help="cohort size (default: test)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")


def format_summary(s: dict) -> str:
    """A few lines for people: subjects per dataset, counts, the held-out subject, paths."""
    nsd, hcp, bids = s["nsd"], s["hcp"], s["bids"]
    subs = nsd["subjects"]
    lines = [f"synth preset={s['preset']} seed={s['seed']} -> {s['out']} ({s.get('seconds', 0):.1f} s)"]
    lines.append(
        f"  nsd   {nsd['root']}: {len(subs)} subjects ({', '.join(subs)}), {nsd['num_images']} images "
        f"({nsd['num_shared']} shared, each shown 3x), {nsd['trials_per_session']} trials/session, "
        f"{len(nsd['classes'])} COCO classes"
    )
    for name, sub in subs.items():
        notes = [f"grid {'x'.join(map(str, sub['grid']))}", f"train {sub['train_trials']} / test {sub['test_trials']}"]
        missing = sorted(set(range(1, sub["sessions"] + 1)) - set(sub["sessions_on_disk"]))
        notes.append(f"sessions on disk {','.join(f'{x:02d}' for x in sub['sessions_on_disk'])}")
        notes += [f"session {x:02d} missing" for x in missing]
        notes += [f"session {x:02d} as .hdf5" for x in sub["hdf5_sessions"]]
        lines.append(f"        {name}: " + ", ".join(notes))
    if nsd["held_out"]:
        lines.append(f"        held out: {nsd['held_out']} (meant for the new-subject protocol; do not train on it)")
    versions = ", ".join(f"{k} {v['version']}" for k, v in hcp["subjects"].items())
    lines.append(
        f"  hcp   {hcp['root']}: {len(hcp['subjects'])} subjects ({versions}), runs "
        f"{'/'.join(map(str, hcp['run_seconds'].values()))} s, grid {'x'.join(map(str, hcp['grid']))} "
        f"(crop {'x'.join(map(str, hcp['cropped_grid']))}), {len(hcp['synsets'])} WordNet classes"
    )
    lines.append(
        f"  bids  {bids['root']}: {len(bids['subjects'])} subjects, {bids['num_images']} images, "
        f"TR {bids['repetition_time']} s, {bids['num_volumes']} volumes, LABELS.tsv"
    )
    if "clip" in s:
        lines.append(f"  clip  {s['clip']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    summary = synth(args.out, preset=args.preset, seed=args.seed)
    print(format_summary(summary))
    return 0
