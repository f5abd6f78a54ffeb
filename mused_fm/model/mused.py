"""MusedModel: dataset tokenizer -> [x_llv(s); x_hlv(s); tokens] + pos -> shared trunk -> dataset head.

Shape legend: B batch, M tokens of the dataset's tokenizer, D width, C classes of the dataset.

    model = build_model(load_recipe("recipes/demo.yaml"))
    rows = model.subject_rows(["nsd/subj01", "nsd/subj02"])       # CPU-side, named errors
    out = model(bold_B_R_F, rows, "nsd")                         # MusedOutput(logits, z_llv, z_hlv)
    model.save_pretrained("export/"); MusedModel.from_pretrained("export/")

An export directory holds model.safetensors (weights and buffers, no pickle), config.json (the
model section and the per-dataset input specs of the recipe) and registry.json (subject ids in
table order).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mused_fm.config import DatasetConfig, ModelConfig, Recipe, RecipeError, recipe_from_dict
from mused_fm.model.heads import MultiLabelHead
from mused_fm.model.registry import SubjectRegistry
from mused_fm.model.subject_tokens import SubjectTokens
from mused_fm.model.tokenizers import RoiTokenizer, VolumeTokenizer
from mused_fm.model.transformer import Trunk

__all__ = ["MusedModel", "MusedOutput", "build_model"]

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


class MusedModel(nn.Module):
    def __init__(self, config: ModelConfig, datasets: Mapping[str, DatasetConfig], registry: SubjectRegistry) -> None:
        super().__init__()
        if not datasets:
            raise ValueError("MusedModel needs at least one dataset (recipe data.datasets).")
        missing = sorted({registry.dataset_of(s) for s in registry.ids} - set(datasets))
        if missing:
            raise ValueError(
                f"the subject registry has subjects of datasets {missing} that the recipe's data.datasets "
                f"({sorted(datasets)}) does not define; add them to the recipe."
            )
        unsized = [n for n, ds in datasets.items() if ds.num_classes < 1]
        if unsized:
            raise ValueError(
                f"data.datasets.{unsized[0]}.num_classes is {datasets[unsized[0]].num_classes}: the model needs the "
                "class count; the trainer reads it from the shards' manifest, or set it in the recipe."
            )
        self.config = config
        self.datasets = {name: dataclasses.replace(ds) for name, ds in datasets.items()}
        self.registry = registry
        D = config.dim
        self.tokenizers = nn.ModuleDict()
        self.pos = nn.ParameterDict()
        self.heads = nn.ModuleDict()
        for name, ds in self.datasets.items():
            if ds.input == "roi":
                tokenizer: nn.Module = RoiTokenizer(ds.num_rois, ds.roi_dim, D)
            else:
                tokenizer = VolumeTokenizer(ds.volume_shape, D, config.volume_channels, config.volume_norm)
            self.tokenizers[name] = tokenizer
            self.pos[name] = nn.Parameter(torch.zeros(1, 2 + tokenizer.num_tokens, D))  # (1, 2 + M, D)
            self.heads[name] = MultiLabelHead(D, ds.num_classes, config.head_hidden)
        self.subject_tokens = SubjectTokens(len(registry), D, config.subject_tokens)
        self.trunk = Trunk(D, config.depth, config.heads, config.mlp_ratio, config.dropout)
        self._init_weights()

    def _init_weights(self) -> None:
        for p in self.pos.values():
            nn.init.trunc_normal_(p, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def subject_rows(self, subject_ids: Sequence[str], dataset: str | None = None, where: str = "") -> torch.Tensor:
        """Token-table rows (CPU int64, shape (B,)) of global subject ids; unknown ids raise by name.

        Args:
            dataset: if given, every subject must belong to it (its head and tokenizer are used).
            where: where the ids came from (a shard), quoted in errors.
        """
        if dataset is not None:
            foreign = sorted({s for s in subject_ids if self.registry.dataset_of(s) != dataset})
            if foreign:
                raise ValueError(
                    f"subjects {foreign}{f' (in {where})' if where else ''} are not of dataset "
                    f"{dataset!r}; each batch passed to the model holds one dataset."
                )
        return self.registry.rows(subject_ids, where=where)

    def forward(self, bold: torch.Tensor, subject_row_B: torch.Tensor, dataset: str) -> MusedOutput:
        """One dataset's batch: bold (B, R, F) for ROI datasets or (B, X, Y, Z) for volume datasets."""
        if dataset not in self.tokenizers:
            raise ValueError(f"the model has no dataset {dataset!r}; it has {sorted(self.tokenizers)}.")
        tokens_BMD = self.tokenizers[dataset](bold)
        readout_B2D = self.subject_tokens(subject_row_B)
        x = torch.cat([readout_B2D.to(tokens_BMD.dtype), tokens_BMD], dim=1) + self.pos[dataset]
        z_B2D = self.trunk(x, num_readout=2)
        z_llv, z_hlv = z_B2D[:, 0], z_B2D[:, 1]
        return MusedOutput(self.heads[dataset](z_llv, z_hlv), z_llv, z_hlv)

    # ----------------------------------------------------------------------------------------
    # Export
    # ----------------------------------------------------------------------------------------

    def export_config(self) -> dict:
        return {
            "format": EXPORT_FORMAT,
            "model": dataclasses.asdict(self.config),
            "data": {"datasets": {n: dataclasses.asdict(ds) for n, ds in self.datasets.items()}},
        }

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write model.safetensors, config.json and registry.json; each file appears whole or not at all."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        _atomic(out / WEIGHTS_NAME, lambda p: save_file(state, str(p), metadata={"format": "pt"}))
        _atomic(out / CONFIG_NAME, lambda p: p.write_text(json.dumps(self.export_config(), indent=1) + "\n"))
        _atomic(out / REGISTRY_NAME, self.registry.save)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> MusedModel:
        """Rebuild a model saved by save_pretrained (or exported by the trainer) and load its weights."""
        src = Path(directory)
        for name in (WEIGHTS_NAME, CONFIG_NAME, REGISTRY_NAME):
            if not (src / name).is_file():
                raise FileNotFoundError(
                    f"{src / name} is missing: {src} is not a MusedModel export (expected {WEIGHTS_NAME}, "
                    f"{CONFIG_NAME} and {REGISTRY_NAME}); point to a run's export/ directory."
                )
        config = json.loads((src / CONFIG_NAME).read_text())
        if config.get("format") != EXPORT_FORMAT:
            raise ValueError(
                f"{src / CONFIG_NAME}: export format {config.get('format')!r} is not the "
                f"supported {EXPORT_FORMAT}; re-export the model with this version."
            )
        try:
            recipe = recipe_from_dict({"model": config["model"], "data": config["data"]}, source=str(src / CONFIG_NAME))
        except RecipeError as err:
            raise ValueError(f"{err}\n(the export was written by another version of mused_fm)") from None
        model = cls(recipe.model, recipe.data.datasets, SubjectRegistry.load(src / REGISTRY_NAME))
        model.load_state_dict(load_file(str(src / WEIGHTS_NAME)), strict=True)
        return model.to(map_location)


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    tmp.replace(path)


def build_model(recipe: Recipe, subject_ids: Sequence[str] | None = None) -> MusedModel:
    """The model a recipe describes.

    Args:
        subject_ids: global ids in table order; default: the subjects the recipe lists
            (data.datasets.<name>.subjects). The trainer passes the ids from the shard manifests.
    """
    ids = list(subject_ids) if subject_ids is not None else recipe.subject_ids()
    if not ids:
        raise ValueError(
            "no subjects: list them in the recipe (data.datasets.<name>.subjects=subj01,subj02) or pass "
            "subject_ids= to build_model (the trainer takes them from the shards' manifest.json)."
        )
    return MusedModel(recipe.model, recipe.data.datasets, SubjectRegistry(ids))
