"""New subjects for a trained model by fitting only their fresh tokens (and the baselines to compare).

Shape legend: B batch, D width, k new subjects.

    model = from_pretrained(checkpoint)            # the trained export, fp32, on every rank
    model.add_subjects(new_ids)                    # registry + subject_tokens.new (k, 2, D), mean init
    freeze_for_new_subjects(model)                 # only `new` trains; BatchNorm stays in eval mode
    before = snapshot(model)                       # every parameter and buffer, on the CPU
    Engine(Objective(model)) ... steps on the new subjects' training samples, early stopping on their
                                 validation split (mean mAP over datasets, adapt.patience evaluations)
    result = deep copy of the model before DeepSpeed + the best `new` rows
    assert_unchanged(before, result)               # bit for bit, or no export
    result.merge_new_subjects(); result.save_pretrained(out/export)

Everything happens before `deepspeed.initialize` that must (weight surgery, freezing; see
../shared/reference/ecosystem.md section 3), and the exported frozen weights are the fp32 originals,
not the engine's copies (which are bf16 on GPUs).

The data-efficiency sweep runs, at each fraction of the new subjects' training samples (a seeded
subset per subject), `tokens` (the routine above), `scratch` (a single-subject model trained from
scratch on the same samples: the paper's SS-ViT) and `full` (all weights of the new subjects'
datasets fine-tuned, starting from the trained model), each scored on the subjects' test split; plus
`in_pretraining`, the test score of a model pretrained with the subjects (adapt.reference).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from pathlib import Path

import numpy as np
import torch

from mused_fm.config import Recipe, recipe_from_dict
from mused_fm.data.pipeline import DatasetStream, eval_batches, split_batch
from mused_fm.distributed import DistInfo, barrier, broadcast_value
from mused_fm.evaluate import check_shapes, evaluate_streams, json_safe, load_export, mean_map, write_json
from mused_fm.model import MusedModel, build_model
from mused_fm.model.freeze import assert_unchanged, freeze_for_new_subjects, snapshot, trainable_summary
from mused_fm.train.engine import Engine, init_distributed
from mused_fm.train.objective import Objective, batch_to_device
from mused_fm.train.run_log import RunLog

__all__ = ["adapt"]

logger = logging.getLogger("mused_fm.adapt")
METHODS = ("tokens", "scratch", "full")


# --------------------------------------------------------------------------------------------
# The new subjects' samples
# --------------------------------------------------------------------------------------------


def _check_splits(stream: DatasetStream) -> None:
    """Every new subject needs train, val and test samples: a named error otherwise."""
    for split in ("train", "val", "test"):
        have = {s["subject"] for s in stream.manifest["shards"] if s["split"] == split and s["count"]}
        empty = [s for s in stream.subjects if s not in have]
        if empty:
            raise ValueError(
                f"{stream.url}: no {split!r} samples for {empty}; the new subjects need train, val and test "
                "samples (pack them with the same shards_tools command as the others)."
            )


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


# --------------------------------------------------------------------------------------------
# One fine-tuning run
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class RunResult:
    method: str
    fraction: float
    n_train: int
    steps: int
    best_step: int
    val_mAP: float
    state: dict[str, torch.Tensor] | None  # best weights (rank 0)


class _Adapter:
    def __init__(self, recipe: Recipe, dist: DistInfo) -> None:
        self.recipe, self.dist, a = recipe, dist, recipe.adapt
        if not a.checkpoint or not a.shards or not a.subjects:
            raise ValueError("adapt.checkpoint, adapt.shards and adapt.subjects are required (see --help).")
        self.base = load_export(a.checkpoint)
        self.new_ids = list(a.subjects)
        datasets = {s.split("/", 1)[0] for s in self.new_ids}
        missing = sorted(datasets - set(self.base.datasets))
        if missing:
            raise ValueError(
                f"adapt.subjects has subjects of datasets {missing}, which the model at {a.checkpoint} has no head "
                f"for (it has {sorted(self.base.datasets)}); a new dataset needs pretraining, not adaptation."
            )
        if a.reference:
            known = load_export(a.reference).registry
            lacking = [s for s in self.new_ids if s not in known]
            if lacking:
                raise ValueError(
                    f"--reference {a.reference} lacks {lacking}: the in_pretraining point needs a model pretrained "
                    "with these subjects (train the same recipe with them listed)."
                )
        self.urls = self._shard_urls(datasets)
        self.out = Path(a.out)
        rows = {s: i for i, s in enumerate(self.new_ids)}  # only to read: each model maps ids itself
        for d in sorted(datasets):  # from the manifest, before anything is read
            _check_splits(self._stream(d, rows))
        self.train_sets = {d: SubjectSamples(self._stream(d, rows), "train") for d in sorted(datasets)}

    def _shard_urls(self, datasets: set[str]) -> dict[str, str]:
        from mused_fm.data.manifest import read_manifest

        urls: dict[str, str] = {}
        for url in self.recipe.adapt.shards:
            manifest = read_manifest(url)
            name = manifest["info"]["dataset"]
            urls[name] = url
            if name in self.base.datasets:
                check_shapes(manifest["info"], self.base.datasets[name], name, url)
        for subject in self.new_ids:
            name = subject.split("/", 1)[0]
            if name not in urls or subject not in read_manifest(urls[name])["subjects"]:
                raise ValueError(f"{subject} is in none of adapt.shards ({', '.join(self.recipe.adapt.shards)}).")
        return {d: urls[d] for d in datasets}

    def _stream(self, dataset: str, rows: dict[str, int]) -> DatasetStream:
        names = [s.split("/", 1)[1] for s in self.new_ids if s.startswith(f"{dataset}/")]
        return DatasetStream(dataset, self.urls[dataset], rows, names)

    def model_for(self, method: str) -> MusedModel:
        """The starting point of a method, with its trainable parameters set (before DeepSpeed)."""
        a = self.recipe.adapt
        if method == "scratch":  # single-subject model(s): only the new subjects' datasets, fresh weights
            cfg = recipe_from_dict({"model": dataclasses.asdict(self.base.config), "data": {"datasets": {
                d: dataclasses.asdict(self.base.datasets[d]) for d in self.train_sets}}})  # fmt: skip
            torch.manual_seed(self.recipe.run.seed)
            return build_model(cfg, self.new_ids)
        model = copy.deepcopy(self.base)
        model.add_subjects(self.new_ids, init=a.init, replace=a.replace)
        freeze_for_new_subjects(model)
        if method == "full":  # every weight the new subjects' batches reach (ZeRO needs each in the graph)
            used = tuple(f"{part}.{d}" for d in self.train_sets for part in ("tokenizers", "pos", "heads"))
            model.keep_eval = ()
            for name, p in model.named_parameters():
                p.requires_grad = name.startswith((*used, "trunk.", "subject_tokens."))
        return model

    def fit(self, model: MusedModel, method: str, fraction: float) -> RunResult:
        """Train `model`'s trainable parameters on a `fraction` of the new subjects' samples."""
        r, t = self.recipe, self.recipe.train
        train = {d: s.subset(fraction, r.run.seed) for d, s in self.train_sets.items()}
        n_train = sum(len(s) for s in train.values())
        rows = {s: i for i, s in enumerate(model.registry.ids)}
        val = {d: self._stream(d, rows) for d in train}
        sizes = split_batch(t.micro_batch_size, dict.fromkeys(train, 1.0))
        engine = Engine(Objective(model, r.loss), r, self.dist)
        self._engine_dtype = engine.dtype
        label = f"{method} @ {fraction:g} ({n_train} samples)"
        if self.dist.is_main:
            logger.info("%s: %s", label, trainable_summary(model))
        best = RunResult(method, fraction, n_train, 0, 0, -math.inf, None)
        stale, step = 0, 0
        for step in range(1, t.max_steps + 1):
            rng = np.random.default_rng([r.run.seed, self.dist.rank, step])
            batches = {d: batch_to_device(s.batch(sizes[d], model, rng), self.dist.device, engine.dtype)
                       for d, s in train.items()}  # fmt: skip
            loss, _ = engine(batches)
            engine.backward(loss)
            engine.step()
            if step % t.eval_every and step != t.max_steps:
                continue
            engine.train(False)
            metrics = evaluate_streams(engine.module.model, val, "val", 256, self.dist.device, engine.dtype,
                                       self.dist.rank, self.dist.world_size, pad=engine.stage == 3)  # fmt: skip
            engine.train(True)
            score = broadcast_value(mean_map(metrics) if self.dist.is_main else 0.0)
            self.log.write({"step": step, "method": method, "fraction": fraction, "loss": float(loss.detach()),
                            "split": "val", "mAP": score})  # fmt: skip
            if score > best.val_mAP:
                best = dataclasses.replace(best, best_step=step, val_mAP=score, state=engine.full_state_dict())
                stale = 0
            else:
                stale += 1
                if stale >= r.adapt.patience:
                    break
        if self.dist.is_main:
            logger.info("%s: best validation mAP %.4f at step %d of %d", label, best.val_mAP, best.best_step, step)
        return dataclasses.replace(best, steps=step)

    def finish(self, start: MusedModel, before: dict | None, result: RunResult) -> MusedModel:
        """Rank 0: the starting model with the run's best weights; for tokens, checked bit for bit."""
        model = copy.deepcopy(start)
        state = {k.removeprefix("model."): v for k, v in result.state.items()}
        if result.method == "tokens":
            # What the engine holds must be the frozen originals (in its compute dtype: bf16 on GPUs) ...
            moved = [
                k for k, v in before.items()
                if k != "subject_tokens.new" and not torch.equal(state[k], v.to(self._engine_dtype).to(state[k].dtype))
            ]  # fmt: skip
            if moved:
                raise RuntimeError(f"frozen tensors changed during token-only training: {moved}; no export written.")
            # ... and the export takes only the new rows from it: the rest stays the fp32 original.
            model.subject_tokens.new.data.copy_(state["subject_tokens.new"])
            assert_unchanged(before, model, allowed=("subject_tokens.new",))
        else:
            model.load_state_dict(state, strict=True)
        return model.eval()

    def test_metrics(self, model: MusedModel) -> dict:
        rows = {s: i for i, s in enumerate(model.registry.ids)}
        streams = {d: self._stream(d, rows) for d in self.train_sets}
        return json_safe(evaluate_streams(model, streams, "test", 256, torch.device("cpu")))


