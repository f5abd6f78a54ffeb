"""Losses equal the paper's formulas (eq. 10, 11, 15, 16), written out independently in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mused_fm.config import LossWeights
from mused_fm.losses import bce_loss, clip_mused_loss, orthogonal_loss, rsa_loss
from mused_fm.model import MusedOutput

B, D, F, C = 7, 6, 11, 5


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return {
        "z_llv": rng.standard_normal((B, D)),
        "z_hlv": rng.standard_normal((B, D)),
        "clip_llv": rng.standard_normal((B, F)),
        "clip_hlv": rng.standard_normal((B, 4)),
        "logits": rng.standard_normal((B, C)) * 3,
        "labels": (rng.random((B, C)) < 0.4).astype(np.uint8),
    }


def t(x):
    return torch.tensor(x, dtype=torch.float64)


def cosine_matrix(x):
    out = np.empty((len(x), len(x)))
    for i in range(len(x)):
        for j in range(len(x)):
            out[i, j] = x[i] @ x[j] / (np.sqrt(x[i] @ x[i]) * np.sqrt(x[j] @ x[j]))
    return out


def ref_rsa(z, feats):
    return np.sum((cosine_matrix(feats) - cosine_matrix(z)) ** 2) / len(z) ** 2


def ref_orth(z_llv, z_hlv):
    return sum((z_llv[i] @ z_hlv[j]) ** 2 for i in range(len(z_llv)) for j in range(len(z_llv))) / len(z_llv) ** 2


def ref_bce(logits, labels):
    p = 1 / (1 + np.exp(-logits))
    return np.mean(-(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def test_rsa_loss_is_eq_10(data):
    got = rsa_loss(t(data["z_llv"]), t(data["clip_llv"])).item()
    assert got == pytest.approx(ref_rsa(data["z_llv"], data["clip_llv"]), rel=1e-12)
    # Invariant to the scale of either side (cosine similarity), zero when z is the features.
    assert rsa_loss(t(3 * data["z_llv"]), t(data["clip_llv"])).item() == pytest.approx(got, rel=1e-12)
    assert rsa_loss(t(data["clip_llv"]), t(data["clip_llv"] * 2)).item() == pytest.approx(0, abs=1e-24)


def test_orthogonal_loss_is_eq_15(data):
    got = orthogonal_loss(t(data["z_llv"]), t(data["z_hlv"])).item()
    assert got == pytest.approx(ref_orth(data["z_llv"], data["z_hlv"]), rel=1e-12)


def test_bce_matches_the_formula(data):
    got = bce_loss(t(data["logits"]), torch.tensor(data["labels"])).item()
    assert got == pytest.approx(ref_bce(data["logits"], data["labels"]), rel=1e-12)


def test_total_is_eq_16_with_the_datasets_lambdas(data):
    weights = LossWeights(orth=0.3, llv=0.05, hlv=2.0)
    out = MusedOutput(t(data["logits"]), t(data["z_llv"]), t(data["z_hlv"]))
    terms = clip_mused_loss(out, torch.tensor(data["labels"]), t(data["clip_llv"]), t(data["clip_hlv"]), weights)
    expected = (
        ref_bce(data["logits"], data["labels"])
        + 0.3 * ref_orth(data["z_llv"], data["z_hlv"])
        + 0.05 * ref_rsa(data["z_llv"], data["clip_llv"])
        + 2.0 * ref_rsa(data["z_hlv"], data["clip_hlv"])
    )
    assert terms.total.item() == pytest.approx(expected, rel=1e-12)
    assert terms.as_floats()["rsa_hlv"] == pytest.approx(ref_rsa(data["z_hlv"], data["clip_hlv"]), rel=1e-12)


def test_rsa_over_a_gathered_batch_equals_the_concatenated_batch(data):
    """What loss.rsa_scope=global relies on: RSA and orth over the gathered batch, gradients to local rows."""
    rng = np.random.default_rng(1)
    other_z, other_llv = t(rng.standard_normal((5, D))), t(rng.standard_normal((5, F)))
    other_hlv = t(rng.standard_normal((5, 4)))
    z_llv = t(data["z_llv"]).requires_grad_()
    z_hlv = t(data["z_hlv"]).requires_grad_()
    peers = {id(z_llv): other_z, id(z_hlv): other_z + 1}

    def gather(x):  # stands in for an all-gather with gradients: [this rank; the other rank]
        if x.shape[1] == F:
            return torch.cat([x, other_llv])
        if x.shape[1] == 4:
            return torch.cat([x, other_hlv])
        return torch.cat([x, peers[id(x)]])

    out = MusedOutput(t(data["logits"]), z_llv, z_hlv)
    terms = clip_mused_loss(
        out, torch.tensor(data["labels"]), t(data["clip_llv"]), t(data["clip_hlv"]), LossWeights(), gather=gather
    )
    full_z = np.concatenate([data["z_llv"], other_z.numpy()])
    full_llv = np.concatenate([data["clip_llv"], other_llv.numpy()])
    assert terms.rsa_llv.item() == pytest.approx(ref_rsa(full_z, full_llv), rel=1e-12)
    full_hlv_z = np.concatenate([data["z_hlv"], other_z.numpy() + 1])
    assert terms.orth.item() == pytest.approx(ref_orth(full_z, full_hlv_z), rel=1e-12)
    terms.total.backward()
    assert z_llv.grad is not None and z_llv.grad.abs().sum() > 0


def test_rsa_gradient_matches_finite_differences(data):
    z = t(data["z_llv"][:4]).requires_grad_()
    feats = t(data["clip_llv"][:4])
    assert torch.autograd.gradcheck(lambda x: rsa_loss(x, feats), (z,))
    assert torch.autograd.gradcheck(lambda x: orthogonal_loss(x, t(data["z_hlv"][:4])), (z,))


def test_rsa_rejects_mismatched_batches(data):
    with pytest.raises(ValueError, match=r"7 token outputs but 4 CLIP features"):
        rsa_loss(t(data["z_llv"]), t(data["clip_llv"][:4]))
