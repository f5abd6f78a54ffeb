"""New subjects for a trained model by fitting only their fresh tokens (and the baselines to compare).

Shape legend: B batch, D width, k new subjects.

    model = load_export(checkpoint)                # the trained export, fp32, on every rank
    model.add_subjects(new_ids)                    # registry + subject_tokens.new (k, 2, D), mean init
    freeze_for_new_subjects(model)                 # only `new` trains; BatchNorm stays in eval mode
    before = snapshot(model)                       # every parameter and buffer, on the CPU
    Engine(Objective(model)) ... steps on the new subjects' training samples, early stopping on their
                                 validation split (mean mAP over datasets, adapt.patience evaluations;
                                 the untrained start, step 0, is a candidate too)
    result = deep copy of the model before DeepSpeed + the best `new` rows
    assert_unchanged(before, result)               # bit for bit, or no export
    result.merge_new_subjects(); result.save_pretrained(out/export)

Weight surgery and freezing happen before `deepspeed.initialize` (the engine's optimizer only sees the
parameters that are trainable when it is built), and the exported frozen weights are the fp32
originals, not the engine's copies (which are bf16 on GPUs).

The loss is the one the model was trained with: `load_adapt_recipe` puts the export's `loss` section
(config.json) under the adaptation recipe, whose own loss keys win key by key.

Each adapt.methods x adapt.fractions run (the token-only ones once per adapt.seeds, the others at the
first seed) starts from its method's model with its trainable set declared in `METHODS`, fits a seeded
share of the new subjects' training samples, and is scored on their test split: `tokens` (the routine
above), `scratch` (a single-subject model trained from scratch on the same samples: the paper's SS-ViT)
and `full` (the trunk, every subject token and the new subjects' datasets' tokenizers, position tables
and heads, starting from the trained model); plus `zero_shot`, the mean-token start untrained
(adapt.zero_shot, and every sweep), and `in_pretraining`, the test score of a model pretrained with the
subjects (adapt.reference). Each run logs to its own `runs/<method>_f<fraction>_s<seed>/metrics.jsonl`.
The caller gets the points as data (`AdaptResult.curve`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mused_fm.config import AdaptConfig, AdaptRecipe, LossConfig, load_recipe, recipe_from_dict, save_recipe
from mused_fm.data.manifest import Manifest, check_compatible
from mused_fm.data.pipeline import DatasetStream, eval_batches, split_batch
from mused_fm.distributed import DistInfo, barrier, broadcast_value
from mused_fm.errors import InputError, ShardSchemaError, UnknownSubjectError
from mused_fm.evaluate import evaluate_streams, mean_map
from mused_fm.files import json_safe, write_json
from mused_fm.model import MusedModel, SubjectRegistry, build_model, export_dir, load_export
from mused_fm.model.freeze import assert_unchanged, freeze_for_new_subjects, snapshot, train_only, trainable_summary
from mused_fm.model.mused import CONFIG_NAME
from mused_fm.subject_ids import dataset_of, name_of
from mused_fm.train.engine import Engine, init_distributed
from mused_fm.train.objective import Objective, batch_to_device
from mused_fm.train.preflight import preflight
from mused_fm.train.run_log import RunLog

__all__ = ["METHODS", "AdaptResult", "adapt", "load_adapt_recipe"]

logger = logging.getLogger("mused_fm.adapt")
SPLITS = ("train", "val", "test")


# --------------------------------------------------------------------------------------------
# The recipe: the adaptation's keys over the loss the model was trained with
# --------------------------------------------------------------------------------------------


def load_adapt_recipe(path: str | Path | Sequence[str | Path] | None, overrides: Iterable[str] = ()) -> AdaptRecipe:
    """The adaptation recipe at `path` with `overrides`, its loss taken from adapt.checkpoint's export.

    Loaded once to find adapt.checkpoint, then again with the export's `loss` section (config.json: the
    loss the model was trained with) as the layer under the YAML: the loss keys the recipe files or the
    overrides set win, key by key, and every other one is the model's. An export written before exports
    carried their loss keeps the recipe's loss, with a warning that names the file.
    """
    overrides = list(overrides)
    recipe = load_recipe(path, overrides, kind=AdaptRecipe)
    if not recipe.adapt.checkpoint:
        return recipe  # adapt() names the missing key
    config_path, config = _export_config(recipe.adapt.checkpoint)
    if config is None:
        return recipe  # no readable export: load_export names the problem
    if "loss" not in config:
        logger.warning(
            "%s has no loss section (exported before exports carried their training loss): adapting with the "
            "adaptation recipe's loss (%s). Set loss.weights.<dataset>.* to the weights the model was trained "
            "with, or re-export it.",
            config_path,
            _describe(recipe.loss),
        )
        return recipe
    # Named by its file if the export's section is not a valid loss.
    recipe_from_dict({"loss": config["loss"]}, source=f"{config_path} (loss section)", kind=AdaptRecipe)
    recipe = load_recipe(path, overrides, kind=AdaptRecipe, base={"loss": config["loss"]})
    logger.info("loss: the model's (%s) where the adaptation recipe sets none: %s", config_path, _describe(recipe.loss))
    return recipe


def _export_config(checkpoint: str) -> tuple[Path, dict | None]:
    """The export's config.json and its content (None if it cannot be read), found as load_export finds it."""
    path = export_dir(checkpoint) / CONFIG_NAME
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return path, None
    return path, config if isinstance(config, dict) else None


