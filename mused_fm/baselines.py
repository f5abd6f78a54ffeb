"""The simplest decoders a comparison must beat: a closed-form ridge per subject, a linear readout shared by the
subjects and trained like the Transformers, and chance.

Shape legend: N training samples, P input features (ROI patches or masked voxels, flattened), C classes.

Ridge (one decoder per subject, no shared weights): centred inputs X (N, P) and targets Y (N, C),

    W = X^T (X X^T + lam I)^-1 (Y - mean Y)         (the dual form: N is a few hundred, P up to ~10^4)

with lam = alpha * mean(diag(X X^T)) and alpha chosen on the subject's validation split (best validation
mAP; ties go to the larger alpha), then scored on the test split in the form of eval.json, per trial and
with each stimulus's repeats averaged. Chance: random scores, the mean of `draws` seeded draws.

Linear (one decoder for all subjects of the dataset, as the multi-subject Transformers share theirs): logits
= W x + b on the inputs standardised with the training split's mean and SD, fitted by AdamW on the BCE with
the Transformers' batch and a fixed step budget, the step kept by validation subject-mean mAP. It separates
the question "is there signal a shared readout can find with gradient descent?" from "does the Transformer
find it?": when it beats the Transformers, the cohort has the signal and the model misses it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mused_fm.data.pipeline import DatasetStream, eval_batches
from mused_fm.errors import ShardSchemaError
from mused_fm.evaluate import merge_metrics
from mused_fm.metrics import grouped_metrics, multilabel_metrics, stimulus_means
from mused_fm.subject_ids import name_of

__all__ = [
    "ALPHAS",
    "BASELINES",
    "SplitArrays",
    "chance_metrics",
    "fit_linear",
    "fit_ridge",
    "linear_metrics",
    "ridge_metrics",
]

BASELINES = ("ridge", "linear", "chance")  # what a comparison fits beside its methods, in the tables' order

ALPHAS = tuple(10.0**k for k in range(-4, 3))  # relative to the mean squared norm of a training sample


@dataclass
class SplitArrays:
    """One subject's split: inputs flattened to (N, P) float32, labels (N, C), stimulus ids (N,)."""

    x: np.ndarray
    y: np.ndarray
    stimuli: list[str]

    @classmethod
    def read(cls, stream: DatasetStream, split: str, mask: np.ndarray | None = None) -> SplitArrays:
        """The split of the stream's one subject; volumes keep the subject's masked voxels only (or `mask`'s)."""
        if mask is None:
            mask = stream.masks.get(stream.subjects[0]) if len(stream.subjects) == 1 else None
        xs, ys, stimuli = [], [], []
        for batch in eval_batches(stream, split, batch_size=256):
            x = batch["bold"].numpy().reshape(len(batch["labels"]), -1)
            xs.append((x if mask is None else x[:, mask]).astype(np.float32))  # (N, P), P masked voxels
            ys.append(batch["labels"].numpy())
            stimuli.extend(batch["stimulus"])
        if not xs:
            raise ShardSchemaError(f"{stream.url} has no readable {split!r} samples for {stream.subjects}.")
        return cls(np.concatenate(xs), np.concatenate(ys), stimuli)


def fit_ridge(x_NP: np.ndarray, y_NC: np.ndarray, alpha: float):
    """The ridge predictor of one subject: a function (M, P) -> (M, C) scores."""
    mean_x, mean_y = x_NP.mean(0, dtype=np.float64), y_NC.mean(0)
    xc = x_NP - mean_x.astype(x_NP.dtype)
    gram = (xc @ xc.T).astype(np.float64)  # (N, N): N is a few hundred to a few thousand
    lam = alpha * float(np.mean(np.diag(gram)))
    dual = np.linalg.solve(gram + lam * np.eye(len(gram)), y_NC - mean_y)  # (N, C)
    weights = (xc.T @ dual.astype(xc.dtype)).astype(np.float64)  # (P, C)
    return lambda x: (np.asarray(x, np.float64) - mean_x) @ weights + mean_y


def ridge_metrics(stream: DatasetStream, alphas: tuple[float, ...] = ALPHAS) -> dict:
    """eval.json-shaped test metrics of one ridge decoder per subject of `stream`, plus the chosen alphas."""
    parts, chosen = [], {}
    for subject in stream.subjects:
        one = _single_subject(stream, subject)
        train, val, test = (SplitArrays.read(one, split) for split in ("train", "val", "test"))
        scores = {a: multilabel_metrics(fit_ridge(train.x, train.y, a)(val.x), val.y)["mAP"] for a in alphas}
        best = max(alphas, key=lambda a: (np.nan_to_num(scores[a], nan=-1.0), a))
        chosen[subject] = {"alpha": best, "val_mAP": scores[best]}
        parts.append((fit_ridge(train.x, train.y, best)(test.x), test, subject))
    return {**_scored(parts), "ridge": chosen}


