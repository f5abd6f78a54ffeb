"""`make demo` end to end at a small size (the `test` preset, a few dozen steps), S3 path included, and
`make demo-compare` with one variant of each kind: what the README says they leave."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from train_helpers import ROOT, child_env, free_port

pytestmark = pytest.mark.slow
SMALL = {
    "DEMO_PRESET": "test",
    "DEMO_NSD": "subj01,subj02,subj03,subj04,subj05",
    "DEMO_TRAIN_NSD": "subj01,subj02,subj03,subj04",
    "DEMO_HCP": "100610,102311,102816",
    "DEMO_TRAIN_HCP": "100610,102311",
    "DEMO_NEW": "hcp/102816",
    "DEMO_NEW_NSD": "nsd/subj05",
    "DEMO_FRACTIONS": "0.25,1.0",
    "DEMO_NEW_FRACTIONS": "0.25,1.0",
    "DEMO_ARGS": "train.max_steps=30 train.eval_every=15 train.save_every=30 train.log_every=5 train.warmup_steps=5",
    "DEMO_ADAPT_ARGS": "train.max_steps=20 train.eval_every=10",
    "DEMO_SEEDS": "0,1",
    "DEMO_REPLACE": "nsd/subj01",
    "DEMO_REPLACE_FRACTIONS": "1.0",
}


def make(target: str, demo_dir: Path, timeout: int, **variables: str) -> subprocess.CompletedProcess:
    venv = Path(sys.executable).parents[1]
    settings = {**SMALL, "DEMO_DIR": str(demo_dir), "DEMO_PORT": str(free_port()), "VENV": str(venv), **variables}
    # -o: the venv running the tests is the one to use; never reinstall from inside a test.
    cmd = ["make", "-C", str(ROOT), "-o", f"{venv}/.installed", target, *(f"{k}={v}" for k, v in settings.items())]
    return subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=timeout)


def test_make_demo_leaves_what_design_says(tmp_path):
    demo = tmp_path / "demo"
    proc = make("demo", demo, timeout=900, S3="1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted({int(n) for n in re.findall(r"^== (\d)/7", proc.stdout, re.M)}) == list(range(1, 8))
    assert "local S3 server at http://127.0.0.1:" in proc.stdout + proc.stderr

    assert (demo / "raw" / "nsd").is_dir() and (demo / "raw" / "hcp").is_dir()
    for name in ("nsd", "hcp"):
        assert json.loads((demo / "shards" / name / "manifest.json").read_text())["shards"]
    run = demo / "run"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["data"]["datasets"]["nsd"]["url"] == "s3://mused-demo/shards/nsd"  # trained from the S3 server
    info = json.loads((run / "run_info.json").read_text())
    assert info["world_size"] == 2 and info["zero_stage"] >= 2
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in steps) == 30 and any(r.get("split") == "val" for r in steps)
    assert (run / "checkpoints" / "latest").is_file() and (run / "export" / "model.safetensors").is_file()

    evaluation = json.loads((demo / "eval.json").read_text())
    assert set(evaluation["datasets"]) == {"nsd", "hcp"}
    assert {f"nsd/subj0{i}" for i in range(1, 5)} <= set(evaluation["subjects"])
    assert all(0 <= d["mAP"] <= 1 and d["n"] > 0 for d in evaluation["datasets"].values())
    predictions = [json.loads(line) for line in (demo / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == sum(d["n"] for d in evaluation["datasets"].values())  # each test sample once
    classes = json.loads((run / "export" / "config.json").read_text())["classes"]
    assert all(
        name in classes["nsd"] for row in predictions if row["subject"].startswith("nsd/") for name, _ in row["top"]
    )
    card = (run / "export" / "README.md").read_text()
    assert (
        card.startswith("---\nlibrary_name: mused-fm")
        and f"| nsd | {evaluation['datasets']['nsd']['mAP']:.4f} |" in card
    )

    for where, new in (("adapt", "hcp/102816"), ("adapt_nsd", "nsd/subj05")):
        assert new in json.loads((demo / where / "export" / "registry.json").read_text())["subjects"]
        curve = json.loads((demo / where / "curve.json").read_text())
        assert {p["method"] for p in curve} == {"zero_shot", "tokens", "scratch", "full", "in_pretraining"}
        assert {(p["fraction"], p["seed"]) for p in curve if p["method"] == "tokens"} == {
            (f, s) for f in (0.25, 1.0) for s in (0, 1)
        }
        assert {p["seed"] for p in curve if p["method"] == "scratch"} == {0}
    replace = json.loads((demo / "adapt_replace" / "curve.json").read_text())
    assert {p["method"] for p in replace} == {"zero_shot", "tokens", "in_pretraining"}
    own = evaluation["subjects"]["nsd/subj01"]["mAP"]  # the reference is the subject's own tokens in run/
    assert next(p for p in replace if p["method"] == "in_pretraining")["mAP"] == pytest.approx(own, abs=1e-6)

    report = (demo / "report" / "report.md").read_text()
    headings = (
        "Training and validation",
        "Test metrics per subject",
        "Does the model use its subject tokens",
        "Attention of the subject tokens over ROIs",
        "Similarity of subject tokens",
        "New subject: data efficiency (hcp/102816, adapt/)",
        "New subject: data efficiency (nsd/subj05, adapt_nsd/)",
        "New subject: data efficiency (nsd/subj01, adapt_replace/)",
    )
    for heading in headings:
        assert f"## {heading}" in report
    for png in re.findall(r"\]\((\w+\.png)\)", report):
        assert (demo / "report" / png).stat().st_size > 10_000, png
    nsd = evaluation["datasets"]["nsd"]
    assert f"test mAP {nsd['mAP']:.3f} pooled over {nsd['n']} samples" in report  # the report reads eval.json
    # A bare run directory (no eval.json beside it): the report evaluates the export itself, and gets what
    # launch/evaluate.py got.
    from mused_fm.report import write_report

    write_report(run, [str(demo / "shards" / "nsd"), str(demo / "shards" / "hcp")])
    computed = json.loads((run / "report" / "eval.json").read_text())
    for name, d in evaluation["datasets"].items():
        assert computed["datasets"][name]["mAP"] == pytest.approx(d["mAP"], abs=1e-6)

    protocol = tmp_path / "protocol.yaml"
    protocol.write_text(
        yaml.safe_dump(
            {
                "base": [str(ROOT / "recipes" / "demo.yaml")],
                "common": ["train.max_steps=6", "train.eval_every=3", "train.warmup_steps=1", "train.num_workers=0"],
                "datasets": {
                    "nsd": {"overrides": ["data.datasets.hcp=null", "data.datasets.nsd.subjects=[subj01,subj02]"]},
                    "hcp": {"overrides": ["data.datasets.nsd=null"], "per_subject": ["train.max_steps=3"]},
                },
                "methods": {
                    "clip_mused": {"seeds": 2, "reliance": True},
                    "ms_emb": {"recipes": [str(ROOT / "recipes" / "compare" / "ms_emb.yaml")], "seeds": 2},
                    "ss_vit": {
                        "recipes": [str(ROOT / "recipes" / "compare" / "ss_vit.yaml")],
                        "seeds": 1,
                        "per_subject": True,
                    },
                },
                "criteria": [{"name": "CLIP-MUSED beats MS-EMB", "better": "clip_mused", "worse": "ms_emb"}],
            }
        )
    )
    compare = make("demo-compare", demo, timeout=900, COMPARE_PROTOCOL=str(protocol))
    assert compare.returncode == 0, compare.stdout[-3000:] + compare.stderr[-3000:]
    for dataset in ("nsd", "hcp"):
        for run_dir in ("clip_mused/s1", "ms_emb/s0", "ss_vit/s0"):
            assert list((demo / "compare" / dataset / run_dir).rglob("eval.json")), (dataset, run_dir)
        assert (demo / "compare" / dataset / "ridge" / "eval.json").is_file()
    report = (demo / "report" / "report.md").read_text()
    for heading in ("The paper's comparison, over seeds", "Paired differences and the criteria fixed before the runs"):
        assert f"## {heading}" in report
    assert "| CLIP-MUSED beats MS-EMB | nsd |" in report and "| ridge per subject | - |" in report
    assert (demo / "report" / "comparison.png").is_file() and (demo / "report" / "differences.png").is_file()
