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
    """Only the new rows differ from the base export; they left the mean token exactly when the run's
    validation-selected step (curve.json's token-only best_step) is past the untrained start."""
    old, new = load_file(str(base_export / "model.safetensors")), load_file(str(adapted_export / "model.safetensors"))
    curve = json.loads((adapted_export.parent / "curve.json").read_text())
    trained = [p["best_step"] > 0 for p in curve if p["method"] == "tokens"][-1]
    assert set(old) == set(new)
    for key, value in old.items():
        if key == "subject_tokens.table":
            n = value.shape[0]
            assert new[key].shape == (n + n_new, *value.shape[1:])
            assert torch.equal(new[key][:n], value), "known subjects' tokens moved"
            ids = json.loads((adapted_export / "registry.json").read_text())["subjects"]
            means = [
                value[[i for i, s in enumerate(ids[:n]) if s.split("/")[0] == d.split("/")[0]]].mean(0) for d in ids[n:]
            ]
            at_mean = torch.allclose(new[key][n:], torch.stack(means), rtol=0, atol=1e-6)  # the dataset's mean token
            assert at_mean != trained, (
                f"best step {'past' if trained else 'at'} the start, new rows at the mean: {at_mean}"
            )
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
        "adapt.zero_shot=true",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [p["method"] for p in json.loads((out / "curve.json").read_text())] == ["zero_shot", "tokens"]
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


