"""The report's text: one function per section, each a figure reference, a table and sentences with the numbers.

Functions take plain data (dicts, arrays) computed elsewhere and return Markdown; nothing here reads
files or runs the model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from mused_fm.stats import interval
from mused_fm.subject_ids import dataset_of

__all__ = [
    "attention",
    "curve_groups",
    "new_subject",
    "reliance",
    "subject_mean_map",
    "subjects",
    "table",
    "token_similarity",
    "training",
]

EARLY_ROIS = ("V1", "V2", "V3")  # early visual cortex: where the paper expects the low-level token to look
STYLE_NAMES = {"full": "Full fine-tuning", "scratch": "A single-subject model from scratch"}


def _f(x, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c if isinstance(c, str) else _f(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def subject_mean_map(subject_metrics: Mapping[str, Mapping], dataset: str, only: Sequence[str] | None = None) -> float:
    """Mean test mAP over a dataset's subjects (the paper's per-subject mean), optionally over `only`."""
    values = [
        m["mAP"]
        for s, m in subject_metrics.items()
        if dataset_of(s) == dataset and (only is None or s in only) and m.get("mAP") is not None
    ]
    return float(np.mean(values)) if values else float("nan")


def training(train: Sequence[dict], val: Sequence[dict], datasets: Sequence[str]) -> str:
    text = ["## Training and validation", "", "![training and validation curves](training.png)", ""]
    if not train:
        return "\n".join([*text, "The run logged no training steps."])
    first, last = train[0], train[-1]
    sentence = (
        f"Training loss went from {_f(first['loss'])} at step {first['step']} to {_f(last['loss'])} at step "
        f"{last['step']}."
    )
    parts = []
    for name in datasets:
        pts = [(r["step"], r["datasets"][name]["mAP"]) for r in val if name in r.get("datasets", {})]
        if pts:
            best = max(pts, key=lambda p: p[1])
            parts.append(
                f"{name} from {_f(pts[0][1])} (step {pts[0][0]}) to {_f(pts[-1][1])} (step {pts[-1][0]}), "
                f"best {_f(best[1])} at step {best[0]}"
            )
    if parts:
        sentence += " Validation mAP (pooled over the dataset's samples) went " + "; ".join(parts) + "."
    return "\n".join([*text, sentence])


def subjects(metrics: dict, chance: Mapping[str, float]) -> str:
    rows = []
    for name, d in metrics["datasets"].items():
        rows.append([f"**{name}** (pooled)", str(d["n"]), d["mAP"], d["AUC"], d["hamming"]])
        rows.append([f"**{name}** (mean of subjects)", "", *(d["subject_mean"][k] for k in ("mAP", "AUC", "hamming"))])
    rows += [[sid, str(m["n"]), m["mAP"], m["AUC"], m["hamming"]] for sid, m in metrics["subjects"].items()]
    sentences = []
    for name, d in metrics["datasets"].items():
        own = [m["mAP"] for s, m in metrics["subjects"].items() if dataset_of(s) == name and m["mAP"] is not None]
        sentences.append(
            f"{name}: test mAP {_f(d['mAP'])} pooled over {d['n']} samples, {_f(d['subject_mean']['mAP'])} averaged "
            f"over {len(own)} subjects (range {_f(min(own))}-{_f(max(own))}); AUC {_f(d['AUC'])}, Hamming "
            f"{_f(d['hamming'], 4)}"
            + (f"; random scores would score mAP {_f(chance[name])} (mean of 20 draws)." if name in chance else ".")
        )
    return "\n".join(
        [
            "## Test metrics per subject",
            "",
            "![per-subject test metrics](subjects.png)",
            "",
            " ".join(sentences),
            "",
            table(["subject", "n", "mAP", "AUC", "Hamming"], rows),
        ]
    )


def reliance(result: Mapping[str, dict]) -> str:
    datasets = list(result["own"]["datasets"])
    rows = [
        [name, *(result[name]["datasets"][d]["subject_mean"]["mAP"] for d in datasets)]
        for name in ("own", "mean", "swapped")
    ]
    parts = []
    for d in datasets:
        own, mean, swapped = (result[k]["datasets"][d]["subject_mean"]["mAP"] for k in ("own", "mean", "swapped"))
        parts.append(
            f"{d}: own {_f(own)}, mean token {_f(mean)} ({mean - own:+.3f}), another subject's token "
            f"{_f(swapped)} ({swapped - own:+.3f})"
        )
    return "\n".join(
        [
            "## Does the model use its subject tokens?",
            "",
            "Test mAP (mean over subjects) when each subject is decoded with its own tokens, with the mean of its "
            "dataset's tokens, and with another subject's tokens (rows rotated by one). " + "; ".join(parts) + ". "
            "The smaller these drops, the more the trunk decodes from the fMRI tokens alone, and the less any "
            "subject-token variant (MS-EMB, CLIP-MUSED, a new subject's fitted tokens) can differ from none.",
            "",
            table(["tokens", *datasets], rows),
        ]
    )


def attention(maps: Mapping[str, dict]) -> str:
    sentences = []
    for name, m in maps.items():
        names = list(m["names"])
        early = [i for i, n in enumerate(names) if n in EARLY_ROIS]
        if early:
            llv, hlv = (float(m[k][:, early].sum(1).mean()) for k in ("llv", "hlv"))
            more = int((m["llv"][:, early].sum(1) > m["hlv"][:, early].sum(1)).sum())
            sentences.append(
                f"{name}: the low-level token puts {llv:.0%} of its ROI attention on {'/'.join(EARLY_ROIS)} and the "
                f"high-level token {hlv:.0%} (uniform: {len(early) / len(names):.0%}); the low-level token leans "
                f"more to early areas in {more} of {len(m['subjects'])} subjects. The paper reads this figure as "
                "llv attending to early and hlv to higher visual areas."
            )
        else:
            top = [names[i] for i in m["hlv"].mean(0).argsort()[::-1][:2]]
            sentences.append(
                f"{name}: the tokens are grid cells of the volume tokenizer; the high-level token "
                f"attends most to cells {', '.join(top)} on average (uniform {1 / len(names):.0%} each)."
            )
    return "\n".join(
        [
            "## Attention of the subject tokens over ROIs (last layer; the paper's Fig. F8)",
            "",
            "![attention](attention.png)",
            "",
            "Mean over test samples and heads, renormalised over the dataset's tokens. " + " ".join(sentences),
        ]
    )


def token_similarity(sim: dict, added: Sequence[str] = ()) -> str:
    """`added`: subjects fitted afterwards by token-only adaptation (named, they are in the matrices)."""
    ids = sim["ids"]
    datasets = list(dict.fromkeys(dataset_of(s) for s in ids))
    parts = []
    for d in datasets:
        idx = [i for i, s in enumerate(ids) if dataset_of(s) == d]
        if len(idx) < 2:
            continue
        off = ~np.eye(len(idx), dtype=bool)
        llv, hlv = (float(sim[k][np.ix_(idx, idx)][off].mean()) for k in ("llv", "hlv"))
        parts.append(f"{d} ({len(idx)} subjects): low-level {llv:.2f}, high-level {hlv:.2f}")
    text = "Mean cosine similarity between different subjects' tokens, " + "; ".join(parts) + "." if parts else ""
    if added:
        text += f" The matrices include {', '.join(added)}, added after pretraining by token-only adaptation."
    return "\n".join(
        [
            "## Similarity of subject tokens across subjects (the paper's Fig. F7)",
            "",
            "![token similarity](tokens.png)",
            "",
            text,
        ]
    )


def _finite(x) -> bool:
    return x is not None and math.isfinite(x)


def curve_groups(points: Sequence[dict]) -> dict[tuple[str, float], list[dict]]:
    """Points of a new-subject sweep grouped by (method, fraction): one point per seed in each group."""
    groups: dict[tuple[str, float], list[dict]] = {}
    for p in points:
        groups.setdefault((p["method"], float(p["fraction"])), []).append(p)
    return groups


def new_subject(
    points: Sequence[dict],
    subjects_label: str,
    png: str = "curve.png",
    where: str = "adapt",
    chance: float | None = None,
) -> str:
    """The sweep's table (mean [95% CI] over seeds per method and fraction) and its sentences: token-only at
    10% against the subject in pretraining, and the gain of fitting tokens over the untrained mean token.

    `chance`: the subject's test mAP under random scores. Near chance a share of the in-pretraining mAP says
    little (0.21 of 0.22 is 95% when chance is 0.19), so the share of the in-pretraining gain over chance,
    (mAP - chance) / (reference - chance), is given beside it."""
    groups = {k: [p for p in pts if _finite(p["mAP"])] for k, pts in curve_groups(points).items()}
    groups = {k: pts for k, pts in groups.items() if pts}  # a run whose test split had no positive class: no mAP
    stats = {key: interval([p["mAP"] for p in pts]) for key, pts in groups.items()}
    rows = [
        [
            method,
            _f(fraction, 2),
            str(pts[0]["n_train"]),
            str(len(pts)),
            stats[method, fraction].text(),
            ", ".join(_f(p["mAP"]) for p in pts),
            float(np.mean([p["AUC"] for p in pts])),
        ]
        for (method, fraction), pts in groups.items()
    ]
    ref = next((p for p in points if p["method"] == "in_pretraining"), None)
    zero = next((p for p in points if p["method"] == "zero_shot"), None)
    text = []
    tokens = sorted((k for k in groups if k[0] == "tokens"), key=lambda k: abs(k[1] - 0.1))
    if tokens and ref:
        t = stats[tokens[0]]
        share = t.mean / ref["mAP"]
        target = ""
        if tokens[0][1] == 0.1:
            target = f" (target at 10%: at least 90%, {'met' if share >= 0.9 else 'not met'} by the mean"
            target += f"; the interval's lower end is {t.low / ref['mAP']:.1%})" if t.n > 1 else ")"
        text.append(  # one decimal: a share of 89.7% must not read as the 90% it misses
            f"With {tokens[0][1]:.0%} of {subjects_label}'s training data ({groups[tokens[0]][0]['n_train']} samples), "
            f"token-only adaptation reaches test mAP {t.text()} over {t.n} seed(s), {share:.1%} of the "
            f"{_f(ref['mAP'])} the subject gets when it is part of pretraining{target}."
        )
    if zero and tokens:
        gains = ", ".join(
            f"{k[1]:.0%} {stats[k].mean - zero['mAP']:+.3f}" for k in sorted(k for k in groups if k[0] == "tokens")
        )
        of_ref = f" ({zero['mAP'] / ref['mAP']:.1%} of the in-pretraining mAP)" if ref and _finite(zero["mAP"]) else ""
        text.append(
            f"Zero-shot (the mean token of the dataset's known subjects, no training): {_f(zero['mAP'])}{of_ref}; "
            f"fitting the tokens adds, by fraction: {gains}."
        )
    if chance is not None and ref and _finite(ref["mAP"]) and tokens:
        t, gain = stats[tokens[0]], ref["mAP"] - chance
        above = f"{(t.mean - chance) / gain:.1%}" if gain > 0 else "undefined (the reference is not above chance)"
        low = f"; the interval's lower end {(t.low - chance) / gain:.1%}" if gain > 0 and t.n > 1 else ""
        zero_above = (
            f", zero-shot {(zero['mAP'] - chance) / gain:.1%}" if gain > 0 and zero and _finite(zero["mAP"]) else ""
        )
        text.append(
            f"Chance (random scores) on the subject's test split: {_f(chance)}; of the in-pretraining gain over "
            f"chance ({_f(gain)}), token-only at {tokens[0][1]:.0%} recovers {above}{low}{zero_above}."
        )
    for method in ("full", "scratch"):
        best = groups.get((method, 1.0))
        if best:
            text.append(f"{STYLE_NAMES[method]} at 100%: {stats[method, 1.0].text()}.")
    return "\n".join(
        [
            f"## New subject: data efficiency ({subjects_label}, {where}/)",
            "",
            f"![new-subject curve]({png})",
            "",
            " ".join(text),
            "",
            table(["method", "fraction", "n_train", "seeds", "mAP mean [95% CI]", "per seed", "AUC (mean)"], rows),
        ]
    )


def clip_alignment(a: dict) -> str:
    """The simulated cohort's CLIP stand-in: how much its features mean (shards_tools.tiny_clip.clip_alignment)."""
    return "\n".join(
        [
            "## The CLIP stand-in",
            "",
            f"The cohort's tiny CLIP is trained contrastively on its own image-caption pairs. Over {a['stimuli']} "
            f"NSD-like stimuli, the similarity of its high-level features correlates r = {a['hlv_label_r']:.2f} with "
            f"the stimuli's label similarity ({a['hlv_label_r_shuffled']:+.2f} against shuffled labels, the "
            f"negative control), and its low-level features' similarity r = {a['llv_image_r']:.2f} with the images' "
            f"low-level statistics ({a['llv_image_r_shuffled']:+.2f} shuffled). The real ViT-B/16 cannot be "
            "measured here (no weights offline).",
        ]
    )
