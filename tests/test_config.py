"""Recipes: defaults in code, YAML deltas, dotted overrides, one error naming every bad key."""

from __future__ import annotations

import pytest

from mused_fm import errors
from mused_fm.config import AdaptConfig, AdaptRecipe, Recipe, RecipeError, load_recipe, recipe_from_dict, save_recipe

BASE = {"data": {"datasets": {"nsd": {"url": "/shards/nsd"}}}}


def write(tmp_path, text: str):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_defaults_then_yaml_then_overrides(tmp_path):
    path = write(tmp_path, "model: {depth: 3}\ndata: {datasets: {nsd: {url: /a, roi_dim: 12}}}\n")
    recipe = load_recipe(path, ["model.depth=5", "train.lr=3e-4", "data.datasets.nsd.subjects=subj01,subj02"])
    assert recipe.model.depth == 5  # override beats YAML
    assert recipe.model.dim == Recipe().model.dim  # untouched default
    assert recipe.data.datasets["nsd"].roi_dim == 12 and recipe.data.datasets["nsd"].num_rois == 10
    assert recipe.train.lr == pytest.approx(3e-4) and isinstance(recipe.train.lr, float)
    assert recipe.data.datasets["nsd"].subjects == ["subj01", "subj02"]
    assert recipe.subject_ids() == ["nsd/subj01", "nsd/subj02"]


def test_override_adds_a_dataset_and_deepspeed_keys():
    recipe = recipe_from_dict(
        BASE,
        [
            "data.datasets.hcp.url=s3://bucket/hcp",
            "data.datasets.hcp.input=volume",
            "deepspeed.zero_optimization.stage=3",
            "run.name=2024",
        ],
    )
    assert recipe.data.datasets["hcp"].url == "s3://bucket/hcp"
    assert recipe.data.datasets["hcp"].input == "volume"
    assert recipe.deepspeed["zero_optimization"]["stage"] == 3
    assert recipe.run.name == "2024"  # a number on the command line is a string for a string field


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("model.dpeth=3", r"unknown key 'model\.dpeth'\. Did you mean 'model\.depth'\?"),
        (
            "data.datasets.nsd.roi_dimm=3",
            r"unknown key 'data\.datasets\.nsd\.roi_dimm'\. Did you mean "
            r"'data\.datasets\.nsd\.roi_dim'\?",
        ),
        ("trian.lr=1", r"unknown key 'trian'\. Did you mean 'train'\?"),
        ("train.max_steps=many", r"train\.max_steps: expected an integer, got 'many'"),
        ("train.max_steps=1.5", r"train\.max_steps: expected an integer"),
        ("model.subject_tokens=three", r"model\.subject_tokens: expected one of 'two', 'one', 'none'"),
        ("loss.rsa_scope=world", r"loss\.rsa_scope: expected one of 'local', 'global'"),
        ("log.wandb.mode=on", r"log\.wandb\.mode: expected one of"),
        ("model.heads=5", r"model\.dim \(512\) must be divisible by model\.heads \(5\)"),
        ("deepspeed.train_batch_size=64", r"deepspeed\.train_batch_size is derived from train\.micro_batch_size"),
        ("loss.weights.nds.llv=1", r"loss\.weights\.nds names no dataset.*Did you mean 'loss\.weights\.nsd'"),
        ("data.datasets.nsd.weight=0", r"data\.datasets\.nsd\.weight must be a positive number"),
        ("model.depth", r"not of the form section\.key=value"),
    ],
)
def test_bad_keys_and_values_are_named(override, pattern):
    with pytest.raises(RecipeError, match=pattern):
        recipe_from_dict(BASE, [override])


