"""Figures (matplotlib, Agg backend: no display on clusters). Each function writes one PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

__all__ = ["plot_curve"]

STYLE = {
    "tokens": ("token-only (new rows only)", "tab:blue", "o"),
    "scratch": ("single-subject from scratch", "tab:gray", "s"),
    "full": ("full fine-tuning", "tab:orange", "^"),
}


def plot_curve(points: list[dict], path: Path, subjects: str) -> None:
    """Test mAP against the number of the new subjects' training samples, one line per method."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for method, (label, color, marker) in STYLE.items():
        pts = sorted((p for p in points if p["method"] == method), key=lambda p: p["n_train"])
        if pts:
            ax.plot([p["n_train"] for p in pts], [p["mAP"] for p in pts], marker=marker, color=color, label=label)
    for p in points:
        if p["method"] == "in_pretraining":
            ax.axhline(p["mAP"], color="tab:green", linestyle="--", label="in pretraining (reference)")
            ax.axhline(0.9 * p["mAP"], color="tab:green", linestyle=":", linewidth=1, label="90% of reference")
    ax.set_xscale("log")
    ax.set_xlabel("training samples of the new subject(s)")
    ax.set_ylabel("test mAP")
    ax.set_title(f"New-subject data efficiency: {subjects}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
