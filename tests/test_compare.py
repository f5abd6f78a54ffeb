"""launch/compare.py end to end on the packed test cohort: single-process runs in 2 workers, every run's best/
evaluated on test, reliance for CLIP-MUSED, ridge and chance, a resume that skips finished runs, the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mused_fm.compare import Protocol
from mused_fm.errors import RecipeError

from train_helpers import ROOT, pack_cohort, run_launcher, write_recipe

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return pack_cohort(tmp_path_factory.mktemp("compare_cohort"))


def _protocol(tmp_path: Path, cohort: dict) -> Path:
    base = write_recipe(tmp_path / "base.yaml", cohort, tmp_path / "unused", train={"max_steps": 4, "eval_every": 2})
    compare = ROOT / "recipes" / "compare"
    protocol = {
        "base": [str(base)],
        "common": ["train.micro_batch_size=8"],
        "datasets": {
            "nsd": {"overrides": ["data.datasets.hcp=null"], "per_subject": ["train.max_steps=2"]},
            "hcp": {"overrides": ["data.datasets.nsd=null"], "per_subject": ["train.max_steps=2"]},
            # The recipe's dataset nsd again under another name (other shards, in the demo), two methods only.
            "nsd_again": {
                "dataset": "nsd",
                "methods": ["clip_mused", "ms_emb"],
                "overrides": ["data.datasets.hcp=null"],
            },
        },
        "methods": {
            "clip_mused": {"seeds": 2, "reliance": True},
            "ms_emb": {"recipes": [str(compare / "ms_emb.yaml")], "seeds": 2},
            "ss_vit": {"recipes": [str(compare / "ss_vit.yaml")], "seeds": 1, "per_subject": True},
            "shuffled_clip": {"recipes": [str(compare / "shuffled_clip.yaml")], "seeds": 1},
        },
        "criteria": [{"name": "CLIP-MUSED beats MS-EMB", "better": "clip_mused", "worse": "ms_emb"}],
    }
    path = tmp_path / "protocol.yaml"
    path.write_text(yaml.safe_dump(protocol))
    return path


def test_protocol_runs_are_paired_by_seed_and_named(tmp_path, cohort):
    protocol = Protocol.read(_protocol(tmp_path, cohort))
    runs = protocol.runs({"nsd": ["subj01", "subj02"], "hcp": ["100610"], "nsd_again": ["subj01", "subj02"]})
    assert len(runs) == 2 * (2 + 2 + 1) + 2 + 1 + 4  # per dataset: 2+2 seeds, 1 shuffled; SS-ViT per subject
    again = [r for r in runs if r.dataset == "nsd_again"]
    assert {r.method for r in again} == {"clip_mused", "ms_emb"} and {r.trains for r in again} == {"nsd"}
    assert str(again[0].directory(tmp_path)).endswith("nsd_again/clip_mused/s0")
    ss = [r for r in runs if r.method == "ss_vit" and r.dataset == "nsd"]
    assert [r.subject for r in ss] == ["subj01", "subj02"]
    assert "data.datasets.nsd.subjects=[subj01]" in ss[0].overrides and "run.seed=0" in ss[0].overrides
    assert str(ss[0].directory(tmp_path)).endswith("nsd/ss_vit/s0/subj01")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"datasets": {"nsd": {}}, "methods": {"a": {"recipes": ["missing.yaml"]}}}))
    with pytest.raises(RecipeError, match=r"missing\.yaml, which is not a file"):
        Protocol.read(bad)
    bad.write_text(
        yaml.safe_dump(
            {"datasets": {"nsd": {}}, "methods": {"a": {}}, "criteria": [{"name": "x", "better": "a", "worse": "b"}]}
        )
    )
    with pytest.raises(RecipeError, match="criterion 'x' names method 'b'"):
        Protocol.read(bad)


def test_compare_end_to_end_and_resume(tmp_path, cohort):
    protocol = _protocol(tmp_path, cohort)
    out = tmp_path / "compare"
    args = [
        protocol,
        "--shards",
        f"nsd={cohort['nsd']}",
        "--shards",
        f"hcp={cohort['hcp']}",
        "--shards",
        f"nsd_again={cohort['nsd']}",
        "--out",
        out,
        "--jobs",
        "2",
    ]
    done = run_launcher("compare", *args, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    for dataset, subjects in (("nsd", ["subj01", "subj02", "subj03"]), ("hcp", ["100610", "102311"])):
        for seed in range(2):
            for method in ("clip_mused", "ms_emb"):
                result = json.loads((out / dataset / method / f"s{seed}" / "eval.json").read_text())
                assert result["checkpoint"].endswith("best")
                assert set(result["subjects"]) == {f"{dataset}/{s}" for s in subjects}
                assert "repeat_mean" in result
            reliance = json.loads((out / dataset / "clip_mused" / f"s{seed}" / "reliance.json").read_text())
            assert set(reliance) == {"own", "mean", "swapped", "zeroed"}
        assert not (out / dataset / "ms_emb" / "s0" / "reliance.json").exists()
        for s in subjects:
            one = json.loads((out / dataset / "ss_vit" / "s0" / s / "eval.json").read_text())
            assert set(one["subjects"]) == {f"{dataset}/{s}"}
        config = yaml.safe_load((out / dataset / "ss_vit" / "s0" / subjects[0] / "config.yaml").read_text())
        assert config["loss"]["weights"][dataset] == {"orth": 0.0, "llv": 0.0, "hlv": 0.0}  # baselines: BCE only
        shuffled = yaml.safe_load((out / dataset / "shuffled_clip" / "s0" / "config.yaml").read_text())
        assert shuffled["data"]["datasets"][dataset]["clip_features"] == "shuffled"
        assert json.loads((out / dataset / "ridge" / "eval.json").read_text())["ridge"].keys() == {
            f"{dataset}/{s}" for s in subjects
        }
        assert (out / dataset / "chance" / "eval.json").is_file()
    for seed in range(2):  # the second name of nsd: the recipe's dataset trained, written under its own name
        result = json.loads((out / "nsd_again" / "clip_mused" / f"s{seed}" / "eval.json").read_text())
        assert set(result["subjects"]) == {f"nsd/{s}" for s in ("subj01", "subj02", "subj03")}
        assert (out / "nsd_again" / "clip_mused" / f"s{seed}" / "reliance.json").is_file()
    assert not (out / "nsd_again" / "ss_vit").exists()
    assert json.loads((out / "nsd_again" / "ridge" / "eval.json").read_text())["ridge"].keys() == {
        f"nsd/{s}" for s in ("subj01", "subj02", "subj03")
    }
    # Rerun: every run has its eval.json, so nothing trains again (eval.json untouched).
    stamp = (out / "nsd/clip_mused/s0/eval.json").stat().st_mtime_ns
    again = run_launcher("compare", *args, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "0 runs of 19 to do" in again.stderr
    assert (out / "nsd/clip_mused/s0/eval.json").stat().st_mtime_ns == stamp

    from mused_fm.report.comparison import criteria_results, read_comparison

    c = read_comparison(out)
    assert set(c.scores["hcp"]) == {"clip_mused", "ms_emb", "ss_vit", "shuffled_clip"} and not c.missing
    assert set(c.scores["nsd_again"]) == {"clip_mused", "ms_emb"} and set(c.reliance["nsd_again"]) == {
        "own",
        "mean",
        "swapped",
        "zeroed",
    }
    assert c.baselines["nsd_again"]["ridge"] == c.baselines["nsd"]["ridge"]  # the same shards, read as nsd
    assert {r["dataset"] for r in criteria_results(c)} == {"nsd", "hcp", "nsd_again"}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"criteria": [{"name": "x", "better": "a", "worse": "a", "expect": "Above"}]}, r"expect above or not_above"),
        ({"criteria": [{"name": "x", "better": "a"}]}, r"needs name, better and worse"),
        (
            {"datasets": {"nsd": {"per-subject": ["train.max_steps=3"]}}},
            r"datasets\.nsd has unknown keys \['per-subject'\]",
        ),
        ({"methods": {"a": {"seeds": 0}}}, r"methods\.a\.seeds must be a whole number >= 1"),
        ({"common": "train.max_steps=3"}, r"common must be a list of strings"),
        ({"datasets": {"nsd": {"methods": ["b"]}}}, r"datasets\.nsd\.methods names \['b'\], not in methods"),
    ],
)
def test_protocol_mistakes_are_named(tmp_path, edit, message):
    protocol = {"datasets": {"nsd": {}}, "methods": {"a": {}}, **edit}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(protocol))
    with pytest.raises(RecipeError, match=message):
        Protocol.read(path)


def test_finished_runs_of_another_protocol_are_not_reused_and_protocol_json_accumulates(tmp_path):
    from mused_fm.compare.runner import _check_done_runs, _run_spec, _write_protocol
    from mused_fm.errors import InputError

    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"datasets": {"nsd": {}, "hcp": {}}, "methods": {"a": {"seeds": 1}}}))
    protocol = Protocol.read(path)
    runs = protocol.runs({"nsd": ["s1"], "hcp": ["h1"]})
    done = runs[0].directory(tmp_path) / "eval.json"
    done.parent.mkdir(parents=True)
    done.write_text(json.dumps({"run": _run_spec(runs[0])}))
    _check_done_runs(runs, tmp_path)  # trained as the protocol says: reused
    done.write_text(json.dumps({"run": {**_run_spec(runs[0]), "overrides": ["train.max_steps=1"]}}))
    with pytest.raises(InputError, match="trained with other recipes or overrides"):
        _check_done_runs(runs, tmp_path)
    _write_protocol(protocol, tmp_path, {"nsd": "shards/nsd"}, {"nsd": ["s1"]})
    _write_protocol(protocol, tmp_path, {"hcp": "shards/hcp"}, {"hcp": ["h1"]})
    written = json.loads((tmp_path / "protocol.json").read_text())
    assert written["subjects"] == {"nsd": ["s1"], "hcp": ["h1"]} and set(written["shards"]) == {"nsd", "hcp"}
