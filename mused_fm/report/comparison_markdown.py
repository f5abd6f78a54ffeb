"""The report's comparison sections, from a Comparison (mused_fm.report.comparison): means with 95% intervals
and per-seed values, the baselines, paired differences with sign-flip p-values, the fixed criteria with pass
or fail, and the token-reliance check over seeds."""

from __future__ import annotations

from mused_fm.baselines import BASELINES
from mused_fm.report.comparison import (
    PAIRS,
    Comparison,
    criteria_results,
    differences,
    label,
    ordered_methods,
)
from mused_fm.report.markdown import table
from mused_fm.stats import interval, paired, sign_flip_p
from mused_fm.token_reliance import VARIANTS

__all__ = ["comparison_sections"]


def _values(iv) -> str:
    return ", ".join(f"{v:.3f}" for v in iv.values)


def _method_table(c: Comparison, dataset: str) -> str:
    rows = []
    for method in ordered_methods(c, dataset):
        trial, repeat = c.interval(dataset, method, "trial"), c.interval(dataset, method, "repeat")
        rows.append([label(method), str(trial.n), trial.text(), repeat.text() if repeat else "n/a", _values(trial)])
    for name in BASELINES:
        base = c.baselines.get(dataset, {}).get(name)
        if base:
            rows.append(
                [label(name), "-", f"{base['trial']:.3f}", f"{base.get('repeat', float('nan')):.3f}", "deterministic"]
            )
    header = ["method", "seeds", "mAP per trial, mean [95% CI]", "mAP, repeats averaged", "per seed (per trial)"]
    return table(header, rows)


def _difference_rows(rows: list[dict]) -> list[list[str]]:
    return [
        [
            r["dataset"],
            f"{label(r['better'])} - {label(r['worse'])}",
            str(r["interval"].n),
            r["interval"].text(),
            f"{r['p']:.3f}",
        ]
        for r in rows
    ]


def _against_ridge(c: Comparison, dataset: str) -> list[str]:
    """Sentences on how the best Transformer stands against the ridge decoder and the shared linear readout.

    The linear readout shares one decoder across subjects and is fitted by the Transformers' optimizer: when it
    beats the best Transformer, the shards hold signal that gradient descent on a shared decoder finds, and the
    Transformer misses it (the model's shortfall, not the cohort's); when it does not, sharing a decoder across
    subjects at this sample size is the limit, whatever the architecture.
    """
    base = c.baselines.get(dataset, {})
    ridge, linear = base.get("ridge", {}).get("trial"), base.get("linear", {}).get("trial")
    trained = {m: c.interval(dataset, m) for m in c.scores.get(dataset, {})}
    if ridge is None or not trained:
        return []
    best = max(trained, key=lambda m: trained[m].mean)
    iv = trained[best]
    gap = ridge - iv.mean
    if gap <= 0:
        text = f"The best Transformer ({label(best)}, {iv.text()}) reaches the ridge decoder ({ridge:.3f})."
    else:
        text = (
            f"The per-subject ridge decoder ({ridge:.3f}) is ahead of the best Transformer ({label(best)}, "
            f"{iv.text()}) by {gap:.3f}."
        )
    if linear is not None:
        if linear > iv.high:
            text += (
                f" The linear readout shared by the subjects and fitted with the Transformers' optimizer reaches "
                f"{linear:.3f}, above the best Transformer's interval: the shards hold signal that a shared decoder "
                "finds by gradient descent and the Transformer misses, so the model, not the cohort, falls short here."
            )
        elif linear < iv.low:
            text += (
                f" The shared linear readout ({linear:.3f}) is below the best Transformer's interval: the Transformer "
                "finds more than a linear map of its inputs."
            )
        else:
            text += f" The shared linear readout ({linear:.3f}) lies within the best Transformer's interval."
    return ["", text + " docs/BENCHMARKS.md (the individual-differences cohort) has the measurements."]


