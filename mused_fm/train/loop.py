"""`train(recipe)`: what `deepspeed launch/train.py RECIPE` runs on every rank.

    shards (manifests) -> subject registry -> MusedModel -> Objective -> DeepSpeed engine
    -> resume from run_dir/checkpoints/latest if present
    -> steps: one batch of every dataset per micro-step (sizes from the recipe weights), backward,
       step; every log_every a metrics record; every eval_every validation and the best export;
       every save_every a checkpoint (all ranks)
    -> run_dir/export/ (MusedModel.from_pretrained-able)

Resuming restarts the data streams with a seed folded with the resumed step: the stream is
resampled, not replayed, so a resumed run sees fresh draws rather than the exact batches it would
have seen (webdataset's maintainer's advice; exact mid-epoch replay of resampled shards is not kept).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

import torch

from mused_fm.config import Recipe, save_recipe
from mused_fm.data.manifest import Manifest
from mused_fm.data.pipeline import split_batch, train_loader
from mused_fm.distributed import DistInfo, barrier, broadcast_value, mean_over_ranks, sum_over_ranks
from mused_fm.errors import DivergedError, UnknownSubjectError
from mused_fm.evaluate import evaluate_streams, mean_map
from mused_fm.files import write_json
from mused_fm.flops import count_flops, matmul_peak_flops
from mused_fm.losses import LossTerms
from mused_fm.machine import cpu_usable
from mused_fm.model import MusedModel, SubjectRegistry, build_model
from mused_fm.model.tokenizers import sync_batchnorm
from mused_fm.model.transformer import sdpa_backend
from mused_fm.train.data import open_streams, resolve_datasets
from mused_fm.train.engine import DEEPSPEED_VERSION, Engine, init_distributed
from mused_fm.train.objective import Objective, batch_to_device
from mused_fm.train.preflight import preflight
from mused_fm.train.run_lock import RunLock
from mused_fm.train.run_log import RunLog, run_info

__all__ = ["train"]

logger = logging.getLogger("mused_fm.train")
CHECKPOINTS, EXPORT, BEST = "checkpoints", "export", "best"
# Dense bf16 peak of common accelerators, for the MFU estimate (datasheet figures, FLOP/s).
MAX_NONFINITE_STEPS = 10  # micro-steps in a row with a NaN or infinite loss before the run stops
GPU_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "V100": 125e12}


def _registry(out_dir: Path, subject_ids: list[str]) -> SubjectRegistry:
    """The run's subject table order: from the run directory when resuming, else from the manifests."""
    path = out_dir / "registry.json"
    if not path.exists():
        return SubjectRegistry(subject_ids)
    saved = SubjectRegistry.load(path)
    if saved.ids != subject_ids:
        added = [s for s in subject_ids if s not in saved]
        dropped = [s for s in saved.ids if s not in subject_ids]
        raise UnknownSubjectError(
            f"{out_dir} was trained with subjects {saved.ids}; this recipe and its shards give {subject_ids} "
            f"(new: {added}, gone: {dropped}). Resume with the same subjects, use another run.out_dir, or add "
            "subjects to a trained model with launch/adapt_subject.py."
        )
    return saved


def _peak_flops(dist: DistInfo, dtype: torch.dtype) -> float:
    """Per-rank peak for the MFU estimate: a datasheet figure on GPUs, a measured matmul rate on CPUs."""
    if dist.device.type == "cuda":
        name = torch.cuda.get_device_name(dist.device)
        return next((v for k, v in GPU_PEAK.items() if k in name), 0.0) or matmul_peak_flops(dist.device, dtype)
    return matmul_peak_flops(dist.device, dtype, size=1024, repeats=5)


def _flops_per_step(model: MusedModel, sizes: dict[str, int]) -> float:
    """Training FLOPs of one micro-step on one rank: 3 x the forward FLOPs (backward ~ 2 x forward)."""
    total = 0.0
    model.eval()  # no BatchNorm statistics move
    with torch.no_grad():
        for name, spec in model.datasets.items():
            bold, rows = torch.zeros(1, *spec.input_shape), torch.zeros(1, dtype=torch.long)
            total += 3 * sizes[name] * count_flops(lambda: model(bold, rows, name))  # noqa: B023
    model.train()
    return total


