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


def test_comparison_states_whether_the_papers_ordering_holds():
    table = {
        "MS-SMODEL": {"nsd": 0.30, "hcp": 0.80},
        "MS-EMB": {"nsd": 0.32, "hcp": 0.85},
        "CLIP-MUSED": {"nsd": 0.35, "hcp": 0.84},
    }
    text = markdown.comparison(table, {"nsd": {"MS-EMB": (3, 4)}})
    assert "nsd: CLIP-MUSED 0.350, MS-EMB 0.320, MS-SMODEL 0.300: the paper's ordering holds" in text
    assert "CLIP-MUSED is ahead of MS-EMB on 3 of 4 subjects" in text
    assert "hcp: CLIP-MUSED 0.840, MS-EMB 0.850, MS-SMODEL 0.800: the paper's ordering does not hold" in text
    assert "lacks" in markdown.comparison({"CLIP-MUSED": {"nsd": 0.3}, "MS-EMB": {"nsd": 0.2}}, {})
    # A failed ordering where the model ignores its tokens is explained; one where it uses them is not.
    assert "Why not on hcp" in markdown.comparison(table, {}, {"nsd": 0.05, "hcp": -0.003})
    assert "Why not" not in markdown.comparison(table, {}, {"nsd": 0.05, "hcp": 0.04})


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
    assert "90% of the 0.300" in markdown.new_subject(points, "nsd/subj06")
    assert "target at 10%: at least 90%, met" in markdown.new_subject(points, "nsd/subj06")
    points[0] = {**points[0], "fraction": 0.25}
    assert "target" not in markdown.new_subject(points, "nsd/subj06")


def test_inputs_of_a_demo_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a run directory"):
        find_inputs(tmp_path)
    run = tmp_path / "run"
    (run / "export").mkdir(parents=True)
    (run / "config.yaml").write_text("{}\n")
    (tmp_path / "eval.json").write_text(json.dumps(metrics(nsd_s1=0.5)))
    for name, value in (("nsd_s1", 0.4), ("hcp_a", 0.8)):  # SS-ViT: one run per subject, merged
        (tmp_path / "compare/ss_vit" / name).mkdir(parents=True)
        (tmp_path / "compare/ss_vit" / name / "eval.json").write_text(json.dumps(metrics(**{name: value})))
    (tmp_path / "compare/ms_emb").mkdir()
    (tmp_path / "compare/ms_emb/config.yaml").write_text("{}\n")  # started, never evaluated
    inputs = find_inputs(tmp_path)
    assert inputs.run == run and inputs.eval["subjects"]["nsd/s1"]["mAP"] == 0.5
    assert set(inputs.variants) == {"ss_vit"}
    assert set(inputs.variants["ss_vit"]["subjects"]) == {"nsd/s1", "hcp/a"}
    assert inputs.missing_variants == [str(tmp_path / "compare/ms_emb")]
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
