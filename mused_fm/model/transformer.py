"""Generic pre-LN Transformer trunk; it knows nothing about fMRI.

Shape legend: B batch, L sequence length, N readout tokens (N <= L), D width, H heads,
K head dim (D = H*K).

Attention uses torch.nn.functional.scaled_dot_product_attention (fused kernels on CPU and GPU).
The q, k and v projections are one (D -> 3D) matmul and the head split is a view.

Readout: when only the first N tokens' outputs are used (the decoder reads z_llv and z_hlv at
positions 0 and 1), the last block computes queries, attention output and MLP for those N tokens
only; keys and values still come from all L tokens, so the N outputs are exactly those of the full
block. This saves (L - N) / L of the last block's q, out-projection and MLP work.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Attention", "Block", "Mlp", "Trunk", "sdpa_backend"]


def sdpa_backend(head_dim: int, dtype: torch.dtype, device: torch.device) -> str:
    """The fused attention kernel scaled_dot_product_attention runs at this head size, dtype and device: the
    first of flash, memory-efficient, cuDNN that accepts a probe (no kernel: the math path, which
    materialises the (L, L) attention matrix)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.zeros(1, 1, 8, head_dim, dtype=dtype, device=device)
    candidates = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
    if device.type == "cuda":
        candidates.append(SDPBackend.CUDNN_ATTENTION)
    for backend in candidates:
        try:
            with sdpa_kernel([backend]):
                F.scaled_dot_product_attention(q, q, q)
        except RuntimeError:  # "No available kernel": this backend refuses these inputs
            continue
        return backend.name.lower()
    return "math"


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads}).")
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x_BLD: torch.Tensor, num_queries: int | None = None) -> torch.Tensor:
        """Self-attention; with `num_queries` = N, only the first N tokens attend: (B, N, D)."""
        B, L, D = x_BLD.shape
        H, K = self.heads, D // self.heads
        if num_queries is None:
            qkv = self.qkv(x_BLD).view(B, L, 3, H, K)
            q_BHLK, k_BHLK, v_BHLK = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        else:
            w, b = self.qkv.weight, self.qkv.bias  # rows [0, D) are q, [D, 3D) are k and v
            # contiguous: on a strided slice torch picks its kernel by the weight's requires_grad, so a
            # frozen model would differ from a trainable one in the last bit.
            q_BHLK = (
                F.linear(x_BLD[:, :num_queries].contiguous(), w[:D], b[:D]).view(B, num_queries, H, K).transpose(1, 2)
            )
            kv = F.linear(x_BLD, w[D:], b[D:]).view(B, L, 2, H, K)
            k_BHLK, v_BHLK = kv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q_BHLK, k_BHLK, v_BHLK, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(out.transpose(1, 2).reshape(B, -1, D))

    def probabilities(self, x_BLD: torch.Tensor, num_queries: int) -> torch.Tensor:
        """(B, H, N, L) softmax(q k^T / sqrt(K)) of the first N tokens over all L: what SDPA applies to v.

        For analysis (the report's attention maps); the forward pass never materialises it.
        """
        B, L, D = x_BLD.shape
        H, K = self.heads, D // self.heads
        w, b = self.qkv.weight, self.qkv.bias
        q_BHNK = F.linear(x_BLD[:, :num_queries], w[:D], b[:D]).view(B, num_queries, H, K).transpose(1, 2)
        k_BHLK = F.linear(x_BLD, w[D : 2 * D], b[D : 2 * D]).view(B, L, H, K).transpose(1, 2)
        return torch.softmax(q_BHNK @ k_BHLK.transpose(-1, -2) / K**0.5, dim=-1)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x_BLD: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(F.gelu(self.fc1(x_BLD))))  # exact (erf) GELU: 3x cheaper than tanh on CPU


class Block(nn.Module):
    """x + attn(LN(x)), then x + mlp(LN(x)) (pre-LN, as ViT)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout)

    def forward(self, x_BLD: torch.Tensor, num_queries: int | None = None) -> torch.Tensor:
        """(B, L, D) -> (B, L, D), or (B, N, D) for the first N tokens when num_queries = N."""
        attn = self.attn(self.norm1(x_BLD), num_queries)
        x = (x_BLD if num_queries is None else x_BLD[:, :num_queries]) + attn
        return x + self.mlp(self.norm2(x))


class Trunk(nn.Module):
    """`depth` pre-LN blocks and a final LayerNorm."""

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Block(dim, heads, mlp_ratio, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)

    def compile_blocks(self) -> None:
        """torch.compile each block in place (nn.Module.compile): parameters and state-dict keys unchanged, so
        checkpoints and exports are those of the eager model. Before the optimizer is built."""
        for block in self.blocks:
            block.compile()

    def forward(self, x_BLD: torch.Tensor, num_readout: int | None = None) -> torch.Tensor:
        """(B, L, D) -> (B, L, D); with num_readout = N, only the first N tokens: (B, N, D)."""
        for block in self.blocks[:-1]:
            x_BLD = block(x_BLD)
        return self.norm(self.blocks[-1](x_BLD, num_readout))

    def readout_attention(self, x_BLD: torch.Tensor, num_readout: int) -> torch.Tensor:
        """(B, H, N, L): how the first N tokens attend over all L tokens in the last block."""
        for block in self.blocks[:-1]:
            x_BLD = block(x_BLD)
        last = self.blocks[-1]
        return last.attn.probabilities(last.norm1(x_BLD), num_readout)