def workers_per_dataset(setting: int, n_datasets: int) -> int:
    """train.num_workers, with -1 sized for this machine: the cores of this rank (usable cores over the
    ranks on the host) less one for the rank itself, shared by its datasets, at most 4 each."""
    if setting >= 0:
        return setting
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE") or 1)
    per_rank = (cpu_usable() or os.cpu_count() or 1) // local_ranks
    return max(0, min(4, (per_rank - 1) // max(n_datasets, 1)))


class _Trainer:
    def __init__(self, recipe: Recipe, subject_ids: list[str], manifests: dict[str, Manifest], dist: DistInfo) -> None:
        """recipe, subject_ids, manifests: resolved against the shards (resolve_datasets)."""
        self.dist, self.recipe = dist, recipe
        self.out = Path(recipe.run.out_dir)
        self.registry = _registry(self.out, subject_ids)
        self.streams = open_streams(self.recipe, manifests, self.registry.row_of, self.registry.ids)
        t = self.recipe.train
        self.sizes = split_batch(t.micro_batch_size, {n: ds.weight for n, ds in self.recipe.data.datasets.items()})

        torch.manual_seed(self.recipe.run.seed)  # identical initial weights on every rank
        model = build_model(self.recipe, self.registry.ids)
        self.flops_per_micro_step = _flops_per_step(model, self.sizes)
        if t.compile:
            model.trunk.compile_blocks()
        if dist.world_size > 1 and dist.device.type == "cuda":  # before the optimizer: same parameters either way
            synced = sync_batchnorm(model.tokenizers)
            if synced and dist.is_main:
                logger.info(
                    "volume tokenizer: %d BatchNorm layers synchronised across the %d ranks", synced, dist.world_size
                )
        self.engine = Engine(Objective(model, self.recipe.loss), self.recipe, dist)
        self.peak = _peak_flops(dist, self.engine.dtype)

        state = self.engine.load_latest(self.out / CHECKPOINTS) or {}
        self.start = int(state.get("step", 0))
        self.best = state.get("best", {"step": 0, "mAP": -math.inf})
        if dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            save_recipe(self.recipe, self.out / "config.yaml")
            self.registry.save(self.out / "registry.json")
            info = run_info(dist.world_size, self.engine.stage, self.engine.precision, dist.device, DEEPSPEED_VERSION)
            write_json(self.out / "run_info.json", info)
            self._drop_stale_best()
            if self.start:
                logger.info(
                    "resuming from %s/%s/step%d (step %d of %d); the data stream restarts with a new seed",
                    self.out,
                    CHECKPOINTS,
                    self.start,
                    self.start,
                    t.max_steps,
                )
            m = self.recipe.model
            logger.info(
                "%d subjects (%s); per-rank micro-batch %s; world size %d; ZeRO stage %d; %s; attention kernel %s; "
                "trunk %s",
                len(self.registry),
                ", ".join(self.registry.ids),
                self.sizes,
                dist.world_size,
                self.engine.stage,
                self.engine.precision,
                sdpa_backend(m.dim // m.heads, self.engine.dtype, dist.device),
                "compiled" if t.compile else "eager",
            )
        self.log = RunLog(self.out, self.recipe, dist.is_main, self.start, t.max_steps)
        # Micro-steps in a row whose loss was not finite, kept on the device (read once per log window).
        self.nonfinite_run = torch.zeros((), dtype=torch.long, device=dist.device)

    def _drop_stale_best(self) -> None:
        """A best/ exported after the checkpoint we resume from belongs to a discarded timeline."""
        marker = self.out / BEST / "best.json"
        if marker.exists() and json.loads(marker.read_text())["step"] > self.start:
            logger.info(
                "removing %s: written after the step %d checkpoint this run resumes from", marker.parent, self.start
            )
            shutil.rmtree(marker.parent)

    def loaders(self) -> dict[str, object]:
        t = self.recipe.train
        workers = workers_per_dataset(t.num_workers, len(self.streams))
        batches = (t.max_steps - self.start) * t.grad_accum_steps
        seed = self.recipe.run.seed + 1_000_003 * self.start  # a resumed run draws a new stream
        cuda = self.dist.device.type == "cuda"  # page-locked batches: the copies to the GPU run asynchronously
        return {
            name: iter(train_loader(stream, "train", self.sizes[name], batches, seed, workers, pin_memory=cuda))
            for name, stream in self.streams.items()
        }

    def run(self) -> Path:
        t = self.recipe.train
        loaders = self.loaders() if self.start < t.max_steps else {}
        window = self._new_window()
        for step in range(self.start + 1, t.max_steps + 1):
            for _ in range(t.grad_accum_steps):
                began = time.perf_counter()
                raw = {name: next(it) for name, it in loaders.items()}
                window["wait"] += time.perf_counter() - began
                window["skipped"] += sum(b["n_skipped"] for b in raw.values())
                batches = {n: batch_to_device(b, self.dist.device, self.engine.dtype) for n, b in raw.items()}
                loss, terms = self.engine(batches)
                self.engine.backward(loss)
                self.engine.step()
                window["n"] += 1
                for name, term in terms.items():  # on the device: no host sync per step
                    window["sums"][name] = window["sums"].get(name, 0.0) + term.stacked()
                window["sums"]["loss"] = window["sums"].get("loss", 0.0) + loss.detach().float()
                finite = torch.isfinite(loss.detach())
                self.nonfinite_run = torch.where(finite, 0, self.nonfinite_run + 1)  # on the device, no sync
            if step % t.log_every == 0 or step == t.max_steps:
                self._stop_if_diverged(step)
                self._log_window(step, window)
                window = self._new_window()
            if step % t.eval_every == 0 or step == t.max_steps:
                self._validate(step)
            if step % t.save_every == 0 or step == t.max_steps:
                self.engine.save_checkpoint(self.out / CHECKPOINTS, step, {"step": step, "best": self.best})
        self._export(self.out / EXPORT)
        self.log.close()
        barrier()
        return self.out / EXPORT

    def _stop_if_diverged(self, step: int) -> None:
        """A named error on every rank (rank 0 decides) once the loss has been non-finite for a run of steps."""
        run = int(broadcast_value(float(self.nonfinite_run.item())))
        if run >= MAX_NONFINITE_STEPS:
            raise DivergedError(
                f"{self.out}: the loss has been NaN or infinite for the last {run} micro-steps (step {step}); "
                "nothing more is trained or exported. Check skipped_records in metrics.jsonl and the shards "
                "(`python -m shards_tools verify URL`), or lower train.lr; rerunning resumes from the last checkpoint."
            )

    def _new_window(self) -> dict:
        return {"began": time.perf_counter(), "wait": 0.0, "skipped": 0, "n": 0, "sums": {}}

    def _log_window(self, step: int, window: dict) -> None:
        elapsed = time.perf_counter() - window["began"]
        sums = {k: v.cpu().tolist() for k, v in window["sums"].items()}  # the window's one host sync
        flat = {"loss": sums.pop("loss")}
        for name, values in sorted(sums.items()):
            flat.update({f"{name}/{key}": v for key, v in zip(LossTerms.NAMES, values, strict=True)})
        means = mean_over_ranks({k: v / max(window["n"], 1) for k, v in flat.items()})
        shares = mean_over_ranks({"data_wait": window["wait"] / elapsed})
        skipped = int(sum_over_ranks({"skipped": float(window["skipped"])})["skipped"])
        samples = window["n"] * self.recipe.train.micro_batch_size * self.dist.world_size
        record = {
            "step": step,
            "loss": means.pop("loss"),
            "lr": self.engine.lr(),
            "samples_per_s": samples / elapsed,
            "data_wait": shares["data_wait"],
            "mfu": (window["n"] * self.flops_per_micro_step / elapsed) / self.peak if self.peak else 0.0,
            "skipped_records": skipped,
            **means,
        }
        if skipped:
            logger.warning(
                "step %d: %d unreadable shard records skipped since the last log (named above)", step, skipped
            )
        self.log.write(record)
        self.log.progress(step, record)

    def _validate(self, step: int) -> None:
        streams = {n: s for n, s in self.streams.items() if s.count("val")}
        if not streams:
            return
        self.engine.train(False)
        metrics = evaluate_streams(
            self.engine.module.model,
            streams,
            "val",
            self.recipe.train.micro_batch_size,
            self.dist,
            self.engine.dtype,
            pad=self.engine.stage == 3,
        )
        self.engine.train(True)
        score = broadcast_value(mean_map(metrics) if self.dist.is_main else 0.0)
        improved = score > self.best["mAP"]
        if improved:
            self.best = {"step": step, "mAP": score}
            self._export(self.out / BEST)
            if self.dist.is_main:
                write_json(self.out / BEST / "best.json", self.best)
        if self.dist.is_main:
            self.log.write({"step": step, "split": "val", "best": improved, **metrics})
            summary = ", ".join(f"{n} mAP {m['mAP']:.3f}" for n, m in metrics["datasets"].items())
            logger.info("step %d validation: %s%s", step, summary, " (best so far)" if improved else "")

    def _export(self, directory: Path) -> None:
        """Collective: the engine's fp32 weights into a plain MusedModel, saved by rank 0."""
        state = self.engine.full_state_dict()
        if self.dist.is_main:
            model = build_model(self.recipe, self.registry.ids)
            prefix = "model."
            model.load_state_dict({k[len(prefix) :]: v for k, v in state.items()}, strict=True)
            model.class_names = {n: list(s.manifest.classes) for n, s in self.streams.items()}  # travel with it
            model.save_pretrained(directory, loss=self.recipe.loss)  # adaptation fits with the same loss
        barrier()


def train(recipe: Recipe) -> Path:
    """Train (or resume) the run the recipe describes; returns run_dir/export on every rank."""
    recipe, subject_ids, manifests = resolve_datasets(recipe)  # recipe/shard mismatches fail before any rendezvous
    preflight(recipe)  # so do W&B online logging without a login and disagreeing `accelerate launch` flags
    # Global rank 0 holds the run directory's lock for the whole run (taken before the rendezvous, so a
    # second run there fails at once); RANK is set by every launcher before the process starts.
    lock = RunLock(recipe.run.out_dir) if int(os.environ.get("RANK", "0")) == 0 else None
    try:
        dist = init_distributed()
        return _Trainer(recipe, subject_ids, manifests, dist).run()
    finally:
        if lock is not None:
            lock.release()