def _describe(loss: LossConfig) -> str:
    weights = "; ".join(f"{n} orth {w.orth:g} llv {w.llv:g} hlv {w.hlv:g}" for n, w in loss.weights.items())
    return f"rsa_scope {loss.rsa_scope}; " + (weights or "every dataset the defaults")


# --------------------------------------------------------------------------------------------
# The new subjects' samples
# --------------------------------------------------------------------------------------------


class SubjectSamples:
    """All samples of one split of the new subjects of one dataset, in memory (they are few)."""

    def __init__(self, stream: DatasetStream, split: str) -> None:
        parts = list(eval_batches(stream, split, batch_size=4096))
        self.dataset = stream.name
        self.arrays = {k: torch.cat([p[k] for p in parts]).numpy() for k in ("bold", "labels", "clip_llv", "clip_hlv")}
        self.subjects = np.asarray([s for p in parts for s in p["subject"]])

    def __len__(self) -> int:
        return len(self.subjects)

    def subset(self, fraction: float, seed: int) -> SubjectSamples:
        """A seeded share of each subject's samples (at least one each)."""
        keep = []
        for i, subject in enumerate(dict.fromkeys(self.subjects.tolist())):
            rows = np.flatnonzero(self.subjects == subject)
            rng = np.random.default_rng([seed, i])
            keep.extend(rng.permutation(rows)[: max(1, round(fraction * len(rows)))].tolist())
        out = copy.copy(self)
        order = np.sort(np.asarray(keep))
        out.arrays = {k: v[order] for k, v in self.arrays.items()}
        out.subjects = self.subjects[order]
        return out

    def batch(self, size: int, model: MusedModel, rng: np.random.Generator) -> dict:
        """`size` random samples (without replacement when there are enough), rows of `model`'s registry."""
        pick = rng.choice(len(self), size=size, replace=size > len(self))
        batch = {k: torch.from_numpy(np.ascontiguousarray(v[pick])) for k, v in self.arrays.items()}
        batch["subject_row"] = model.subject_rows(self.subjects[pick].tolist(), self.dataset)
        return batch


