"""New subjects by token-only fine-tuning: launch/adapt_subject.py on a model trained on the cohort.

The base model is trained on nsd/subj01-03 and both HCP subjects; nsd/subj04 is packed in the same
shard set and added afterwards. The guarantee is checked on the exported files themselves: every
tensor but the new subject's row of the token table is bit-for-bit the base model's.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from train_helpers import ROOT, deepspeed_run, pack_cohort, run_launcher, write_recipe

pytestmark = pytest.mark.slow
ADAPT = ROOT / "launch" / "adapt_subject.py"


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict[str, Path]:
    """The packed cohort and a briefly trained two-dataset model (one process)."""
    tmp = tmp_path_factory.mktemp("adapt")
    cohort = pack_cohort(tmp)
    run = tmp / "run"
    recipe = write_recipe(tmp / "r.yaml", cohort, run, train={"max_steps": 20, "eval_every": 20, "save_every": 20})
    proc = run_launcher("train", str(recipe), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {**cohort, "export": run / "export"}


def adapt(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return run_launcher("adapt_subject", *args, timeout=timeout)


def assert_only_new_row_changed(base_export: Path, adapted_export: Path, n_new: int = 1) -> None:
    old, new = load_file(str(base_export / "model.safetensors")), load_file(str(adapted_export / "model.safetensors"))
    assert set(old) == set(new)
    for key, value in old.items():
        if key == "subject_tokens.table":
            n = value.shape[0]
            assert new[key].shape == (n + n_new, *value.shape[1:])
            assert torch.equal(new[key][:n], value), "known subjects' tokens moved"
            assert not torch.equal(new[key][n:], value.mean(0, keepdim=True).expand(n_new, -1, -1)), "not trained"
        else:
            assert torch.equal(new[key], value), key  # weights and buffers (BatchNorm statistics) alike


def test_token_only_adaptation_changes_nothing_else(base, tmp_path):
    out = tmp_path / "a"
    proc = adapt(
        "--checkpoint",
        str(base["export"]),
        "--shards",
        str(base["nsd"]),
        "--subjects",
        "nsd/subj04",
        "--out",
        str(out),
        "train.max_steps=30",
        "train.eval_every=10",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "subject_tokens.new (1, 2, 32) = 64 of" in proc.stderr  # 2 x D trainable numbers, said in the log
    assert_only_new_row_changed(base["export"], out / "export")
    registry = json.loads((out / "export" / "registry.json").read_text())["subjects"]
    assert (
        registry[-1] == "nsd/subj04"
        and registry[:-1] == json.loads((base["export"] / "registry.json").read_text())["subjects"]
    )
    assert set(json.loads((out / "eval.json").read_text())["subjects"]) == {"nsd/subj04"}
    # launch/evaluate.py scores the adapted subject like any other
    proc = run_launcher(
        "evaluate", "--checkpoint", out / "export", "--shards", base["nsd"], "--json", tmp_path / "e.json", timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "nsd/subj04" in json.loads((tmp_path / "e.json").read_text())["subjects"]


def test_two_rank_adaptation_through_the_recipe(base, tmp_path):
    """Two DeepSpeed ranks under ZeRO-1, the stage whose checkpoint export silently drops frozen weights."""
    out = tmp_path / "a"
    proc = deepspeed_run(
        ROOT / "recipes" / "new_subject.yaml",
        f"adapt.checkpoint={base['export']}",
        f"adapt.shards={base['nsd']}",
        "adapt.subjects=nsd/subj04",
        f"adapt.out={out}",
        "train.max_steps=20",
        "train.eval_every=10",
        "deepspeed.zero_optimization.stage=1",
        script=ADAPT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert_only_new_row_changed(base["export"], out / "export")


def test_sweep_writes_the_curve_with_all_methods(base, tmp_path):
    common = ["--checkpoint", str(base["export"]), "--shards", str(base["nsd"]), "--subjects", "nsd/subj04"]
    # the reference must know the subject: the base model does not
    wrong = adapt(*common, "--fractions", "0.5,1.0", "--reference", str(base["export"]), "--out", str(tmp_path / "x"))
    assert wrong.returncode == 2 and "nsd/subj04" in wrong.stderr and "--reference" in wrong.stderr
    # a model that has the subject (here: an adaptation) stands in for the pretraining comparison run
    ref = tmp_path / "ref"
    assert adapt(*common, "--out", str(ref), "train.max_steps=5", "train.eval_every=5").returncode == 0
    out = tmp_path / "sweep"
    proc = adapt(
        *common,
        "--fractions",
        "0.5,1.0",
        "--reference",
        str(ref / "export"),
        "--out",
        str(out),
        "train.max_steps=10",
        "train.eval_every=5",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    points = json.loads((out / "curve.json").read_text())
    got = sorted((p["method"], p["fraction"]) for p in points)
    assert got == sorted(
        [(m, f) for m in ("tokens", "scratch", "full") for f in (0.5, 1.0)] + [("in_pretraining", 1.0)]
    )
    n_train = {p["fraction"]: p["n_train"] for p in points if p["method"] == "tokens"}
    assert 0 < n_train[0.5] < n_train[1.0]
    assert all(0 <= p["mAP"] <= 1 for p in points)
    assert (out / "curve.png").stat().st_size > 1000
    for method in ("tokens", "scratch", "full"):  # each run its own records, each step once
        for fraction in (0.5, 1.0):
            lines = (out / "runs" / f"{method}_f{fraction:g}" / "metrics.jsonl").read_text().splitlines()
            steps = [json.loads(line)["step"] for line in lines]
            assert steps and steps == sorted(set(steps)), (method, fraction, steps)
    saved = yaml.safe_load((out / "config.yaml").read_text())  # the resolved adaptation recipe
    assert saved["adapt"]["fractions"] == [0.5, 1.0] and "model" not in saved and "data" not in saved
    assert_only_new_row_changed(base["export"], out / "export")


def test_bad_input_is_named(base, tmp_path):
    common = ["--checkpoint", str(base["export"]), "--out", str(tmp_path / "x")]
    known = adapt(*common, "--shards", str(base["nsd"]), "--subjects", "nsd/subj01")
    assert known.returncode == 2 and "nsd/subj01" in known.stderr and "replace" in known.stderr
    no_head = adapt(*common, "--shards", str(base["nsd"]), "--subjects", "mysite/sub-01")
    assert no_head.returncode == 2 and "mysite" in no_head.stderr and "no head" in no_head.stderr
    # shards packed with other ROI settings than the model's tokenizer
    other = tmp_path / "nsd_other"
    shutil.copytree(base["nsd"], other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["info"]["roi_dim"] = 12
    (other / "manifest.json").write_text(json.dumps(manifest))
    shapes = adapt(*common, "--shards", str(other), "--subjects", "nsd/subj04")
    assert shapes.returncode == 2 and "tokenizer takes" in shapes.stderr and str(other) in shapes.stderr
    # a new subject without a validation split
    manifest = json.loads((base["nsd"] / "manifest.json").read_text())
    manifest["shards"] = [s for s in manifest["shards"] if not (s["subject"] == "nsd/subj04" and s["split"] == "val")]
    no_val = tmp_path / "nsd_noval"
    shutil.copytree(base["nsd"], no_val)
    (no_val / "manifest.json").write_text(json.dumps(manifest))
    empty = adapt(*common, "--shards", str(no_val), "--subjects", "nsd/subj04")
    assert empty.returncode == 2 and "no 'val' samples for ['nsd/subj04']" in empty.stderr
