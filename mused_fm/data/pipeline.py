"""WebDataset pipelines that turn shards into training and evaluation batches.

Shape legend: B batch, R ROIs, F features per ROI, X/Y/Z the volume grid, K llv width, P hlv width,
C classes.

Training (`train_loader`), stage by stage:
    shard URLs of the split -> ResampledShards (seeded per run, rank and worker: every rank draws its
    own endless stream, so no rank runs dry) -> tar records -> decoded blocks (np.frombuffer-speed
    .npy, subject names mapped to token rows once per block, volume datasets unmasked into the grid)
    -> shuffle buffer of blocks, permuted and cut into batches -> WebLoader(batch_size=None)
    .with_epoch(n): exactly n batches per rank per epoch, whatever the worker count, so DeepSpeed
    ranks never wait on each other.
A record that cannot be read is skipped, logged with its shard and counted: every batch carries
`n_skipped`, the records skipped since the previous batch of its worker, for the run's metrics.

Evaluation (`eval_batches`): each test sample exactly once: shards in a fixed order, shard i read by
rank i % world_size, no resampling, no shuffling; the trainer gathers predictions across ranks.

Batches are dicts of CPU tensors: bold (B, R, F) or (B, X, Y, Z) float16, subject_row (B,) int64,
labels (B, C) uint8, clip_llv (B, K) and clip_hlv (B, P) float16, plus dataset, n_skipped and, in
evaluation, subject ids.
"""

from __future__ import annotations

import io
import logging
import math
import tarfile
import time
from collections.abc import Iterator, Mapping

import numpy as np
import torch
import webdataset as wds

import mused_fm.data.s3  # noqa: F401  (registers the s3:// opener in this process and in workers)
from mused_fm.data import storage
from mused_fm.data.clip_targets import ShuffledClip
from mused_fm.data.manifest import Manifest
from mused_fm.data.schema import all_finite
from mused_fm.data.tarfiles import decode_block, iter_raw_records
from mused_fm.errors import ClipTargetError, ShardSchemaError, UnknownSubjectError
from mused_fm.subject_ids import global_id

__all__ = ["DatasetStream", "eval_batches", "split_batch", "train_loader"]

logger = logging.getLogger(__name__)
_skipped = 0  # records skipped in this process (a DataLoader worker counts its own)
# Shards that fail one after another before a training stream gives up (with backoff between tries, about
# a minute in all: a brief S3 outage or throttling is waited out, a missing or unreachable shard set is not).
TEXT_KEYS = ("subject", "stimulus")  # per-sample strings: lists in a batch, not tensors
MAX_CONSECUTIVE_FAILURES = 16
_BACKOFF_S = (0.1, 5.0)  # first wait, longest wait


class ShardFailures:
    """webdataset handler of one dataset's training stream: name, count, back off, and give up at a bound.

    Every failure to open or read a shard record is counted (the batches report it) and waited out with
    exponential backoff; a record that decodes resets the run of failures. After MAX_CONSECUTIVE_FAILURES
    in a row the stream raises one named error instead of retrying forever. Warnings are rate-limited:
    the first few, then one per 30 s with the count since.
    """

    def __init__(self, dataset: str, url: str, limit: int = MAX_CONSECUTIVE_FAILURES) -> None:
        self.dataset, self.url, self.limit = dataset, url, limit
        self.consecutive, self.unlogged, self.last_log = 0, 0, 0.0

    def __call__(self, exn: Exception) -> bool:
        """A shard could not be opened or read (webdataset's handler hook): count it and back off."""
        where = exn.args[-1] if exn.args and isinstance(exn.args[-1], str) else "?"
        self.bad_record(exn, where)
        time.sleep(min(_BACKOFF_S[0] * 2 ** (self.consecutive - 1), _BACKOFF_S[1]))
        return True

    def bad_record(self, exn: Exception, where: str) -> None:
        """A record was skipped (unreadable or invalid): count and name it; raise at the bound."""
        global _skipped
        _skipped += 1
        self.consecutive += 1
        if self.consecutive >= self.limit:
            raise ShardSchemaError(
                f"data.datasets.{self.dataset}: {self.consecutive} shard reads of {self.url} failed in a row, the "
                f"last {where}: {repr(exn)[:300]}. Check that the shards exist and are readable (`python -m "
                "shards_tools verify URL`), the URL, and for s3:// the endpoint and credentials."
            ) from None
        now = time.monotonic()
        if self.consecutive <= 3 or now - self.last_log > 30:
            more = f" ({self.unlogged} more since the last warning)" if self.unlogged else ""
            logger.warning("skipping an unreadable record of %s: %s%s", where, repr(exn)[:300], more)
            self.unlogged, self.last_log = 0, now
        else:
            self.unlogged += 1

    def record_read(self) -> None:
        self.consecutive = 0


