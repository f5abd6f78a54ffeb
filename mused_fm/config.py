"""Typed recipes: nested dataclasses with defaults in code, YAML deltas, `section.key=value` overrides.

    from mused_fm.config import load_recipe
    recipe = load_recipe("recipes/nsd_hcp.yaml", ["train.max_steps=100", "model.depth=2"])

Merge order: the defaults below, then the YAML file, then the overrides. Every key of the YAML
and of the overrides must name a field here; misspelt keys, wrong types and values outside a
field's choices are collected and raised together as one `RecipeError` that names each dotted key
and suggests the closest valid one. The resolved recipe is written back with `save_recipe`.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from mused_fm.errors import RecipeError
from mused_fm.files import write_text
from mused_fm.subject_ids import global_id

__all__ = [
    "AdaptConfig",
    "AdaptRecipe",
    "BaseRecipe",
    "DataConfig",
    "DatasetConfig",
    "LogConfig",
    "LossConfig",
    "LossWeights",
    "ModelConfig",
    "Recipe",
    "RecipeError",
    "RunConfig",
    "TrainConfig",
    "WandbConfig",
    "load_recipe",
    "recipe_from_dict",
    "recipe_to_dict",
    "save_recipe",
]


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


@dataclass
class RunConfig:
    name: str = "mused"
    """Run name: in the logs, the report title and the W&B run."""
    out_dir: str = "runs/mused"
    """Run directory: config.yaml, metrics.jsonl, checkpoints/, export/."""
    seed: int = 0
    """Seed of the initial weights (identical on every rank) and of the data streams."""


@dataclass
class ModelConfig:
    dim: int = 512
    """Width D of the residual stream and of every token."""
    depth: int = 24
    """Transformer blocks in the shared trunk."""
    heads: int = 8
    """Attention heads per block; dim must be divisible by it."""
    subject_tokens: Literal["two", "one", "none"] = "two"
    """two: a low- and a high-level token per subject (CLIP-MUSED); one: one subject embedding added
    to two shared tokens (MS-EMB); none: two shared tokens only (MS-SMODEL)."""
    mlp_ratio: float = 4.0
    """Hidden width of each block's MLP as a multiple of dim."""
    dropout: float = 0.0
    """Dropout in the trunk's attention and MLP."""
    head_hidden: int = 0
    """Hidden width of an MLP head on concat(z_llv, z_hlv); 0: a linear head, as the official CLIP-MUSED
    code (an MLP head overfits a few hundred samples per subject: docs/BENCHMARKS.md, compare)."""
    volume_channels: list[int] = field(default_factory=lambda: [32, 64, 128, 256])
    """Channels of the 3D-CNN stages of volume tokenizers; each stage halves every spatial axis."""
    volume_norm: Literal["batch", "group"] = "batch"
    """Normalisation in the 3D CNN: batch (as the paper's ResNet; on several GPUs its statistics are synchronised
    across ranks, SyncBatchNorm, so small per-rank batches normalise over the global batch) or group."""


@dataclass
class DatasetConfig:
    url: str = ""
    """Shard folder or s3://bucket/prefix holding manifest.json (written by shards_tools)."""
    weight: float = 1.0
    """Share of each step's samples drawn from this dataset, relative to the other datasets."""
    subjects: list[str] = field(default_factory=list)
    """Subject names within the dataset (subj01, 100610); the global id is '<dataset>/<name>'.
    Empty: every subject in the shards' manifest. One name gives single-subject training (SS-ViT)."""
    input: Literal["roi", "volume"] = "roi"
    """roi: bold is (num_rois, roi_dim) ROI patches (NSD); volume: bold is a 3D volume (HCP)."""
    num_rois: int = 10
    """ROI patches (tokens) per sample of a roi dataset (the paper's 10 NSD ROI groups)."""
    roi_dim: int = 268
    """Features per ROI patch (the paper's per-ROI PCA width; shorter ROIs are zero-padded)."""
    volume_shape: list[int] = field(default_factory=lambda: [111, 127, 111])
    """Cropped volume (X, Y, Z); four stride-2 stages turn 111x127x111 into 7x8x7 = 392 tokens."""
    clip_features: Literal["own", "shuffled"] = "own"
    """CLIP features the RSA terms align with: own (each stimulus's), or shuffled: each stimulus gets another
    stimulus's, by a fixed permutation seeded by run.seed (the comparison's negative control)."""
    num_classes: int = 80
    """Labels of the dataset's multi-label head (NSD: the 80 COCO categories). 0: taken from the
    shards' manifest by the trainer (HCP keeps the WordNet categories above a frequency)."""

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample's bold: (num_rois, roi_dim) or the volume (X, Y, Z)."""
        return (self.num_rois, self.roi_dim) if self.input == "roi" else tuple(self.volume_shape)


