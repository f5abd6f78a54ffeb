"""Figures of the report and of the new-subject sweep (matplotlib, Agg backend: no display on clusters).

Each function writes one PNG atomically (temp file, then rename).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from mused_fm.files import atomic_path
from mused_fm.stats import interval
from mused_fm.subject_ids import dataset_of

__all__ = [
    "plot_attention",
    "plot_curve",
    "plot_differences",
    "plot_seed_comparison",
    "plot_subject_metrics",
    "plot_token_similarity",
    "plot_training",
]

STYLE = {
    "tokens": ("token-only (new rows only)", "tab:blue", "o"),
    "scratch": ("single-subject from scratch", "tab:gray", "s"),
    "full": ("full fine-tuning", "tab:orange", "^"),
}
DATASET_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown")


def _save(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:  # keeps the .png suffix, which savefig reads the format from
        fig.savefig(tmp)
    plt.close(fig)


def plot_curve(points: list[dict], path: Path, subjects: str) -> None:
    """Test mAP against the new subjects' training samples: per method the mean over seeds with its 95%
    interval and the seeds as dots; zero-shot and the subject in pretraining as horizontal lines."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for method, (label, color, marker) in STYLE.items():
        by_n: dict[int, list[float]] = {}
        for p in points:
            if p["method"] == method and p["mAP"] is not None and np.isfinite(p["mAP"]):
                by_n.setdefault(p["n_train"], []).append(p["mAP"])
        if not by_n:
            continue
        ns = sorted(by_n)
        stats = [interval(by_n[n]) for n in ns]
        errors = [
            [0 if not np.isfinite(s.low) else s.mean - s.low for s in stats],
            [0 if not np.isfinite(s.high) else s.high - s.mean for s in stats],
        ]
        ax.errorbar(ns, [s.mean for s in stats], yerr=errors, marker=marker, color=color, label=label, capsize=3)
        for n in ns:
            if len(by_n[n]) > 1:
                ax.scatter([n] * len(by_n[n]), by_n[n], s=8, color=color, alpha=0.4)
    for p in points:
        if p["method"] == "in_pretraining":
            ax.axhline(p["mAP"], color="tab:green", linestyle="--", label="in pretraining (reference)")
            ax.axhline(0.9 * p["mAP"], color="tab:green", linestyle=":", linewidth=1, label="90% of reference")
        if p["method"] == "zero_shot":
            ax.axhline(p["mAP"], color="tab:purple", linestyle="-.", label="zero-shot (mean token)")
    ax.set_xscale("log")
    ax.set_xlabel("training samples of the new subject(s)")
    ax.set_ylabel("test mAP (mean, 95% CI over seeds)")
    ax.set_title(f"New-subject data efficiency: {subjects}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_training(train: Sequence[dict], val: Sequence[dict], datasets: Sequence[str], path: Path) -> None:
    """Left: training loss (total and each dataset's BCE) by step; right: validation mAP per dataset."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=120)
    steps = [r["step"] for r in train]
    left.plot(steps, [r["loss"] for r in train], color="black", label="total loss")
    for name, color in zip(datasets, DATASET_COLORS, strict=False):
        if train and f"{name}/bce" in train[0]:
            left.plot(steps, [r[f"{name}/bce"] for r in train], color=color, label=f"{name} BCE")
    left.set_yscale("log")
    left.set(xlabel="step", ylabel="training loss (log)", title="Training")
    for name, color in zip(datasets, DATASET_COLORS, strict=False):
        pts = [(r["step"], r["datasets"][name]["mAP"]) for r in val if name in r.get("datasets", {})]
        if pts:
            right.plot(*zip(*pts, strict=True), marker="o", color=color, label=f"{name} val mAP")
    right.set(xlabel="step", ylabel="validation mAP (pooled)", title="Validation")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, path)


def plot_subject_metrics(subjects: Mapping[str, Mapping[str, float]], path: Path) -> None:
    """Bars of test mAP, AUC and Hamming per subject, coloured by dataset."""
    ids = list(subjects)
    datasets = list(dict.fromkeys(dataset_of(s) for s in ids))
    colors = [DATASET_COLORS[datasets.index(dataset_of(s)) % len(DATASET_COLORS)] for s in ids]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), dpi=120)
    for ax, key in zip(axes, ("mAP", "AUC", "hamming"), strict=True):
        values = [np.nan if subjects[s].get(key) is None else subjects[s][key] for s in ids]
        ax.bar(range(len(ids)), values, color=colors)
        ax.set_xticks(range(len(ids)), ids, rotation=60, ha="right", fontsize=7)
        ax.set_title(f"test {key}" + (" (lower is better)" if key == "hamming" else ""), fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def plot_attention(maps: Mapping[str, dict], path: Path) -> None:
    """Per dataset, two heatmaps (llv, hlv): subjects x tokens, last-layer attention renormalised over tokens.

    maps[dataset] = {"subjects": [...], "names": [...], "llv": (S, M), "hlv": (S, M)}.
    """
    rows = list(maps)
    fig, axes = plt.subplots(
        len(rows),
        2,
        figsize=(11, 0.9 + 0.45 * max(len(m["subjects"]) for m in maps.values()) * len(rows) + 0.6 * len(rows)),
        dpi=120,
        squeeze=False,
    )
    for r, name in enumerate(rows):
        m = maps[name]
        for c, key in enumerate(("llv", "hlv")):
            ax = axes[r, c]
            image = ax.imshow(m[key], aspect="auto", cmap="viridis")
            ax.set_yticks(range(len(m["subjects"])), m["subjects"], fontsize=7)
            step = max(1, len(m["names"]) // 16)
            ax.set_xticks(range(0, len(m["names"]), step), m["names"][::step], rotation=60, ha="right", fontsize=7)
            ax.set_title(f"{name}: {key} token's attention over tokens (last layer)", fontsize=9)
            fig.colorbar(image, ax=ax, fraction=0.04)
    _save(fig, path)


def plot_token_similarity(sim: dict, path: Path) -> None:
    """Cosine similarity of subjects' low-level and high-level tokens (the paper's Fig. F7)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), dpi=120)
    ids = sim["ids"]
    for ax, key in zip(axes, ("llv", "hlv"), strict=True):
        image = ax.imshow(sim[key], vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_xticks(range(len(ids)), ids, rotation=70, ha="right", fontsize=7)
        ax.set_yticks(range(len(ids)), ids, fontsize=7)
        ax.set_title(f"cosine similarity of {key} tokens", fontsize=10)
        fig.colorbar(image, ax=ax, fraction=0.046)
    _save(fig, path)


def plot_seed_comparison(panels: Mapping[str, dict], path: Path) -> None:
    """One panel per dataset: per method the per-seed scores (dots) and their mean with its 95% interval
    (bar), ridge, the shared linear readout and chance as horizontal lines.

    panels[dataset] = {"methods": [(label, Interval)], "ridge" | "linear" | "chance": float | None}.
    """
    names = list(panels)
    width = max(len(p["methods"]) for p in panels.values())
    fig, axes = plt.subplots(len(names), 1, figsize=(1.5 + 0.62 * width, 3.0 * len(names)), dpi=120, squeeze=False)
    for ax, name in zip(axes[:, 0], names, strict=True):
        panel = panels[name]
        for i, (_text, iv) in enumerate(panel["methods"]):
            jitter = np.linspace(-0.15, 0.15, iv.n) if iv.n > 1 else np.zeros(1)
            ax.scatter(i + jitter, iv.values, s=10, color="tab:gray", alpha=0.7, zorder=2)
            low, high = (iv.low, iv.high) if np.isfinite(iv.low) else (iv.mean, iv.mean)
            ax.errorbar(
                i, iv.mean, yerr=[[iv.mean - low], [high - iv.mean]], fmt="o", color="tab:blue", capsize=4, zorder=3
            )
        for key, style in (("ridge", "--"), ("linear", "-."), ("chance", ":")):
            if panel.get(key) is not None:
                ax.axhline(panel[key], linestyle=style, color="black", linewidth=1, label=key)
        ax.set_xticks(
            range(len(panel["methods"])), [t for t, _ in panel["methods"]], rotation=35, ha="right", fontsize=7
        )
        ax.set_ylabel("test mAP, subject mean")
        ax.set_title(f"{name}: mean and 95% CI over seeds (dots: seeds)", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    _save(fig, path)


def plot_differences(rows: Sequence[tuple[str, object]], path: Path) -> None:
    """Forest plot of paired differences: rows of (label, Interval), zero marked."""
    fig, ax = plt.subplots(figsize=(7.5, 0.9 + 0.3 * len(rows)), dpi=120)
    for i, (_text, iv) in enumerate(rows):
        low, high = (iv.low, iv.high) if np.isfinite(iv.low) else (iv.mean, iv.mean)
        color = "tab:green" if low > 0 else ("tab:red" if high < 0 else "tab:gray")
        ax.errorbar(iv.mean, i, xerr=[[iv.mean - low], [high - iv.mean]], fmt="o", color=color, capsize=3)
        ax.scatter(iv.values, [i] * iv.n, s=6, color="black", alpha=0.4)
    ax.axvline(0, color="black", linewidth=1)
    ax.set_yticks(range(len(rows)), [t for t, _ in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("paired difference of test mAP (mean, 95% CI; dots: seeds)")
    ax.grid(axis="x", alpha=0.3)
    _save(fig, path)
