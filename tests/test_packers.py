"""Each packer end to end on the simulated cohort in the real layouts: counts, splits, labels, sizes, reruns."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mused_fm.data.tarfiles import iter_samples
from mused_fm.metrics import multilabel_metrics
from shards_tools.__main__ import main as cli
from shards_tools.hcp_files import MOVIES, HcpResources
from shards_tools.verify import verify

pytestmark = pytest.mark.slow
NSD_SUBJECTS = "subj01,subj02,subj03,subj04,subj05"


def pack(verb: str, raw: Path, out: Path, *extra: str) -> Path:
    common = ["--clip-model", str(raw / "clip"), "--out", str(out), "--llv-dim", "64"]
    args = {
        "pack-nsd": ["--root", str(raw / "nsd"), "--subjects", NSD_SUBJECTS, "--roi-dim", "16", "--maxcount", "40"],
        "pack-hcp": ["--root", str(raw / "hcp"), "--subjects", "100610,102311,102816"],
        "pack-bids": ["--root", str(raw / "bids"), "--site", "mysite", "--labels", str(raw / "bids" / "LABELS.tsv")],
    }[verb]
    assert cli([verb, *args, *common, *extra]) == 0
    return out


def samples(out: Path) -> list:
    manifest = json.loads((out / "manifest.json").read_text())
    found = []
    for shard in manifest["shards"]:
        with open(out / shard["name"], "rb") as f:
            found += list(iter_samples(f))
    return found


@pytest.fixture(scope="module")
def nsd(raw, tmp_path_factory) -> Path:
    """The default: fsaverage surfaces, one cohort basis."""
    return pack("pack-nsd", raw, tmp_path_factory.mktemp("nsd"))


@pytest.fixture(scope="module")
def nsd_volume(raw, tmp_path_factory) -> Path:
    """The paper's setting: func1pt8mm volumes (one session as .hdf5), per-subject PCA."""
    return pack("pack-nsd", raw, tmp_path_factory.mktemp("nsd_volume"), "--space", "func1pt8mm")


@pytest.fixture(scope="module")
def hcp(raw, tmp_path_factory) -> Path:
    return pack("pack-hcp", raw, tmp_path_factory.mktemp("hcp"))


@pytest.mark.parametrize("space", ["nsd", "nsd_volume"])
def test_nsd_counts_splits_and_labels(raw, space, request):
    nsd = request.getfixturevalue(space)
    truth = json.loads((raw / "synth_summary.json").read_text())["nsd"]
    manifest = json.loads((nsd / "manifest.json").read_text())
    for subject, facts in truth["subjects"].items():
        counts = manifest["subjects"][f"nsd/{subject}"]["counts"]
        assert counts["test"] == facts["test_trials"] and counts["train"] + counts["val"] == facts["train_trials"]
        assert sum(counts.values()) == len(facts["sessions_on_disk"]) * truth["trials_per_session"]
    assert manifest["subjects"]["nsd/subj02"]["fingerprint"]["sessions"] == [1, 3]  # session 2 missing
    assert manifest["subjects"]["nsd/subj03"]["fingerprint"]["sessions"] == [1, 2, 3]  # session 1 from .hdf5
    info = manifest["info"]
    assert len(info["classes"]) == 80 and info["classes"][:3] == ["person", "bicycle", "car"]
    assert [r["name"] for r in info["rois"]] == ["V1", "V2", "V3", "V3ab", "hV4", "VO", "PHC", "MT", "LO", "IPS"]
    assert info["clip"]["llv"]["fidelity_r"] >= 0.99
    all_samples = samples(nsd)
    by_stimulus: dict[str, set] = {}
    coco = json.loads((raw / "nsd/nsddata_stimuli/stimuli/nsd/annotations/instances_train2017.json").read_text())
    assert len(coco["categories"]) == 80
    for s in all_samples:
        by_stimulus.setdefault(s.meta["stimulus"], set()).add(s.meta["split"])
        assert s.bold.shape == (10, 16)
    assert all(len(splits) == 1 for splits in by_stimulus.values())  # no stimulus in two splits
    test_stimuli = {k for k, v in by_stimulus.items() if v == {"test"}}
    assert len(test_stimuli) == truth["num_shared"]
    assert verify(str(nsd)) == {}


def test_inspect_reports_the_llv_fidelity(nsd, capsys):
    assert cli(["inspect", str(nsd)]) == 0
    out = capsys.readouterr().out
    assert "nsd/subj01" in out and "80 classes: person, bicycle" in out and "(held-out stimuli)" in out


