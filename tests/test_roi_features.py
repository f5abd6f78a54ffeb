"""ROI grouping, z-scoring without test leakage, per-ROI PCA, and the NSD betas readers' axis handling."""

from __future__ import annotations

import h5py
import nibabel as nib
import numpy as np
import pytest

from shards_tools.nsd_files import read_ctab, read_session_betas
from shards_tools.roi_features import PAPER_GROUPS, PcaAccumulator, RoiPca, resolve_groups, zscore_by_session

KASTNER = [
    "V1v",
    "V1d",
    "V2v",
    "V2d",
    "V3v",
    "V3d",
    "hV4",
    "VO1",
    "VO2",
    "PHC1",
    "PHC2",
    "TO2",
    "TO1",
    "LO2",
    "LO1",
    "V3b",
    "V3a",
    "IPS0",
    "IPS1",
    "IPS2",
    "IPS3",
    "IPS4",
    "IPS5",
    "SPL1",
    "FEF",
]
CTAB = {i + 1: name for i, name in enumerate(KASTNER)}


def test_ctab_parsing(tmp_path):
    path = tmp_path / "Kastner2015.mgz.ctab"
    path.write_text(
        "#$Id: comment\n  0  Unknown  0 0 0 0\n" + "".join(f"{i:>3}  {n:<10} 10 20 30 0\n" for i, n in CTAB.items())
    )
    assert read_ctab(path) == CTAB
    (tmp_path / "bad.ctab").write_text("nothing here\n")
    with pytest.raises(ValueError, match=r"bad\.ctab: no 'index name R G B A' lines"):
        read_ctab(tmp_path / "bad.ctab")


def test_paper_groups_and_custom_groups():
    groups = resolve_groups(None, CTAB, "Kastner2015.mgz.ctab")
    assert [g for g, _ in groups] == list(PAPER_GROUPS)
    assert dict(groups)["MT"] == [13, 12] and dict(groups)["V3ab"] == [17, 16] and len(dict(groups)["IPS"]) == 6
    assert resolve_groups("LO,ventral=VO1+phc2", CTAB, "x") == [("LO", [15, 14]), ("ventral", [8, 11])]
    with pytest.raises(ValueError, match=r"unknown ROI group 'V4'. Known groups: V1, V2"):
        resolve_groups("V1,V4", CTAB, "x")
    with pytest.raises(ValueError, match=r"\['V9'\] of group 'odd' are not in x"):
        resolve_groups("odd=V1v+V9", CTAB, "x")


def test_zscore_uses_only_fit_trials():
    rng = np.random.default_rng(0)
    data = rng.standard_normal((40, 3)) * 2 + 5
    session = np.repeat([1, 2], 20)
    fit = np.ones(40, bool)
    fit[::4] = False  # test trials
    z = zscore_by_session(data, session, fit)
    for s in (1, 2):
        ref = data[(session == s) & fit]
        np.testing.assert_allclose(z[session == s], (data[session == s] - ref.mean(0)) / ref.std(0), rtol=1e-5)
    changed = data.copy()
    changed[~fit] += 100  # test trials cannot move the statistics of the others
    np.testing.assert_allclose(zscore_by_session(changed, session, fit)[fit], z[fit], rtol=1e-5)


def test_roi_pca_pads_and_reconstructs():
    rng = np.random.default_rng(1)
    train = rng.standard_normal((30, 5)) @ rng.standard_normal((5, 9))
    pca = RoiPca.fit(train, dim=12)  # 9 voxels < 12 components: zero-padded
    scores = pca.transform(train)
    assert scores.shape == (30, 12) and np.all(scores[:, 9:] == 0)
    np.testing.assert_allclose(scores[:, :9] @ pca.components_KV + pca.mean_V, train, atol=1e-4)
    assert RoiPca.fit(train, dim=3).transform(train).shape == (30, 3)


@pytest.mark.parametrize("batches", [(20, 15), (30, 40, 130)], ids=["fewer-rows-than-columns", "more"])
def test_pca_from_batches_matches_the_svd_of_all_rows(batches):
    """Rows kept (exact SVD) while they number at most the columns; the covariance's eigenvectors after."""
    rng = np.random.default_rng(4)
    data = (rng.standard_normal((sum(batches), 60)) * np.linspace(3, 0.1, 60)).astype(np.float32)
    acc = PcaAccumulator(60)
    for chunk in np.split(data, np.cumsum(batches)[:-1]):
        acc.add(chunk)
    pca = acc.fit(8)
    _, _, vt = np.linalg.svd(data - data.mean(0), full_matrices=False)  # the reference
    np.testing.assert_allclose(pca.mean_V, data.mean(0), atol=1e-5)
    np.testing.assert_allclose(np.abs(np.diag(pca.components_KV @ vt[:8].T)), 1.0, atol=1e-3)
    assert (pca.components_KV[np.arange(8), np.abs(pca.components_KV).argmax(1)] > 0).all()  # signs fixed


def test_betas_from_nifti_and_matlab_order_hdf5_agree(tmp_path):
    rng = np.random.default_rng(2)
    grid = (4, 6, 5)
    betas = rng.integers(-900, 900, size=(*grid, 7)).astype(np.int16)  # X x Y x Z x trials
    nib.save(nib.Nifti1Image(betas, np.eye(4)), tmp_path / "betas_session01.nii.gz")
    with h5py.File(tmp_path / "betas_session02.hdf5", "w") as f:
        f["betas"] = betas.transpose(3, 2, 1, 0)  # MATLAB-written: h5py sees trials x Z x Y x X
    voxels = np.array([0, 7, 33, 119])
    a = read_session_betas(tmp_path / "betas_session01.nii.gz", grid, voxels)
    b = read_session_betas(tmp_path / "betas_session02.hdf5", grid, voxels)
    expected = betas.reshape(-1, 7)[voxels].T / 300.0
    np.testing.assert_allclose(a, expected, rtol=1e-6)
    np.testing.assert_allclose(b, expected, rtol=1e-6)
    with pytest.raises(ValueError, match=r"betas grid \(4, 6, 5\) differs from the ROI grid \(4, 6, 6\)"):
        read_session_betas(tmp_path / "betas_session01.nii.gz", (4, 6, 6), voxels)
    nan = betas.astype(np.float32)
    nan[0, 0, 0, 3] = np.nan
    nib.save(nib.Nifti1Image(nan, np.eye(4)), tmp_path / "betas_session03.nii.gz")
    with pytest.raises(ValueError, match=r"betas_session03\.nii\.gz: NaN"):
        read_session_betas(tmp_path / "betas_session03.nii.gz", grid, voxels)
