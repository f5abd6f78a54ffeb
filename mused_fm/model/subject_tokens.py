"""Per-subject learnable tokens prepended to the fMRI tokens: x_llv(s) and x_hlv(s) of CLIP-MUSED.

Shape legend: B batch, N subjects, D width.

Modes (the paper's baselines are switches of the same table):
  two   table (N, 2, D): subject s gets its own low- and high-level token (CLIP-MUSED).
  one   table (N, 1, D) added to two shared tokens (1, 2, D): one subject embedding (MS-EMB).
  none  two shared tokens (1, 2, D), no subject information (MS-SMODEL).
The output is always two tokens per sample, so z_llv / z_hlv are read at positions 0 and 1.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

__all__ = ["SubjectTokens"]


class SubjectTokens(nn.Module):
    def __init__(self, num_subjects: int, dim: int, mode: Literal["two", "one", "none"] = "two") -> None:
        super().__init__()
        if mode not in ("two", "one", "none"):
            raise ValueError(f"subject token mode must be 'two', 'one' or 'none', got {mode!r}.")
        if num_subjects < 1:
            raise ValueError(f"SubjectTokens needs at least one subject, got {num_subjects}.")
        self.mode = mode
        self.table: nn.Parameter | None = None
        self.shared: nn.Parameter | None = None
        if mode in ("two", "one"):
            self.table = nn.Parameter(torch.empty(num_subjects, 2 if mode == "two" else 1, dim))  # (N, 2|1, D)
        if mode in ("one", "none"):
            self.shared = nn.Parameter(torch.empty(1, 2, dim))  # (1, 2, D)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for p in (self.table, self.shared):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02)

    @property
    def num_subjects(self) -> int:
        return 0 if self.table is None else self.table.shape[0]

    def forward(self, subject_row_B: torch.Tensor) -> torch.Tensor:
        """Two tokens per sample, (B, 2, D), for the given rows of the table."""
        if self.mode == "two":
            return self.table[subject_row_B]
        batch = subject_row_B.shape[0]
        shared = self.shared.expand(batch, -1, -1)
        if self.mode == "one":
            return shared + self.table[subject_row_B]  # (B, 1, D) broadcast over both tokens
        return shared
