"""CARE's torch building blocks: masked self-attention, transformer blocks, the [CLS] encoder of sub-regions and
adaptive regions, the learnable-query pool (g^Q) and the SPF's gated attention score (Eq. 7)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Attention", "Block", "ClsEncoder", "GatedAttention", "QueryPool"]


class Attention(nn.Module):
    """Multi-head self-attention with a key-padding mask (True = real token)."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        b, n, e = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, e // self.heads).permute(2, 0, 3, 1, 4)
        p = self.dropout if self.training else 0.0
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :], dropout_p=p)
        return self.proj(o.transpose(1, 2).reshape(b, n, e))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), key_mask)
        return x + self.mlp(self.norm2(x))


class ClsEncoder(nn.Module):
    """A [CLS]-prepended transformer over padded token groups: returns (CLS output [B, E], tokens [B, L, E])."""

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([self.cls_token.expand(len(tokens), -1, -1).to(tokens.dtype), tokens], 1)
        key_mask = torch.cat([mask.new_ones(len(mask), 1), mask], 1)
        for blk in self.blocks:
            x = blk(x, key_mask)
        x = self.norm(x)
        return x[:, 0], x[:, 1:]


class QueryPool(nn.Module):
    """A learnable query cross-attending over a token group: g^Q (Eq. 2)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, e = tokens.shape
        h = self.heads
        q = self.q(self.query.to(tokens.dtype)).reshape(1, 1, h, e // h).transpose(1, 2).expand(b, -1, -1, -1)
        k, v = self.kv(tokens).reshape(b, n, 2, h, e // h).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        return self.proj(o.transpose(1, 2).reshape(b, e))


class GatedAttention(nn.Module):
    """Eq. 7 score: s_i = w^T (tanh(V g_i) * sigmoid(U g_i))."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.v = nn.Linear(dim, hidden)
        self.u = nn.Linear(dim, hidden)
        self.w = nn.Linear(hidden, 1)

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        return self.w(torch.tanh(self.v(g)) * torch.sigmoid(self.u(g))).squeeze(-1)
