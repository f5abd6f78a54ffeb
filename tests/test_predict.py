"""Predictions with class names (launch/predict.py, MusedModel.predict) and the model card of every export
(issue 17), on a model trained by launch/train.py on the packed test cohort."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

from mused_fm.data.manifest import Manifest
from mused_fm.model import load_export

from train_helpers import ROOT, child_env, free_port, pack_cohort, run_launcher, write_recipe

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predict")
    cohort = pack_cohort(tmp / "cohort")
    run = tmp / "run"
    proc = run_launcher("train", write_recipe(tmp / "r.yaml", cohort, run), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {**cohort, "export": run / "export", "tmp": tmp}


def _predict(*args, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    command = [*(launcher or [sys.executable]), str(ROOT / "launch" / "predict.py"), *map(str, args)]
    return subprocess.run(command, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=600)


def _test_samples(url, subjects) -> int:
    manifest = Manifest.read(str(url))
    return sum(s["count"] for s in manifest.shards("test", [x for x in manifest.subjects if x in subjects]))


def test_the_export_carries_class_names_and_a_model_card(trained):
    model = load_export(trained["export"])
    for name in ("nsd", "hcp"):
        assert model.class_names_of(name) == Manifest.read(str(trained[name])).classes  # from the manifest
    card = (trained["export"] / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["library_name"] == "mused-fm" and front["datasets"] == ["nsd", "hcp"]
    assert "| nsd | subj01, subj02, subj03 |" in card and "MusedModel.from_pretrained" in card
    assert "launch/adapt_subject.py --checkpoint THIS_DIR" in card and "Not measured with this export yet" in card
    # launch/evaluate.py on the test split writes the metrics into the card.
    out = trained["tmp"] / "eval.json"
    args = ["--checkpoint", trained["export"], "--shards", trained["nsd"], "--shards", trained["hcp"], "--json", out]
    assert run_launcher("evaluate", *args).returncode == 0
    metrics = json.loads(out.read_text())
    card = (trained["export"] / "README.md").read_text()
    assert f"| nsd | {metrics['datasets']['nsd']['mAP']:.4f} | {metrics['datasets']['nsd']['AUC']:.4f} |" in card


def test_model_predict_names_the_most_probable_classes(trained):
    model = load_export(trained["export"]).eval()
    spec = model.datasets["nsd"]
    bold = torch.randn(3, spec.num_rois, spec.roi_dim, generator=torch.Generator().manual_seed(0))
    ids = ["nsd/subj01", "nsd/subj02", "nsd/subj01"]
    rows = model.predict(bold, ids, "nsd", top_k=4, threshold=0.3)
    with torch.no_grad():
        probs = torch.sigmoid(model(bold, model.subject_rows(ids), "nsd").logits)
    names = model.class_names_of("nsd")
    for i, row in enumerate(rows):
        assert row["subject"] == ids[i] and len(row["top"]) == 4
        expected = torch.topk(probs[i], 4)
        assert [c for c, _ in row["top"]] == [names[j] for j in expected.indices.tolist()]
        assert [p for _, p in row["top"]] == pytest.approx(expected.values.tolist(), abs=1e-6)
        assert row["predicted"] == [names[j] for j in torch.nonzero(probs[i] >= 0.3).flatten().tolist()]
    with pytest.raises(ValueError, match=r"nsd/subj09"):
        model.predict(bold[:1], ["nsd/subj09"], "nsd")


def test_predict_writes_every_test_sample_once_on_one_or_two_ranks(trained):
    out = trained["tmp"] / "p.jsonl"
    shards = ["--shards", trained["nsd"], "--shards", trained["hcp"]]
    proc = _predict("--checkpoint", trained["export"], *shards, "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    known = set(load_export(trained["export"]).registry.ids)
    expected = _test_samples(trained["nsd"], known) + _test_samples(trained["hcp"], known)
    assert len(rows) == expected and {r["split"] for r in rows} == {"test"}
    classes = {d: Manifest.read(str(trained[d])).classes for d in ("nsd", "hcp")}
    for row in rows:
        names = classes[row["subject"].split("/")[0]]
        assert all(c in names for c, _ in row["top"]) and set(row["true"]) <= set(names)
        assert [p for _, p in row["top"]] == sorted((p for _, p in row["top"]), reverse=True)

    two = trained["tmp"] / "p2.jsonl"
    deepspeed = str(Path(sys.executable).with_name("deepspeed"))
    launcher = [deepspeed, "--num_gpus", "2", "--master_port", str(free_port())]
    proc = _predict("--checkpoint", trained["export"], *shards, "--out", two, launcher=launcher)
    assert proc.returncode == 0, proc.stderr[-3000:]
    by_two = [json.loads(line) for line in two.read_text().splitlines()]
    key = lambda r: (r["subject"], r["stimulus"], json.dumps(r["top"]))  # noqa: E731
    assert Counter(map(key, by_two)) == Counter(map(key, rows))  # the same rows: each sample read once

    averaged = trained["tmp"] / "avg.csv"
    proc = _predict("--checkpoint", trained["export"], *shards, "--average-repeats", "--out", averaged)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = averaged.read_text().splitlines()
    assert lines[0] == "subject,stimulus,split,top,predicted,true,repeats"
    assert len(lines) - 1 == len({(r["subject"], r["stimulus"]) for r in rows})
    assert sum(int(line.rsplit(",", 1)[1]) for line in lines[1:]) == len(rows)


def test_predict_names_bad_input(trained, tmp_path):
    from mused_fm.config import recipe_from_dict
    from mused_fm.model import build_model

    proc = _predict(
        "--checkpoint",
        trained["export"],
        "--shards",
        trained["nsd"],
        "--subjects",
        "nsd/subj09",
        "--out",
        tmp_path / "x.jsonl",
    )
    assert proc.returncode == 2 and "--subjects ['nsd/subj09'] are not in the model's registry" in proc.stderr
    nsd_only = load_export(trained["export"])
    recipe = recipe_from_dict(
        {"model": vars(nsd_only.config), "data": {"datasets": {"nsd": vars(nsd_only.datasets["nsd"])}}}, source="t"
    )
    build_model(recipe, ["nsd/subj01"]).save_pretrained(tmp_path / "nsd_only")
    proc = _predict("--checkpoint", tmp_path / "nsd_only", "--shards", trained["hcp"], "--out", tmp_path / "y.jsonl")
    assert proc.returncode == 2 and "holds dataset 'hcp', which the model has no head for" in proc.stderr
    proc = _predict("--checkpoint", trained["export"], "--shards", trained["nsd"], "--out", tmp_path / "z.txt")
    assert proc.returncode == 2 and "expected a .jsonl or .csv file name" in proc.stderr