def test_every_problem_is_reported_at_once(tmp_path):
    path = write(tmp_path, "model: {dpeth: 3, heads: true}\ndata: {datasets: {nsd: {input: voxel}}}\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path, ["train.lr=fast"])
    message = str(info.value)
    assert message.startswith(str(path))
    for key in ("model.dpeth", "model.heads", "data.datasets.nsd.input", "train.lr"):
        assert key in message
    assert "override 'train.lr=fast'" in message  # says which problems came from the command line


def test_yaml_types_are_strict(tmp_path):
    with pytest.raises(RecipeError, match=r"model\.depth: expected an integer, got '3'"):
        load_recipe(write(tmp_path, "model: {depth: '3'}\ndata: {datasets: {nsd: {}}}\n"))
    with pytest.raises(RecipeError, match=r"data\.datasets\.nsd\.subjects: expected a list"):
        load_recipe(write(tmp_path, "data: {datasets: {nsd: {subjects: subj01}}}\n"))


def test_duplicate_yaml_key_is_refused(tmp_path):
    with pytest.raises(RecipeError, match=r"key 'depth' appears twice"):
        load_recipe(write(tmp_path, "model:\n  depth: 2\n  depth: 3\ndata: {datasets: {nsd: {}}}\n"))


def test_missing_file_and_no_datasets(tmp_path):
    with pytest.raises(RecipeError, match=r"does not exist"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(RecipeError, match=r"data\.datasets is empty"):
        load_recipe(None)


def test_null_removes_an_inherited_dataset():
    recipe = recipe_from_dict(
        {"data": {"datasets": {"nsd": {}, "hcp": {"input": "volume"}}}}, ["data.datasets.hcp=null"]
    )
    assert list(recipe.data.datasets) == ["nsd"]


def test_saved_recipe_reloads_identically(tmp_path):
    recipe = recipe_from_dict(BASE, ["model.depth=3", "loss.weights.nsd.llv=0.5", "train.betas=[0.8,0.95]"])
    save_recipe(recipe, tmp_path / "out" / "config.yaml")
    assert load_recipe(tmp_path / "out" / "config.yaml") == recipe


def test_command_line_lists_of_numbers_and_numeric_ids(tmp_path):
    path = write(tmp_path, "data: {datasets: {hcp: {input: volume}}}\n")
    recipe = load_recipe(path, ["data.datasets.hcp.volume_shape=24,28,26", "data.datasets.hcp.subjects=233326"])
    assert recipe.data.datasets["hcp"].volume_shape == [24, 28, 26]  # the form the trainer's errors suggest
    assert recipe.data.datasets["hcp"].subjects == ["233326"]  # an HCP id alone is a list of one string


def test_a_yaml_syntax_error_names_the_recipe(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("train: {max_steps: 10\nmodel: {dim: 64}\n")
    with pytest.raises(RecipeError, match=r"(?s)broken\.yaml is not valid YAML: .*line 1"):
        load_recipe(bad)


def test_recipe_error_is_the_named_error():
    assert RecipeError is errors.RecipeError and issubclass(RecipeError, errors.MusedError)


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("adapt.methods=scratch,full", r"adapt\.methods must list tokens"),
        ("adapt.methods=tokens,tokens", r"adapt\.methods must list tokens .*each method once"),
        ("adapt.methods=[]", r"adapt\.methods must list tokens"),
        ("adapt.methods=tokens,lora", r"adapt\.methods: expected one of 'tokens', 'scratch', 'full', got 'lora'"),
        ("adapt.fractions=1.5", r"adapt\.fractions must be distinct numbers in \(0, 1\].*got \[1\.5\]"),
        ("adapt.fractions=0", r"adapt\.fractions must be distinct numbers in \(0, 1\]"),
        ("adapt.fractions=[]", r"adapt\.fractions must be distinct numbers in \(0, 1\], at least one"),
        ("adapt.fractions=0.5,0.5", r"adapt\.fractions must be distinct"),
        ("adapt.fractions=half", r"adapt\.fractions: expected a number, got 'half'"),
        ("adapt.patience=0", r"adapt\.patience must be >= 1"),
        ("adapt.seeds=[]", r"adapt\.seeds must be distinct integers >= 0, at least one; got \[\]"),
        ("adapt.seeds=1,1", r"adapt\.seeds must be distinct"),
        ("adapt.seeds=-1", r"adapt\.seeds must be distinct integers >= 0"),
        ("adapt.seeds=0.5", r"adapt\.seeds: expected an integer, got 0\.5"),
        ("adapt.zero_shot=maybe", r"adapt\.zero_shot: expected true or false, got 'maybe'"),
    ],
)
def test_bad_adaptation_keys_are_named(override, pattern):
    with pytest.raises(RecipeError, match=pattern):
        recipe_from_dict({}, [override], kind=AdaptRecipe)


def test_adaptation_seeds_and_zero_shot_parse():
    sweep = recipe_from_dict({}, ["adapt.seeds=0,1,2", "adapt.zero_shot=true"], kind=AdaptRecipe)
    assert sweep.adapt.seeds == [0, 1, 2] and sweep.adapt.zero_shot
    assert AdaptRecipe().adapt.seeds == [0] and not AdaptRecipe().adapt.zero_shot


def test_an_adaptation_recipe_needs_no_datasets_and_a_training_recipe_no_adapt():
    recipe = recipe_from_dict({}, ["adapt.fractions=0.25", "adapt.methods=tokens,full"], kind=AdaptRecipe)
    assert recipe.adapt.fractions == [0.25] and recipe.adapt.methods == ["tokens", "full"]
    assert AdaptConfig().fractions == [1.0] and AdaptConfig().methods == ["tokens"]
    with pytest.raises(RecipeError, match=r"unknown key 'adapt'"):
        recipe_from_dict(BASE, ["adapt.fractions=0.5"])
    with pytest.raises(RecipeError, match=r"unknown key 'data'"):
        recipe_from_dict(BASE, kind=AdaptRecipe)
