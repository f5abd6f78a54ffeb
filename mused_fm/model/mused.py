"""MusedModel: dataset tokenizer -> [x_llv(s); x_hlv(s); tokens] + pos -> shared trunk -> dataset head.

Shape legend: B batch, M tokens of the dataset's tokenizer, D width, C classes of the dataset.

    model = build_model(load_recipe("recipes/demo.yaml"))
    rows = model.subject_rows(["nsd/subj01", "nsd/subj02"])       # CPU-side, named errors
    out = model(bold_B_R_F, rows, "nsd")                         # MusedOutput(logits, z_llv, z_hlv)
    model.save_pretrained("export/"); MusedModel.from_pretrained("export/")

Unseen subjects (only their tokens are trained; freeze.py freezes the rest):

    model = MusedModel.from_pretrained("export/")
    model.add_subjects(["nsd/subj09"])                          # registry + fresh rows `new`
    params = freeze_for_new_subjects(model)                     # before building the optimizer
    ...train params...
    model.save_pretrained("export_plus/")                       # one (N+k)-row table: a plain model

An export directory holds model.safetensors (weights and buffers, no pickle), config.json (the
model section and the per-dataset input specs of the recipe, and the loss section the weights were
trained with, which adaptation reuses) and registry.json (subject ids in table order).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from mused_fm.config import DatasetConfig, LossConfig, ModelConfig, Recipe, recipe_from_dict
from mused_fm.errors import CheckpointError, MissingFileError, RecipeError, UnknownSubjectError
from mused_fm.files import atomic_path, write_json, write_text
from mused_fm.model.card import CARD_NAME, model_card
from mused_fm.model.heads import MultiLabelHead
from mused_fm.model.registry import SubjectRegistry
from mused_fm.model.subject_tokens import SubjectTokens, fold_new_rows
from mused_fm.model.tokenizers import RoiTokenizer, VolumeTokenizer
from mused_fm.model.transformer import Trunk
from mused_fm.subject_ids import dataset_of

__all__ = ["MusedModel", "MusedOutput", "build_model", "load_export"]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
REGISTRY_NAME = "registry.json"
EXPORT_FORMAT = 1


@dataclass
class MusedOutput:
    logits: torch.Tensor
    """(B, C) multi-label logits of the dataset's head."""
    z_llv: torch.Tensor
    """(B, D) LN(trunk output at the low-level token): aligned with low-level CLIP features."""
    z_hlv: torch.Tensor
    """(B, D) LN(trunk output at the high-level token): aligned with high-level CLIP features."""


class PositionEmbeddings(nn.Module):
    """One learned (1, 2 + M, D) position table per dataset, added in this module's own forward.

    A module call rather than indexing a ParameterDict from the parent: ZeRO-3 gathers a parameter
    in the forward hooks of the module that owns it, and a parameter read by another module's
    forward arrives partitioned (shape (0,)) in the backward pass. State-dict keys stay pos.<dataset>.
    """

    def add(self, dataset: str, num_tokens: int, dim: int) -> None:
        self.register_parameter(dataset, nn.Parameter(torch.zeros(1, num_tokens, dim)))

    def forward(self, x_BLD: torch.Tensor, dataset: str) -> torch.Tensor:
        return x_BLD + getattr(self, dataset)


