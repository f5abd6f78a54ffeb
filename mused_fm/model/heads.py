"""Per-dataset multi-label heads on concat(z_llv, z_hlv). Shape legend: B batch, D width, C classes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MultiLabelHead"]


class MultiLabelHead(nn.Module):
    """MLP (2D -> hidden -> C) giving one logit per class; hidden = 0 makes it linear (2D -> C)."""

    def __init__(self, dim: int, num_classes: int, hidden: int = 512) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2 * dim, hidden) if hidden else None
        self.out = nn.Linear(hidden or 2 * dim, num_classes)

    def forward(self, z_llv_BD: torch.Tensor, z_hlv_BD: torch.Tensor) -> torch.Tensor:
        x = torch.cat([z_llv_BD, z_hlv_BD], dim=-1)  # (B, 2D)
        if self.fc1 is not None:
            x = F.gelu(self.fc1(x))
        return self.out(x)  # (B, C) logits