def test_the_untrained_start_is_kept_when_training_only_lowers_validation(base, tmp_path):
    """Early stopping counts step 0: a learning rate that wrecks the tokens leaves the mean token in the export."""
    out = tmp_path / "a"
    args = ["--checkpoint", str(base["export"]), "--shards", str(base["nsd"]), "--subjects", "nsd/subj04"]
    proc = adapt(
        *args, "--out", str(out), "train.max_steps=20", "train.eval_every=10", "train.lr=1e4", "adapt.zero_shot=true"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    curve = {p["method"]: p for p in json.loads((out / "curve.json").read_text())}
    assert curve["tokens"]["best_step"] == 0 and curve["tokens"]["mAP"] == curve["zero_shot"]["mAP"]
    log = [json.loads(line) for line in (out / "runs/tokens_f1_s0/metrics.jsonl").read_text().splitlines()]
    val = [r for r in log if r.get("split") == "val"]
    assert val[0]["step"] == 0 and all(r["mAP"] < val[0]["mAP"] for r in val[1:])
    assert_only_new_row_changed(base["export"], out / "export")


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


def run_dirs(out: Path) -> dict[str, list[int]]:
    """runs/<name>: the steps of its metrics.jsonl."""
    return {
        d.name: [json.loads(line)["step"] for line in (d / "metrics.jsonl").read_text().splitlines()]
        for d in sorted((out / "runs").iterdir())
    }


def test_sweep_writes_the_curve_with_all_methods_seeds_and_zero_shot(base, tmp_path):
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
        "--seeds",
        "3,1",
        "--reference",
        str(ref / "export"),
        "--out",
        str(out),
        "train.max_steps=10",
        "train.eval_every=5",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    points = json.loads((out / "curve.json").read_text())
    got = sorted((p["method"], p["fraction"], p["seed"]) for p in points)
    tokens = [("tokens", f, s) for f in (0.5, 1.0) for s in (3, 1)]  # every seed; the others at the first
    others = [(m, f, 3) for m in ("scratch", "full") for f in (0.5, 1.0)]
    assert got == sorted([*tokens, *others, ("zero_shot", 0.0, 3), ("in_pretraining", 1.0, 3)])
    assert all(type(p["seed"]) is int and {"n_train", "mAP", "AUC"} <= set(p) for p in points)
    assert all(0 <= p["mAP"] <= 1 for p in points)
    n_train = {(p["fraction"], p["seed"]): p["n_train"] for p in points if p["method"] == "tokens"}
    assert 0 < n_train[0.5, 3] == n_train[0.5, 1] < n_train[1.0, 3]
    zero = next(p for p in points if p["method"] == "zero_shot")
    assert zero["n_train"] == 0 and zero["steps"] == 0
    # the export (and eval.json) is the token-only run at the largest fraction and the first seed
    export_point = next(p for p in points if (p["method"], p["fraction"], p["seed"]) == ("tokens", 1.0, 3))
    assert json.loads((out / "eval.json").read_text())["datasets"]["nsd"]["mAP"] == pytest.approx(export_point["mAP"])
    assert (out / "curve.png").stat().st_size > 1000
    runs = run_dirs(out)  # each run its own records, each step once
    assert sorted(runs) == sorted(f"{m}_f{f:g}_s{s}" for m, f, s in [*tokens, *others])
    assert all(steps and steps == sorted(set(steps)) for steps in runs.values()), runs
    # two seeds at one fraction: other samples drawn in another order, so another training trajectory
    losses = {s: (out / "runs" / f"tokens_f0.5_s{s}" / "metrics.jsonl").read_text() for s in (3, 1)}
    assert losses[3] != losses[1]
    saved = yaml.safe_load((out / "config.yaml").read_text())  # the resolved adaptation recipe
    assert saved["adapt"]["fractions"] == [0.5, 1.0] and saved["adapt"]["seeds"] == [3, 1]
    assert "model" not in saved and "data" not in saved
    assert_only_new_row_changed(base["export"], out / "export")


def test_replace_relearns_a_pretraining_subject_over_fractions_and_seeds(base, tmp_path):
    """nsd/subj01 was in pretraining: its row is dropped and learnt again; the base model is its reference."""
    out = tmp_path / "replace"
    proc = adapt(
        *("--checkpoint", str(base["export"]), "--shards", str(base["nsd"]), "--subjects", "nsd/subj01"),
        *("--replace", "--fractions", "0.5,1.0", "--seeds", "0,1", "--reference", str(base["export"])),
        *("--out", str(out), "train.max_steps=6", "train.eval_every=3", "train.warmup_steps=1"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    points = json.loads((out / "curve.json").read_text())
    got = sorted((p["method"], p["fraction"], p["seed"]) for p in points)
    runs = [("tokens", f, s) for f in (0.5, 1.0) for s in (0, 1)] + [
        (m, f, 0) for m in ("scratch", "full") for f in (0.5, 1.0)
    ]
    assert got == sorted([*runs, ("zero_shot", 0.0, 0), ("in_pretraining", 1.0, 0)])
    assert sorted(run_dirs(out)) == sorted(f"{m}_f{f:g}_s{s}" for m, f, s in runs)
    old_ids = json.loads((base["export"] / "registry.json").read_text())["subjects"]
    new_ids = json.loads((out / "export" / "registry.json").read_text())["subjects"]
    assert new_ids == [s for s in old_ids if s != "nsd/subj01"] + ["nsd/subj01"]
    old, new = (
        load_file(str(base["export"] / "model.safetensors")),
        load_file(str(out / "export" / "model.safetensors")),
    )
    row = old_ids.index("nsd/subj01")
    kept = [r for r in range(len(old_ids)) if r != row]
    for key, value in old.items():
        if key == "subject_tokens.table":
            assert torch.equal(new[key][:-1], value[kept]), "other subjects' tokens moved"
            mean = value[[old_ids.index("nsd/subj02"), old_ids.index("nsd/subj03")]].mean(0)
            exported = next(p for p in points if (p["method"], p["fraction"], p["seed"]) == ("tokens", 1.0, 0))
            assert torch.allclose(new[key][-1], mean, rtol=0, atol=1e-6) == (exported["best_step"] == 0)
            assert not torch.equal(new[key][-1], value[row])  # never its old row: it starts from the mean
        else:
            assert torch.equal(new[key], value), key


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