def test_nsd_sample_labels_match_coco(raw, nsd):
    root = raw / "nsd/nsddata_stimuli/stimuli/nsd/annotations"
    cats, image_cats = {}, {}
    for split in ("train2017", "val2017"):
        data = json.loads((root / f"instances_{split}.json").read_text())
        cats.update({c["id"]: c["name"] for c in data["categories"]})
        for a in data["annotations"]:
            image_cats.setdefault(a["image_id"], set()).add(cats[a["category_id"]])
    with open(raw / "nsd/nsddata/experiments/nsd/nsd_stim_info_merged.csv", newline="") as f:
        info = {int(r["nsdId"]): int(r["cocoId"]) for r in csv.DictReader(f)}
    classes = json.loads((nsd / "manifest.json").read_text())["info"]["classes"]
    for s in samples(nsd)[:50]:
        names = {classes[i] for i in np.flatnonzero(s.labels)}
        assert names == image_cats[info[int(s.meta["stimulus"][3:])]]


@pytest.mark.parametrize("space", ["nsd", "nsd_volume"])
def test_nsd_planted_signal_survives_packing(space, request):
    nsd = request.getfixturevalue(space)
    rows = [s for s in samples(nsd) if s.meta["subject"] == "nsd/subj01"]
    x = {
        sp: np.stack([s.bold.astype(np.float32).ravel() for s in rows if s.meta["split"] == sp])
        for sp in ("train", "test")
    }
    y = {sp: np.stack([s.labels for s in rows if s.meta["split"] == sp]).astype(float) for sp in ("train", "test")}
    mu, sd = x["train"].mean(0), x["train"].std(0) + 1e-6
    a, b = (x["train"] - mu) / sd, (x["test"] - mu) / sd
    w = np.linalg.solve(a.T @ a + 50 * np.eye(a.shape[1]), a.T @ (y["train"] - y["train"].mean(0)))
    seen = (y["train"].sum(0) > 0) & (y["test"].sum(0) > 0)
    chance = multilabel_metrics(np.random.default_rng(0).random(y["test"][:, seen].shape), y["test"][:, seen])
    got = multilabel_metrics((b @ w)[:, seen], y["test"][:, seen])
    assert got["AUC"] > 0.75 and got["mAP"] > chance["mAP"] + 0.2


def test_nsd_rerun_and_average_repeats(raw, nsd, tmp_path):
    before = (nsd / "manifest.json").read_bytes()
    pack("pack-nsd", raw, nsd)
    assert (nsd / "manifest.json").read_bytes() == before
    avg = pack("pack-nsd", raw, tmp_path / "avg", "--average-repeats")
    manifest = json.loads((avg / "manifest.json").read_text())
    assert manifest["subjects"]["nsd/subj01"]["counts"]["test"] == 10  # 10 shared images, 3 repeats averaged


def test_nsd_per_sample_size(nsd):
    manifest = json.loads((nsd / "manifest.json").read_text())
    per_sample = sum(s["bytes"] for s in manifest["shards"]) / sum(s["count"] for s in manifest["shards"])
    assert per_sample < 8 * 1024  # roi_dim 16 here; at 268 x 10 and llv 1024 it is ~12 KiB (docs/BENCHMARKS.md)


def test_hcp_splits_labels_and_storage(raw, hcp):
    manifest = json.loads((hcp / "manifest.json").read_text())
    resources = HcpResources(raw / "hcp/7T_movie_resources")
    wordnet, synsets = resources.wordnet()
    info = manifest["info"]
    freq = dict(zip(info["classes"], info["extra"]["label_frequency"], strict=True))
    assert all(f > 0.1 for f in freq.values()) and set(info["classes"]) < set(synsets)
    versions = resources.versions()
    for s in samples(hcp):
        run, second = int(s.meta["unit"][3:]), s.meta["index"]
        blocks = [b for b in resources.timing(run, versions[s.meta["subject"][4:]]) if not b.is_rest]
        inside = [b for b in blocks if second in b.seconds()]
        assert inside, "a rest second was packed"
        if run == 4:
            assert s.meta["split"] == "test" and inside[0] is not blocks[-1]  # movie 4 without its repeat
        else:
            assert s.meta["split"] in ("train", "val")
        keep = [synsets.index(c) for c in info["classes"]]
        np.testing.assert_array_equal(s.labels, wordnet[run][second, keep])
        assert versions[s.meta["subject"][4:]] in s.meta["stimulus"]
    val = {}
    for s in samples(hcp):
        if s.meta["split"] == "val":
            val.setdefault(s.meta["subject"], set()).add((s.meta["unit"], s.meta["index"]))
    assert len(set(map(frozenset, val.values()))) == 1  # the same validation clips for every subject
    volume_bytes = 4 * np.prod(info["volume_shape"])
    bold_bytes = max(np.prod(sub["bold_shape"]) * 2 + 128 for sub in manifest["subjects"].values())
    assert bold_bytes <= 0.25 * volume_bytes
    assert verify(str(hcp)) == {}


