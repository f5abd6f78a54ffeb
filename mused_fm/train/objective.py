"""The module DeepSpeed trains: a MusedModel plus the CLIP-MUSED loss over all datasets of a step.

Shape legend: B_d samples of dataset d on this rank in this micro-step, B = sum_d B_d.

Every micro-step carries a batch of every dataset (mused_fm.data.split_batch gives each at least one
sample), so every tokenizer, head and the subject table take part in every rank's graph on every
step: ranks that touched different parameters would crash or hang ZeRO's gradient reduction.

    L = sum_d (B_d / B) * L_d          L_d = eq. 16 with dataset d's lambdas

With loss.rsa_scope=global the RSA and orthogonality terms of each dataset are computed over the
batch gathered from all ranks (gradients flow back through the gather); with local, over the rank's
own batch (the paper's B). BCE is a local mean; DeepSpeed's average over ranks makes it the global one.
"""

from __future__ import annotations

import torch
from torch import nn

from mused_fm.config import LossConfig
from mused_fm.distributed import gather_with_grad
from mused_fm.losses import LossTerms, clip_mused_loss
from mused_fm.model import MusedModel

__all__ = ["Objective", "batch_to_device"]

FLOAT_KEYS = ("bold", "clip_llv", "clip_hlv")


def batch_to_device(batch: dict, device: torch.device, dtype: torch.dtype) -> dict:
    """The tensors of a loader batch on the device; inputs and CLIP features in the compute dtype."""
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, non_blocking=True)
            out[key] = value.to(dtype) if key in FLOAT_KEYS else value
    return out


class Objective(nn.Module):
    def __init__(self, model: MusedModel, loss: LossConfig) -> None:
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, batches: dict[str, dict]) -> tuple[torch.Tensor, dict[str, LossTerms]]:
        """batches: dataset name -> {bold, subject_row, labels, clip_llv, clip_hlv} on the device."""
        total_B = sum(b["labels"].shape[0] for b in batches.values())
        gather = gather_with_grad if self.loss.rsa_scope == "global" else None
        terms: dict[str, LossTerms] = {}
        for name, b in batches.items():
            out = self.model(b["bold"], b["subject_row"], name)
            terms[name] = clip_mused_loss(
                out, b["labels"], b["clip_llv"], b["clip_hlv"], self.loss.for_dataset(name), gather=gather
            )
        total = sum(t.total * (batches[n]["labels"].shape[0] / total_B) for n, t in terms.items())
        return total, terms