class NewSubjects:
    """The subjects to add: their shard sets (checked against the trained model) and training samples."""

    def __init__(self, config: AdaptConfig, base: MusedModel) -> None:
        self.ids = list(config.subjects)
        self.datasets = sorted({dataset_of(s) for s in self.ids})
        missing = [d for d in self.datasets if d not in base.datasets]
        if missing:
            raise UnknownSubjectError(
                f"adapt.subjects has subjects of datasets {missing}, which the model at {config.checkpoint} has no "
                f"head for (it has {sorted(base.datasets)}); a new dataset needs pretraining, not adaptation."
            )
        self.manifests = self._manifests(config.shards, base)
        for dataset in self.datasets:  # from the manifest, before anything is read
            self._check_splits(self.manifests[dataset])
        rows = SubjectRegistry(self.ids).row_of  # only to read: each model maps ids to its own rows
        self.train_sets = {d: SubjectSamples(self.stream(d, rows), "train") for d in self.datasets}

    def _manifests(self, urls: list[str], base: MusedModel) -> dict[str, Manifest]:
        by_dataset = {}
        for url in urls:
            manifest = Manifest.read(url)
            by_dataset[manifest.dataset] = manifest
            if manifest.dataset in base.datasets:
                check_compatible(base.datasets[manifest.dataset], manifest)
        for subject in self.ids:
            manifest = by_dataset.get(dataset_of(subject))
            if manifest is None or subject not in manifest.subjects:
                raise UnknownSubjectError(f"{subject} is in none of adapt.shards ({', '.join(urls)}).")
        return {d: by_dataset[d] for d in self.datasets}

    def _check_splits(self, manifest: Manifest) -> None:
        """Every new subject needs train, val and test samples: a named error otherwise."""
        chosen = [s for s in self.ids if dataset_of(s) == manifest.dataset]
        for split in SPLITS:
            have = {s["subject"] for s in manifest.shards(split, chosen) if s["count"]}
            empty = [s for s in chosen if s not in have]
            if empty:
                raise ShardSchemaError(
                    f"{manifest.url}: no {split!r} samples for {empty}; the new subjects need train, val and test "
                    "samples (pack them with the same shards_tools command as the others)."
                )

    def stream(self, dataset: str, rows: Mapping[str, int]) -> DatasetStream:
        names = [name_of(s) for s in self.ids if dataset_of(s) == dataset]
        return DatasetStream(self.manifests[dataset], rows, names, key="adapt.subjects")

    def streams(self, model: MusedModel) -> dict[str, DatasetStream]:
        return {d: self.stream(d, model.registry.row_of) for d in self.datasets}

    def test_metrics(self, model: MusedModel) -> dict:
        """The new subjects' test metrics, computed in this process on the CPU."""
        return json_safe(evaluate_streams(model, self.streams(model), "test", 256, repeat_mean=True))


# --------------------------------------------------------------------------------------------
# Methods: the starting model and its trainable set
# --------------------------------------------------------------------------------------------


def _tokens(base: MusedModel, new: NewSubjects, config: AdaptConfig, seed: int) -> MusedModel:
    """The trained model with the new subjects' rows; only those rows train."""
    model = copy.deepcopy(base)
    torch.manual_seed(seed)  # adapt.init=random
    model.add_subjects(new.ids, init=config.init, replace=config.replace)
    freeze_for_new_subjects(model)
    return model


def _zero_shot(base: MusedModel, new: NewSubjects, config: AdaptConfig) -> MusedModel:
    """The trained model with the new subjects' rows at the mean of their dataset's known rows, untrained."""
    model = copy.deepcopy(base)
    model.add_subjects(new.ids, init="mean", replace=config.replace)
    return model.eval()


def _full(base: MusedModel, new: NewSubjects, config: AdaptConfig, seed: int) -> MusedModel:
    """The trained model with the new rows; every weight the new subjects' batches reach trains.

    Under ZeRO each trainable parameter must be in the graph, so other datasets' modules stay frozen.
    """
    model = copy.deepcopy(base)
    torch.manual_seed(seed)  # adapt.init=random
    model.add_subjects(new.ids, init=config.init, replace=config.replace)
    reached: list[nn.Parameter] = [*model.trunk.parameters(), *model.subject_tokens.parameters()]
    for dataset in new.datasets:
        reached.extend(model.dataset_parameters(dataset))
    train_only(model, reached)
    return model


def _scratch(base: MusedModel, new: NewSubjects, config: AdaptConfig, seed: int) -> MusedModel:
    """A fresh model of the same shape for the new subjects' datasets only (SS-ViT); everything trains."""
    datasets = {d: dataclasses.asdict(base.datasets[d]) for d in new.datasets}
    recipe = recipe_from_dict({"model": dataclasses.asdict(base.config), "data": {"datasets": datasets}})
    torch.manual_seed(seed)
    return build_model(recipe, new.ids)


METHODS: dict[str, Callable[[MusedModel, NewSubjects, AdaptConfig, int], MusedModel]] = {
    "tokens": _tokens,
    "scratch": _scratch,
    "full": _full,
}


# --------------------------------------------------------------------------------------------
# One fine-tuning run
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class RunResult:
    method: str
    fraction: float
    seed: int
    n_train: int
    steps: int
    best_step: int
    val_mAP: float
    state: dict[str, torch.Tensor] | None  # best weights (rank 0)
    dtype: torch.dtype  # the engine's compute dtype (bf16 on GPUs)


@dataclasses.dataclass
class AdaptResult:
    out: Path
    curve: list[dict]
    """One point per run (method, fraction and seed), zero_shot and in_pretraining, on rank 0; empty on the
    other ranks."""
    subjects: list[str]


