"""The run report: `python launch/report.py DIR` writes DIR/report/report.md and its PNG figures.

DIR is a run directory or a `make demo` directory (see inputs.py for what is read). Sections appear
when their inputs exist: training curves and per-subject test metrics always; the paper's comparison
and the loss ablation when compare/ holds their runs (`make demo-compare`); attention, token
similarity and the token-reliance check when the run's shards are readable (the paths in its
config.yaml, or --shards); the new-subject curve when adapt/curve.json exists.
"""

from __future__ import annotations

import datetime
import json
import logging
from pathlib import Path

import numpy as np
import yaml

from mused_fm.baselines import chance_metrics
from mused_fm.config import Recipe, recipe_from_dict
from mused_fm.data.pipeline import DatasetStream
from mused_fm.evaluate import evaluate_streams, open_for_model
from mused_fm.files import json_safe, write_json, write_text
from mused_fm.model import load_export
from mused_fm.report import analysis, figures, markdown
from mused_fm.report.comparison import (
    PAIRS,
    Comparison,
    differences,
    label,
    ordered_methods,
    read_comparison,
)
from mused_fm.report.comparison_markdown import comparison_sections
from mused_fm.report.inputs import find_inputs, read_metrics
from mused_fm.subject_ids import dataset_of, name_of
from mused_fm.token_reliance import token_reliance

__all__ = ["write_report"]

logger = logging.getLogger(__name__)


def _run_recipe(path: Path) -> Recipe:
    """A run's resolved recipe. Runs written before adaptation had a recipe type of its own saved an `adapt:`
    block in every training config.yaml; it held only defaults and is dropped."""
    tree = yaml.safe_load(path.read_text()) or {}
    tree.pop("adapt", None)
    return recipe_from_dict(tree, source=str(path))


def _streams(recipe, model, shard_urls: list[str], notes: list[str]) -> dict[str, DatasetStream]:
    """The model's test shard sets, its known subjects only: `shard_urls` first, else the run's recipe URLs.

    A set that cannot be read becomes a note: the sections that need samples skip its dataset.
    """
    streams = {}
    named = [(None, url) for url in shard_urls]
    named += [(name, ds.url) for name, ds in recipe.data.datasets.items() if name in model.datasets]
    for name, url in named:
        if name in streams:
            continue
        try:
            stream = open_for_model(model, url)
        except (OSError, ValueError, KeyError) as err:
            notes.append(
                f"The shards at {url} could not be read, so the sections that need test samples "
                f"skip {name or 'them'}: {err}. Pass `--shards` to point at them."
            )
            continue
        stream.subjects = [s for s in stream.subjects if s in model.registry]
        if stream.subjects and stream.name not in streams:
            streams[stream.name] = stream
    return streams


def _adapted_subjects(path: Path) -> list[str]:
    """adapt.subjects of a sweep directory's config.yaml (empty if it cannot be read)."""
    try:
        return list((yaml.safe_load((path / "config.yaml").read_text()) or {}).get("adapt", {}).get("subjects", []))
    except (OSError, yaml.YAMLError, AttributeError):
        return []


def _chance_of(streams: dict[str, DatasetStream], subject_ids: list[str]) -> float | None:
    """Subject-mean test mAP of random scores for `subject_ids` (global ids of one dataset), or None when their
    dataset's shards are not open or do not hold them."""
    datasets = {dataset_of(s) for s in subject_ids}
    if len(datasets) != 1 or (stream := streams.get(datasets.pop())) is None:
        return None
    names = [name_of(s) for s in subject_ids]
    if not all(s in stream.manifest.subjects for s in subject_ids):
        return None
    one = DatasetStream(stream.manifest, {s: i for i, s in enumerate(subject_ids)}, names)
    return float(chance_metrics(one)["datasets"][stream.name]["subject_mean"]["mAP"])


def _comparison(compare: Comparison, out: Path) -> list[str]:
    """The comparison's figures and sections (intervals over seeds, baselines, differences, criteria)."""
    panels = {}
    for dataset in compare.datasets:
        base = compare.baselines.get(dataset, {})
        panels[dataset] = {
            "methods": [(label(m), compare.interval(dataset, m)) for m in ordered_methods(compare, dataset)],
            "ridge": base.get("ridge", {}).get("trial"),
            "linear": base.get("linear", {}).get("trial"),
            "chance": base.get("chance", {}).get("trial"),
        }
    if any(p["methods"] for p in panels.values()):
        figures.plot_seed_comparison({d: p for d, p in panels.items() if p["methods"]}, out / "comparison.png")
    rows = [
        (f"{r['dataset']}: {label(r['better'])} - {label(r['worse'])}", r["interval"])
        for r in differences(compare, PAIRS)
    ]
    if rows:
        figures.plot_differences(rows, out / "differences.png")
    return comparison_sections(compare)


