"""Stage I objective: iBOT on feature grids (CARE_METHOD.md §3).

Student and teacher are CAREs with projection heads; the teacher is the EMA of the student and gets no
gradients. Per sub-WSI the student sees every view (global views with their block masks, local views
whole), the teacher the global views unmasked.

    cross-view loss  L_cls = mean over (teacher global i, student view v != i) of
                             -sum_k t_ik log s_vk,  t = softmax((h_T(z_i) - c) / tau_T), s = softmax(h_S(z_v) / tau_S)
    masked-token     L_mim = mean over global views of the mean over masked patches p of
                             -sum_k t_pk log s_pk (patch tokens through the patch head, centre c_p)
    total            L = L_cls + lambda_ibot L_mim + lambda_RSL mean_v L_RSL(v)

Centres are EMAs (momentum ``center_momentum``) of the teacher's batch-mean outputs, averaged over
processes; the teacher temperature warms up linearly.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ProjectionHead", "IBOTObjective"]


class ProjectionHead(nn.Module):
    """DINO/iBOT head: MLP (in -> hidden -> hidden -> bottleneck), L2 norm, weight-normalised prototypes."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 2048, bottleneck: int = 256) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, bottleneck)
        )
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.prototypes = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck, out_dim, bias=False))
        self.prototypes.parametrizations.weight.original0.data.fill_(1.0)  # unit-norm prototypes, gain fixed below
        self.prototypes.parametrizations.weight.original0.requires_grad = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prototypes(F.normalize(self.mlp(x), dim=-1, eps=1e-6))


def _soft_ce(teacher_probs: torch.Tensor, student_logits: torch.Tensor, temp: float) -> torch.Tensor:
    """-sum_k t_k log softmax(s / temp)_k per row."""
    return -(teacher_probs * F.log_softmax(student_logits.float() / temp, dim=-1)).sum(-1)


def _all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        x = x.clone()
        dist.all_reduce(x)
        x /= dist.get_world_size()
    return x


def _features_on(dev: torch.device, arrays: list) -> list:
    """The views' feature arrays as tensors on ``dev``: on CUDA one asynchronous copy of them all from pinned
    memory (not a synchronous copy per view, student and teacher); on the CPU the arrays themselves."""
    if dev.type != "cuda":
        return [torch.from_numpy(a) for a in arrays]
    flat = torch.from_numpy(np.concatenate(arrays)).pin_memory().to(dev, non_blocking=True)
    return list(flat.split([len(a) for a in arrays]))


def _masked_rows(batch: list, n_g: int, n_v: int):
    """int64 numpy (student rows, teacher rows, owner view) of the masked patches of the global views: rows of the
    packed patch tokens (student: every view, sample-major; teacher: the global views), owners numbered 0.. over
    the global views with a masked patch."""
    s_len = np.array([len(f) for v in batch for f in v.features])
    s_off = np.concatenate([[0], np.cumsum(s_len)])
    t_off = np.concatenate([[0], np.cumsum(s_len.reshape(len(batch), n_v)[:, :n_g].ravel())])
    s_rows, t_rows, owners = [], [], []
    for bi, views in enumerate(batch):
        for i in range(n_g):
            where = np.flatnonzero(views.masks[i])
            if not len(where):
                continue
            s_rows.append(s_off[bi * n_v + i] + where)
            t_rows.append(t_off[bi * n_g + i] + where)
            owners.append(np.full(len(where), len(owners)))
    if not owners:
        return (np.zeros(0, np.int64),) * 3
    return tuple(np.concatenate(a).astype(np.int64) for a in (s_rows, t_rows, owners))


