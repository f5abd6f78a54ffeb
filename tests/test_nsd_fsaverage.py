"""pack-nsd on fsaverage: the MGH reader, the cohort basis (fitted once, reused, blind to test images), NaN
vertices and the named errors, on the simulated release's real-format MGH/MGZ files."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mused_fm.data.tarfiles import iter_samples
from shards_tools import mgh_files
from shards_tools.__main__ import main as cli
from shards_tools.mgh_files import MghHeader, read_mgh_frames, read_mgh_labels
from shards_tools.synth import nsd_surface as surf

pytestmark = pytest.mark.slow
BETAS = "nsd/nsddata_betas/ppdata/{subject}/fsaverage/betas_fithrf_GLMdenoise_RR/{hemi}.betas_session{session:02d}.mgh"
LABELS = "nsd/nsddata/freesurfer/fsaverage/label/{hemi}.Kastner2015.mgz"


def pack(raw: Path, out: Path, subjects: str, *extra: str, root: Path | None = None) -> int:
    args = ["--root", str(root or raw / "nsd"), "--subjects", subjects, "--roi-dim", "8", "--llv-dim", "32"]
    return cli(["pack-nsd", *args, "--clip-model", str(raw / "clip"), "--out", str(out), *extra])


@pytest.fixture(scope="module")
def cohort(raw, tmp_path_factory) -> Path:
    """subj01-03 packed (the basis is fitted on them), then subj04 appended (projected with it)."""
    out = tmp_path_factory.mktemp("cohort")
    assert pack(raw, out, "subj01,subj02,subj03") == 0
    out.joinpath("basis-before-append.sha256").write_text(_sha(out / "preproc/cohort-basis.npz"))
    assert pack(raw, out, "subj04") == 0
    return out


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _samples(out: Path, subject: str) -> list:
    manifest = json.loads((out / "manifest.json").read_text())
    found = []
    for shard in manifest["shards"]:
        if shard["subject"] == subject:
            with open(out / shard["name"], "rb") as f:
                found += list(iter_samples(f))
    return found


def _hemispheres(raw: Path, subject: str, session: int) -> np.ndarray:
    """(trials, lh + rh vertices) of a session, read whole by nibabel: the reference reader."""
    parts = [nib.load(raw / BETAS.format(subject=subject, hemi=h, session=session)) for h in surf.HEMISPHERES]
    return np.concatenate([np.asarray(p.dataobj)[:, 0, 0, :].T for p in parts], axis=1)


# --- the reader ------------------------------------------------------------------------------------


def test_mgh_reader_matches_nibabel_on_big_endian_4d_files_with_nan(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(500, 1, 1, 37)).astype(np.float32)
    data[[3, 77], 0, 0, :] = np.nan  # vertices NaN for every trial, as NSD's surfaces have
    path = tmp_path / "lh.betas_session01.mgh"
    nib.save(nib.MGHImage(data, np.eye(4)), path)
    header = MghHeader.read(path)
    assert (header.vertices, header.frames, header.dtype.str) == (500, 37, ">f4")
    monkeypatch.setattr(mgh_files, "CHUNK_BYTES", 500 * 4 * 5)  # 5 frames per read: chunk edges are crossed
    vertices = np.array([0, 3, 42, 77, 499])
    got = read_mgh_frames(header, vertices)
    assert got.dtype == np.float32 and got.shape == (37, 5)
    np.testing.assert_array_equal(got, np.asarray(nib.load(path).dataobj)[vertices, 0, 0, :].T)
    zipped = tmp_path / "lh.betas_session01.mgz"
    nib.save(nib.MGHImage(data, np.eye(4)), zipped)
    np.testing.assert_array_equal(read_mgh_frames(MghHeader.read(zipped), vertices), got)


def test_mgh_reader_names_a_truncated_file(tmp_path):
    path = tmp_path / "rh.betas_session02.mgh"
    nib.save(nib.MGHImage(np.zeros((100, 1, 1, 10), np.float32), np.eye(4)), path)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(ValueError, match=r"rh.betas_session02.mgh: 2000 bytes.*truncated"):
        read_mgh_frames(MghHeader.read(path), np.arange(5))


def test_simulated_labels_are_one_atlas_of_the_real_format(raw):
    image = nib.load(raw / LABELS.format(hemi="lh"))
    assert image.shape == (642, 1, 1) and image.header.get_data_dtype().str == ">i4"
    labels = read_mgh_labels(raw / LABELS.format(hemi="lh"))
    assert set(np.unique(labels)) <= set(range(26)) and (labels > 0).mean() > 0.1
    np.testing.assert_array_equal(labels, surf.surface_atlas(surf.sphere_vertices(642)))


# --- the cohort basis ----------------------------------------------------------------------------------


def _zscored_training_rows(raw: Path, out: Path, subject: str, vertices: np.ndarray) -> np.ndarray:
    """Training trials of a subject's ROI vertices, z-scored per session by hand from its samples' trials."""
    tps = 40  # the test preset's trials per session
    rows = []
    by_session: dict[int, dict[int, str]] = {}
    for s in _samples(out, subject):
        by_session.setdefault(int(s.meta["unit"][1:]), {})[s.meta["trials"][0] % tps] = s.meta["split"]
    for session, splits in sorted(by_session.items()):
        data = _hemispheres(raw, subject.removeprefix("nsd/"), session)[:, vertices]
        train = np.array([splits[i] == "train" for i in range(tps)])
        z = (data - data[train].mean(0)) / data[train].std(0)
        rows.append(np.nan_to_num(z[train], nan=0.0))
    return np.concatenate(rows)


def test_cohort_basis_is_the_pca_of_the_first_packs_training_trials(raw, cohort):
    with np.load(cohort / "preproc/cohort-basis.npz", allow_pickle=False) as f:
        vertices, components, mean = f["vertices_0"], f["components_0"], f["mean_0"]  # V1
    stacked = np.concatenate(
        [_zscored_training_rows(raw, cohort, f"nsd/{s}", vertices) for s in ("subj01", "subj02", "subj03")]
    )
    np.testing.assert_allclose(mean, stacked.mean(0), atol=1e-5)
    _, _, vt = np.linalg.svd(stacked - stacked.mean(0), full_matrices=False)  # independent reference: SVD
    overlap = np.abs(components @ vt[: len(components)].T)  # same axes up to sign: |cos| = 1 on the diagonal
    np.testing.assert_allclose(np.diag(overlap)[:5], 1.0, atol=1e-3)


def test_an_appended_subject_is_projected_with_the_unchanged_basis(raw, cohort):
    assert _sha(cohort / "preproc/cohort-basis.npz") == (cohort / "basis-before-append.sha256").read_text()
    with np.load(cohort / "preproc/cohort-basis.npz", allow_pickle=False) as f:
        assert list(f["fitted_on"]) == ["subj01", "subj02", "subj03"]
    manifest = json.loads((cohort / "manifest.json").read_text())
    assert manifest["subjects"]["nsd/subj04"]["facts"]["roi_basis"] == "preproc/cohort-basis.npz"
    with np.load(cohort / "preproc/cohort-basis.npz", allow_pickle=False) as f:
        vertices, components, mean = f["vertices_2"], f["components_2"], f["mean_2"]  # V3
    samples = [s for s in _samples(cohort, "nsd/subj04") if s.meta["unit"] == "s01"]
    data = _hemispheres(raw, "subj04", 1)[:, vertices]
    train = np.zeros(40, dtype=bool)
    train[[s.meta["trials"][0] for s in samples if s.meta["split"] == "train"]] = True
    z = (data - data[train].mean(0)) / data[train].std(0)
    expected = (z - mean) @ components.T
    got = np.stack([s.bold[2].astype(np.float32) for s in sorted(samples, key=lambda s: s.meta["trials"][0])])
    np.testing.assert_allclose(got[:, : len(components)], expected, atol=0.02 * np.abs(expected).max())


def test_the_cohort_basis_never_sees_test_images(raw, tmp_path):
    """Rewriting every test trial's betas of every subject leaves the basis byte-identical."""
    root = tmp_path / "nsd"
    shutil.copytree(raw / "nsd", root)
    first = tmp_path / "a"
    assert pack(raw, first, "subj01,subj02") == 0
    test_trials = {s.meta["trials"][0] for s in _samples(first, "nsd/subj01") if s.meta["split"] == "test"}
    assert test_trials
    for subject in ("subj01", "subj02"):
        for path in (root / "nsddata_betas/ppdata" / subject / "fsaverage").rglob("*.mgh"):
            session = int(path.name.split("session")[1][:2])
            image = nib.load(path, mmap=False)
            data = image.get_fdata(dtype=np.float32)
            for t in test_trials:  # the design is the same for every subject
                if t // 40 + 1 == session:
                    data[:, 0, 0, t % 40] = np.random.default_rng(t).normal(50, 10, data.shape[0])
            nib.save(nib.MGHImage(data, image.affine), path)
    second = tmp_path / "b"
    assert pack(raw, second, "subj01,subj02", root=root) == 0
    assert _sha(first / "preproc/cohort-basis.npz") == _sha(second / "preproc/cohort-basis.npz")


