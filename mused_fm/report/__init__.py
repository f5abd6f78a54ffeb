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

from mused_fm.config import Recipe, recipe_from_dict
from mused_fm.data.pipeline import DatasetStream
from mused_fm.evaluate import evaluate_streams, open_for_model
from mused_fm.files import json_safe, write_json, write_text
from mused_fm.model import load_export
from mused_fm.report import analysis, figures, markdown
from mused_fm.report.inputs import ABLATIONS, BASELINES, ReportInputs, find_inputs, read_metrics

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


def _comparison_tables(inputs: ReportInputs, main: dict) -> tuple[dict, dict, dict]:
    """(comparison table, paired wins, ablation table): subject-mean test mAP per method and dataset."""
    datasets = list(main["datasets"])
    compare, paired, ablate = {}, {d: {} for d in datasets}, {}
    for key, label in BASELINES.items():
        if key in inputs.variants:
            subj = inputs.variants[key]["subjects"]
            compare[label] = {d: markdown.subject_mean_map(subj, d, list(main["subjects"])) for d in datasets}
            for d in datasets:
                common = [s for s in subj if s.startswith(f"{d}/") and s in main["subjects"]]
                wins = sum(main["subjects"][s]["mAP"] > subj[s]["mAP"] for s in common)
                if common:
                    paired[d][label] = (wins, len(common))
    if compare:
        compare["CLIP-MUSED"] = {d: markdown.subject_mean_map(main["subjects"], d) for d in datasets}
    for key, label in ABLATIONS.items():
        if key in inputs.variants:
            ablate[label] = {d: markdown.subject_mean_map(inputs.variants[key]["subjects"], d) for d in datasets}
    if ablate:
        ablate = {
            "CLIP-MUSED (all terms)": {d: markdown.subject_mean_map(main["subjects"], d) for d in datasets},
            **ablate,
        }
    return compare, paired, ablate


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
        main = json_safe(evaluate_streams(model, streams, "test", 256))
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
    train, val = read_metrics(inputs.run)
    figures.plot_training(train, val, datasets, out / "training.png")
    sections.append(markdown.training(train, val, datasets))
    reliance = analysis.token_reliance(model, streams) if streams else None
    if main is not None:
        chance = {name: analysis.chance_map(s) for name, s in streams.items()}
        figures.plot_subject_metrics(main["subjects"], out / "subjects.png")
        sections.append(markdown.subjects(main, chance))
        compare, paired, ablate = _comparison_tables(inputs, main)
        if compare:
            figures.plot_comparison(compare, out / "comparison.png", "The paper's comparison on this cohort")
            effect = None
            if reliance is not None:
                own, mean = (reliance[k]["datasets"] for k in ("own", "mean"))
                effect = {d: own[d]["subject_mean"]["mAP"] - mean[d]["subject_mean"]["mAP"] for d in own}
            sections.append(markdown.comparison(compare, paired, effect))
        if ablate:
            figures.plot_comparison(ablate, out / "ablation.png", "Loss ablation")
            sections.append(markdown.ablation(ablate))
    if reliance is not None:
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
        added = [s for s in adapted[path].registry.ids if s not in model.registry.ids] if path in adapted else []
        label = ", ".join(added) or path.name
        figures.plot_curve(points, out / f"curve_{path.name}.png", label)
        sections.append(markdown.new_subject(points, label, f"curve_{path.name}.png", path.name))
    if inputs.missing_variants:
        notes.append(
            "Runs under compare/ without eval.json (unfinished or not evaluated): "
            + ", ".join(inputs.missing_variants)
            + "."
        )
    if notes:
        sections.append("\n".join(["## Notes", "", *(f"- {n}" for n in notes)]))
    path = out / "report.md"
    write_text(path, "\n\n".join(sections) + "\n")
    return path
