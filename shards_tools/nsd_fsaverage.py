"""NSD on the fsaverage surface: ROI vertices of both hemispheres, streamed a session at a time, onto a PCA basis.

Shape legend: T trials of a session, V the ROI vertices kept (both hemispheres), R ROIs, K = roi_dim.

Vertex v of fsaverage is the same cortical location in every subject, so one per-ROI basis can serve
the whole cohort (`--roi-basis cohort`): fitted once on the training trials of the subjects of the
first pack and stored in OUT/preproc/cohort-basis.npz; later subjects are projected with it, never
refitting. `--roi-basis subject` fits each subject's own basis (the paper's setting, on the surface).

Per session: read the ROI vertices of lh and rh (a chunk of frames at a time; nothing else of the
491 MB files is kept), z-score each vertex with the session's training trials, and set vertices that
are NaN in the session (NSD: "some vertices have NaNs for all of their 750 betas") to 0, the mean.
A fit reads every session once to accumulate the PCA statistics; the projection reads them again.
"""

from __future__ import annotations

import io
import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mused_fm.data import storage
from mused_fm.errors import InputError
from shards_tools.mgh_files import MghHeader, read_mgh_frames
from shards_tools.nsd_files import HEMISPHERES, NsdLayout
from shards_tools.roi_features import PcaAccumulator, RoiPca, resolve_groups, zscore_by_session

__all__ = ["COHORT_BASIS", "MOSTLY_NAN", "SurfaceRois", "SurfaceSubject", "fit_basis", "load_basis", "save_basis"]

logger = logging.getLogger(__name__)
COHORT_BASIS = "preproc/cohort-basis.npz"
MOSTLY_NAN = 0.5  # an ROI with more of its vertices NaN in a session than this is an error


@dataclass
class SurfaceRois:
    """The ROI groups on fsaverage: each group's vertex indices into lh + rh (rh offset by lh's count)."""

    names: list[str]
    labels: list[list[str]]  # atlas label names of each group
    vertices: list[np.ndarray]
    hemi_vertices: dict[str, int]

    @classmethod
    def read(cls, layout: NsdLayout, atlas: str, spec: str | None) -> SurfaceRois:
        labels, ctab, paths = layout.surface_labels(atlas)
        groups = resolve_groups(spec, ctab, f"{atlas}.mgz.ctab")
        both = np.concatenate([labels[h] for h in HEMISPHERES])
        vertices = [np.flatnonzero(np.isin(both, lab)) for _, lab in groups]
        empty = [g for (g, _), v in zip(groups, vertices, strict=True) if v.size == 0]
        if empty:
            raise InputError(f"{paths['lh']}: ROI groups {empty} have no vertices; drop them with --roi-groups.")
        counts = {h: int(labels[h].size) for h in HEMISPHERES}
        return cls([g for g, _ in groups], [[ctab[i] for i in lab] for _, lab in groups], vertices, counts)

    @property
    def spans(self) -> list[tuple[int, int]]:
        """Each ROI's columns in a session's (T, V) block."""
        return list(itertools.pairwise(np.cumsum([0] + [v.size for v in self.vertices]).tolist()))