class MusedModel(nn.Module):
    def __init__(self, config: ModelConfig, datasets: Mapping[str, DatasetConfig], registry: SubjectRegistry) -> None:
        super().__init__()
        if not datasets:
            raise RecipeError("MusedModel needs at least one dataset (recipe data.datasets).")
        missing = sorted({dataset_of(s) for s in registry.ids} - set(datasets))
        if missing:
            raise UnknownSubjectError(
                f"the subject registry has subjects of datasets {missing} that the recipe's data.datasets "
                f"({sorted(datasets)}) does not define; add them to the recipe."
            )
        unsized = [n for n, ds in datasets.items() if ds.num_classes < 1]
        if unsized:
            raise RecipeError(
                f"data.datasets.{unsized[0]}.num_classes is {datasets[unsized[0]].num_classes}: the model needs the "
                "class count; the trainer reads it from the shards' manifest, or set it in the recipe."
            )
        self.config = config
        self.datasets = {name: dataclasses.replace(ds) for name, ds in datasets.items()}
        self.registry = registry
        D = config.dim
        self.tokenizers = nn.ModuleDict()
        self.pos = PositionEmbeddings()
        self.heads = nn.ModuleDict()
        for name, ds in self.datasets.items():
            if ds.input == "roi":
                tokenizer: nn.Module = RoiTokenizer(ds.num_rois, ds.roi_dim, D)
            else:
                tokenizer = VolumeTokenizer(ds.volume_shape, D, config.volume_channels, config.volume_norm)
            self.tokenizers[name] = tokenizer
            self.pos.add(name, 2 + tokenizer.num_tokens, D)
            self.heads[name] = MultiLabelHead(D, ds.num_classes, config.head_hidden)
        self.subject_tokens = SubjectTokens(len(registry), D, config.subject_tokens)
        self.trunk = Trunk(D, config.depth, config.heads, config.mlp_ratio, config.dropout)
        # Submodules that train() leaves in eval mode: freeze.py lists the frozen BatchNorm layers here so
        # their running statistics stay put while dropout still follows the train/eval flag.
        self.keep_eval: tuple[str, ...] = ()
        # Class names per dataset, in head order: the trainer sets them from the shards' manifests and they
        # travel in the export (config.json "classes"), so predictions need no shards to be named.
        self.class_names: dict[str, list[str]] = {}
        self._init_weights()

    def _init_weights(self) -> None:
        for p in self.pos.parameters():
            nn.init.trunc_normal_(p, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def train(self, mode: bool = True) -> MusedModel:
        """nn.Module.train, except that the submodules named in `keep_eval` stay in eval mode."""
        super().train(mode)
        for name in self.keep_eval:
            self.get_submodule(name).eval()
        return self

    def dataset_parameters(self, dataset: str) -> list[nn.Parameter]:
        """The parameters only `dataset`'s batches reach: its tokenizer, position table and head."""
        return [*self.tokenizers[dataset].parameters(), getattr(self.pos, dataset), *self.heads[dataset].parameters()]

    def subject_rows(self, subject_ids: Sequence[str], dataset: str | None = None, where: str = "") -> torch.Tensor:
        """Token-table rows (CPU int64, shape (B,)) of global subject ids; unknown ids raise by name.

        Args:
            dataset: if given, every subject must belong to it (its head and tokenizer are used).
            where: where the ids came from (a shard), quoted in errors.
        """
        if dataset is not None:
            foreign = sorted({s for s in subject_ids if dataset_of(s) != dataset})
            if foreign:
                raise UnknownSubjectError(
                    f"subjects {foreign}{f' (in {where})' if where else ''} are not of dataset "
                    f"{dataset!r}; each batch passed to the model holds one dataset."
                )
        return self.registry.rows(subject_ids, where=where)

    def _embed(self, bold: torch.Tensor, subject_row_B: torch.Tensor, dataset: str) -> torch.Tensor:
        """z0 = [x_llv(s); x_hlv(s); tokens] + pos: (B, 2 + M, D)."""
        if dataset not in self.tokenizers:
            raise UnknownSubjectError(f"the model has no dataset {dataset!r}; it has {sorted(self.tokenizers)}.")
        tokens_BMD = self.tokenizers[dataset](bold)
        readout_B2D = self.subject_tokens(subject_row_B)
        return self.pos(torch.cat([readout_B2D.to(tokens_BMD.dtype), tokens_BMD], dim=1), dataset)

    def forward(self, bold: torch.Tensor, subject_row_B: torch.Tensor, dataset: str) -> MusedOutput:
        """One dataset's batch: bold (B, R, F) for ROI datasets or (B, X, Y, Z) for volume datasets."""
        z_B2D = self.trunk(self._embed(bold, subject_row_B, dataset), num_readout=2)
        z_llv, z_hlv = z_B2D[:, 0], z_B2D[:, 1]
        return MusedOutput(self.heads[dataset](z_llv, z_hlv), z_llv, z_hlv)

    def class_names_of(self, dataset: str) -> list[str]:
        """The dataset's class names in head order (class_0, class_1, ... for an export without names)."""
        names = self.class_names.get(dataset)
        return list(names) if names else [f"class_{i}" for i in range(self.datasets[dataset].num_classes)]

    @torch.no_grad()
    def predict(
        self, bold: torch.Tensor, subject_ids: Sequence[str], dataset: str, top_k: int = 5, threshold: float = 0.5
    ) -> list[dict]:
        """Named predictions for a batch: per sample {"subject", "top": [[class, probability], ...] (top_k, most
        probable first), "predicted": [classes with probability >= threshold]}. Unknown subjects raise by name.
        """
        from mused_fm.model.predictions import prediction_rows

        rows = self.subject_rows(subject_ids, dataset).to(bold.device)
        bold = bold.to(next(self.parameters()).dtype)  # shards store float16
        probs = torch.sigmoid(self(bold, rows, dataset).logits.float()).cpu().numpy()
        return prediction_rows(probs, self.class_names_of(dataset), top_k, threshold, subject=list(subject_ids))

    @torch.no_grad()
    def readout_attention(self, bold: torch.Tensor, subject_row_B: torch.Tensor, dataset: str) -> torch.Tensor:
        """(B, 2, 2 + M) last-layer attention of the low- (row 0) and high-level (row 1) token, mean over heads.

        Columns are [llv, hlv, tokens of the dataset's tokenizer] (ROI order for ROI datasets; the
        tokenizer's grid in X-major order for volumes): the paper's Fig. F8 reads the token columns.
        """
        return self.trunk.readout_attention(self._embed(bold, subject_row_B, dataset), 2).mean(dim=1)

    # ----------------------------------------------------------------------------------------
    # Unseen subjects
    # ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def add_subjects(
        self, new_ids: Sequence[str], init: Literal["mean", "random"] = "mean", replace: bool = False
    ) -> None:
        """Add subjects in place: registry entries after the known ones and fresh token rows `subject_tokens.new`.

        Call it before building the optimizer (or deepspeed.initialize): `new` is a new Parameter.
        Rows of the known subjects and every other weight are untouched, so their outputs do not
        change. In mode none there are no subject tokens: only the registry grows.

        Args:
            new_ids: global ids '<dataset>/<name>' of datasets the model has a tokenizer and head for.
            init: mean: each new row starts as the mean of the known subjects' rows of its dataset (of
                all known rows if the dataset has none), a subject the trunk already reads sensibly;
                random: truncated normal (std 0.02), as at pretraining.
            replace: an id already in the registry is re-initialised as a new subject: its trained row
                is dropped and it moves to the end of the registry (rows of the subjects after it
                shift down by one, so map ids through `model.registry` again). Without it such an
                id is an error.
        """
        new_ids = list(new_ids)
        if not new_ids:
            raise ValueError("add_subjects needs at least one subject id, got none.")
        if init not in ("mean", "random"):
            raise ValueError(f"init must be 'mean' or 'random', got {init!r}.")
        SubjectRegistry(new_ids)  # '<dataset>/<name>' form and no id twice, named
        issues = []
        unknown = sorted({dataset_of(s) for s in new_ids} - set(self.tokenizers))
        if unknown:
            issues.append(
                f"subjects {[s for s in new_ids if dataset_of(s) in unknown]} belong to datasets "
                f"{unknown} that the model has no tokenizer and head for; its datasets are {sorted(self.tokenizers)}. "
                "A new dataset needs its tokenizer and head trained, not only subject tokens."
            )
        known = [s for s in new_ids if s in self.registry]
        if known and not replace:
            issues.append(
                f"subjects {known} are already in the model's registry (rows {self.registry.rows(known).tolist()}); "
                "use ids not yet in the registry, or pass replace=True to re-initialise them as new subjects."
            )
        if issues:
            raise UnknownSubjectError(" ".join(issues))
        keep_rows = [r for r, s in enumerate(self.registry.ids) if s not in known]
        kept_ids = [self.registry.ids[r] for r in keep_rows]
        tokens = self.subject_tokens
        if tokens.table is not None:
            full = tokens.full_table()  # (N + k_old, S, D)
            init_kSD = torch.empty(len(new_ids), *full.shape[1:], dtype=full.dtype, device=full.device)
            for i, subject_id in enumerate(new_ids):
                dataset = dataset_of(subject_id)
                same = [r for r, s in zip(keep_rows, kept_ids, strict=True) if dataset_of(s) == dataset]
                rows = same or keep_rows
                if init == "mean" and rows:
                    init_kSD[i] = full[rows].mean(0)
                else:
                    nn.init.trunc_normal_(init_kSD[i], std=0.02)
            tokens.add_rows(init_kSD, keep_rows)
        self.registry = SubjectRegistry([*kept_ids, *new_ids])

    def merge_new_subjects(self) -> None:
        """Fold `subject_tokens.new` into one (N+k)-row `subject_tokens.table`, the layout of a plain model.

        The registry already lists the added subjects after the old ones, so rows do not move.
        The merged table keeps the old table's requires_grad (see SubjectTokens.merge_new).
        """
        self.subject_tokens.merge_new()

    # ----------------------------------------------------------------------------------------
    # Export
    # ----------------------------------------------------------------------------------------

    def export_config(self, loss: LossConfig | None = None) -> dict:
        """config.json: the model section, the datasets' input specs and, when given, the training loss.

        Args:
            loss: the loss the weights were trained with, written as a recipe's `loss:` section
                (recipe_to_dict); adaptation reads it back (mused_fm.adapt.load_adapt_recipe).
        """
        config = {
            "format": EXPORT_FORMAT,
            "model": dataclasses.asdict(self.config),
            "data": {"datasets": {n: dataclasses.asdict(ds) for n, ds in self.datasets.items()}},
        }
        if loss is not None:
            config["loss"] = dataclasses.asdict(loss)
        if self.class_names:
            config["classes"] = {n: list(v) for n, v in self.class_names.items()}
        return config

    def save_pretrained(
        self, directory: str | os.PathLike, loss: LossConfig | None = None, metrics: dict | None = None
    ) -> None:
        """Write model.safetensors, config.json, registry.json and README.md (a model card in the form Hugging
        Face uses, model/card.py); each file appears whole or not at all.

        Added subjects are folded into one (N+k)-row table, so the export loads as a plain model
        whose registry lists them after the old subjects.

        Args:
            loss: the loss the weights were trained with, kept in config.json (export_config); the trainer
                and adaptation pass theirs, so that adapting the export fits with the same objective.
            metrics: test metrics in eval.json's form, for the model card (launch/evaluate.py adds them later).
        """
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in fold_new_rows(self.state_dict()).items()}
        with atomic_path(out / WEIGHTS_NAME) as tmp:
            save_file(state, str(tmp), metadata={"format": "pt"})
        config = self.export_config(loss)
        write_json(out / CONFIG_NAME, config)
        self.registry.save(out / REGISTRY_NAME)
        write_text(out / CARD_NAME, model_card(self, config, metrics))

    def write_card(self, directory: str | os.PathLike, metrics: dict | None = None) -> None:
        """Rewrite the export's README.md from its config.json, with test `metrics` (eval.json's form)."""
        config = json.loads((Path(directory) / CONFIG_NAME).read_text())
        write_text(Path(directory) / CARD_NAME, model_card(self, config, metrics))

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> MusedModel:
        """Rebuild a model saved by save_pretrained (or exported by the trainer) and load its weights."""
        src = Path(directory)
        for name in (WEIGHTS_NAME, CONFIG_NAME, REGISTRY_NAME):
            if not (src / name).is_file():
                raise MissingFileError(
                    f"{src / name} is missing: {src} is not a MusedModel export (expected {WEIGHTS_NAME}, "
                    f"{CONFIG_NAME} and {REGISTRY_NAME}); point to a run's export/ directory."
                )
        try:
            config = json.loads((src / CONFIG_NAME).read_text())
        except ValueError as err:
            raise CheckpointError(f"{src / CONFIG_NAME} is not valid JSON ({err}); re-export the model.") from None
        if config.get("format") != EXPORT_FORMAT:
            raise CheckpointError(
                f"{src / CONFIG_NAME}: export format {config.get('format')!r} is not the "
                f"supported {EXPORT_FORMAT}; re-export the model with this version."
            )
        try:
            recipe = recipe_from_dict({"model": config["model"], "data": config["data"]}, source=str(src / CONFIG_NAME))
        except RecipeError as err:
            raise CheckpointError(f"{err}\n(the export was written by another version of mused_fm)") from None
        model = cls(recipe.model, recipe.data.datasets, SubjectRegistry.load(src / REGISTRY_NAME))
        try:
            weights = load_file(str(src / WEIGHTS_NAME))
        except (SafetensorError, OSError) as err:
            raise CheckpointError(
                f"{src / WEIGHTS_NAME} cannot be read ({err}): the file is damaged or incomplete; "
                "copy or export it again."
            ) from None
        model.load_state_dict(weights, strict=True)
        classes = config.get("classes") or {}
        wrong = [n for n, v in classes.items() if n not in model.datasets or len(v) != model.datasets[n].num_classes]
        if wrong:
            raise CheckpointError(
                f"{src / CONFIG_NAME}: classes of {wrong} do not match the heads' class counts; re-export the model."
            )
        model.class_names = {n: list(v) for n, v in classes.items()}
        return model.to(map_location)


def export_dir(path: str | os.PathLike) -> Path:
    """The export directory `path` names: itself, or a run directory's export/."""
    path = Path(path)
    return path / "export" if (path / "export").is_dir() else path


def load_export(path: str | os.PathLike) -> MusedModel:
    """A MusedModel from an export directory, or from a run directory's export/."""
    return MusedModel.from_pretrained(export_dir(path))


def build_model(recipe: Recipe, subject_ids: Sequence[str] | None = None) -> MusedModel:
    """The model a recipe describes.

    Args:
        subject_ids: global ids in table order; default: the subjects the recipe lists
            (data.datasets.<name>.subjects). The trainer passes the ids from the shard manifests.
    """
    ids = list(subject_ids) if subject_ids is not None else recipe.subject_ids()
    if not ids:
        raise RecipeError(
            "no subjects: list them in the recipe (data.datasets.<name>.subjects=subj01,subj02) or pass "
            "subject_ids= to build_model (the trainer takes them from the shards' manifest.json)."
        )
    return MusedModel(recipe.model, recipe.data.datasets, SubjectRegistry(ids))
