"""Every shipped recipe loads, validates and round-trips; the paper's settings are what it says."""

from __future__ import annotations

from pathlib import Path

import pytest

from mused_fm.config import load_recipe, save_recipe

RECIPES = sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml"))


def test_recipes_exist():
    assert {p.stem for p in RECIPES} >= {"nsd_hcp", "nsd", "hcp", "demo"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_loads_and_round_trips(path, tmp_path):
    recipe = load_recipe(path)
    save_recipe(recipe, tmp_path / "config.yaml")
    assert load_recipe(tmp_path / "config.yaml") == recipe


def test_flagship_shape():
    recipe = load_recipe(RECIPES[0].parent / "nsd_hcp.yaml")
    assert (recipe.model.dim, recipe.model.depth, recipe.model.heads) == (512, 24, 8)
    assert set(recipe.data.datasets) == {"nsd", "hcp"}
    assert recipe.data.datasets["hcp"].volume_shape == [111, 127, 111]


def test_paper_settings():
    nsd = load_recipe(RECIPES[0].parent / "nsd.yaml")
    assert (nsd.model.depth, nsd.train.lr, nsd.train.micro_batch_size, nsd.train.optimizer) == (24, 1e-4, 64, "adam")
    w = nsd.loss.for_dataset("nsd")
    assert (w.orth, w.hlv, w.llv) == (1e-3, 1e-3, 1e-4)
    hcp = load_recipe(RECIPES[0].parent / "hcp.yaml")
    assert (hcp.model.depth, hcp.train.lr, hcp.train.micro_batch_size) == (2, 1e-3, 64)
    assert hcp.data.datasets["hcp"].input == "volume"
    w = hcp.loss.for_dataset("hcp")
    assert (w.orth, w.hlv, w.llv) == (1e-3, 1e-3, 1e-1)


COMPARE = sorted((RECIPES[0].parent / "compare").glob("*.yaml"))


def _leaves(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.mark.parametrize("path", COMPARE, ids=lambda p: p.stem)
def test_compare_recipe_changes_only_its_own_keys(path):
    import yaml

    from mused_fm.config import recipe_to_dict

    demo = RECIPES[0].parent / "demo.yaml"
    base, layered = _leaves(recipe_to_dict(load_recipe(demo))), _leaves(recipe_to_dict(load_recipe([demo, path])))
    changed = {k for k in layered if layered[k] != base.get(k)}
    assert changed, f"{path.name} changes nothing"
    assert changed <= set(_leaves(yaml.safe_load(path.read_text()))), changed


def test_layers_apply_in_order_and_null_drops_a_dataset():
    demo, ss = RECIPES[0].parent / "demo.yaml", RECIPES[0].parent / "compare" / "ss_vit.yaml"
    recipe = load_recipe([demo, ss], ["data.datasets.hcp=null", "data.datasets.nsd.subjects=subj03"])
    assert set(recipe.data.datasets) == {"nsd"} and recipe.data.datasets["nsd"].subjects == ["subj03"]
    assert recipe.train.max_steps == 300 and recipe.model.dim == load_recipe(demo).model.dim
    assert load_recipe([ss, demo]).train.max_steps == load_recipe(demo).train.max_steps  # the later layer wins
    with pytest.raises(ValueError, match=r"nope\.yaml"):
        load_recipe([demo, RECIPES[0].parent / "nope.yaml"])
