"""Adaptation trains with the loss its model was trained with.

Contract: an export's config.json carries the `loss` section of the recipe it was trained with (and an
adaptation's export the loss it fitted with); launch/adapt_subject.py takes the export's loss, except the keys
the adaptation recipe sets itself (in its YAML or as `loss.*=` overrides), key by key; an export written before
exports carried their loss adapts with the adaptation recipe's loss and a warning that names the file. The
weights are checked where they act: on the LossConfig that reaches the Objective, by a spy in the child process.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mused_fm.config import AdaptRecipe, LossConfig, load_recipe, recipe_to_dict

from train_helpers import ROOT, child_env, pack_cohort, run_launcher, write_recipe

pytestmark = pytest.mark.slow
ADAPT = ROOT / "launch" / "adapt_subject.py"
# The demo's kind of loss: nothing like the code defaults (orth 1e-3, llv 1e-4, hlv 1e-3 on every dataset).
TRAINED_LOSS = {"weights": {"nsd": {"orth": 1e-5, "hlv": 2e-3}, "hcp": {"orth": 1e-5, "llv": 0.1}}}
FAST = ["train.max_steps=2", "train.eval_every=2"]
# Runs launch/adapt_subject.py's main() with mused_fm.adapt.Objective wrapped: every LossConfig an Objective is
# built with goes to the JSON file named by the first argument.
SPY = """
import dataclasses, json, runpy, sys
import mused_fm.adapt
seen = []
class Spy(mused_fm.adapt.Objective):
    def __init__(self, model, loss):
        seen.append(dataclasses.asdict(loss))
        super().__init__(model, loss)
mused_fm.adapt.Objective = Spy
main = runpy.run_path(sys.argv[2])["main"]
try:
    code = main(sys.argv[3:])
finally:
    with open(sys.argv[1], "w") as f:
        json.dump(seen, f)
sys.exit(code)
"""


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict[str, Path]:
    """A briefly trained two-dataset model whose recipe sets its own loss weights."""
    tmp = tmp_path_factory.mktemp("adapt_loss")
    cohort = pack_cohort(tmp)
    run = tmp / "run"
    recipe = write_recipe(
        tmp / "r.yaml", cohort, run, loss=TRAINED_LOSS, train={"max_steps": 4, "eval_every": 2, "save_every": 4}
    )
    proc = run_launcher("train", str(recipe), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {**cohort, "run": run, "export": run / "export"}


def trained_loss(base) -> dict:
    """The training run's loss section, as its config.yaml holds it."""
    return recipe_to_dict(load_recipe(base["run"] / "config.yaml"))["loss"]


def adapt_with_spy(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    seen = tmp_path / "seen.json"
    command = [sys.executable, "-c", SPY, str(seen), str(ADAPT), *args]
    proc = subprocess.run(command, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=300)
    return proc, json.loads(seen.read_text()) if seen.exists() else []


def flags(base, out: Path, export: Path | None = None) -> list[str]:
    return [
        *("--checkpoint", str(export or base["export"]), "--shards", str(base["nsd"])),
        *("--subjects", "nsd/subj04", "--out", str(out)),
    ]


def saved_loss(out: Path) -> dict:
    return yaml.safe_load((out / "config.yaml").read_text())["loss"]


def test_an_export_carries_its_training_loss(base):
    loss = trained_loss(base)
    assert loss["weights"]["nsd"] == {"orth": 1e-5, "llv": 1e-4, "hlv": 2e-3}  # the recipe's, filled with defaults
    for export in ("export", "best"):
        assert json.loads((base["run"] / export / "config.json").read_text())["loss"] == loss, export


def test_adaptation_uses_the_exports_loss(base, tmp_path):
    out = tmp_path / "a"
    proc, seen = adapt_with_spy(tmp_path, *flags(base, out), *FAST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loss = trained_loss(base)
    assert seen == [loss]  # the one tokens run's Objective
    assert saved_loss(out) == loss
    assert json.loads((out / "export" / "config.json").read_text())["loss"] == loss  # an adaptation export too


def test_explicit_loss_keys_win_key_by_key(base, tmp_path):
    """The recipe path (as under deepspeed): a YAML key and an override win; every other key is the export's."""
    recipe = tmp_path / "adapt.yaml"
    adapt_yaml = yaml.safe_load((ROOT / "recipes" / "new_subject.yaml").read_text())
    recipe.write_text(yaml.safe_dump({**adapt_yaml, "loss": {"weights": {"hcp": {"llv": 0.2}}}}))
    out = tmp_path / "a"
    proc, seen = adapt_with_spy(
        tmp_path,
        str(recipe),
        f"adapt.checkpoint={base['export']}",
        f"adapt.shards={base['nsd']}",
        "adapt.subjects=nsd/subj04",
        f"adapt.out={out}",
        "loss.weights.nsd.orth=0.5",
        *FAST,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = trained_loss(base)
    expected["weights"]["nsd"]["orth"] = 0.5
    expected["weights"]["hcp"]["llv"] = 0.2
    assert seen == [expected] and saved_loss(out) == expected


def test_an_export_without_its_loss_adapts_with_the_recipes_loss_and_says_so(base, tmp_path):
    old = tmp_path / "old_export"
    shutil.copytree(base["export"], old)
    config = json.loads((old / "config.json").read_text())
    del config["loss"]
    (old / "config.json").write_text(json.dumps(config))
    out = tmp_path / "a"
    proc, seen = adapt_with_spy(tmp_path, *flags(base, out, export=old), *FAST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{old / 'config.json'} has no loss section" in proc.stderr
    assert "the adaptation recipe's loss" in proc.stderr
    default = recipe_to_dict(load_recipe(ROOT / "recipes" / "new_subject.yaml", kind=AdaptRecipe))["loss"]
    assert default == recipe_to_dict(AdaptRecipe())["loss"]
    assert seen == [default] and saved_loss(out) == default


def test_a_dict_layer_goes_under_the_yaml_and_the_overrides(tmp_path):
    """load_recipe(base=...): the bottom layer, above the code defaults only."""
    below = {"loss": {"rsa_scope": "global", "weights": {"nsd": {"orth": 1e-5, "llv": 0.3, "hlv": 0.4}}}}
    recipe = tmp_path / "r.yaml"
    recipe.write_text("loss: {weights: {nsd: {llv: 0.5}}}\n")
    got = load_recipe(recipe, ["loss.weights.nsd.hlv=0.6"], kind=AdaptRecipe, base=below)
    assert isinstance(got.loss, LossConfig) and got.loss.rsa_scope == "global"
    assert recipe_to_dict(got)["loss"]["weights"]["nsd"] == {"orth": 1e-5, "llv": 0.5, "hlv": 0.6}
    assert below["loss"]["weights"]["nsd"]["llv"] == 0.3  # the caller's dict is not modified