class IBOTObjective(nn.Module):
    """Student (CARE + heads), EMA teacher and centres; ``forward(batch, sched)`` returns (loss, logs).

    batch: list of ``Views`` (one per sub-WSI). sched: dict with ``teacher_temp`` for this step.
    ``update_teacher(momentum)`` runs after each optimiser step. ``export_model()`` is the teacher CARE.
    """

    def __init__(self, care: nn.Module, cfg) -> None:
        super().__init__()
        e = care.config.embed_dim
        self.student = nn.ModuleDict({
            "care": care,
            "head": ProjectionHead(e, cfg.out_dim, cfg.head_hidden, cfg.head_bottleneck),
            "patch_head": ProjectionHead(e, cfg.patch_out_dim, cfg.head_hidden, cfg.head_bottleneck),
        })
        self.teacher = copy.deepcopy(self.student)
        for p in self.teacher.parameters():
            p.requires_grad = False
        self.register_buffer("center", torch.zeros(cfg.out_dim))
        self.register_buffer("patch_center", torch.zeros(cfg.patch_out_dim))
        self.cfg = cfg

    def trainable(self) -> nn.Module:
        return self.student

    def export_model(self) -> nn.Module:
        return self.teacher["care"]

    def forward(self, batch: list, sched: dict) -> tuple[torch.Tensor, dict]:
        cfg = self.cfg
        dev = self.center.device
        n_g = batch[0].n_global
        n_v = len(batch[0])

        def tensors(views, which):
            return [torch.from_numpy(a) for v in views for a in getattr(v, which)]

        # student: every view of every sub-WSI, sample-major (sample b, view v) -> b * n_v + v
        geoms = [g for v in batch for g in v.geometries] if batch[0].geometries is not None else None
        features = _features_on(dev, [f for v in batch for f in v.features])
        s_out = self.student["care"](features, tensors(batch, "grids"), token_mask=tensors(batch, "masks"), geometries=geoms)
        s_logits = self.student["head"](s_out.slide_embedding)  # [B * n_v, K]
        # teacher: the global views, unmasked
        globals_ = [(features[b * n_v + i], v.grids[i]) for b, v in enumerate(batch) for i in range(n_g)]
        with torch.no_grad():
            t_geoms = None if geoms is None else [geoms[b * n_v + i] for b in range(len(batch)) for i in range(n_g)]
            t_out = self.teacher["care"]([f for f, _ in globals_], [g for _, g in globals_], geometries=t_geoms)
            t_logits = self.teacher["head"](t_out.slide_embedding).float()  # [B * n_g, K]
            t_patch_logits = self.teacher["patch_head"](t_out.patch_tokens).float()
            temp = sched["teacher_temp"]
            t_probs = F.softmax((t_logits - self.center) / temp, dim=-1)
            t_patch_probs = F.softmax((t_patch_logits - self.patch_center) / temp, dim=-1)

        b = len(batch)
        s_logits = s_logits.reshape(b, n_v, -1)
        t_probs = t_probs.reshape(b, n_g, -1)
        pairs = [(i, v) for i in range(n_g) for v in range(n_v) if v != i]
        loss_cls = torch.stack([_soft_ce(t_probs[:, i], s_logits[:, v], cfg.student_temp).mean() for i, v in pairs]).mean()

        # masked-token loss: student patch tokens of the global views at their masked positions; the rows are
        # found in numpy from the views' masks and offsets (one copy to the device, no host sync per view)
        s_rows, t_rows, owner = _masked_rows(batch, n_g, n_v)
        s_patch_rows = len(owner) > 0
        if s_patch_rows:
            n_owners = int(owner[-1]) + 1
            s_rows, t_rows, owner = (torch.from_numpy(a).to(dev, non_blocking=True) for a in (s_rows, t_rows, owner))
            s_patch_logits = self.student["patch_head"](s_out.patch_tokens[s_rows])
            per_patch = _soft_ce(t_patch_probs[t_rows], s_patch_logits, cfg.student_temp)
            counts = torch.bincount(owner, minlength=n_owners).float()
            per_view = torch.zeros(n_owners, device=dev).index_add(0, owner, per_patch) / counts
            # average over all global views (unmasked views contribute 0), as iBOT does per image
            loss_mim = per_view.sum() / (b * n_g)
        else:
            loss_mim = s_logits.new_zeros(())
        loss_rsl = s_out.rsl_loss.mean()
        lam_rsl = self.student["care"].config.lambda_rsl
        loss = loss_cls + cfg.lambda_ibot * loss_mim + lam_rsl * loss_rsl

        with torch.no_grad():  # centres (Eq. of DINO): EMA of the teacher's batch-mean output over all processes
            m = cfg.center_momentum
            self.center.mul_(m).add_(_all_reduce_mean(t_logits.mean(0)), alpha=1 - m)
            self.patch_center.mul_(m).add_(_all_reduce_mean(t_patch_logits.mean(0)), alpha=1 - m)
            entropy = -(t_probs * torch.log(t_probs.clamp_min(1e-12))).sum(-1).mean()
            z = F.normalize(s_out.slide_embedding.float(), dim=-1)
            logs = {  # tensors: the trainer reads them (a host sync) only on the steps it logs
                "loss": loss.detach(),
                "loss_cls": loss_cls.detach(),
                "loss_mim": loss_mim.detach(),
                "loss_rsl": loss_rsl.detach(),
                "rsl_E": torch.nanmean(s_out.rsl.detach()),
                "teacher_entropy": entropy,  # collapse to one prototype -> 0
                "teacher_entropy_max": math.log(t_probs.shape[-1]),  # uniform (all-centre collapse) -> this
                "embedding_std": z.std(0).mean() if len(z) > 1 else 0.0,  # collapse -> 0
                "regions_per_view": float(len(s_out.region_size)) / (len(batch) * n_v),
            }
        return loss, logs

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """teacher <- momentum * teacher + (1 - momentum) * student (parameters; buffers copied)."""
        teacher, student = list(self.teacher.parameters()), [s.detach() for s in self.student.parameters()]
        torch._foreach_mul_(teacher, momentum)  # the same arithmetic as a loop of mul_ / add_, in a few kernels
        torch._foreach_add_(teacher, student, alpha=1 - momentum)
        buffers = list(self.teacher.buffers())
        if buffers:
            torch._foreach_copy_(buffers, list(self.student.buffers()))
