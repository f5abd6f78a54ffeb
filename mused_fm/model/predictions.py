"""Prediction rows with class names, from probabilities: shared by MusedModel.predict and launch/predict.py.

Shape legend: B samples, C classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["prediction_rows"]


def prediction_rows(
    probs_BC: np.ndarray,
    class_names: Sequence[str],
    top_k: int,
    threshold: float,
    labels_BC: np.ndarray | None = None,
    **columns: Sequence,
) -> list[dict]:
    """Prediction rows of a batch of probabilities (B, C); `columns` are per-sample values (subject, stimulus...)."""
    k = min(top_k, probs_BC.shape[1])
    order = np.argsort(-probs_BC, axis=1, kind="stable")[:, :k]
    rows = []
    for i, p in enumerate(probs_BC):
        row = {name: values[i] for name, values in columns.items()}
        row["top"] = [[class_names[c], round(float(p[c]), 6)] for c in order[i]]
        row["predicted"] = [class_names[c] for c in np.flatnonzero(p >= threshold)]
        if labels_BC is not None:
            row["true"] = [class_names[c] for c in np.flatnonzero(labels_BC[i])]
        rows.append(row)
    return rows
