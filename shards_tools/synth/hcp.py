"""Simulated HCP 7T movie release under RAW/hcp: per-subject MNI volumes plus the 7T_movie_resources package.

Layout and formats as the real release (the paths of shards_tools/hcp_files.py):

    {sub}/MNINonLinear/Results/tfMRI_MOVIE{n}_7T_{AP|PA}/tfMRI_MOVIE{n}_7T_{AP|PA}_hp2000_clean.nii.gz
        float32 X×Y×Z×T, TR 1 s (pixdim[4] = 1), T = run length in seconds; MOVIE1 AP, 2 PA, 3 PA, 4 AP.
        Grid 26×37×26, so the CLIP-MUSED crop [2:, 4:-5, :-2] gives 24×28×24 (real: 113×136×113 -> 111×127×111);
        the brain lies inside that crop, zeros outside it.
    7T_movie_resources/HCP_7T_Movie_Clip_Timing.csv      bare CR line ends, 4 sections, no final terminator
    7T_movie_resources/HCP_7T_movie_V{1,2}_ReleasedSubjs.csv   `Subject,M/F`, CRLF, no final newline
    7T_movie_resources/WordNetFeatures.hdf5              MOVIE1_CC1 ... (T × K, 0/1), synsets (bytes),
                                                         <movie>_est / <movie>_val (T,) 0/1
    7T_movie_resources/{Pre,Post}_20140821_version/*.mp4 (hcp_movie.py)

Signal: each subject has a brain mask and its own smooth maps of the WordNet class vector and of the
low-level statistics of the frame that opens each second (of the stimulus version the subject saw),
strongest in posterior (visual) voxels, delayed by the subject's own hemodynamic delay (3, 4 or 5 s
around the 4 s CLIP-MUSED assumes), saturating, as a percentage of a smooth baseline intensity, plus
spatially correlated AR(1) noise; gains, SNR and misalignment differ per subject (individual.py). Rest
seconds carry no stimulus signal.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from mused_fm.files import atomic_path
from shards_tools.synth import brain as B
from shards_tools.synth import hcp_movie as M
from shards_tools.synth import individual as I
from shards_tools.synth import stimuli
from shards_tools.synth.files import rng_for, save_nifti, write_text
from shards_tools.synth.nsd_betas import profile_summary
from shards_tools.synth.presets import HcpPreset

__all__ = ["CROP", "DELAY_S", "timing_csv", "write_hcp"]

logger = logging.getLogger(__name__)
CROP = (slice(2, None), slice(4, -5), slice(None, -2))  # CLIP-MUSED's crop of the MNI grid
DELAY_S = 4
MNI_AFFINE = np.array([[-1.6, 0, 0, 90], [0, 1.6, 0, -126], [0, 0, 1.6, -72], [0, 0, 0, 1]])
SIGNAL_PCT, NOISE_PCT, NOISE_AR = 1.5, 1.0, 0.3


def _num(x: float) -> str:
    """Seconds as the timing table writes them: up to 4 decimals, no trailing zeros (20, 19.9583)."""
    return f"{x:.4f}".rstrip("0").rstrip(".")


def timing_csv(runs: list[list[M.Block]]) -> str:
    """HCP_7T_Movie_Clip_Timing.csv text with '\\n' line ends (the writer turns them into bare CR)."""
    sections = []
    for n, ((movie, _), blocks) in enumerate(zip(M.MOVIES, runs, strict=True), start=1):
        lines = [f"7T_{movie}_v2 Video Timing,,,,All times in seconds"]
        if n == 1:
            lines.append("movie.block, block start time, block end time, block duration, Block = clip within movie")
        for j, b in enumerate(blocks):
            start, end = b.start / M.FPS, (b.start + b.frames - 1) / M.FPS  # end = last frame, inclusive
            note = "0 = 20s REST block between clips" if n == 1 and j == 0 else ""
            lines.append(f"{b.label},{_num(start)},{_num(end)},{_num(end - start)},{note}")
        sections.append("\n".join(lines))
    return "\n,,,,\n".join(sections)


def _subject_volumes(
    root: Path, p: HcpPreset, sid: str, seed: int, labels: list[np.ndarray], lowlevel: list[np.ndarray]
) -> int:
    """Write one subject's four runs from per-run (T, K) labels and (T, F) statistics of the version it saw."""
    rng = rng_for(seed, "hcp", sid)
    box = tuple(slice(*s.indices(n)[:2]) for s, n in zip(CROP, p.raw_grid, strict=True))  # the brain fits the crop
    brain = B.make_brain(p.raw_grid, rng, box=box)
    m = brain.mask
    post = -brain.u[1][m]  # (V,) 1 at the occipital pole, -1 at the frontal pole
    ll_gain = np.clip(1.6 * post - 0.6, 0, 1)  # early visual cortex
    cat_gain = np.clip(1 - np.abs(post - 0.45) / 0.35, 0, 1) * (brain.u[2][m] < 0.4)  # ventral/lateral, further on
    num_k, num_f = labels[0].shape[1], lowlevel[0].shape[1]
    template = B.cohort_template(num_k, num_f, rng_for(seed, "hcp", "template"))
    profile = I.profile_of(seed, "hcp", sid)
    early = np.clip(ll_gain, 0, 1)  # (V,) 1 in early visual cortex: V1's misalignment and SNR there, IPS's elsewhere
    shift_scale = I.MISALIGNMENT["V1"] + (I.MISALIGNMENT["IPS"] - I.MISALIGNMENT["V1"]) * (1 - early)
    w_cat, w_ll = B.subject_maps(brain, num_k, num_f, rng, template=template, shift_scale_V=shift_scale)
    baseline = (9000 + 1500 * B.subject_maps(brain, 1, 0, rng, sigma=3.0)[0][0]).astype(np.float32)  # (V,)
    ll_v = ll_gain * profile.gain_ll[0]  # the early (V1) factors for low-level tuning, LO's for categories
    cat_v = cat_gain * profile.gain_cat[I.GROUPS.index("LO")]
    stim = I.saturate(B.neural_response(np.concatenate(labels), np.concatenate(lowlevel), w_cat, w_ll, cat_v, ll_v))
    snr = I.ROI_SNR["V1"] * early + I.ROI_SNR["IPS"] * (1 - early)
    noise_sd = NOISE_PCT * p.noise_scale * profile.noise / snr  # (V,)
    noise_maps = B.subject_maps(brain, I.NOISE_MAPS, 0, rng_for(seed, "hcp-noise", sid), sigma=2.0)[0]
    delay = profile.delay_s  # the subject's own hemodynamic delay (the packer assumes DELAY_S)
    bounds = np.cumsum([len(x) for x in labels])[:-1]
    for (movie, pe), run_stim in zip(M.MOVIES, np.split(stim, bounds), strict=True):
        delayed = np.zeros_like(run_stim)  # (T, V): the response to second t appears at TR t + delay
        delayed[delay:] = run_stim[:-delay]
        noise = I.correlated_noise(rng, noise_maps, len(run_stim), noise_sd)  # (T, V), then AR(1) in time
        for t in range(1, len(noise)):
            noise[t] += NOISE_AR * noise[t - 1]
        vol = np.zeros((*p.raw_grid, len(run_stim)), dtype=np.float32)  # (X, Y, Z, T)
        vol[m] = (baseline * (1 + 0.01 * (SIGNAL_PCT * delayed + noise))).T
        run = f"tfMRI_{movie.split('_')[0]}_7T_{pe}"
        save_nifti(
            root / sid / "MNINonLinear" / "Results" / run / f"{run}_hp2000_clean.nii.gz",
            vol,
            (1.6, 1.6, 1.6, 1.0),
            MNI_AFFINE,
        )
    return int(m.sum())