@dataclass
class DataConfig:
    datasets: dict[str, DatasetConfig] = field(default_factory=dict)
    """Datasets by name (nsd, hcp, a BIDS site name); the name prefixes the global subject ids and may
    not contain '/' or '.'."""


@dataclass
class LossWeights:
    """The lambdas of the paper's eq. 16 for one dataset (defaults: the paper's NSD settings)."""

    orth: float = 1e-3
    """lambda_orth: weight of ||z_llv z_hlv^T||_F^2 / B^2."""
    llv: float = 1e-4
    """lambda_llv: weight of the low-level RSA term (token similarity vs CLIP low-level similarity)."""
    hlv: float = 1e-3
    """lambda_hlv: weight of the high-level RSA term."""


@dataclass
class LossConfig:
    rsa_scope: Literal["local", "global"] = "local"
    """local: similarity matrices per rank (the paper's B); global: over the gathered global batch."""
    weights: dict[str, LossWeights] = field(default_factory=dict)
    """The lambdas of the paper's eq. 16 by dataset name; a dataset not listed gets the defaults (the
    paper's NSD values)."""

    def for_dataset(self, name: str) -> LossWeights:
        return self.weights.get(name, LossWeights())


@dataclass
class TrainConfig:
    micro_batch_size: int = 64
    """Samples per rank per forward pass, summed over datasets."""
    grad_accum_steps: int = 1
    """Global batch = micro_batch_size x grad_accum_steps x world size (derived, never set)."""
    max_steps: int = 20000
    """Optimizer steps of the run (or of each adaptation run)."""
    optimizer: Literal["adamw", "adam"] = "adamw"
    """adamw: decoupled weight decay; adam: L2 weight decay (the paper's Adam)."""
    lr: float = 1e-4
    """Peak learning rate, after the linear warmup; then cosine decay to lr x min_lr_ratio."""
    weight_decay: float = 0.0
    """Weight decay (decoupled for adamw, L2 for adam)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """Adam's (beta1, beta2)."""
    warmup_steps: int = 500
    """Steps of linear warmup from 0 (0: none)."""
    min_lr_ratio: float = 0.0
    """Cosine decay ends at lr x min_lr_ratio."""
    grad_clip: float = 1.0
    """Global gradient-norm clip; 0 disables it."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """auto: bf16 on GPU, fp32 on CPU (bf16 matmul is ~250x slower on CPUs without AMX)."""
    save_every: int = 1000
    """Steps between checkpoints (and one at the last step)."""
    eval_every: int = 500
    """Steps between validations (mAP on every dataset's val split; the best export goes to best/)."""
    log_every: int = 10
    """Steps between records in metrics.jsonl (and progress lines)."""
    compile: bool = False
    """torch.compile each trunk block in place (state-dict keys unchanged). Off by default until a GPU run
    measures it faster than eager (`make gpu-check`); not with ZeRO-3 (its parameter hooks break graphs)."""
    num_workers: int = -1
    """DataLoader workers per dataset and per rank (each holds a shuffle buffer; 0: load in the rank).
    -1: sized for the machine: the cores each rank has, less one for the rank, shared by its datasets
    (at most 4 each)."""


@dataclass
class WandbConfig:
    project: str = "mused-fm"
    """W&B project of the run."""
    mode: Literal["auto", "online", "offline", "disabled"] = "disabled"
    """auto (the shipped recipes: online when a W&B login or WANDB_API_KEY is present, else offline, with the
    `wandb sync` command logged), online (a named error without a login), offline (sync later with `wandb
    sync`) or disabled; WANDB_MODE=disabled also turns it off."""
    entity: str = ""
    """W&B team or user; empty: your default entity."""


@dataclass
class LogConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)
    """Weights & Biases logging, on rank 0."""


