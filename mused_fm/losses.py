"""CLIP-MUSED losses (Zhou et al., ICLR 2024, eq. 10, 11, 15, 16).

Shape legend: B batch (local, or the gathered global batch), D model width, F feature width,
C classes.

    L = BCE + l_orth * ||Z_llv Z_hlv^T||_F^2 / B^2
            + l_llv  * ||M(clip_llv) - M(z_llv)||_F^2 / B^2
            + l_hlv  * ||M(clip_hlv) - M(z_hlv)||_F^2 / B^2

M(x)[i, j] is the cosine similarity of samples i and j (the representational similarity matrix).
The RSA and orthogonality terms work on whatever batch they are given: the trainer passes per-rank
tensors (loss.rsa_scope: local, the paper's B) or tensors gathered over ranks with gradients
(loss.rsa_scope: global) through `clip_mused_loss(..., gather=...)`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mused_fm.config import LossWeights
from mused_fm.model.mused import MusedOutput

__all__ = ["LossTerms", "bce_loss", "clip_mused_loss", "orthogonal_loss", "rsa_loss", "similarity_matrix"]


def bce_loss(logits_BC: torch.Tensor, targets_BC: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of multi-label logits against 0/1 targets (any dtype)."""
    return F.binary_cross_entropy_with_logits(logits_BC, targets_BC.to(logits_BC.dtype))


def similarity_matrix(x_BF: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(B, B) cosine similarities between the rows of x."""
    x = F.normalize(x_BF, dim=-1, eps=eps)
    return x @ x.T


def _at_least_f32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def rsa_loss(z_BD: torch.Tensor, feats_BF: torch.Tensor) -> torch.Tensor:
    """||M(feats) - M(z)||_F^2 / B^2 (eq. 10 and 11); feats is a fixed target (no gradient)."""
    if z_BD.shape[0] != feats_BF.shape[0]:
        raise ValueError(f"rsa_loss: {z_BD.shape[0]} token outputs but {feats_BF.shape[0]} CLIP features.")
    batch = z_BD.shape[0]
    # At least float32: low-level CLIP similarities sit in a narrow band that bf16 would blur.
    z = _at_least_f32(z_BD)
    target = similarity_matrix(feats_BF.detach().to(z.dtype))
    return (target - similarity_matrix(z)).pow(2).sum() / batch**2


def orthogonal_loss(z_llv_BD: torch.Tensor, z_hlv_BD: torch.Tensor) -> torch.Tensor:
    """||Z_llv Z_hlv^T||_F^2 / B^2 (eq. 15): pushes the two token outputs towards orthogonality."""
    batch = z_llv_BD.shape[0]
    return (z_llv_BD @ z_hlv_BD.T).pow(2).sum() / batch**2


@dataclass
class LossTerms:
    total: torch.Tensor
    bce: torch.Tensor
    orth: torch.Tensor
    rsa_llv: torch.Tensor
    rsa_hlv: torch.Tensor

    NAMES = ("loss", "bce", "orth", "rsa_llv", "rsa_hlv")

    def stacked(self) -> torch.Tensor:
        """(5,) detached values (at least float32) in NAMES order, on the device: sum over steps, sync once."""
        terms = [self.total, self.bce, self.orth, self.rsa_llv, self.rsa_hlv]
        return torch.stack([_at_least_f32(t.detach()) for t in terms])

    def as_floats(self) -> dict[str, float]:
        """Detached values for logging (one host sync per call)."""
        return dict(zip(self.NAMES, self.stacked().cpu().tolist(), strict=True))


def clip_mused_loss(
    out: MusedOutput,
    labels_BC: torch.Tensor,
    clip_llv_BF: torch.Tensor,
    clip_hlv_BF: torch.Tensor,
    weights: LossWeights,
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> LossTerms:
    """Eq. 16 for one dataset's batch with that dataset's lambdas.

    Args:
        gather: applied to z and CLIP features before the RSA and orthogonality terms (the
            batch-coupled ones); the trainer passes an all-gather with gradients for
            loss.rsa_scope=global, so the loss is that of one process holding the global batch.
            None: the local batch. BCE is always local (a per-sample mean).
    """
    g = gather or (lambda t: t)
    z_llv, z_hlv = g(out.z_llv), g(out.z_hlv)
    bce = bce_loss(out.logits, labels_BC)
    orth = orthogonal_loss(_at_least_f32(z_llv), _at_least_f32(z_hlv))
    rsa_llv = rsa_loss(z_llv, g(clip_llv_BF))
    rsa_hlv = rsa_loss(z_hlv, g(clip_hlv_BF))
    total = _at_least_f32(bce) + weights.orth * orth + weights.llv * rsa_llv + weights.hlv * rsa_hlv
    return LossTerms(total, bce, orth, rsa_llv, rsa_hlv)
