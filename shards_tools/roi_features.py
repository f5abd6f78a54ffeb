"""ROI groups, per-session z-scoring and per-ROI PCA: how ROI datasets become (num_rois, roi_dim) tokens.

Shape legend: T trials, V voxels of one ROI, K = roi_dim components.

The paper (CLIP-MUSED, NSD) groups the Kastner2015 atlas into ten visual ROIs and reduces each
to 268 PCA components fitted on the subject's training trials; ROIs with fewer voxels (or fewer
training trials) than components are zero-padded. Statistics for z-scoring exclude test trials,
so nothing about the test set leaks into the training inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mused_fm.errors import InputError

__all__ = ["PAPER_GROUPS", "PcaAccumulator", "RoiPca", "resolve_groups", "zscore_by_session"]

# Kastner2015 (Wang et al. 2015) label names of each of the paper's ten groups. MT is TO1/TO2 in
# NSD's table (hMT/MST in the original atlas); names are matched case-insensitively.
PAPER_GROUPS: dict[str, list[str]] = {
    "V1": ["V1v", "V1d"],
    "V2": ["V2v", "V2d"],
    "V3": ["V3v", "V3d"],
    "V3ab": ["V3a", "V3b"],
    "hV4": ["hV4"],
    "VO": ["VO1", "VO2"],
    "PHC": ["PHC1", "PHC2"],
    "MT": ["TO1", "TO2", "hMT", "MST"],
    "LO": ["LO1", "LO2"],
    "IPS": ["IPS0", "IPS1", "IPS2", "IPS3", "IPS4", "IPS5"],
}


def resolve_groups(spec: str | None, ctab: dict[int, str], where: str) -> list[tuple[str, list[int]]]:
    """[(group, atlas label indices)] in token order.

    Args:
        spec: None for the paper's ten groups; a comma list of group names ("V1,V2,LO") and/or custom
            groups "NAME=label+label" over the atlas' own names ("ventral=VO1+VO2+PHC1").
        where: the label table's path, quoted in errors.
    """
    by_name = {name.lower(): index for index, name in ctab.items()}
    items = [s.strip() for s in (spec or ",".join(PAPER_GROUPS)).split(",") if s.strip()]
    groups = []
    for item in items:
        name, sep, members = item.partition("=")
        if sep:
            labels = members.split("+")
        elif name in PAPER_GROUPS:
            labels = PAPER_GROUPS[name]
        else:
            raise InputError(
                f"--roi-groups: unknown ROI group {name!r}. Known groups: {', '.join(PAPER_GROUPS)}; "
                "or define one as NAME=label+label with names from the atlas table."
            )
        found = [by_name[label.lower()] for label in labels if label.lower() in by_name]
        unknown = [label for label in labels if label.lower() not in by_name]
        if sep and unknown:
            raise InputError(
                f"--roi-groups: {unknown} of group {name!r} are not in {where} (it has {', '.join(ctab.values())})."
            )
        if not found:
            raise InputError(f"ROI group {name!r}: none of {labels} is in {where}; pick groups this atlas has.")
        groups.append((name, found))
    return groups


def zscore_by_session(data_TV: np.ndarray, session_T: np.ndarray, fit_T: np.ndarray) -> np.ndarray:
    """Z-score each voxel within each session, with mean and std from the session's `fit_T` trials only."""
    out = np.empty_like(data_TV, dtype=np.float32)
    for session in np.unique(session_T):
        rows = session_T == session
        ref = data_TV[rows & fit_T] if (rows & fit_T).any() else data_TV[rows]
        mean, std = ref.mean(0), ref.std(0)
        out[rows] = (data_TV[rows] - mean) / np.where(std > 0, std, 1.0)
    return out


@dataclass
class RoiPca:
    """PCA of one ROI's voxels, fitted on training trials; transform gives exactly `dim` columns."""

    mean_V: np.ndarray
    components_KV: np.ndarray
    dim: int

    @classmethod
    def fit(cls, train_TV: np.ndarray, dim: int) -> RoiPca:
        acc = PcaAccumulator(train_TV.shape[1])
        acc.add(train_TV)
        return acc.fit(dim)

    def transform(self, data_TV: np.ndarray) -> np.ndarray:
        scores = (data_TV - self.mean_V) @ self.components_KV.T
        out = np.zeros((data_TV.shape[0], self.dim), dtype=np.float32)
        out[:, : scores.shape[1]] = scores  # fewer voxels or trials than dim: zero-padded
        return out


class PcaAccumulator:
    """PCA of one ROI from rows added in batches (a session at a time), in at most V x V floats.

    While there are no more rows than columns (a first pack of a few sessions) the rows themselves are
    kept and `fit` is an exact SVD of them; past that they are folded into the V x V cross-product
    (float32: 0.4 GB for an ROI of 10,500 fsaverage vertices) and `fit` takes the top eigenvectors of the
    covariance. Inputs are z-scored per session, so their means are near zero and float32 loses nothing.
    """

    def __init__(self, width: int) -> None:
        self.rows = 0
        self.sum_V = np.zeros(width, dtype=np.float64)
        self._kept: list[np.ndarray] | None = []  # the rows, until they outnumber the columns
        self._gram_VV: np.ndarray | None = None

    def add(self, rows_TV: np.ndarray) -> None:
        rows_TV = np.asarray(rows_TV, dtype=np.float32)
        self.rows += rows_TV.shape[0]
        self.sum_V += rows_TV.sum(0, dtype=np.float64)
        if self._kept is None:
            self._gram_VV += rows_TV.T @ rows_TV
            return
        self._kept.append(rows_TV.copy())
        if self.rows > self.sum_V.size:
            kept = np.concatenate(self._kept)
            self._kept, self._gram_VV = None, kept.T @ kept

    def fit(self, dim: int) -> RoiPca:
        """The top min(dim, V, rows - 1) components; each signed so its largest-magnitude weight is positive.
        Frees the accumulated statistics."""
        from scipy.linalg import blas, eigh

        if self.rows < 2:
            raise InputError(f"a PCA basis needs at least 2 training trials, got {self.rows}.")
        width = self.sum_V.size
        mean = self.sum_V / self.rows
        k = min(dim, width, self.rows - 1)
        if self._kept is not None:
            _, _, vt = np.linalg.svd(np.concatenate(self._kept) - mean.astype(np.float32), full_matrices=False)
            components = vt[:k]
        else:
            cov = self._gram_VV  # in place: (gram / n) - mean mean^T, upper triangle (what eigh reads below)
            cov /= self.rows
            cov = blas.ssyr(-1.0, mean.astype(np.float32), a=cov, lower=0, overwrite_a=1)
            _, vectors = eigh(cov, lower=False, subset_by_index=[width - k, width - 1], overwrite_a=True)
            components = vectors[:, ::-1].T  # (k, V), largest variance first
        self._kept = self._gram_VV = None
        signs = np.sign(components[np.arange(k), np.abs(components).argmax(1)])
        return RoiPca(mean.astype(np.float32), (components * signs[:, None]).astype(np.float32), dim)
