"""Report pieces that need no trained model: input discovery and the sentences' numbers and verdicts.

The whole report on a real demo directory is checked by tests/test_demo.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mused_fm.report import markdown
from mused_fm.report.inputs import find_inputs


def metrics(**maps: float) -> dict:
    return {
        "subjects": {sid.replace("_", "/"): {"mAP": v, "AUC": 0.5, "hamming": 0.1, "n": 4} for sid, v in maps.items()}
    }


def _eval(values: dict[str, float], repeat: dict[str, float] | None = None) -> dict:
    out = {"subjects": {s: {"mAP": v} for s, v in values.items()}}
    out["repeat_mean"] = {"subjects": {s: {"mAP": v} for s, v in (repeat or values).items()}}
    return out


def _write(path: Path, payload) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))


def _compare_tree(root: Path) -> Path:
    """A comparison with known numbers: CLIP-MUSED leads MS-EMB by 0.05 +- noise on every seed; MS-EMB and
    MS-SMODEL tie; SS-ViT has one model per subject; one BCE-only seed is missing."""
    compare = root / "compare"
    methods = {
        "clip_mused": {"seeds": 6, "per_subject": False, "reliance": True},
        "ms_emb": {"seeds": 6, "per_subject": False, "reliance": False},
        "ms_smodel": {"seeds": 6, "per_subject": False, "reliance": False},
        "ss_vit": {"seeds": 3, "per_subject": True, "reliance": False},
        "bce_only": {"seeds": 3, "per_subject": False, "reliance": False},
        "shuffled_clip": {"seeds": 3, "per_subject": False, "reliance": False},
    }
    criteria = [
        {"name": "CLIP-MUSED beats MS-EMB", "better": "clip_mused", "worse": "ms_emb", "expect": "above"},
        {"name": "MS-EMB beats MS-SMODEL", "better": "ms_emb", "worse": "ms_smodel", "expect": "above"},
        {"name": "shuffled no better", "better": "shuffled_clip", "worse": "bce_only", "expect": "not_above"},
    ]
    _write(
        compare / "protocol.json",
        {"path": "p.yaml", "methods": methods, "criteria": criteria, "subjects": {"nsd": ["s1", "s2"]}},
    )
    noise = [0.01, -0.01, 0.02, 0.0, -0.02, 0.01]
    for seed in range(6):
        base = 0.5 + noise[seed]
        _write(compare / f"nsd/ms_emb/s{seed}/eval.json", _eval({"nsd/s1": base - 0.1, "nsd/s2": base + 0.1}))
        _write(
            compare / f"nsd/ms_smodel/s{seed}/eval.json",
            _eval({"nsd/s1": base - 0.1 + noise[::-1][seed], "nsd/s2": base + 0.1}),
        )
        clip = {"nsd/s1": base - 0.05 + noise[seed] / 4, "nsd/s2": base + 0.15}
        _write(compare / f"nsd/clip_mused/s{seed}/eval.json", _eval(clip, {k: v + 0.1 for k, v in clip.items()}))
        reliance = {
            v: {"datasets": {"nsd": {"subject_mean": {"mAP": 0.55 - 0.1 * (v != "own") + 0.001 * seed}}}}
            for v in ("own", "mean", "swapped", "zeroed")
        }
        _write(compare / f"nsd/clip_mused/s{seed}/reliance.json", reliance)
    for seed in range(3):
        for s, v in (("s1", 0.3), ("s2", 0.5)):
            _write(compare / f"nsd/ss_vit/s{seed}/{s}/eval.json", _eval({f"nsd/{s}": v + 0.01 * seed}))
        _write(compare / f"nsd/shuffled_clip/s{seed}/eval.json", _eval({"nsd/s1": 0.4 + 0.01 * seed, "nsd/s2": 0.4}))
        if seed < 2:
            _write(compare / f"nsd/bce_only/s{seed}/eval.json", _eval({"nsd/s1": 0.45, "nsd/s2": 0.41 + 0.02 * seed}))
    _write(compare / "nsd/ridge/eval.json", _eval({"nsd/s1": 0.99, "nsd/s2": 0.97}))
    _write(compare / "nsd/chance/eval.json", _eval({"nsd/s1": 0.2, "nsd/s2": 0.2}))
    return compare


def test_comparison_reads_seeds_intervals_and_criteria(tmp_path):
    from scipy import stats as sps

    from mused_fm.report.comparison import criteria_results, read_comparison
    from mused_fm.report.comparison_markdown import comparison_sections

    c = read_comparison(_compare_tree(tmp_path))
    clip = [0.5 + n + (-0.05 + n / 4 + 0.15) / 2 for n in [0.01, -0.01, 0.02, 0.0, -0.02, 0.01]]
    assert list(c.scores["nsd"]["clip_mused"]["trial"].values()) == pytest.approx(clip)
    assert list(c.scores["nsd"]["clip_mused"]["repeat"].values()) == pytest.approx([v + 0.1 for v in clip])
    iv = c.interval("nsd", "clip_mused")
    assert (iv.low, iv.high) == pytest.approx(sps.t.interval(0.95, 5, loc=np.mean(clip), scale=sps.sem(clip)))
    assert c.scores["nsd"]["ss_vit"]["trial"] == pytest.approx({0: 0.4, 1: 0.41, 2: 0.42})  # mean of per-subject runs
    assert c.missing == [str(tmp_path / "compare/nsd/bce_only/s2")]
    assert c.baselines["nsd"]["ridge"]["trial"] == pytest.approx(0.98)
    results = {r["name"]: r for r in criteria_results(c)}
    assert results["CLIP-MUSED beats MS-EMB"]["passed"] is True
    assert results["CLIP-MUSED beats MS-EMB"]["p"] == pytest.approx(2 / 64)
    assert results["MS-EMB beats MS-SMODEL"]["passed"] is False
    assert results["shuffled no better"]["passed"] is True  # paired on the 2 seeds both have
    assert results["shuffled no better"]["interval"].n == 2
    text = "\n\n".join(comparison_sections(c))
    assert "| CLIP-MUSED beats MS-EMB | nsd |" in text and "| PASS |" in text and "| FAIL |" in text
    assert "2 pass, 1 fail, 0 not run" in text
    assert "| ridge per subject | - | 0.980 |" in text
    assert "| nsd | own - mean | 6 | 0.100 [0.100, 0.100]" in text


def test_a_subject_without_mAP_is_left_out_of_the_seed_mean(tmp_path):
    """A subject whose test split has no positive class has mAP NaN, written as null in eval.json."""
    from mused_fm.report.comparison import read_comparison

    compare = tmp_path / "compare"
    methods = {"a": {"seeds": 1, "per_subject": False, "reliance": False}}
    _write(
        compare / "protocol.json", {"path": "p", "methods": methods, "criteria": [], "subjects": {"nsd": ["s1", "s2"]}}
    )
    _write(compare / "nsd/a/s0/eval.json", _eval({"nsd/s1": None, "nsd/s2": 0.5}))
    assert read_comparison(compare).scores["nsd"]["a"]["trial"] == {0: 0.5}


def test_criteria_are_judged_per_dataset():
    from mused_fm.report.comparison import Comparison, criteria_results

    crit = {"name": "a beats b", "better": "a", "worse": "b", "expect": "above"}
    c = Comparison(Path("x"), {"criteria": [crit], "datasets": {"nsd_fs": {"dataset": "nsd", "methods": ["a"]}}})
    up, flat = {0: 0.6, 1: 0.7, 2: 0.65}, {0: 0.5, 1: 0.5, 2: 0.5}
    c.scores = {"nsd": {"a": {"trial": up}, "b": {"trial": flat}}, "hcp": {"a": {"trial": flat}, "b": {"trial": up}}}
    c.scores["nsd_fs"] = {"a": {"trial": up}}  # a shard set compared with method a only: no criterion about b
    results = {r["dataset"]: r for r in criteria_results(c)}
    assert set(results) == {"nsd", "hcp"}
    assert results["nsd"]["passed"] is True and results["hcp"]["passed"] is False
    assert results["hcp"]["interval"].mean == pytest.approx(-0.15)


def test_subject_mean_map_averages_subjects_of_one_dataset():
    subj = metrics(nsd_s1=0.2, nsd_s2=0.4, hcp_a=0.9)["subjects"]
    assert markdown.subject_mean_map(subj, "nsd") == pytest.approx(0.3)
    assert markdown.subject_mean_map(subj, "nsd", only=["nsd/s2"]) == pytest.approx(0.4)
    assert np.isnan(markdown.subject_mean_map(subj, "bids"))


def test_new_subject_verdict_only_at_ten_percent():
    scores = {"AUC": 0.6, "hamming": 0.1}
    points = [
        {"method": "tokens", "fraction": 0.1, "n_train": 10, "mAP": 0.27, **scores},
        {"method": "in_pretraining", "fraction": 1.0, "n_train": 100, "mAP": 0.30, **scores},
    ]
    assert "90.0% of the 0.300" in markdown.new_subject(points, "nsd/subj06")
    assert "target at 10%: at least 90%, met" in markdown.new_subject(points, "nsd/subj06")
    points[0] = {**points[0], "fraction": 0.25}
    assert "target" not in markdown.new_subject(points, "nsd/subj06")


def test_new_subject_share_above_chance():
    """Near chance the share of the in-pretraining mAP flatters: the share of its gain over chance is given."""
    scores = {"AUC": 0.6, "hamming": 0.1}
    points = [
        {"method": "tokens", "fraction": 0.1, "n_train": 10, "mAP": 0.21, **scores},
        {"method": "zero_shot", "fraction": 0.0, "n_train": 0, "mAP": 0.20, **scores},
        {"method": "in_pretraining", "fraction": 1.0, "n_train": 100, "mAP": 0.22, **scores},
    ]
    text = markdown.new_subject(points, "nsd/subj06", chance=0.19)
    assert "95.5% of the 0.220" in text  # 0.21 / 0.22
    assert "gain over chance (0.030), token-only at 10% recovers 66.7%, zero-shot 33.3%" in text
    assert "Chance" not in markdown.new_subject(points, "nsd/subj06")
    assert "undefined" in markdown.new_subject(points, "nsd/subj06", chance=0.25)


def test_new_subject_aggregates_seeds_and_states_the_zero_shot_gain():
    scores = {"AUC": 0.6, "hamming": 0.1}
    points = [
        *(
            {"method": "tokens", "fraction": 0.1, "n_train": 10, "seed": k, "mAP": v, **scores}
            for k, v in enumerate((0.26, 0.28, 0.30))
        ),
        {"method": "zero_shot", "fraction": 0.0, "n_train": 0, "seed": 0, "mAP": 0.20, **scores},
        {"method": "in_pretraining", "fraction": 1.0, "n_train": 100, "seed": 0, "mAP": 0.30, **scores},
    ]
    text = markdown.new_subject(points, "nsd/subj06")
    assert "token-only adaptation reaches test mAP 0.280 [0.230, 0.330] over 3 seed(s), 93.3% of the 0.300" in text
    assert "met by the mean; the interval's lower end is 76.8%" in text
    assert (
        "Zero-shot (the mean token of the dataset's known subjects, no training): 0.200 (66.7% of the in-pretraining"
        in text
    )
    assert "10% +0.080" in text
    assert "| tokens | 0.10 | 10 | 3 | 0.280 [0.230, 0.330] | 0.260, 0.280, 0.300 |" in text


def test_inputs_of_a_demo_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a run directory"):
        find_inputs(tmp_path)
    run = tmp_path / "run"
    (run / "export").mkdir(parents=True)
    (run / "config.yaml").write_text("{}\n")
    (tmp_path / "eval.json").write_text(json.dumps(metrics(nsd_s1=0.5)))
    inputs = find_inputs(tmp_path)
    assert inputs.run == run and inputs.eval["subjects"]["nsd/s1"]["mAP"] == 0.5
    assert find_inputs(run).run == run  # a run directory itself


def test_a_run_from_before_the_recipe_split_still_loads(tmp_path):
    """Training config.yaml files written before AdaptRecipe existed carry an `adapt:` block of defaults."""
    import yaml

    from mused_fm.config import load_recipe, recipe_to_dict
    from mused_fm.report import _run_recipe

    demo = load_recipe(Path(__file__).parents[1] / "recipes" / "demo.yaml")
    old = {**recipe_to_dict(demo), "adapt": {"checkpoint": "", "fraction": 1.0, "fractions": []}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    assert _run_recipe(tmp_path / "config.yaml") == demo


def test_the_clip_stand_ins_alignment_is_stated_with_its_control():
    text = markdown.clip_alignment(
        {
            "stimuli": 500,
            "hlv_label_r": 0.317,
            "hlv_label_r_shuffled": 0.004,
            "llv_image_r": 0.49,
            "llv_image_r_shuffled": -0.001,
        }
    )
    assert "correlates r = 0.32 with the stimuli's label similarity (+0.00 against shuffled labels" in text