def test_bids_volume_and_roi_samples(raw, tmp_path):
    out = pack("pack-bids", raw, tmp_path / "bids")
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["subjects"]) == ["mysite/sub-01", "mysite/sub-02"]
    split_of: dict[str, set] = {}
    for s in samples(out):
        split_of.setdefault(s.meta["stimulus"], set()).add(s.meta["split"])
    assert all(len(v) == 1 for v in split_of.values())  # splits by stimulus, shared by the subjects
    # --classes fixes the order, one name per line (names may hold spaces: "dining table").
    names = sorted(
        {c for line in (raw / "bids/LABELS.tsv").read_text().splitlines()[1:] for c in line.split("\t")[1].split(";")}
    )
    (tmp_path / "classes.txt").write_text("\n".join(reversed(names)) + "\n")
    ordered = pack("pack-bids", raw, tmp_path / "ordered", "--classes", str(tmp_path / "classes.txt"))
    assert json.loads((ordered / "manifest.json").read_text())["info"]["classes"] == list(reversed(names))
    # ROI mode: a three-label atlas on the bold grid, with its colour table.
    bold = nib.load(next((raw / "bids/sub-01/func").glob("*_bold.nii.gz")))
    assert manifest["info"]["volume_shape"] == list(bold.shape[:3])  # volume mode: the grid the trainer unmasks into
    atlas = np.zeros(bold.shape[:3], dtype=np.int16)
    atlas[: bold.shape[0] // 3], atlas[bold.shape[0] // 3 : 2 * bold.shape[0] // 3] = 1, 2
    atlas[2 * bold.shape[0] // 3 :] = 3
    nib.save(nib.Nifti1Image(atlas, bold.affine), tmp_path / "atlas.nii.gz")
    (tmp_path / "atlas.ctab").write_text("0 Unknown 0 0 0 0\n1 left 1 1 1 0\n2 middle 2 2 2 0\n3 right 3 3 3 0\n")
    roi = pack(
        "pack-bids",
        raw,
        tmp_path / "roi",
        "--atlas",
        str(tmp_path / "atlas.nii.gz"),
        "--atlas-labels",
        str(tmp_path / "atlas.ctab"),
        "--roi-dim",
        "6",
    )
    roi_manifest = json.loads((roi / "manifest.json").read_text())
    assert roi_manifest["info"]["kind"] == "roi" and [r["name"] for r in roi_manifest["info"]["rois"]] == [
        "left",
        "middle",
        "right",
    ]
    assert {tuple(s["bold_shape"]) for s in roi_manifest["subjects"].values()} == {(3, 6)}


@pytest.mark.parametrize(
    ("verb", "extra", "message"),
    [
        ("pack-nsd", ["--roi-groups", "V1,V7"], "unknown ROI group 'V7'"),
        ("pack-nsd", ["--subjects", "subj07"], "subj07/fsaverage/betas_fithrf_GLMdenoise_RR is missing"),
        ("pack-hcp", ["--subjects", "999999"], "['999999'] are in neither HCP_7T_movie_V1/V2_ReleasedSubjs.csv"),
        ("pack-bids", ["--subjects", "sub-09"], "has no ['sub-09']"),
    ],
)
def test_bad_input_is_one_clear_line(raw, tmp_path, capsys, verb, extra, message):
    base = {
        "pack-nsd": ["--root", str(raw / "nsd"), "--subjects", "subj01"],
        "pack-hcp": ["--root", str(raw / "hcp"), "--subjects", "100610"],
        "pack-bids": ["--root", str(raw / "bids"), "--site", "s", "--labels", str(raw / "bids/LABELS.tsv")],
    }[verb]
    args = [*base, "--clip-model", str(raw / "clip"), "--out", str(tmp_path / "out"), *extra]
    assert cli([verb, *args]) == 2
    assert message in capsys.readouterr().err


def test_bad_clip_path_and_wrong_roi_grid(raw, tmp_path, capsys):
    args = ["--root", str(raw / "nsd"), "--subjects", "subj01", "--out", str(tmp_path / "o"), "--space", "func1pt8mm"]
    assert cli(["pack-nsd", *args, "--clip-model", str(tmp_path / "no-clip")]) == 2
    assert "does not load as a transformers CLIP model" in capsys.readouterr().err
    broken = tmp_path / "nsd"
    shutil.copytree(raw / "nsd", broken)
    roi = broken / "nsddata/ppdata/subj01/func1pt8mm/roi/Kastner2015.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((5, 6, 7), np.int16), np.eye(4)), roi)
    args[1] = str(broken)
    assert cli(["pack-nsd", *args, "--clip-model", str(raw / "clip")]) == 2
    assert "differs from the ROI grid (5, 6, 7)" in capsys.readouterr().err
    # NaN betas inside the ROIs are named with their file
    session = broken / "nsddata_betas/ppdata/subj01/func1pt8mm/betas_fithrf_GLMdenoise_RR/betas_session01.nii.gz"
    shutil.copy(raw / "nsd/nsddata/ppdata/subj01/func1pt8mm/roi/Kastner2015.nii.gz", roi)
    image = nib.load(session)
    data = np.asarray(image.dataobj).astype(np.float32)
    data[np.asarray(nib.load(roi).dataobj) > 0] = np.nan
    nib.save(nib.Nifti1Image(data, image.affine), session)
    assert cli(["pack-nsd", *args, "--clip-model", str(raw / "clip")]) == 2
    assert "betas_session01.nii.gz: NaN" in capsys.readouterr().err


def test_pack_to_s3_and_verify_there(raw, s3_bucket):
    url = f"s3://{s3_bucket}/shards/hcp"
    assert (
        cli(
            [
                "pack-hcp",
                "--root",
                str(raw / "hcp"),
                "--subjects",
                "100610",
                "--clip-model",
                str(raw / "clip"),
                "--out",
                url,
                "--llv-dim",
                "64",
            ]
        )
        == 0
    )
    assert verify(url) == {}
    assert cli(["verify", url]) == 0


def test_hcp_runs_use_the_real_phase_encoding(raw):
    for run, (name, phase) in MOVIES.items():
        folder = raw / f"hcp/100610/MNINonLinear/Results/tfMRI_MOVIE{run}_7T_{phase}"
        assert (folder / f"tfMRI_MOVIE{run}_7T_{phase}_hp2000_clean.nii.gz").exists(), name


def _edit_events(path: Path, edit) -> None:
    lines = path.read_text().splitlines()
    path.write_text("\n".join(edit(lines)) + "\n")


def test_bids_in_the_wild(raw, tmp_path, capsys, caplog):
    """Negative onsets, root-relative stim_file, n/a onsets, one run in two formats, a missing stimulus."""
    root = tmp_path / "site"
    shutil.copytree(raw / "bids", root)
    baseline = pack("pack-bids", raw, tmp_path / "base")
    counts = {s: c["counts"] for s, c in json.loads((baseline / "manifest.json").read_text())["subjects"].items()}
    events = {s: next((root / s / "func").glob("*_events.tsv")) for s in ("sub-01", "sub-02")}
    # sub-01: an event before the first volume and one with onset n/a, both unplaceable
    _edit_events(
        events["sub-01"], lambda ls: [ls[0], "-10.0\t2.0\timage\timg001.png", *ls[1:], "n/a\t2.0\timage\timg002.png"]
    )
    # sub-02: stim_file written from the dataset root, as many datasets do
    _edit_events(
        events["sub-02"],
        lambda ls: [ls[0], *("\t".join([*r.split("\t")[:3], "stimuli/" + r.split("\t")[3]]) for r in ls[1:])],
    )
    args = [
        "--root",
        str(root),
        "--site",
        "mysite",
        "--labels",
        str(root / "LABELS.tsv"),
        "--clip-model",
        str(raw / "clip"),
        "--llv-dim",
        "64",
    ]
    with caplog.at_level("WARNING"):
        assert cli(["pack-bids", *args, "--out", str(tmp_path / "wild")]) == 0
    wild = {
        s: c["counts"] for s, c in json.loads((tmp_path / "wild" / "manifest.json").read_text())["subjects"].items()
    }
    assert wild == counts  # the extra events are skipped, the root-relative subject keeps every event
    assert all(s.meta["volume"] >= 0 for s in samples(tmp_path / "wild"))
    assert f"{events['sub-01']}: 1 events fall outside the run's volumes" in caplog.text
    assert f"{events['sub-01']}: 1 events with onset n/a skipped" in caplog.text
    # an onset that is not a number is named with its file and row
    bad = tmp_path / "bad"
    shutil.copytree(root, bad)
    _edit_events(next((bad / "sub-01" / "func").glob("*_events.tsv")), lambda ls: [*ls, "soon\t2.0\timage\timg001.png"])
    assert cli(["pack-bids", *args[:1], str(bad), *args[2:], "--out", str(tmp_path / "o1")]) == 2
    assert "row" in (err := capsys.readouterr().err) and "onset 'soon' is not a number" in err
    # a stimulus named by the events and LABELS.tsv but absent: the subject and the file are named
    gone = tmp_path / "gone"
    shutil.copytree(root, gone)
    (gone / "stimuli" / "img001.png").unlink()
    assert cli(["pack-bids", *args[:1], str(gone), *args[2:], "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert "stimuli/img001.png is missing: sub-0" in err and "names stim_file 'img001.png'" in err
    # the same run as .nii.gz and .nii: refused, naming both files, before anything is packed
    twice = tmp_path / "twice"
    shutil.copytree(root, twice)
    run = next((twice / "sub-01" / "func").glob("*_bold.nii.gz"))
    nib.save(nib.load(run), run.with_name(run.name.removesuffix(".gz")))
    assert cli(["pack-bids", *args[:1], str(twice), *args[2:], "--out", str(tmp_path / "o3")]) == 2
    assert "are the same run in two formats" in capsys.readouterr().err and not (tmp_path / "o3").exists()


def test_damaged_release_files_are_named(raw, tmp_path, capsys):
    """A truncated .nii.gz and an nsd_expdesign.mat without a key: one line naming the file, exit 2."""
    from scipy.io import loadmat, savemat

    hcp = tmp_path / "hcp"
    shutil.copytree(raw / "hcp", hcp)
    run = next((hcp / "100610").rglob("*_hp2000_clean.nii.gz"))
    run.write_bytes(run.read_bytes()[: run.stat().st_size // 2])
    common = ["--clip-model", str(raw / "clip"), "--llv-dim", "64"]
    assert cli(["pack-hcp", "--root", str(hcp), "--subjects", "100610", "--out", str(tmp_path / "o1"), *common]) == 2
    err = capsys.readouterr().err
    assert f"error: {run} cannot be read (" in err and "truncated or damaged" in err and "Traceback" not in err
    nsd = tmp_path / "nsd"
    shutil.copytree(raw / "nsd", nsd)
    design = nsd / "nsddata/experiments/nsd/nsd_expdesign.mat"
    savemat(design, {k: v for k, v in loadmat(design).items() if not k.startswith("__") and k != "subjectim"})
    assert cli(["pack-nsd", "--root", str(nsd), "--subjects", "subj01", "--out", str(tmp_path / "o2"), *common]) == 2
    assert f"{design} lacks ['subjectim']" in capsys.readouterr().err


def test_extending_an_output(raw, tmp_path, capsys, monkeypatch):
    """The same CLIP model by a relative path is the same model; a pack that will be refused names the
    differing setting in full and computes no CLIP features into the output first."""
    out = tmp_path / "nsd"
    nsd_args = ["--root", str(raw / "nsd"), "--roi-dim", "16", "--llv-dim", "64", "--out", str(out)]
    assert cli(["pack-nsd", *nsd_args, "--subjects", "subj01", "--clip-model", str(raw / "clip")]) == 0
    features = (out / "clip" / "features.npz").read_bytes()
    monkeypatch.chdir(raw)  # the same model, named relative to another working directory
    assert cli(["pack-nsd", *nsd_args, "--subjects", "subj01", "--clip-model", "clip"]) == 0
    refused = ["pack-nsd", *nsd_args, "--subjects", "subj02", "--clip-model", "clip", "--val-fraction", "0.3"]
    assert cli(refused) == 2
    err = capsys.readouterr().err
    assert "was packed with extra.val_fraction = 0.1, this pack has 0.3. Pack into a new --out" in err
    assert (out / "clip" / "features.npz").read_bytes() == features  # subj02's images were not featurized