def test_nan_vertices_are_counted_per_roi_and_zero_after_zscoring(raw, cohort):
    manifest = json.loads((cohort / "manifest.json").read_text())
    facts = manifest["subjects"]["nsd/subj03"]["facts"]["nan_vertices"]
    with np.load(cohort / "preproc/cohort-basis.npz", allow_pickle=False) as f:
        names = [str(n) for n in f["roi_names"]]
        expected = {}
        nan = np.isnan(_hemispheres(raw, "subj03", 1)).any(0)
        for i, name in enumerate(names):
            expected[name] = int(nan[f[f"vertices_{i}"]].sum())
    assert facts == expected and facts["PHC"] > 0  # the simulated dropout patch reaches PHC
    assert all(v == 0 for v in manifest["subjects"]["nsd/subj01"]["facts"]["nan_vertices"].values())
    for s in _samples(cohort, "nsd/subj03")[:20]:
        assert np.isfinite(s.bold.astype(np.float32)).all()


# --- errors -------------------------------------------------------------------------------------------------


def _copy(raw: Path, tmp_path: Path) -> Path:
    root = tmp_path / "nsd"
    shutil.copytree(raw / "nsd", root)
    return root


def test_a_missing_hemisphere_is_named(raw, tmp_path, capsys):
    root = _copy(raw, tmp_path)
    missing = root / BETAS.format(subject="subj01", hemi="rh", session=2).removeprefix("nsd/")
    missing.unlink()
    assert pack(raw, tmp_path / "out", "subj01", root=root) == 2
    assert f"{missing} is missing, but the other hemisphere of subj01 session 2 is there" in capsys.readouterr().err