def write_report(root: str | Path, shards: list[str] = (), attention_samples: int = 256) -> Path:
    """Build DIR/report/report.md and its figures; returns the report's path.

    `shards`: shard sets (folders or s3://) that replace the run's recipe URLs of their datasets.
    """
    inputs = find_inputs(root)
    out = inputs.root / "report"
    out.mkdir(parents=True, exist_ok=True)
    model = load_export(inputs.run / "export").eval()
    run_info = (
        json.loads((inputs.run / "run_info.json").read_text()) if (inputs.run / "run_info.json").is_file() else {}
    )
    notes: list[str] = []
    recipe = _run_recipe(inputs.run / "config.yaml")
    streams = _streams(recipe, model, list(shards), notes)
    main = inputs.eval
    if main is None and streams:
        logger.info("no eval.json beside the run: evaluating its export on the test split")
        main = json_safe(evaluate_streams(model, streams, "test", 256, repeat_mean=True))
        write_json(out / "eval.json", main)
    datasets = list(model.datasets)
    cfg = model.config
    sections = [
        f"# MUSED-FM report: {recipe.run.name}\n\n"
        f"Run `{inputs.run}`: a {cfg.depth}-layer, {cfg.dim}-wide trunk with subject tokens `{cfg.subject_tokens}`, "
        f"{len(model.registry)} subjects ({', '.join(model.registry.ids)}), trained on "
        f"{run_info.get('world_size', '?')} rank(s) with ZeRO stage {run_info.get('zero_stage', '?')}. Report written "
        f"{datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}."
    ]
    if inputs.cohort and inputs.cohort.get("clip_alignment"):
        sections.append(markdown.clip_alignment(inputs.cohort["clip_alignment"]))
    train, val = read_metrics(inputs.run)
    figures.plot_training(train, val, datasets, out / "training.png")
    sections.append(markdown.training(train, val, datasets))
    if main is not None:
        chance = {name: chance_metrics(s)["datasets"][name]["mAP"] for name, s in streams.items()}
        figures.plot_subject_metrics(main["subjects"], out / "subjects.png")
        sections.append(markdown.subjects(main, chance))
    compare = read_comparison(inputs.root / "compare")
    if compare is not None:
        sections.extend(_comparison(compare, out))
    reliance = token_reliance(model, streams) if streams and not (compare and compare.reliance) else None
    if reliance is not None:  # the run's own check, when the comparison has none over seeds
        sections.append(markdown.reliance(reliance))
    if streams:
        maps = {}
        for name, stream in streams.items():
            by_subject = analysis.readout_attention_by_subject(model, stream, max_per_subject=attention_samples)
            ids = list(by_subject)
            maps[name] = {
                "subjects": ids,
                "names": analysis.token_names(model, stream),
                **{k: np.stack([by_subject[s]["tokens"][i] for s in ids]) for i, k in enumerate(("llv", "hlv"))},
            }
        figures.plot_attention(maps, out / "attention.png")
        sections.append(markdown.attention(maps))
    adapted = {path: load_export(path / "export") for path in inputs.adapts if (path / "export").is_dir()}
    sim = analysis.token_similarity(model, list(adapted.values()))
    if sim is not None:
        figures.plot_token_similarity(sim, out / "tokens.png")
        sections.append(markdown.token_similarity(sim, [s for s in sim["ids"] if s not in model.registry.ids]))
    for path, points in inputs.adapts.items():
        adapted_ids = _adapted_subjects(path)
        label = ", ".join(adapted_ids) or path.name  # new subjects, or re-learnt ones (--replace)
        figures.plot_curve(points, out / f"curve_{path.name}.png", label)
        chance = _chance_of(streams, adapted_ids) if adapted_ids else None
        sections.append(markdown.new_subject(points, label, f"curve_{path.name}.png", path.name, chance))
    if compare is not None and compare.missing:
        notes.append(
            f"{len(compare.missing)} runs of the comparison have no eval.json (unfinished or failed; rerun "
            f"launch/compare.py to finish them): "
            + ", ".join(compare.missing[:10])
            + ("..." if len(compare.missing) > 10 else "")
            + "."
        )
    if notes:
        sections.append("\n".join(["## Notes", "", *(f"- {n}" for n in notes)]))
    path = out / "report.md"
    write_text(path, "\n\n".join(sections) + "\n")
    return path