@dataclass
class AdaptConfig:
    """New subjects by token-only fine-tuning (launch/adapt_subject.py, recipes/new_subject.yaml).

    The model and its datasets come from `checkpoint` (an export); train.* sets the optimizer, steps
    and batch of the fine-tuning.
    """

    checkpoint: str = ""
    """Export directory of the trained model (RUN/export), or a run directory."""
    shards: list[str] = field(default_factory=list)
    """Shard sets (folders or s3:// prefixes) holding the new subjects, packed by the same tools."""
    subjects: list[str] = field(default_factory=list)
    """Global ids of the subjects to add, e.g. nsd/subj08."""
    out: str = "runs/adapt"
    """Output: export/ (the model with the new subjects), eval.json, curve.json, config.yaml and
    runs/<method>_f<fraction>_s<seed>/metrics.jsonl."""
    fractions: list[float] = field(default_factory=lambda: [1.0])
    """Shares of each new subject's training samples (seeded subsets): one run per method and fraction
    (tokens: per seed too). The export is the token-only run at the largest fraction and the first seed."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """Seeds of the token-only runs: each draws its own subset of the training samples and its own data
    order (scratch and full run at the first seed only). Adaptation reads these, not run.seed."""
    methods: list[Literal["tokens", "scratch", "full"]] = field(default_factory=lambda: ["tokens"])
    """tokens: the new subjects' two tokens only; scratch: a single-subject model from scratch (SS-ViT);
    full: trunk, subject tokens and the new subjects' datasets' tokenizers and heads, from the trained
    model. Must include tokens. A sweep (any method besides tokens) also scores zero-shot (adapt.zero_shot)."""
    zero_shot: bool = False
    """Also score the new subjects untrained, their tokens at the mean of their dataset's known subjects
    (the init: mean start): curve.json's zero_shot point (fraction 0, n_train 0, the first seed). A sweep
    (adapt.methods beyond tokens) always scores it."""
    reference: str = ""
    """Export of a model pretrained with the new subjects: the curve's in_pretraining point."""
    replace: bool = False
    """Re-learn subjects that are already in the registry instead of refusing them."""
    patience: int = 4
    """Early stopping: evaluations on the new subjects' validation split without improvement."""
    init: Literal["mean", "random"] = "mean"
    """New tokens start at the mean of the known subjects' tokens of the same dataset, or random."""


# DeepSpeed keys the recipe derives from train.*; writing them twice could only disagree.
_DERIVED_DEEPSPEED_KEYS = {
    "train_batch_size": "train.micro_batch_size x train.grad_accum_steps x world size",
    "train_micro_batch_size_per_gpu": "train.micro_batch_size",
    "gradient_accumulation_steps": "train.grad_accum_steps",
    "gradient_clipping": "train.grad_clip",
    "optimizer": "train.optimizer, train.lr, train.betas and train.weight_decay",
    "scheduler": "train.warmup_steps, train.max_steps and train.min_lr_ratio",
    "bf16": "train.precision",
    "fp16": "train.precision",
}


# The ZeRO stage of a recipe that sets none: the `deepspeed` field's default (and recipe.zero_stage's, for a
# BaseRecipe built in code with another deepspeed dict); the DeepSpeed engine asks recipe.zero_stage.
_DEFAULT_ZERO_STAGE = 2


