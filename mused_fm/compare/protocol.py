"""The comparison protocol: which runs, on which datasets, at which seeds, and the criteria fixed before them.

A protocol file (recipes/compare/protocol.yaml) names recipes relative to itself:

    base: [../demo.yaml]                 # recipes every run layers first
    common: [train.micro_batch_size=64]  # overrides every run gets
    datasets:                            # each dataset is trained alone (the paper's setting)
      nsd: {overrides: [data.datasets.hcp=null, train.max_steps=1200], per_subject: [train.max_steps=400]}
      nsd_fsaverage:                     # the recipe's dataset nsd again, from other shards (--shards
        dataset: nsd                     # nsd_fsaverage=URL), with a subset of the methods
        methods: [clip_mused, ms_emb]
        overrides: [data.datasets.hcp=null, train.max_steps=1200]
    methods:
      clip_mused: {seeds: 6, reliance: true}
      ms_emb: {recipes: [ms_emb.yaml], seeds: 6}
      ss_vit: {recipes: [ss_vit.yaml], seeds: 3, per_subject: true}
    criteria:
      - {name: CLIP-MUSED beats MS-EMB, better: clip_mused, worse: ms_emb}
      - {name: shuffled CLIP does not beat BCE only, better: shuffled_clip, worse: bce_only, expect: not_above}

Seed k of every method is run.seed=k, so the runs of two methods at one seed share their data order and
initial weights where the models agree: differences between methods are paired by seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from mused_fm.errors import RecipeError
from mused_fm.files import json_safe

__all__ = ["Criterion", "Method", "Protocol", "Run"]


@dataclass(frozen=True)
class Method:
    name: str
    recipes: tuple[str, ...] = ()
    """Recipes layered on the protocol's base (absolute paths once read)."""
    overrides: tuple[str, ...] = ()
    seeds: int = 3
    per_subject: bool = False
    """One model per subject of the dataset (SS-ViT); its seed's score is the mean over those models."""
    reliance: bool = False
    """Also test the runs with own, mean, swapped and zeroed subject tokens (reliance.json)."""


@dataclass(frozen=True)
class Criterion:
    """`better` minus `worse`, paired by seed, on every dataset: its 95% interval lies above zero (above), or
    does not (not_above)."""

    name: str
    better: str
    worse: str
    expect: Literal["above", "not_above"] = "above"


@dataclass(frozen=True)
class Run:
    dataset: str
    """The protocol's name for the shard set (the directory under OUT; e.g. nsd_fsaverage)."""
    method: str
    seed: int
    subject: str | None
    recipes: tuple[str, ...]
    overrides: tuple[str, ...]
    reliance: bool
    recipe_dataset: str = ""
    """The recipe's dataset the run trains (data.datasets.<name>); default: `dataset`."""

    @property
    def trains(self) -> str:
        return self.recipe_dataset or self.dataset

    def directory(self, out: Path) -> Path:
        run = out / self.dataset / self.method / f"s{self.seed}"
        return run / self.subject if self.subject else run