def fit_linear(
    x_NP: np.ndarray,
    y_NC: np.ndarray,
    val: list[SplitArrays],
    steps: int = 1200,
    batch_size: int = 64,
    lr: float = 1e-3,
    eval_every: int = 100,
    seed: int = 0,
):
    """A linear readout by AdamW on the BCE: (predict (M, P) -> (M, C) logits, {best_step, val_mAP}).

    Inputs are standardised with the training mean and SD; the kept weights are those of the step (step 0, the
    untrained start, included) with the best mean validation mAP over `val` (one SplitArrays per subject).
    """
    import torch

    mean, sd = x_NP.mean(0), x_NP.std(0) + 1e-6
    xt = torch.as_tensor((x_NP - mean) / sd, dtype=torch.float32)
    yt = torch.as_tensor(y_NC, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    readout = torch.nn.Linear(x_NP.shape[1], y_NC.shape[1])
    opt = torch.optim.AdamW(readout.parameters(), lr=lr)

    @torch.no_grad()
    def predict(x: np.ndarray) -> np.ndarray:
        return readout(torch.as_tensor((x - mean) / sd, dtype=torch.float32)).numpy()

    def val_map() -> float:
        return float(np.nanmean([multilabel_metrics(predict(a.x), a.y)["mAP"] for a in val]))

    best = {"best_step": 0, "val_mAP": val_map(), "state": {k: v.clone() for k, v in readout.state_dict().items()}}
    for step in range(1, steps + 1):
        rows = torch.randint(0, len(xt), (batch_size,), generator=generator)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(readout(xt[rows]), yt[rows])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % eval_every == 0 and (score := val_map()) > best["val_mAP"]:
            best = {
                "best_step": step,
                "val_mAP": score,
                "state": {k: v.clone() for k, v in readout.state_dict().items()},
            }
    readout.load_state_dict(best.pop("state"))
    return predict, best


def linear_metrics(stream: DatasetStream, steps: int = 1200, batch_size: int = 64, lr: float = 1e-3) -> dict:
    """eval.json-shaped test metrics of one linear readout shared by the stream's subjects (module docstring).

    Volumes are read in one input space for all subjects: the union of their masks."""
    masks = [stream.masks[s] for s in stream.subjects if s in stream.masks]  # volumes: flat voxel indices
    union = np.unique(np.concatenate(masks)) if masks else None
    split = {
        name: [SplitArrays.read(_single_subject(stream, s), name, union) for s in stream.subjects]
        for name in ("train", "val", "test")
    }
    x = np.concatenate([a.x for a in split["train"]])  # (N, P): every subject's training trials
    y = np.concatenate([a.y for a in split["train"]])
    predict, chosen = fit_linear(x, y, split["val"], steps, batch_size, lr)
    parts = [(predict(t.x), t, s) for t, s in zip(split["test"], stream.subjects, strict=True)]
    return {**_scored(parts), "linear": {"steps": steps, "batch_size": batch_size, "lr": lr, **chosen}}


def chance_metrics(stream: DatasetStream, draws: int = 20, seed: int = 0) -> dict:
    """eval.json-shaped test metrics of random scores: the mean over `draws` seeded draws."""
    tests = [(SplitArrays.read(_single_subject(stream, s), "test"), s) for s in stream.subjects]
    rng = np.random.default_rng(seed)
    runs = [_scored([(rng.random(t.y.shape), t, s) for t, s in tests]) for _ in range(draws)]
    return _mean_of(runs)


def _single_subject(stream: DatasetStream, subject: str) -> DatasetStream:
    return DatasetStream(stream.manifest, stream.rows, [name_of(subject)])


def _scored(parts: list[tuple[np.ndarray, SplitArrays, str]]) -> dict:
    scores = np.concatenate([p for p, _, _ in parts])
    labels = np.concatenate([t.y for _, t, _ in parts])
    ids = [s for p, _, s in parts for _ in range(len(p))]
    stimuli = [x for _, t, _ in parts for x in t.stimuli]
    result = grouped_metrics(scores, labels, ids)
    result["repeat_mean"] = grouped_metrics(*stimulus_means(scores, labels, ids, stimuli))
    return merge_metrics([result])


def _mean_of(results: list[dict]):
    """The element-wise mean of nested dicts of numbers of one shape."""
    first = results[0]
    if isinstance(first, dict):
        return {k: _mean_of([r[k] for r in results]) for k in first}
    return float(np.mean(results))