def _fit(
    model: MusedModel,
    method: str,
    fraction: float,
    seed: int,
    new: NewSubjects,
    recipe: AdaptRecipe,
    dist: DistInfo,
    log: RunLog,
) -> RunResult:
    """Train `model`'s trainable parameters on a `fraction` of the new subjects' samples drawn with `seed`."""
    t = recipe.train
    train = {d: s.subset(fraction, seed) for d, s in new.train_sets.items()}
    n_train = sum(len(s) for s in train.values())
    val = new.streams(model)
    sizes = split_batch(t.micro_batch_size, dict.fromkeys(train, 1.0))
    engine = Engine(Objective(model, recipe.loss), recipe, dist)
    label = f"{method} @ {fraction:g}, seed {seed} ({n_train} samples)"
    if dist.is_main:
        logger.info("%s: %s", label, trainable_summary(model))

    def validation_score() -> float:
        engine.train(False)
        metrics = evaluate_streams(engine.module.model, val, "val", 256, dist, engine.dtype, pad=engine.stage == 3)
        engine.train(True)
        return broadcast_value(mean_map(metrics) if dist.is_main else 0.0)

    # The start is a candidate too (for tokens: the zero-shot mean token): training that only lowers the
    # validation score, as a few samples at a high learning rate can, then keeps the starting weights.
    score = validation_score()
    log.write({"step": 0, "split": "val", "mAP": score})
    best = RunResult(method, fraction, seed, n_train, 0, 0, score, engine.full_state_dict(), engine.dtype)
    stale, step = 0, 0
    for step in range(1, t.max_steps + 1):
        rng = np.random.default_rng([seed, dist.rank, step])
        batches = {
            d: batch_to_device(s.batch(sizes[d], model, rng), dist.device, engine.dtype) for d, s in train.items()
        }
        loss, _ = engine(batches)
        engine.backward(loss)
        engine.step()
        if step % t.eval_every and step != t.max_steps:
            continue
        score = validation_score()
        log.write({"step": step, "loss": float(loss.detach()), "split": "val", "mAP": score})
        if score > best.val_mAP:
            best = dataclasses.replace(best, best_step=step, val_mAP=score, state=engine.full_state_dict())
            stale = 0
        else:
            stale += 1
            if stale >= recipe.adapt.patience:
                break
    if dist.is_main:
        logger.info("%s: best validation mAP %.4f at step %d of %d", label, best.val_mAP, best.best_step, step)
    return dataclasses.replace(best, steps=step)


def _finish(start: MusedModel, before: dict | None, result: RunResult) -> MusedModel:
    """Rank 0: the starting model with the run's best weights; for tokens, checked bit for bit."""
    model = copy.deepcopy(start)
    state = {k.removeprefix("model."): v for k, v in result.state.items()}
    if result.method == "tokens":
        # What the engine holds must be the frozen originals (in its compute dtype: bf16 on GPUs) ...
        moved = [
            k
            for k, v in before.items()
            if k != "subject_tokens.new" and not torch.equal(state[k], v.to(result.dtype).to(state[k].dtype))
        ]
        if moved:
            raise RuntimeError(f"frozen tensors changed during token-only training: {moved}; no export written.")
        # ... and the export takes only the new rows from it: the rest stays the fp32 original.
        model.subject_tokens.new.data.copy_(state["subject_tokens.new"])
        assert_unchanged(before, model, allowed=("subject_tokens.new",))
    else:
        model.load_state_dict(state, strict=True)
    return model.eval()


def _point(result: RunResult, metrics: dict) -> dict:
    return {
        "method": result.method,
        "fraction": result.fraction,
        "seed": result.seed,
        "n_train": result.n_train,
        **_pooled(metrics),
        "steps": result.steps,
        "best_step": result.best_step,
        "val_mAP": result.val_mAP,
    }


def _zero_shot_point(base: MusedModel, new: NewSubjects, config: AdaptConfig) -> dict:
    """Rank 0: the untrained mean tokens scored like a run (validation mAP included), fraction 0."""
    model = _zero_shot(base, new, config)
    val = mean_map(json_safe(evaluate_streams(model, new.streams(model), "val", 256)))
    result = RunResult(
        "zero_shot", 0.0, config.seeds[0], 0, steps=0, best_step=0, val_mAP=val, state=None, dtype=torch.float32
    )
    return _point(result, new.test_metrics(model))


