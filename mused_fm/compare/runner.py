"""Run a comparison protocol: single-process training runs in a pool of worker processes, then baselines.

Each worker trains its runs one after another in one process (one world-of-one process group, imports paid
once), with the machine's cores split between the workers. A run is done when its eval.json exists: a rerun
skips it, and an interrupted run resumes from its newest complete checkpoint (the trainer's own resume). A
run that fails is named at the end and the others go on.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import multiprocessing
import os
import time
from pathlib import Path

import torch

from mused_fm.baselines import BASELINES, chance_metrics, linear_metrics, ridge_metrics
from mused_fm.compare.protocol import Protocol, Run
from mused_fm.config import Recipe, load_recipe
from mused_fm.data.manifest import Manifest
from mused_fm.data.pipeline import DatasetStream
from mused_fm.errors import InputError
from mused_fm.evaluate import evaluate_model, open_for_model
from mused_fm.files import json_safe, write_json
from mused_fm.log import init_logging
from mused_fm.model import load_export
from mused_fm.subject_ids import global_id, name_of
from mused_fm.token_reliance import token_reliance
from mused_fm.train.loop import BEST, train

__all__ = ["run_protocol"]

logger = logging.getLogger("mused_fm.compare")
EVAL, RELIANCE = "eval.json", "reliance.json"


def run_protocol(
    protocol: Protocol, shards: dict[str, str], out: str | Path, jobs: int = 2, only: list[str] | None = None
) -> list[str]:
    """Every run and baseline of `protocol` not yet done under `out`; returns the failed runs (empty: all done).

    Args:
        shards: dataset name -> shard set URL, for every dataset of the protocol (or of `only`).
        only: datasets to run (default: all of the protocol's).
    """
    out = Path(out)
    chosen = only or list(protocol.datasets)
    missing = [d for d in chosen if d not in shards]
    if missing:
        raise InputError(f"no shards given for datasets {missing}: pass --shards {missing[0]}=URL.")
    unknown = [d for d in chosen if d not in protocol.datasets]
    if unknown:
        raise InputError(f"datasets {unknown} are not in the protocol {protocol.path} ({sorted(protocol.datasets)}).")
    subjects = {d: _trained_subjects(protocol, d, shards[d]) for d in chosen}  # names, per shard set
    runs = protocol.runs(subjects, chosen)
    _check_done_runs(runs, out)
    _write_protocol(protocol, out, {d: shards[d] for d in chosen}, subjects)
    todo = [r for r in runs if not (r.directory(out) / EVAL).is_file()]
    tasks = [(_train_and_evaluate, (r, shards[r.dataset], str(out))) for r in todo]
    tasks += [
        (_baselines, (d, protocol.datasets[d]["dataset"], shards[d], subjects[d], str(out)))
        for d in chosen
        if not _baselines_done(out, d)
    ]
    tasks.sort(key=lambda t: t[0] is _train_and_evaluate and t[1][0].subject is not None)  # long runs first
    logger.info("%d runs of %d to do, %d baseline sets, %d workers", len(todo), len(runs), len(tasks) - len(todo), jobs)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))  # before the workers start
    failed: list[str] = []
    start = time.monotonic()
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker) as pool:
        futures = {pool.submit(fn, *args): _label(args[0]) for fn, args in tasks}
        for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
            label = futures[future]
            try:
                future.result()
                logger.info("[%d/%d] %s done (%.0f s so far)", done, len(tasks), label, time.monotonic() - start)
            except Exception as err:  # one run's failure must not stop the others; named at the end
                failed.append(f"{label}: {type(err).__name__}: {str(err)[:300]}")
                logger.error("[%d/%d] %s failed: %s", done, len(tasks), label, err)
    return failed


def _label(item) -> str:
    if isinstance(item, Run):
        return f"{item.dataset}/{item.method}/s{item.seed}" + (f"/{item.subject}" if item.subject else "")
    return f"{item}/baselines"


def _write_protocol(protocol: Protocol, out: Path, shards: dict[str, str], subjects: dict[str, list[str]]) -> None:
    """OUT/protocol.json: the protocol and, per dataset run so far (this call's and earlier calls'), its shards
    and subjects; a run with --datasets nsd then one with --datasets hcp leaves both."""
    path = out / "protocol.json"
    before = json.loads(path.read_text()) if path.is_file() else {}
    write_json(
        path,
        {
            **protocol.as_dict(),
            "shards": {**before.get("shards", {}), **shards},
            "subjects": {**before.get("subjects", {}), **subjects},
        },
    )


def _run_spec(run: Run) -> dict:
    """What makes a run: stored in its eval.json, so a rerun under a changed protocol is caught."""
    return {"recipes": list(run.recipes), "overrides": list(run.overrides)}


def _check_done_runs(runs: list[Run], out: Path) -> None:
    """Finished runs must have been trained as the protocol now says, or their results would be reused silently."""
    changed = []
    for run in runs:
        path = run.directory(out) / EVAL
        if path.is_file() and json.loads(path.read_text()).get("run", _run_spec(run)) != _run_spec(run):
            changed.append(str(path.parent))
    if changed:
        raise InputError(
            f"{len(changed)} finished runs under {out} were trained with other recipes or overrides than the protocol "
            f"now gives them (first: {changed[0]}); write the changed protocol's results to a new --out, or delete "
            "those run directories to retrain them."
        )


def _subject_names(recipe: Recipe, dataset: str, url: str) -> list[str]:
    """The subjects a recipe trains for `dataset`: its list, or every subject of the shard set."""
    names = recipe.data.datasets[dataset].subjects
    return list(names) if names else [name_of(s) for s in Manifest.read(url).subjects]


def _trained_subjects(protocol: Protocol, name: str, url: str) -> list[str]:
    """The subjects the protocol's recipes train on for its shard set `name`."""
    spec = protocol.datasets[name]
    dataset = spec["dataset"]
    recipe = load_recipe(
        list(protocol.base), [*protocol.common, *spec["overrides"], f"data.datasets.{dataset}.url={url}"]
    )
    if dataset not in recipe.data.datasets:
        raise InputError(
            f"{protocol.path}: datasets.{name} trains {dataset!r}, which the base recipes {list(protocol.base)} "
            f"do not define; name one of their data.datasets in datasets.{name}.dataset."
        )
    return _subject_names(recipe, dataset, url)


def _init_worker() -> None:
    init_logging()
    logging.getLogger("mused_fm.train").setLevel(logging.WARNING)  # the pool's lines, not every step of every run


def _train_and_evaluate(run: Run, url: str, out: str) -> None:
    directory = run.directory(Path(out))
    overrides = [*run.overrides, f"data.datasets.{run.trains}.url={url}", f"run.out_dir={directory}"]
    overrides.append(f"run.name={run.dataset}-{run.method}-s{run.seed}" + (f"-{run.subject}" if run.subject else ""))
    recipe = load_recipe(list(run.recipes), overrides)
    train(recipe)
    best = directory / BEST
    subjects = [global_id(run.trains, s) for s in _subject_names(recipe, run.trains, url)]
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    metrics = evaluate_model(best, [url], "test", 256, subjects, device)
    if run.reliance:
        write_json(directory / RELIANCE, _reliance(best, url, subjects))
    write_json(directory / EVAL, {**metrics, "checkpoint": str(best), "run": _run_spec(run)})  # last: means done


def _reliance(checkpoint: Path, url: str, subjects: list[str]) -> dict | None:
    model = load_export(checkpoint)
    stream = open_for_model(model, url)
    stream.subjects = [s for s in stream.subjects if s in subjects]
    return token_reliance(model, {stream.name: stream})


def _baselines_done(out: Path, dataset: str) -> bool:
    return all((out / dataset / name / EVAL).is_file() for name in BASELINES)


def _baselines(name: str, dataset: str, url: str, subjects: list[str], out: str) -> None:
    """Ridge, the shared linear readout and chance of the shard set `name` (subjects of the recipe's `dataset`)."""
    rows = {global_id(dataset, s): i for i, s in enumerate(subjects)}
    stream = DatasetStream(Manifest.read(url), rows, subjects)
    write_json(Path(out) / name / "ridge" / EVAL, json_safe(ridge_metrics(stream)))
    write_json(Path(out) / name / "linear" / EVAL, json_safe(linear_metrics(stream)))
    write_json(Path(out) / name / "chance" / EVAL, json_safe(chance_metrics(stream)))