def _point(result: RunResult, metrics: dict) -> dict:
    pooled = _pooled(metrics)
    return {"method": result.method, "fraction": result.fraction, "n_train": result.n_train, **pooled,
            "steps": result.steps, "best_step": result.best_step, "val_mAP": result.val_mAP}  # fmt: skip


def _pooled(metrics: dict) -> dict:
    """The new subjects' test figures: mean over their datasets of the pooled dataset metrics."""
    ds = metrics["datasets"].values()
    return {k: float(np.mean([d[k] for d in ds])) for k in ("mAP", "AUC", "hamming")}


def adapt(recipe: Recipe) -> Path:
    """Add recipe.adapt.subjects to the model at recipe.adapt.checkpoint; sweep when adapt.fractions is set."""
    dist = init_distributed()
    job = _Adapter(recipe, dist)
    out = job.out
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
    job.log = RunLog(out, recipe, dist.is_main, resume_step=0, total_steps=recipe.train.max_steps)
    fractions = recipe.adapt.fractions or [recipe.adapt.fraction]
    sweep = bool(recipe.adapt.fractions)
    points, export_model, export_metrics = [], None, None
    for fraction in fractions:
        for method in METHODS if sweep else ("tokens",):
            start = job.model_for(method)
            before = snapshot(start) if method == "tokens" else None
            keep = copy.deepcopy(start)  # the fp32 originals, untouched by DeepSpeed's casts and partitions
            result = job.fit(start, method, fraction)
            if dist.is_main:
                model = job.finish(keep, before, result)
                metrics = job.test_metrics(model)
                points.append(_point(result, metrics))
                logger.info("%s @ %g: test mAP %.4f", method, fraction, points[-1]["mAP"])
                if method == "tokens" and fraction == max(fractions):
                    export_model, export_metrics = model, metrics
            barrier()
    if dist.is_main:
        export_model.merge_new_subjects()
        export_model.save_pretrained(out / "export")
        write_json(out / "eval.json", export_metrics)
        logger.info("exported %s with %s added (token-only, fraction %g) to %s",
                    recipe.adapt.checkpoint, ", ".join(job.new_ids), max(fractions), out / "export")  # fmt: skip
        if sweep:
            if recipe.adapt.reference:
                reference = load_export(recipe.adapt.reference).eval()
                n_all = sum(len(s) for s in job.train_sets.values())
                points.append({"method": "in_pretraining", "fraction": 1.0, "n_train": n_all,
                               **_pooled(job.test_metrics(reference))})  # fmt: skip
            write_json(out / "curve.json", points)
            from mused_fm.report.figures import plot_curve

            plot_curve(points, out / "curve.png", ", ".join(job.new_ids))
    job.log.close()
    barrier()
    return out