def _lowlevel(runs: list[list[M.Block]], stim_s: list[np.ndarray], size: tuple[int, int]) -> dict[str, list]:
    """Per version, per run: (T, F) low-level statistics of each second, standardised with V1's constants, 0 at rest."""
    out = {}
    for v in ("V1", "V2"):
        out[v] = [np.zeros((len(s), len(stimuli.LOWLEVEL_NAMES)), np.float32) for s in stim_s]
        for feats, blocks, s in zip(out[v], runs, stim_s, strict=True):
            feats[s] = stimuli.lowlevel_features(M.opening_frames(blocks, size, v)[s])
    ref = np.concatenate([f[s] for f, s in zip(out["V1"], stim_s, strict=True)])
    mu, sd = ref.mean(axis=0), ref.std(axis=0) + 1e-6
    return {v: [((f - mu) / sd) * s[:, None] for f, s in zip(out[v], stim_s, strict=True)] for v in out}


def _write_tables(res: Path, p: HcpPreset, synsets: tuple[str, ...], runs: list, per_run: list) -> None:
    """WordNetFeatures.hdf5, the clip timing table and the two released-subject lists."""
    import h5py

    with atomic_path(res / "WordNetFeatures.hdf5") as tmp, h5py.File(tmp, "w") as f:
        for (movie, _), (labels, est, val) in zip(M.MOVIES, per_run, strict=True):
            f.create_dataset(movie, data=labels.astype(np.float64))  # (T, K): MATLAB doubles as h5py sees them
            f.create_dataset(f"{movie}_est", data=est.astype(np.float64))
            f.create_dataset(f"{movie}_val", data=val.astype(np.float64))
        f.create_dataset("synsets", data=np.array([s.encode() for s in synsets], dtype="S"))
    write_text(res / "HCP_7T_Movie_Clip_Timing.csv", timing_csv(runs), newline="\r")
    for version in ("V1", "V2"):
        rows = [f"{sid},{sex}" for sid, v, sex in p.subjects if v == version]
        write_text(res / f"HCP_7T_movie_{version}_ReleasedSubjs.csv", "\n".join(["Subject,M/F", *rows]), "\r\n")