def _runs(config: AdaptConfig) -> list[tuple[float, str, int]]:
    """(fraction, method, seed) of every fine-tuning run: tokens at each seed, the others at the first."""
    return [
        (fraction, method, seed)
        for fraction in config.fractions
        for method in config.methods
        for seed in (config.seeds if method == "tokens" else config.seeds[:1])
    ]


def _pooled(metrics: dict) -> dict:
    """The new subjects' test figures: mean over their datasets of the pooled dataset metrics."""
    ds = metrics["datasets"].values()
    return {k: float(np.mean([d[k] for d in ds])) for k in ("mAP", "AUC", "hamming")}


def _reference(config: AdaptConfig) -> MusedModel | None:
    """adapt.reference (a model pretrained with the new subjects), checked to hold them."""
    if not config.reference:
        return None
    reference = load_export(config.reference)
    lacking = [s for s in config.subjects if s not in reference.registry]
    if lacking:
        raise UnknownSubjectError(
            f"--reference {config.reference} lacks {lacking}: the in_pretraining point needs a model pretrained "
            "with these subjects (train the same recipe with them listed)."
        )
    return reference.eval()


def adapt(recipe: AdaptRecipe) -> AdaptResult:
    """Add recipe.adapt.subjects to the model at recipe.adapt.checkpoint, once per method, fraction and seed.

    Writes out/export (the token-only result at the largest fraction and the first seed, with the loss it
    trained with), out/eval.json (its test metrics), out/curve.json (every point), out/config.yaml (the
    recipe as resolved) and out/runs/<method>_f<fraction>_s<seed>/metrics.jsonl. The recipe's loss is used
    as it is: load it with `load_adapt_recipe` to fit with the loss the model was trained with.
    """
    a = recipe.adapt
    if not a.checkpoint or not a.shards or not a.subjects:
        raise InputError("adapt.checkpoint, adapt.shards and adapt.subjects are required (see --help).")
    preflight(recipe)  # W&B online without a login, disagreeing `accelerate launch` flags: before the rendezvous
    dist = init_distributed()
    base = load_export(a.checkpoint)
    reference = _reference(a)
    new = NewSubjects(a, base)
    out = Path(a.out)
    if dist.is_main:
        save_recipe(recipe, out / "config.yaml")
    points, export_model, export_metrics = [], None, None
    if dist.is_main and (a.zero_shot or set(a.methods) - {"tokens"}):
        points.append(_zero_shot_point(base, new, a))
        logger.info("zero_shot: test mAP %.4f", points[-1]["mAP"])
    for fraction, method, seed in _runs(a):
        start = METHODS[method](base, new, a, seed)
        before = snapshot(start) if method == "tokens" else None
        keep = copy.deepcopy(start)  # the fp32 originals, untouched by DeepSpeed's casts and partitions
        run_dir = out / "runs" / f"{method}_f{fraction:g}_s{seed}"
        if dist.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
        log = RunLog(run_dir, recipe, dist.is_main, resume_step=0, total_steps=recipe.train.max_steps)
        result = _fit(start, method, fraction, seed, new, recipe, dist, log)
        log.close()
        if dist.is_main:
            model = _finish(keep, before, result)
            metrics = new.test_metrics(model)
            points.append(_point(result, metrics))
            logger.info("%s @ %g, seed %d: test mAP %.4f", method, fraction, seed, points[-1]["mAP"])
            if method == "tokens" and fraction == max(a.fractions) and seed == a.seeds[0]:
                export_model, export_metrics = model, metrics
        barrier()
    if dist.is_main:
        export_model.merge_new_subjects()
        export_model.class_names = export_model.class_names or base.class_names
        export_model.save_pretrained(out / "export", loss=recipe.loss, metrics=export_metrics)
        write_json(out / "eval.json", export_metrics)
        logger.info(
            "exported %s with %s added (token-only, fraction %g, seed %d) to %s",
            a.checkpoint,
            ", ".join(new.ids),
            max(a.fractions),
            a.seeds[0],
            out / "export",
        )
        if reference is not None:
            n_all = sum(len(s) for s in new.train_sets.values())
            pooled = _pooled(new.test_metrics(reference))
            points.append({"method": "in_pretraining", "fraction": 1.0, "seed": a.seeds[0], "n_train": n_all, **pooled})
        write_json(out / "curve.json", points)
    barrier()
    return AdaptResult(out, points if dist.is_main else [], list(new.ids))