def test_hemispheres_with_different_trial_counts_are_named(raw, tmp_path, capsys):
    root = _copy(raw, tmp_path)
    path = root / BETAS.format(subject="subj01", hemi="rh", session=1).removeprefix("nsd/")
    nib.save(nib.MGHImage(nib.load(path, mmap=False).get_fdata(dtype=np.float32)[..., :30], np.eye(4)), path)
    assert pack(raw, tmp_path / "out", "subj01", root=root) == 2
    err = capsys.readouterr().err
    assert "subj01 session 1: lh.betas_session01.mgh has 40 trials, rh.betas_session01.mgh has 30" in err


def test_labels_on_another_surface_are_named(raw, tmp_path, capsys):
    root = _copy(raw, tmp_path)
    path = root / LABELS.format(hemi="lh").removeprefix("nsd/")
    nib.save(nib.MGHImage(np.zeros((600, 1, 1), np.int32), np.eye(4)), path)
    assert pack(raw, tmp_path / "out", "subj01", root=root) == 2
    assert "642 vertices, but the atlas' lh labels have 600" in capsys.readouterr().err


def test_an_unknown_atlas_lists_the_atlases_there(raw, tmp_path, capsys):
    assert pack(raw, tmp_path / "out", "subj01", "--atlas", "Wang2015") == 2
    err = capsys.readouterr().err
    assert "atlas 'Wang2015'" in err and "Atlases there: Kastner2015" in err


def test_a_mostly_nan_roi_names_subject_session_and_roi(raw, tmp_path, capsys):
    root = _copy(raw, tmp_path)
    atlas = surf.surface_atlas(surf.sphere_vertices(642))
    for hemi in surf.HEMISPHERES:
        path = root / BETAS.format(subject="subj02", hemi=hemi, session=3).removeprefix("nsd/")
        data = nib.load(path, mmap=False).get_fdata(dtype=np.float32)
        data[np.isin(atlas, [1, 2])] = np.nan  # V1v, V1d
        nib.save(nib.MGHImage(data, np.eye(4)), path)
    assert pack(raw, tmp_path / "out", "subj02", root=root) == 2
    assert "subj02 session 3: 100% of ROI V1's" in capsys.readouterr().err


def test_the_other_space_or_basis_is_refused_in_the_same_output(raw, cohort, tmp_path, capsys):
    assert pack(raw, cohort, "subj05", "--roi-basis", "subject") == 2
    assert 'extra.roi_basis = "cohort", this pack has "subject"' in capsys.readouterr().err
    assert pack(raw, cohort, "subj05", "--space", "func1pt8mm") == 2
    assert 'extra.space = "fsaverage", this pack has "func1pt8mm"' in capsys.readouterr().err
    assert pack(raw, tmp_path / "v", "subj05", "--space", "func1pt8mm", "--roi-basis", "cohort") == 2
    assert "--roi-basis cohort needs a space shared by all subjects" in capsys.readouterr().err


def test_a_per_subject_basis_on_the_surface_is_stored_with_the_subject(raw, tmp_path):
    out = tmp_path / "own"
    assert pack(raw, out, "subj01", "--roi-basis", "subject") == 0
    assert not (out / "preproc/cohort-basis.npz").exists()
    with np.load(out / "preproc/subj01.npz", allow_pickle=False) as f:
        assert f["components_0"].shape[1] == f["vertices_0"].size and "nan_0" in f
