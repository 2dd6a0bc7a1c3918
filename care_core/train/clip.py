"""CLIP-style alignment for Stage II (CARE_METHOD.md §4): projection heads, L2 norm, symmetric InfoNCE.

A slide embedding and a molecular embedding (RNA or protein) are each projected by a `ClipHead` into one
space and L2-normalised; `clip_loss` is the symmetric InfoNCE of CLIP (Radford et al. 2021) over a batch of
pairs, row i of `a` matching row i of `b`, with the learnable scale exp(s) = 1/temperature that
`LogitScale` holds and clamps. Under DDP, `clip_loss(..., gather=True)` takes its negatives from the
global batch, so the loss (and, after DDP's gradient average, the update) equals one process's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ClipHead", "LogitScale", "clip_loss", "gather_batch"]


class ClipHead(nn.Module):
    """Linear projection of `in_dim` embeddings into the shared `out_dim` space, L2-normalised.

    `forward(x: [B, in_dim]) -> [B, out_dim]` rows of unit norm (a zero row stays finite: norm floored at 1e-6).
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.in_dim, self.out_dim = int(in_dim), int(out_dim)
        self.proj = nn.Linear(self.in_dim, self.out_dim, bias=False)
        nn.init.normal_(self.proj.weight, std=self.in_dim**-0.5)  # CLIP's projection init

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.proj(x), dim=-1, eps=1e-6)


class LogitScale(nn.Module):
    """The learnable inverse temperature exp(s) of InfoNCE, clamped to [`min_scale`, `max_scale`].

    The parameter is s = log(1 / init_temperature) (CLIP: T = 0.07, scale ≈ 14.3); `forward()` returns
    exp(s) clamped, so the temperature never drops below 1/max_scale (CLIP's cap: 100). Keep s out of
    weight decay. While clamped, s gets no gradient from the loss.
    """

    def __init__(self, init_temperature: float = 0.07, max_scale: float = 100.0, min_scale: float = 1.0) -> None:
        super().__init__()
        if not 0 < min_scale <= 1 / init_temperature <= max_scale:
            raise ValueError(f"init_temperature={init_temperature!r} must give a scale 1/T in [{min_scale}, "
                             f"{max_scale}] (min_scale, max_scale)")
        self.max_scale, self.min_scale = float(max_scale), float(min_scale)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))

    def forward(self) -> Tensor:
        return self.log_scale.exp().clamp(self.min_scale, self.max_scale)

    def extra_repr(self) -> str:
        return f"scale={float(self.forward()):.3f}, range=[{self.min_scale:g}, {self.max_scale:g}]"


def gather_batch(x: Tensor) -> Tensor:
    """Concatenate `x` over the ranks of the default process group in rank order, keeping gradients
    (each rank's backward receives the sum of every rank's gradient for its own rows); `x` unchanged
    when torch.distributed is not running or has one process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


def clip_loss(a: Tensor, b: Tensor, logit_scale: Tensor, *, gather: bool = False) -> Tensor:
    """Symmetric InfoNCE of paired rows: mean of cross-entropy(a → b) and cross-entropy(b → a).

    a, b: [B, E], row i of `a` pairs with row i of `b`; both are L2-normalised here (already unit rows are
    unchanged). logit_scale: scalar inverse temperature (`LogitScale()`). Logits are scale · â b̂ᵀ, the
    targets the diagonal. gather: under DDP, all-gather `a` and `b` first, so every rank computes the
    loss of the global batch. Returns a scalar.
    """
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"a {tuple(a.shape)} and b {tuple(b.shape)} must both be [B, E]")
    if gather:
        a, b = gather_batch(a), gather_batch(b)
    a = F.normalize(a, dim=-1, eps=1e-6)
    b = F.normalize(b, dim=-1, eps=1e-6)
    logits = logit_scale * (a @ b.T)
    target = torch.arange(len(a), device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