class SurfaceSubject:
    """One subject's sessions on fsaverage, read a session at a time."""

    def __init__(self, subject: str, sessions: dict[int, tuple[Path, Path]], rois: SurfaceRois) -> None:
        self.subject, self.rois = subject, rois
        self._nan = [np.zeros(v.size, dtype=bool) for v in rois.vertices]  # per ROI: NaN in some session read
        self.headers = {
            s: dict(zip(HEMISPHERES, map(MghHeader.read, pair), strict=True)) for s, pair in sessions.items()
        }
        for session, pair in self.headers.items():
            for hemi, header in pair.items():
                if header.vertices != rois.hemi_vertices[hemi]:
                    raise InputError(
                        f"{header.path}: {header.vertices} vertices, but the atlas' {hemi} labels have "
                        f"{rois.hemi_vertices[hemi]}; betas and labels must be on the same surface (fsaverage: 163842)."
                    )
            lh, rh = pair["lh"], pair["rh"]
            if lh.frames != rh.frames:
                raise InputError(
                    f"{subject} session {session}: {lh.path.name} has {lh.frames} trials, {rh.path.name} has "
                    f"{rh.frames}; both hemispheres of a session hold the same trials: download the shorter again."
                )

    @property
    def trials_per_session(self) -> set[int]:
        return {pair["lh"].frames for pair in self.headers.values()}

    def nan_counts(self) -> dict[str, int]:
        """Per ROI, the vertices NaN in at least one session read so far (all of them once `sessions` has run)."""
        return {name: int(mask.sum()) for name, mask in zip(self.rois.names, self._nan, strict=True)}

    def nan_masks(self) -> dict[str, np.ndarray]:
        """{nan_<roi index>: (V_roi,) bool} over the ROI's vertices: NaN in at least one session."""
        return {f"nan_{i}": mask for i, mask in enumerate(self._nan)}

    def sessions(self, session_T: np.ndarray, train_T: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(rows of the subject's trial table, z-scored (T, V) block) per session, in order.

        Args:
            session_T: session number of every trial of the subject (trial-table order).
            train_T: whether each trial is a training trial (the z-scoring statistics come from those).
        """
        keep = np.concatenate(self.rois.vertices)
        split_at = self.rois.hemi_vertices["lh"]
        in_lh = keep < split_at
        for session, pair in self.headers.items():
            rows = np.flatnonzero(session_T == session)
            block = np.empty((pair["lh"].frames, keep.size), dtype=np.float32)
            block[:, in_lh] = read_mgh_frames(pair["lh"], keep[in_lh])
            block[:, ~in_lh] = read_mgh_frames(pair["rh"], keep[~in_lh] - split_at)
            nan = ~np.isfinite(block).all(0)
            self._check_nan(session, nan, pair)
            block = zscore_by_session(block, np.zeros(len(rows)), train_T[rows])
            block[:, nan] = 0.0  # NaN in this session: the vertex carries no signal; 0 is its z-scored mean
            yield rows, block

    def _check_nan(self, session: int, nan_V: np.ndarray, pair: dict[str, MghHeader]) -> None:
        for r, (a, b) in enumerate(self.rois.spans):
            self._nan[r] |= nan_V[a:b]
            share = nan_V[a:b].mean()
            if share > MOSTLY_NAN:
                raise InputError(
                    f"{self.subject} session {session}: {share:.0%} of ROI {self.rois.names[r]}'s {b - a} vertices "
                    f"are NaN in {pair['lh'].path.name} / {pair['rh'].path.name}; drop the ROI with --roi-groups, or "
                    "the subject, or download the session again if the file is damaged."
                )


def fit_basis(subjects: list[tuple[SurfaceSubject, np.ndarray, np.ndarray]], dim: int) -> list[RoiPca]:
    """One PCA per ROI over the training trials of every (subject, session_T, train_T) given."""
    rois = subjects[0][0].rois
    accs = [PcaAccumulator(v.size) for v in rois.vertices]
    for subject, session_T, train_T in subjects:
        for rows, block in subject.sessions(session_T, train_T):
            train = train_T[rows]
            for acc, (a, b) in zip(accs, rois.spans, strict=True):
                acc.add(block[train, a:b])
        logger.info("%s: read for the PCA basis", subject.subject)
    return [acc.fit(dim) for acc in accs]


def project(subject: SurfaceSubject, session_T: np.ndarray, train_T: np.ndarray, basis: list[RoiPca]) -> np.ndarray:
    """(trials, R, K) float32 tokens of every trial of the subject, in trial-table order."""
    out = np.zeros((session_T.size, len(basis), basis[0].dim), dtype=np.float32)
    for rows, block in subject.sessions(session_T, train_T):
        for r, (pca, (a, b)) in enumerate(zip(basis, subject.rois.spans, strict=True)):
            out[rows, r] = pca.transform(block[:, a:b])
    return out


def basis_arrays(rois: SurfaceRois, basis: list[RoiPca], fitted_on: list[str]) -> dict[str, np.ndarray]:
    """The basis as plain arrays: ROI names, the subjects whose training trials fitted it, and per ROI i
    mean_i (V_i,), components_i (K_i, V_i) and vertices_i (V_i,) (indices into lh + rh)."""
    arrays: dict[str, np.ndarray] = {"roi_names": np.array(rois.names), "fitted_on": np.array(fitted_on)}
    for i, (pca, vertices) in enumerate(zip(basis, rois.vertices, strict=True)):
        arrays.update({f"mean_{i}": pca.mean_V, f"components_{i}": pca.components_KV, f"vertices_{i}": vertices})
    return arrays


def save_basis(out_url: str, rois: SurfaceRois, basis: list[RoiPca], fitted_on: list[str]) -> None:
    buf = io.BytesIO()
    np.savez(buf, **basis_arrays(rois, basis, fitted_on))  # plain arrays only; loaded with allow_pickle=False
    storage.write_bytes(storage.join(out_url, COHORT_BASIS), buf.getvalue())


def load_basis(out_url: str, rois: SurfaceRois, dim: int) -> list[RoiPca] | None:
    """The output's cohort basis, checked against this pack's ROIs; None when the output has none yet."""
    url = storage.join(out_url, COHORT_BASIS)
    if not storage.exists(url):
        return None
    with np.load(io.BytesIO(storage.read_bytes(url)), allow_pickle=False) as f:
        names = [str(n) for n in f["roi_names"]]
        same = names == rois.names and all(np.array_equal(f[f"vertices_{i}"], v) for i, v in enumerate(rois.vertices))
        if not same:
            raise InputError(
                f"{url} was fitted on ROIs {names} with other vertices than this pack's {rois.names} "
                "(--atlas, --roi-groups or the label files differ); pack into a new --out with these settings."
            )
        basis = [RoiPca(f[f"mean_{i}"], f[f"components_{i}"], dim) for i in range(len(names))]
        logger.info("%s: the cohort basis fitted on %s", url, [str(x) for x in f["fitted_on"]])
    if any(p.components_KV.shape[0] > dim for p in basis):
        raise InputError(f"{url} has more components than --roi-dim {dim}; pack with the --roi-dim it was made with.")
    return basis
