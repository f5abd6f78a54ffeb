"""The comparison of launch/compare.py read back: scores per dataset, method and seed, the baselines, the
paired differences and the criteria the protocol fixed before the runs.

Shape of the directory (mused_fm.compare): COMPARE/protocol.json, COMPARE/<dataset>/<method>/s<seed>/
eval.json (and <subject>/eval.json for one-model-per-subject methods), reliance.json for methods with the
token-reliance check, COMPARE/<dataset>/{ridge,linear,chance}/eval.json.

A seed's score is the subject-mean test mAP (the paper reports means over subjects), per trial (the
headline) or with each stimulus's repeats averaged first (NSD's 3 presentations of each test image).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mused_fm.baselines import BASELINES
from mused_fm.stats import Interval, interval, paired, sign_flip_p
from mused_fm.token_reliance import VARIANTS

__all__ = ["LABELS", "PAIRS", "SCORINGS", "Comparison", "criteria_results", "differences", "read_comparison"]

SCORINGS = {"trial": "per trial", "repeat": "repeats averaged"}
LABELS = {
    "clip_mused": "CLIP-MUSED",
    "ms_emb": "MS-EMB",
    "ms_smodel": "MS-SMODEL",
    "ss_vit": "SS-ViT",
    "ms_emb_clip": "MS-EMB + CLIP guidance",
    "ms_smodel_clip": "MS-SMODEL + CLIP guidance",
    "ss_vit_clip": "SS-ViT + CLIP guidance",
    "no_orth": "without orthogonality",
    "no_llv": "without RSA llv",
    "no_hlv": "without RSA hlv",
    "orth_only": "orthogonality only (no RSA)",
    "llv_only": "RSA llv only",
    "hlv_only": "RSA hlv only",
    "bce_only": "BCE only",
    "shuffled_clip": "shuffled CLIP (control)",
    "ridge": "ridge per subject",
    "linear": "linear readout, shared (AdamW)",
    "chance": "chance",
}
ORDERING = (("clip_mused", "ms_emb"), ("ms_emb", "ms_smodel"))
ABLATIONS = ("no_orth", "no_llv", "no_hlv", "orth_only", "llv_only", "hlv_only", "bce_only")
# The differences the report shows: the paper's ordering, each ablation row against the full loss, the control.
PAIRS = (*ORDERING, *(("clip_mused", a) for a in ABLATIONS), ("shuffled_clip", "bce_only"))


def label(method: str) -> str:
    return LABELS.get(method, method)


@dataclass
class Comparison:
    root: Path
    protocol: dict
    scores: dict[str, dict[str, dict[str, dict[int, float]]]] = field(default_factory=dict)
    """scores[dataset][method][scoring][seed]: subject-mean test mAP."""
    baselines: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    """baselines[dataset]["ridge" | "linear" | "chance"][scoring]."""
    reliance: dict[str, dict[str, dict[int, float]]] = field(default_factory=dict)
    """reliance[dataset][variant][seed] of CLIP-MUSED (methods with reliance: true)."""
    missing: list[str] = field(default_factory=list)
    """Runs of the protocol without eval.json (unfinished or failed)."""

    @property
    def datasets(self) -> list[str]:
        return list(self.scores)

    def methods_of(self, dataset: str) -> list[str]:
        """The methods the protocol runs on the shard set `dataset` (all of them unless it names a subset)."""
        return shard_set(self.protocol, dataset)[1] or list(self.scores.get(dataset, {}))

    def trains(self, dataset: str) -> str:
        """The recipe's dataset the shard set `dataset` trains (itself, unless the protocol names another)."""
        return shard_set(self.protocol, dataset)[0]

    def interval(self, dataset: str, method: str, scoring: str = "trial") -> Interval | None:
        seeds = self.scores.get(dataset, {}).get(method, {}).get(scoring, {})
        return interval(list(seeds.values())) if seeds else None


def shard_set(protocol: dict, name: str) -> tuple[str, list[str]]:
    """(the recipe's dataset, the methods run) of the protocol's shard set `name`: protocol.json as
    mused_fm.compare writes it; files from before shard sets had names give (name, every method)."""
    spec = protocol.get("datasets", {}).get(name, {})
    return spec.get("dataset", name), list(spec.get("methods") or protocol.get("methods") or [])


