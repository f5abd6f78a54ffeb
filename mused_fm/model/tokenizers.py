"""Dataset tokenizers: turn a sample's `bold` into M tokens of width D.

Shape legend: B batch, R ROIs, F features per ROI patch, X/Y/Z volume axes, C channels,
M tokens, D width.

RoiTokenizer (NSD): one token per ROI patch, a linear map F -> D shared by all ROIs (the
positional embedding that follows tells the ROIs apart).
VolumeTokenizer (HCP): a 3D CNN whose stages each halve every axis (k=3, stride 2, pad 1, then a
residual k=3 conv), so 111x127x111 -> 56x64x56 -> 28x32x28 -> 14x16x14 -> 7x8x7, then a 1x1x1
projection to D: 7*8*7 = 392 tokens.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

__all__ = ["RoiTokenizer", "VolumeTokenizer", "conv_output_shape", "sync_batchnorm"]


class RoiTokenizer(nn.Module):
    def __init__(self, num_rois: int, roi_dim: int, dim: int) -> None:
        super().__init__()
        self.num_rois, self.roi_dim = num_rois, roi_dim
        self.proj = nn.Linear(roi_dim, dim)

    @property
    def num_tokens(self) -> int:
        return self.num_rois

    def forward(self, bold_BRF: torch.Tensor) -> torch.Tensor:
        if bold_BRF.shape[1:] != (self.num_rois, self.roi_dim):
            raise ValueError(
                f"ROI tokenizer expects bold of shape (B, {self.num_rois}, {self.roi_dim}), got "
                f"{tuple(bold_BRF.shape)}; the recipe's num_rois/roi_dim must match the shards' manifest."
            )
        return self.proj(bold_BRF)  # (B, R, D)


def sync_batchnorm(module: nn.Module) -> int:
    """Turn every BatchNorm3d under `module` into a SyncBatchNorm in place (same parameters, buffers and
    state-dict keys: checkpoints and exports are unchanged); returns how many. For data-parallel CUDA training,
    where each rank's few volumes would otherwise give the batch statistics (SyncBatchNorm needs CUDA to train)."""
    count = 0
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm3d):
            setattr(module, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
            count += 1
        else:
            count += sync_batchnorm(child)
    return count


def conv_output_shape(shape: Sequence[int], num_stages: int) -> tuple[int, ...]:
    """Spatial shape after `num_stages` stride-2 (k=3, pad=1) convolutions: n -> ceil(n / 2)."""
    out = tuple(shape)
    for _ in range(num_stages):
        out = tuple(math.ceil(n / 2) for n in out)
    return out


def _norm(kind: Literal["batch", "group"], channels: int) -> nn.Module:
    return nn.BatchNorm3d(channels) if kind == "batch" else nn.GroupNorm(min(8, channels), channels)


class _DownStage(nn.Module):
    """Stride-2 conv, then a residual 3x3x3 conv at the reduced size."""

    def __init__(self, c_in: int, c_out: int, norm: Literal["batch", "group"]) -> None:
        super().__init__()
        self.down = nn.Conv3d(c_in, c_out, 3, stride=2, padding=1, bias=False)
        self.norm1 = _norm(norm, c_out)
        self.conv = nn.Conv3d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = _norm(norm, c_out)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x_BCXYZ: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.down(x_BCXYZ)))
        return self.act(x + self.norm2(self.conv(x)))


class VolumeTokenizer(nn.Module):
    def __init__(
        self,
        volume_shape: Sequence[int],
        dim: int,
        channels: Sequence[int] = (32, 64, 128, 256),
        norm: Literal["batch", "group"] = "batch",
    ) -> None:
        super().__init__()
        self.volume_shape = tuple(volume_shape)
        self.grid = conv_output_shape(volume_shape, len(channels))  # e.g. (7, 8, 7)
        widths = [1, *channels]
        self.stages = nn.Sequential(*[_DownStage(a, b, norm) for a, b in itertools.pairwise(widths)])
        self.proj = nn.Conv3d(widths[-1], dim, 1)

    @property
    def num_tokens(self) -> int:
        return math.prod(self.grid)

    def forward(self, bold_BXYZ: torch.Tensor) -> torch.Tensor:
        if tuple(bold_BXYZ.shape[1:]) != self.volume_shape:
            raise ValueError(
                f"volume tokenizer expects bold of shape (B, {', '.join(map(str, self.volume_shape))}), got "
                f"{tuple(bold_BXYZ.shape)}; the recipe's volume_shape must match the shards' manifest."
            )
        x = self.proj(self.stages(bold_BXYZ.unsqueeze(1)))  # (B, D, 7, 8, 7)
        return x.flatten(2).transpose(1, 2)  # (B, M, D), M = 7*8*7 in X-major order