@dataclass
class BaseRecipe:
    """What every run has: its name and seed, the loss, the optimisation, DeepSpeed and logging."""

    run: RunConfig = field(default_factory=RunConfig)
    """Name, output directory and seed of the run."""
    loss: LossConfig = field(default_factory=LossConfig)
    """The CLIP-MUSED objective: multi-label BCE plus the RSA and orthogonality terms, weighted per dataset."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation: batch, steps, optimizer and schedule, precision, intervals, data loading. In an
    adaptation recipe, those of the fine-tuning."""
    deepspeed: dict[str, Any] = field(default_factory=lambda: {"zero_optimization": {"stage": _DEFAULT_ZERO_STAGE}})
    """Pass-through DeepSpeed keys (ZeRO stage, offload, ...). Batch, optimizer and precision keys
    are derived from train.* and refused here."""
    log: LogConfig = field(default_factory=LogConfig)
    """Logging besides metrics.jsonl."""

    @property
    def zero_stage(self) -> int:
        """deepspeed.zero_optimization.stage: as the recipe sets it, else the `deepspeed` field's default."""
        zero = self.deepspeed.get("zero_optimization")
        return zero.get("stage", _DEFAULT_ZERO_STAGE) if isinstance(zero, Mapping) else _DEFAULT_ZERO_STAGE


@dataclass
class Recipe(BaseRecipe):
    """A training run: a model and its datasets (launch/train.py)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The architecture (an adaptation recipe takes it from its checkpoint)."""
    data: DataConfig = field(default_factory=DataConfig)
    """The datasets to train on."""

    def subject_ids(self) -> list[str]:
        """Global subject ids listed by the recipe, dataset by dataset ('nsd/subj01', ...)."""
        return [global_id(name, s) for name, ds in self.data.datasets.items() for s in ds.subjects]


@dataclass
class AdaptRecipe(BaseRecipe):
    """New subjects added to a trained model (launch/adapt_subject.py): the model comes from adapt.checkpoint."""

    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    """The trained model (architecture and datasets come from its export), the new subjects and what to
    fit to them; the flags of launch/adapt_subject.py set these keys."""


# --------------------------------------------------------------------------------------------
# Loading, merging, validating
# --------------------------------------------------------------------------------------------

R = TypeVar("R", bound=BaseRecipe)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice in one mapping (YAML would keep the last)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise RecipeError(
                f"key {key!r} appears twice in one mapping (line {key_node.start_mark.line + 1}); keep one of them."
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_recipe(
    path: str | Path | Sequence[str | Path] | None,
    overrides: Iterable[str] = (),
    kind: type[R] = Recipe,
    base: Mapping[str, Any] | None = None,
) -> R:
    """Defaults, then `base`, then the YAML at `path` (None: defaults only), then `section.key=value` overrides.

    `kind` is the recipe type: Recipe (training, the default) or AdaptRecipe (new subjects).

    `path` may be a list of recipes: each is merged over the ones before it, so a small recipe that
    holds only what differs (recipes/compare/ms_emb.yaml: `model: {subject_tokens: one}`) layers on a
    full one (`deepspeed launch/train.py recipes/demo.yaml recipes/compare/ms_emb.yaml`).

    `base` is a nested delta (as in a YAML file) under every file: what a recipe does not set comes from it,
    key by key, before the code defaults (an adaptation takes its model's `loss` section this way:
    mused_fm.adapt.load_adapt_recipe). It is not modified.
    """
    paths = [] if path is None else [path] if isinstance(path, str | Path) else list(path)
    delta: dict[str, Any] = copy.deepcopy(dict(base or {}))
    for layer in map(Path, paths):
        if not layer.is_file():
            raise RecipeError(f"recipe {str(layer)!r} does not exist; the recipes are in recipes/*.yaml.")
        try:
            layer_delta = yaml.load(layer.read_text(), Loader=_StrictLoader) or {}
        except RecipeError as err:
            raise RecipeError(f"{layer}: {err}") from None
        except yaml.YAMLError as err:
            raise RecipeError(f"{layer} is not valid YAML: {err}") from None
        if not isinstance(layer_delta, dict):
            raise RecipeError(f"{layer}: a recipe is a mapping of sections, got {type(layer_delta).__name__}.")
        _deep_update(delta, layer_delta)
    return recipe_from_dict(delta, overrides, source=" + ".join(map(str, paths)) or "defaults", kind=kind)


def recipe_from_dict(
    delta: Mapping[str, Any], overrides: Iterable[str] = (), source: str = "recipe", kind: type[R] = Recipe
) -> R:
    """Build a validated recipe of type `kind` from a nested delta (as in a YAML file) and dotted overrides."""
    recipe = kind()
    problems: list[str] = []
    removed: list[str] = []
    _merge(recipe, delta, "", problems, False, removed)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            problems.append(f"override {item!r} is not of the form section.key=value.")
            continue
        value = yaml.safe_load(raw) if raw.strip() else ""
        nested: Any = value
        for part in reversed(key.strip().split(".")):
            nested = {part: nested}
        override_problems: list[str] = []
        _merge(recipe, nested, "", override_problems, True, removed)
        problems.extend(f"override {item!r}: {p}" for p in override_problems)
    for dotted in removed:  # a dataset dropped by `null` takes its loss weights with it
        if isinstance(recipe, Recipe) and dotted.removeprefix("data.datasets.") not in recipe.data.datasets:
            recipe.loss.weights.pop(dotted.removeprefix("data.datasets."), None)
    if not problems:
        problems.extend(_validate(recipe))
    if problems:
        raise RecipeError(
            f"{source}: " + ("\n  ".join(["invalid recipe:", *problems]) if len(problems) > 1 else problems[0])
        )
    return recipe


def recipe_to_dict(recipe: BaseRecipe) -> dict[str, Any]:
    """Plain nested dict (YAML/JSON-safe) of a recipe."""
    return dataclasses.asdict(recipe)


def save_recipe(recipe: BaseRecipe, path: str | Path) -> None:
    """Write the resolved recipe as YAML; load_recipe(path, kind=type(recipe)) gives it back unchanged."""
    write_text(path, yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False))