@dataclass
class Protocol:
    path: Path
    base: tuple[str, ...]
    common: tuple[str, ...]
    datasets: dict[str, dict]
    """name -> {dataset: the recipe's dataset, overrides, per_subject, methods: the methods run on it}."""
    methods: dict[str, Method]
    criteria: list[Criterion] = field(default_factory=list)

    @classmethod
    def read(cls, path: str | Path) -> Protocol:
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise RecipeError(f"{path}: cannot read the comparison protocol: {err}") from None
        where = path.parent

        def recipes(names, key):
            found = []
            for name in names or []:
                p = (where / name).resolve()
                if not p.is_file():
                    raise RecipeError(f"{path}: {key} names {name}, which is not a file next to it ({p}).")
                found.append(str(p))
            return tuple(found)

        def strings(value, key) -> tuple[str, ...]:
            if value is None:
                return ()
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise RecipeError(
                    f"{path}: {key} must be a list of strings, e.g. [train.max_steps=100]; got {value!r}."
                )
            return tuple(value)

        def keys(mapping, allowed, key) -> dict:
            mapping = mapping or {}
            if not isinstance(mapping, dict):
                raise RecipeError(f"{path}: {key} must be a mapping with keys {sorted(allowed)}; got {mapping!r}.")
            extra = sorted(set(mapping) - set(allowed))
            if extra:
                raise RecipeError(f"{path}: {key} has unknown keys {extra}; expected some of {sorted(allowed)}.")
            return mapping

        raw = keys(raw, ("base", "common", "datasets", "methods", "criteria"), "the protocol")
        datasets = {}
        for name, d in (raw.get("datasets") or {}).items():
            d = keys(d, ("dataset", "methods", "overrides", "per_subject"), f"datasets.{name}")
            if not isinstance(d.get("dataset", name), str):
                raise RecipeError(f"{path}: datasets.{name}.dataset must be a recipe dataset name, e.g. nsd.")
            datasets[name] = {
                "dataset": d.get("dataset", name),
                "overrides": strings(d.get("overrides"), f"datasets.{name}.overrides"),
                "per_subject": strings(d.get("per_subject"), f"datasets.{name}.per_subject"),
                "methods": strings(d.get("methods"), f"datasets.{name}.methods") or None,
            }
        methods = {}
        for name, m in (raw.get("methods") or {}).items():
            m = keys(m, ("recipes", "overrides", "seeds", "per_subject", "reliance"), f"methods.{name}")
            seeds = m.get("seeds", 3)
            if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
                raise RecipeError(f"{path}: methods.{name}.seeds must be a whole number >= 1; got {seeds!r}.")
            methods[name] = Method(
                name,
                recipes(strings(m.get("recipes"), f"methods.{name}.recipes"), f"methods.{name}.recipes"),
                strings(m.get("overrides"), f"methods.{name}.overrides"),
                seeds,
                bool(m.get("per_subject", False)),
                bool(m.get("reliance", False)),
            )
        criteria = []
        for i, c in enumerate(raw.get("criteria") or []):
            c = keys(c, ("name", "better", "worse", "expect"), f"criteria[{i}]")
            missing = [k for k in ("name", "better", "worse") if k not in c]
            if missing or c.get("expect", "above") not in ("above", "not_above"):
                raise RecipeError(
                    f"{path}: criteria[{i}] needs name, better and worse, and expect above or not_above; got {c!r}."
                )
            criteria.append(Criterion(**c))
        for c in criteria:
            for side in (c.better, c.worse):
                if side not in methods:
                    raise RecipeError(f"{path}: criterion {c.name!r} names method {side!r}, not in methods.")
        for name, d in datasets.items():
            unknown = sorted(set(d["methods"] or ()) - set(methods))
            if unknown:
                raise RecipeError(
                    f"{path}: datasets.{name}.methods names {unknown}, not in methods ({sorted(methods)})."
                )
            d["methods"] = d["methods"] or tuple(methods)
        if not datasets or not methods:
            raise RecipeError(f"{path}: a protocol needs datasets and methods.")
        base = recipes(strings(raw.get("base"), "base"), "base")
        return cls(path, base, strings(raw.get("common"), "common"), datasets, methods, criteria)

    def runs(self, subjects: dict[str, list[str]], only: list[str] | None = None) -> list[Run]:
        """Every run of the protocol; `subjects`: dataset -> subject names (for per-subject methods)."""
        runs = []
        for dataset, spec in self.datasets.items():
            if only and dataset not in only:
                continue
            trains = spec["dataset"]
            for method in (self.methods[m] for m in spec["methods"]):
                for seed in range(method.seeds):
                    for subject in subjects[dataset] if method.per_subject else [None]:
                        overrides = [*self.common, *spec["overrides"], *method.overrides, f"run.seed={seed}"]
                        if subject:
                            overrides += [*spec["per_subject"], f"data.datasets.{trains}.subjects=[{subject}]"]
                        layers = (*self.base, *method.recipes)
                        runs.append(
                            Run(dataset, method.name, seed, subject, layers, tuple(overrides), method.reliance, trains)
                        )
        return runs

    def as_dict(self) -> dict:
        return json_safe(
            {
                "path": str(self.path),
                "base": self.base,
                "common": self.common,
                "datasets": self.datasets,
                "methods": {n: vars(m) for n, m in self.methods.items()},
                "criteria": [vars(c) for c in self.criteria],
            }
        )