def split_batch(total: int, weights: Mapping[str, float]) -> dict[str, int]:
    """Samples per dataset in one step, proportional to weights, each at least 1 (largest remainder)."""
    if total < len(weights):
        raise ValueError(f"a batch of {total} cannot give each of the {len(weights)} datasets a sample.")
    names = list(weights)
    spare = total - len(names)
    raw = [spare * weights[n] / sum(weights.values()) for n in names]
    counts = [1 + math.floor(r) for r in raw]
    for i in sorted(range(len(names)), key=lambda i: raw[i] - math.floor(raw[i]), reverse=True)[: total - sum(counts)]:
        counts[i] += 1
    return dict(zip(names, counts, strict=True))


class DatasetStream:
    """What the pipeline needs of one dataset's shard set: its manifest, subject rows and volume masks.

    Args:
        manifest: the shard set (`Manifest.read(url)`).
        subject_rows: global subject id -> row of the model's token table (a model's `registry.row_of`).
        subjects: subject names within the dataset (subj01); None: every subject of the manifest.
        key: what chose `subjects` (a recipe key, a flag), named when one is not in the manifest.
        shuffled_clip: seed of a fixed permutation of CLIP features across stimuli (the negative control,
            mused_fm.data.clip_targets); None: each sample's own features.
    """

    def __init__(
        self,
        manifest: Manifest,
        subject_rows: Mapping[str, int],
        subjects: list[str] | None = None,
        key: str | None = None,
        shuffled_clip: int | None = None,
    ) -> None:
        self.manifest, self.name, self.url = manifest, manifest.dataset, manifest.url
        self.info = manifest.info
        wanted = [global_id(self.name, s) for s in subjects] if subjects else list(manifest.subjects)
        manifest.require_subjects(wanted, key or f"data.datasets.{self.name}.subjects")
        self.subjects = wanted
        self.rows = dict(subject_rows)  # a plain dict: spawned DataLoader workers receive the stream pickled
        self.masks: dict[str, np.ndarray] = {}
        key = f"data.datasets.{self.name}.clip_features"
        self.substitute_clip = None if shuffled_clip is None else ShuffledClip(manifest, shuffled_clip, key)
        if manifest.kind == "volume":  # masked vectors go back into the grid: one shape for all subjects
            for sid in wanted:
                with np.load(io.BytesIO(storage.read_bytes(manifest.preproc_url(sid)))) as f:
                    self.masks[sid] = np.flatnonzero(f["mask"].ravel())

    @classmethod
    def open(cls, url: str, subject_rows: Mapping[str, int], subjects: list[str] | None = None) -> DatasetStream:
        """The shard set at `url` (folder or s3:// prefix): reads its manifest."""
        return cls(Manifest.read(url), subject_rows, subjects)

    def shards(self, split: str) -> list[dict]:
        """Manifest entries of the split's shards of the chosen subjects."""
        return self.manifest.shards(split, self.subjects)

    def shard_urls(self, split: str) -> list[str]:
        urls = [self.manifest.shard_url(s) for s in self.shards(split)]
        if not urls:
            raise ShardSchemaError(
                f"{self.url} has no {split!r} shards for {self.subjects}; check the split and subjects."
            )
        return urls

    def count(self, split: str) -> int:
        return sum(s["count"] for s in self.shards(split))

    def arrays(self, record: dict) -> dict[str, np.ndarray]:
        """A decoded block as arrays (bold unmasked for volume datasets) with token rows per sample."""
        block = decode_block(record["__key__"], {k: v for k, v in record.items() if not k.startswith("__")})
        for member, values in (("bold", block.bold), ("clip_llv", block.clip_llv), ("clip_hlv", block.clip_hlv)):
            if not all_finite(values):  # a faulty writer upstream: one vectorised pass per block
                raise ShardSchemaError(f"record {block.key!r}: {member}.npy holds NaN or infinite values.")
        subject = block.metas[0]["subject"]
        if subject not in self.rows:
            raise UnknownSubjectError(
                f"{record.get('__url__', self.url)}: subject {subject!r} is not in the model's registry; train "
                "with it (list it in the recipe or the manifest) or add it with launch/adapt_subject.py."
            )
        bold = block.bold
        if self.masks:
            grid = self.manifest.input_shape
            volume = np.zeros((len(block), int(np.prod(grid))), dtype=np.float16)
            volume[:, self.masks[subject]] = bold
            bold = volume.reshape(len(block), *grid)
        stimuli = [m["stimulus"] for m in block.metas]
        clip_llv, clip_hlv = (
            (block.clip_llv, block.clip_hlv)
            if self.substitute_clip is None
            else self.substitute_clip(block.clip_llv, stimuli)
        )
        return {
            "bold": bold,
            "subject_row": np.full(len(block), self.rows[subject], dtype=np.int64),
            "labels": block.labels,
            "clip_llv": clip_llv,
            "clip_hlv": clip_hlv,
            "subject": np.array([subject] * len(block)),
            "stimulus": np.array(stimuli),
        }


def _to_batch(arrays: dict[str, np.ndarray], dataset: str, n_skipped: int) -> dict:
    batch = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items() if k not in TEXT_KEYS}
    text = {k: arrays[k].tolist() for k in TEXT_KEYS}
    return {**batch, **text, "dataset": dataset, "n_skipped": n_skipped}