def write_hcp(root: Path, p: HcpPreset, seed: int) -> tuple[dict, list[str]]:
    """Write the HCP-like release; returns a summary and the text corpus (WordNet names) for CLIP."""
    rng = rng_for(seed, "hcp", "movie")
    cats = stimuli.make_categories(stimuli.WORDNET_SYNSETS[: p.num_categories], rng)
    runs = M.make_runs(p.clips_per_run, p.clip_seconds, p.validation_seconds, cats, p.frame_size, rng)
    per_run = [M.per_second_labels(blocks, len(cats.names)) for blocks in runs]  # (labels, est, val) per run
    labels = [lab for lab, _, _ in per_run]
    stim_s = [(est | val).astype(bool) for _, est, val in per_run]  # (T,) stimulus seconds per run
    res = root / "7T_movie_resources"
    # Encode the movies in a second thread, beside the volume writing (PyAV and zlib release the GIL).
    with ThreadPoolExecutor(max_workers=1) as pool:
        movies = pool.submit(M.write_movies, res, runs, p.frame_size)
        _write_tables(res, p, cats.names, runs, per_run)
        lowlevel = _lowlevel(runs, stim_s, p.frame_size)
        subjects = {
            sid: {
                "version": v,
                "brain_voxels": _subject_volumes(root, p, sid, seed, labels, lowlevel[v]),
                "profile": profile_summary(I.profile_of(seed, "hcp", sid)),
            }
            for sid, v, _ in p.subjects
        }
        movies.result()  # re-raises an encoding error here
    logger.info("HCP: %d subjects, runs of %s s, written under %s", len(subjects), [len(x) for x in labels], root)
    summary = {
        "root": str(root),
        "subjects": subjects,
        "run_seconds": {movie: len(lab) for (movie, _), lab in zip(M.MOVIES, labels, strict=True)},
        "stimulus_seconds": {movie: int(s.sum()) for (movie, _), s in zip(M.MOVIES, stim_s, strict=True)},
        "grid": list(p.raw_grid),
        "cropped_grid": list(np.zeros(p.raw_grid)[CROP].shape),
        "synsets": list(cats.names),
        "delay_s": DELAY_S,  # what the packer assumes; each subject's own is in its profile
    }
    return summary, [stimuli.synset_word(s) for s in cats.names] + list(cats.names)