def _subject_means(evals: list[dict], dataset: str) -> dict[str, float]:
    """{scoring: mean over the dataset's subjects of their test mAP}, pooling the subjects of several evals."""
    out = {}
    for scoring, key in (("trial", None), ("repeat", "repeat_mean")):
        parts = [e if key is None else e.get(key) for e in evals]
        if any(p is None for p in parts):
            continue  # an eval.json written before repeats were scored
        maps = [m["mAP"] for p in parts for s, m in p["subjects"].items() if s.startswith(f"{dataset}/")]
        maps = [v for v in maps if v is not None and math.isfinite(v)]  # NaN (no positive class) is written as null
        if maps:
            out[scoring] = float(sum(maps) / len(maps))
    return out


def read_comparison(compare: str | Path) -> Comparison | None:
    """The comparison under `compare` (None without protocol.json)."""
    compare = Path(compare)
    if not (compare / "protocol.json").is_file():
        return None
    protocol = json.loads((compare / "protocol.json").read_text())
    result = Comparison(compare, protocol)
    for dataset, subjects in protocol["subjects"].items():
        result.scores[dataset] = {}
        trains, methods = shard_set(protocol, dataset)  # trains: the recipe's dataset, the key in eval.json
        for method in methods:
            spec = protocol["methods"][method]
            seeds: dict[str, dict[int, float]] = {}
            for seed in range(spec["seeds"]):
                run = compare / dataset / method / f"s{seed}"
                paths = [run / s / "eval.json" for s in subjects] if spec["per_subject"] else [run / "eval.json"]
                absent = [p.parent for p in paths if not p.is_file()]
                if absent:
                    result.missing.extend(str(p) for p in absent)
                    continue
                evals = [json.loads(p.read_text()) for p in paths]
                for scoring, value in _subject_means(evals, trains).items():
                    seeds.setdefault(scoring, {})[seed] = value
                if spec.get("reliance") and (run / "reliance.json").is_file():
                    variants = json.loads((run / "reliance.json").read_text()) or {}
                    for variant in VARIANTS:
                        if variant in variants:
                            value = variants[variant]["datasets"][trains]["subject_mean"]["mAP"]
                            result.reliance.setdefault(dataset, {}).setdefault(variant, {})[seed] = value
            if seeds:
                result.scores[dataset][method] = seeds
        for name in BASELINES:
            path = compare / dataset / name / "eval.json"
            if path.is_file():
                result.baselines.setdefault(dataset, {})[name] = _subject_means([json.loads(path.read_text())], trains)
    return result


def differences(c: Comparison, pairs, scoring: str = "trial") -> list[dict]:
    """Paired differences better - worse per dataset: {dataset, better, worse, interval, p} for pairs that ran."""
    rows = []
    for dataset in c.datasets:
        for better, worse in pairs:
            a = c.scores[dataset].get(better, {}).get(scoring)
            b = c.scores[dataset].get(worse, {}).get(scoring)
            if not a or not b or not set(a) & set(b):
                continue
            diff = paired(a, b)
            rows.append(
                {"dataset": dataset, "better": better, "worse": worse, "interval": diff, "p": sign_flip_p(diff.values)}
            )
    return rows


def criteria_results(c: Comparison, scoring: str = "trial") -> list[dict]:
    """Each criterion of the protocol on each dataset: {name, dataset, interval, p, expect, passed}.

    passed is None when the runs are missing or too few for an interval (fewer than 2 shared seeds).
    """
    out = []
    for crit in c.protocol.get("criteria", []):
        for dataset in c.datasets:
            if not {crit["better"], crit["worse"]} <= set(c.methods_of(dataset)):
                continue  # a shard set compared with a subset of the methods
            found = [r for r in differences(c, [(crit["better"], crit["worse"])], scoring) if r["dataset"] == dataset]
            if not found or not math.isfinite(found[0]["interval"].low):
                out.append({**crit, "dataset": dataset, "interval": None, "p": None, "passed": None})
                continue
            diff = found[0]["interval"]
            above = diff.above_zero
            passed = above if crit.get("expect", "above") == "above" else not above
            out.append({**crit, "dataset": dataset, "interval": diff, "p": found[0]["p"], "passed": passed})
    return out


def ordered_methods(c: Comparison, dataset: str, methods: Mapping | None = None) -> list[str]:
    """Methods of a dataset in the paper's order, then the ablations, then the rest."""
    have = list(c.scores.get(dataset, {}))
    first = ["ss_vit", "ms_smodel", "ms_emb", "clip_mused", *ABLATIONS, "shuffled_clip"]
    return [m for m in first if m in have] + [m for m in have if m not in first]