def _merge(obj: Any, delta: Any, prefix: str, problems: list[str], from_cli: bool, removed: list[str]) -> None:
    """Merge `delta` into dataclass `obj` in place, appending one message per bad key.

    `removed` collects the dotted names of entries that a `null` deleted (data.datasets.hcp).
    """
    if not isinstance(delta, Mapping):
        problems.append(f"{prefix.rstrip('.') or 'recipe'}: expected a mapping of keys, got {delta!r}.")
        return
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in delta.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            problems.append(_unknown_key(dotted, str(key), [f"{prefix}{n}" for n in names]))
            continue
        tp = hints[key]
        current = getattr(obj, key)
        if dataclasses.is_dataclass(tp):
            _merge(current, value, f"{dotted}.", problems, from_cli, removed)
        elif typing.get_origin(tp) is dict and dataclasses.is_dataclass(typing.get_args(tp)[1]):
            if not isinstance(value, Mapping):
                problems.append(f"{dotted}: expected a mapping of names to sections, got {value!r}.")
                continue
            item_type = typing.get_args(tp)[1]
            for name, sub in value.items():
                if sub is None:  # `hcp: null` removes an entry inherited from a base recipe
                    current.pop(name, None)
                    removed.append(f"{dotted}.{name}")
                    continue
                entry = current.setdefault(str(name), item_type())
                _merge(entry, sub, f"{dotted}.{name}.", problems, from_cli, removed)
        elif typing.get_origin(tp) is dict:  # free-form pass-through (deepspeed)
            if not isinstance(value, Mapping):
                problems.append(f"{dotted}: expected a mapping, got {value!r}.")
                continue
            _deep_update(current, value)
        else:
            try:
                setattr(obj, key, _coerce(value, tp, from_cli))
            except RecipeError as err:
                problems.append(f"{dotted}: {err}")


def _deep_update(target: dict, delta: Mapping) -> None:
    for key, value in delta.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _deep_update(target[key], value)
        else:
            target[key] = value