def comparison_sections(c: Comparison, figure: str = "comparison.png", forest: str = "differences.png") -> list[str]:
    protocol = c.protocol
    seeds = ", ".join(f"{label(m)} {s['seeds']}" for m, s in protocol["methods"].items())
    intro = [
        "## The paper's comparison, over seeds",
        "",
        f"![comparison]({figure})",
        "",
        f"Protocol `{protocol['path']}` (`launch/compare.py`): each dataset trained alone, the validation-selected "
        f"`best/` export of every run scored on the test split. Score: test mAP averaged over the dataset's subjects "
        f"(SS-ViT: one model per subject, averaged within the seed). The headline is per trial; the second column "
        f"averages each stimulus's predictions over its repeats first (NSD shows each test image 3 times). Seeds "
        f"0..n-1, shared by all methods, so differences are paired: {seeds}. Intervals are two-sided 95% Student-t "
        "intervals over seeds; the ridge decoder (closed form per subject, alpha chosen on validation), the linear "
        "readout (one for all subjects, AdamW on the BCE, step chosen on validation, seed 0) and chance "
        "(random scores) are deterministic.",
    ]
    for dataset in c.datasets:
        where = protocol.get("shards", {}).get(dataset)
        shards = [f"Shards: `{where}`.", ""] if where else []  # NSD: `make demo-compare` uses the paper's volumes
        trains = c.trains(dataset)
        if trains != dataset:  # a second shard set of one recipe dataset, often with a subset of the methods
            methods = ", ".join(label(m) for m in c.methods_of(dataset))
            shards += [f"The recipe's dataset `{trains}` from these shards; methods run: {methods}.", ""]
        intro += ["", f"### {dataset}", "", *shards, _method_table(c, dataset), *_against_ridge(c, dataset)]
    diffs = differences(c, PAIRS)
    sections = ["\n".join(intro)]
    if diffs:
        crit = criteria_results(c)
        crit_rows = [
            [
                r["name"],
                r["dataset"],
                r["interval"].text() if r["interval"] else "missing runs",
                "above 0" if r.get("expect", "above") == "above" else "not above 0",
                {True: "PASS", False: "FAIL", None: "not run"}[r["passed"]],
            ]
            for r in crit
        ]
        failed = [r for r in crit if r["passed"] is False]
        text = [
            "## Paired differences and the criteria fixed before the runs",
            "",
            f"![paired differences]({forest})",
            "",
            "Differences of per-trial subject-mean test mAP, paired by seed: mean [95% CI] and the exact two-sided "
            "sign-flip p-value (with 3 seeds the smallest possible p is 0.25, with 6 it is 0.031). The criteria "
            "read the t-interval; no correction is made for the number of comparisons, and a 'not above 0' "
            "criterion passes whenever the interval includes zero, which with 3 seeds is weak evidence of no "
            "effect.",
            "",
            table(["dataset", "difference", "seeds", "mean [95% CI]", "sign-flip p"], _difference_rows(diffs)),
        ]
        if crit_rows:
            text += [
                "",
                f"Criteria from `{protocol['path']}`, reported as they came out: "
                f"{sum(r['passed'] is True for r in crit)} pass, {len(failed)} fail, "
                f"{sum(r['passed'] is None for r in crit)} not run.",
                "",
                table(["criterion", "dataset", "difference [95% CI]", "expected", "result"], crit_rows),
            ]
        sections.append("\n".join(text))
    if c.reliance:
        sections.append(_reliance(c))
    return sections


def _reliance(c: Comparison) -> str:
    rows, diff_rows = [], []
    for dataset, variants in c.reliance.items():
        for variant in VARIANTS:
            if variant in variants:
                iv = interval(list(variants[variant].values()))
                rows.append([dataset, variant, str(iv.n), iv.text(), _values(iv)])
        own = variants.get("own", {})
        for variant in VARIANTS[1:]:
            if variant in variants and set(own) & set(variants[variant]):
                d = paired(own, variants[variant])
                diff_rows.append([dataset, f"own - {variant}", str(d.n), d.text(), f"{sign_flip_p(d.values):.3f}"])
    return "\n".join(
        [
            "## Does CLIP-MUSED use its subject tokens? (over seeds)",
            "",
            "Each CLIP-MUSED run of the comparison decoded with each subject's own tokens, the mean of its dataset's "
            "tokens, another subject's tokens (rows rotated by one), and zeroed tokens. A difference whose interval "
            "includes zero means the model does not rely on that subject information.",
            "",
            table(["dataset", "tokens", "seeds", "mAP mean [95% CI]", "per seed"], rows),
            "",
            table(["dataset", "difference", "seeds", "mean [95% CI]", "sign-flip p"], diff_rows),
        ]
    )