class ShuffledBatches:
    """Pipeline stage: records -> batches, mixing the samples of about `buffer` samples' worth of blocks.

    A class rather than a closure so that spawned DataLoader workers can receive it.
    """

    def __init__(self, stream: DatasetStream, batch_size: int, buffer: int, seed: int, failures: ShardFailures) -> None:
        self.stream, self.batch_size, self.buffer, self.seed = stream, batch_size, max(buffer, batch_size), seed
        self.failures = failures

    def __call__(self, records: Iterator[dict]) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        rank = int(wds.utils.pytorch_worker_info()[0])
        rng = np.random.default_rng([self.seed, rank, info.id if info else 0])
        pool: list[dict[str, np.ndarray]] = []
        held, reported = 0, _skipped  # the process may have run other streams before (one run after another)
        for record in records:
            try:
                arrays = self.stream.arrays(record)
            except (UnknownSubjectError, ClipTargetError):  # not a damaged record: the run cannot go on
                raise
            except (ShardSchemaError, ValueError, KeyError) as err:
                self.failures.bad_record(err, record.get("__url__", "?"))
                continue
            self.failures.record_read()
            pool.append(arrays)
            held += len(arrays["labels"])
            if held < self.buffer:
                continue
            merged = {k: np.concatenate([p[k] for p in pool]) for k in pool[0]}
            order = rng.permutation(held)
            cut = held - held % self.batch_size
            for start in range(0, cut, self.batch_size):
                pick = order[start : start + self.batch_size]
                yield _to_batch({k: v[pick] for k, v in merged.items()}, self.stream.name, _skipped - reported)
                reported = _skipped
            rest = order[cut:]
            pool, held = ([{k: v[rest] for k, v in merged.items()}], len(rest)) if len(rest) else ([], 0)


def train_loader(
    stream: DatasetStream,
    split: str,
    batch_size: int,
    epoch_batches: int,
    seed: int,
    num_workers: int = 2,
    buffer: int = 2048,
    worker_context: str | None = "spawn",
    pin_memory: bool = False,
) -> wds.WebLoader:
    """Endless shuffled batches of one dataset; `epoch_batches` per iteration on every rank.

    Args:
        seed: the run seed folded with the global step on resume, so a resumed run draws new data.
        worker_context: multiprocessing start method of the workers (spawn: s3fs is not fork-safe).
        pin_memory: batches in page-locked memory (for a GPU: the trainer's non-blocking copies overlap).
    """
    failures = ShardFailures(stream.name, stream.url)  # one object: the workers get it pickled with both stages
    pipeline = wds.DataPipeline(
        wds.ResampledShards(stream.shard_urls(split), seed=seed, deterministic=True),  # per rank and worker
        wds.tarfile_to_samples(handler=failures),  # a record = one block of up to 128 samples
        ShuffledBatches(stream, batch_size, buffer, seed, failures),
    )
    kwargs = {"multiprocessing_context": worker_context, "persistent_workers": True} if num_workers else {}
    loader = wds.WebLoader(pipeline, batch_size=None, num_workers=num_workers, pin_memory=pin_memory, **kwargs)
    return loader.with_epoch(epoch_batches)  # on the loader, not the dataset: not multiplied by workers


def eval_batches(
    stream: DatasetStream,
    split: str,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    skipped: dict[str, int] | None = None,
) -> Iterator[dict]:
    """Each sample of the split exactly once across ranks: shard i is read by rank i % world_size.

    An unreadable shard or record (truncated, damaged, non-finite values) is skipped and named in the log;
    `skipped[shard url]` receives the number of that shard's samples (by its manifest count) not read.
    """
    shards = stream.shards(split)[rank::world_size]
    if not stream.shards(split):
        stream.shard_urls(split)  # the named error for a split with no shards
    pending: list[dict[str, np.ndarray]] = []
    held = 0
    for shard in shards:
        url, read = stream.manifest.shard_url(shard), 0
        try:
            with storage.open_read(url) as f:
                for key, members in iter_raw_records(f):
                    try:
                        arrays = stream.arrays({"__key__": key, "__url__": url, **members})
                    except (UnknownSubjectError, ClipTargetError):
                        raise
                    except (ShardSchemaError, ValueError, KeyError) as err:
                        logger.warning("%s: skipping record %s: %s", url, key, str(err)[:300])
                        continue
                    pending.append(arrays)
                    read += len(arrays["labels"])
                    held += len(arrays["labels"])
                    while held >= batch_size:
                        merged = {k: np.concatenate([p[k] for p in pending]) for k in pending[0]}
                        yield _to_batch({k: v[:batch_size] for k, v in merged.items()}, stream.name, 0)
                        pending = [{k: v[batch_size:] for k, v in merged.items()}]
                        held -= batch_size
        except (OSError, tarfile.TarError, ShardSchemaError) as err:
            logger.warning("%s: unreadable after %d samples, skipping the rest: %s", url, read, str(err)[:300])
        if read < shard["count"]:
            if skipped is not None:
                skipped[url] = shard["count"] - read
            logger.warning("%s: %d of its %d samples skipped", url, shard["count"] - read, shard["count"])
    if held:
        merged = {k: np.concatenate([p[k] for p in pending]) for k in pending[0]}
        yield _to_batch(merged, stream.name, 0)