def _unknown_key(dotted: str, key: str, candidates: Sequence[str]) -> str:
    leaf = [c.rsplit(".", 1)[-1] for c in candidates]
    close = difflib.get_close_matches(key, leaf, n=1, cutoff=0.5)
    hint = f" Did you mean {candidates[leaf.index(close[0])]!r}?" if close else f" Valid keys here: {', '.join(leaf)}."
    return f"unknown key {dotted!r}.{hint}"


def _coerce(value: Any, tp: Any, from_cli: bool) -> Any:
    """Check (and minimally convert) a scalar or list against a field's type annotation."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        if value not in args:
            raise RecipeError(f"expected one of {', '.join(map(repr, args))}, got {value!r}.")
        return value
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, from_cli)
            except RecipeError as err:
                errors.append(str(err))
        raise RecipeError(" / ".join(errors))
    if origin is list:
        if not isinstance(value, list | tuple):
            if from_cli and isinstance(value, str | int | float) and not isinstance(value, bool):
                # subjects=subj01,subj02, volume_shape=24,28,24 or subjects=233326 on the command line
                value = [yaml.safe_load(v) for v in str(value).split(",") if v.strip()]
            else:
                raise RecipeError(f"expected a list, got {value!r}.")
        return [_coerce(v, args[0], from_cli) for v in value]
    if tp is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"expected true or false, got {value!r}.")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"expected an integer, got {value!r}.")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise RecipeError(f"expected a number, got {value!r}.") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RecipeError(f"expected a number, got {value!r}.")
        return float(value)
    if tp is str:
        if from_cli and isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)  # run.name=2024 on the command line
        if not isinstance(value, str):
            raise RecipeError(f"expected a string, got {value!r}.")
        return value
    raise TypeError(f"unsupported field type {tp!r}")  # a config.py bug, not a recipe error


def _validate(recipe: BaseRecipe) -> list[str]:
    """Checks that need more than one field; every problem is returned, none raised."""
    issues = _validate_common(recipe)
    if isinstance(recipe, Recipe):
        issues.extend(_validate_training(recipe))
    if isinstance(recipe, AdaptRecipe):
        issues.extend(_validate_adaptation(recipe.adapt))
    return issues


def _validate_training(recipe: Recipe) -> list[str]:
    issues: list[str] = []
    m, t = recipe.model, recipe.train
    for name in ("dim", "depth", "heads"):
        if getattr(m, name) < 1:
            issues.append(f"model.{name} must be >= 1, got {getattr(m, name)}.")
    if m.heads >= 1 and m.dim % m.heads:
        issues.append(f"model.dim ({m.dim}) must be divisible by model.heads ({m.heads}).")
    if m.head_hidden < 0:
        issues.append(f"model.head_hidden must be >= 0, got {m.head_hidden}.")
    if not m.volume_channels or min(m.volume_channels) < 1:
        issues.append(f"model.volume_channels must be a non-empty list of positive ints, got {m.volume_channels}.")
    if not 0.0 <= m.dropout < 1.0:
        issues.append(f"model.dropout must be in [0, 1), got {m.dropout}.")
    if not recipe.data.datasets:
        issues.append("data.datasets is empty: add at least one dataset, e.g. data.datasets.nsd.url=PATH.")
    for name, ds in recipe.data.datasets.items():
        key = f"data.datasets.{name}"
        if "/" in name or "." in name or not name:
            issues.append(f"{key}: dataset names may not contain '/' or '.' (they prefix subject ids).")
        if not (ds.weight > 0 and math.isfinite(ds.weight)):
            issues.append(f"{key}.weight must be a positive number, got {ds.weight}.")
        if ds.num_classes < 0:
            issues.append(f"{key}.num_classes must be >= 1, or 0 to take it from the manifest; got {ds.num_classes}.")
        if ds.input == "roi" and (ds.num_rois < 1 or ds.roi_dim < 1):
            issues.append(f"{key}: num_rois and roi_dim must be >= 1, got {ds.num_rois} and {ds.roi_dim}.")
        if ds.input == "volume" and (len(ds.volume_shape) != 3 or min(ds.volume_shape) < 1):
            issues.append(f"{key}.volume_shape must be three positive ints (X, Y, Z), got {ds.volume_shape}.")
        if len(set(ds.subjects)) != len(ds.subjects):
            issues.append(f"{key}.subjects lists a subject twice: {ds.subjects}.")
    for name in recipe.loss.weights:
        if name not in recipe.data.datasets:
            close = difflib.get_close_matches(name, list(recipe.data.datasets), n=1)
            hint = f" Did you mean 'loss.weights.{close[0]}'?" if close else ""
            issues.append(f"loss.weights.{name} names no dataset in data.datasets.{hint}")
    for name, w in recipe.loss.weights.items():
        for lam in ("orth", "llv", "hlv"):
            if getattr(w, lam) < 0:
                issues.append(f"loss.weights.{name}.{lam} must be >= 0, got {getattr(w, lam)}.")

    if t.micro_batch_size < len(recipe.data.datasets):
        issues.append(
            f"train.micro_batch_size ({t.micro_batch_size}) must give every dataset at least one "
            f"sample per step ({len(recipe.data.datasets)} datasets)."
        )
    return issues


def _validate_adaptation(a: AdaptConfig) -> list[str]:
    issues: list[str] = []
    if not a.fractions or not all(0 < f <= 1 for f in a.fractions) or len(set(a.fractions)) != len(a.fractions):
        issues.append(f"adapt.fractions must be distinct numbers in (0, 1], at least one; got {a.fractions}.")
    if "tokens" not in a.methods or len(set(a.methods)) != len(a.methods):
        issues.append(
            f"adapt.methods must list tokens (the export is the token-only result), each method once; got {a.methods}."
        )
    if not a.seeds or min(a.seeds) < 0 or len(set(a.seeds)) != len(a.seeds):
        issues.append(f"adapt.seeds must be distinct integers >= 0, at least one; got {a.seeds}.")
    if a.patience < 1:
        issues.append(f"adapt.patience must be >= 1, got {a.patience}.")
    return issues


def _validate_common(recipe: BaseRecipe) -> list[str]:
    issues: list[str] = []
    t = recipe.train
    for name in ("micro_batch_size", "grad_accum_steps", "max_steps", "save_every", "eval_every", "log_every"):
        if getattr(t, name) < 1:
            issues.append(f"train.{name} must be >= 1, got {getattr(t, name)}.")
    if t.lr <= 0:
        issues.append(f"train.lr must be > 0, got {t.lr}.")
    if len(t.betas) != 2 or not all(0 <= b < 1 for b in t.betas):
        issues.append(f"train.betas must be two numbers in [0, 1), got {t.betas}.")
    if t.warmup_steps < 0 or t.grad_clip < 0 or t.weight_decay < 0:
        issues.append("train.warmup_steps, train.grad_clip and train.weight_decay must be >= 0.")
    if t.num_workers < -1:
        issues.append(f"train.num_workers must be >= 0, or -1 to size it for the machine; got {t.num_workers}.")
    if not 0.0 <= t.min_lr_ratio <= 1.0:
        issues.append(f"train.min_lr_ratio must be in [0, 1], got {t.min_lr_ratio}.")
    if t.compile and recipe.zero_stage == 3:
        issues.append("train.compile is not supported with ZeRO-3 (deepspeed.zero_optimization.stage=3): use stage 2.")

    for key, owner in _DERIVED_DEEPSPEED_KEYS.items():
        if key in recipe.deepspeed:
            issues.append(f"deepspeed.{key} is derived from {owner}; remove it from the recipe.")
    zero = recipe.deepspeed.get("zero_optimization", {})
    if not isinstance(zero, Mapping):
        issues.append(f"deepspeed.zero_optimization must be a mapping (e.g. {{stage: 3}}), got {zero!r}.")
    stage = recipe.zero_stage
    if stage not in (0, 1, 2, 3) or isinstance(stage, bool):
        issues.append(f"deepspeed.zero_optimization.stage must be 0, 1, 2 or 3, got {stage!r}.")
    return issues
