"""What each stage gives the trainer: its samples, its objective (with the CARE inside) and its schedules.

Stage I (iBOT): samples are the views of one sub-WSI. Stage II (alignment): samples are one slide's
features (a compact crop of at most ``max_patches``) with its RNA or protein vector.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from care_core.errors import TrainingConfigError
from care_core.train.finetune import build_finetune
from care_core.train.stage_base import StageSetup, compact_crop, feature_files, feature_meta, geometry_args, initial_care

__all__ = ["build_stage"]


# ------------------------------------------------------------------------------------------- Stage I
class _SubWSIViews:
    """Views of sub-WSI i in an epoch, with each view's CARE geometry computed here, in the data workers,
    rather than on the training process (picklable for DataLoader workers)."""

    def __init__(self, dataset, views, geometry_args: dict) -> None:
        self.dataset, self.views, self.geometry_args = dataset, views, geometry_args

    def __call__(self, i: int, epoch: int):
        from care_core.model.subregions import subregion_geometry
        from care_core.train.data import make_views

        features, grid = self.dataset[i]
        views = make_views(features, grid, self.views, self.dataset.rng(i, epoch))
        views.geometries = [subregion_geometry(g, **self.geometry_args) for g in views.grids]
        return views


def _stage1(cfg, run_dir: Path) -> StageSetup:
    from care_core.train.data import SubWSIDataset, ViewConfig, check_view_config
    from care_core.train.ibot import IBOTObjective
    from care_core.train.subwsi import SubWSIIndex, build_subwsi_index

    index_path = Path(cfg.index) if cfg.index else run_dir / "subwsi_index.h5"
    try:
        views = ViewConfig(**cfg.views)
    except TypeError as exc:
        raise TrainingConfigError(f"views: {exc}") from exc
    if cfg.features:
        try:
            index = build_subwsi_index(feature_files(cfg.features), index_path, **cfg.subwsi)
        except TypeError as exc:
            raise TrainingConfigError(f"subwsi: {exc}") from exc
    elif index_path.is_file():
        index = SubWSIIndex.load(index_path)
    else:
        raise TrainingConfigError(f"index {index_path} does not exist and no `features` folder is given to build it")
    check_view_config(views, index)
    objective = IBOTObjective(initial_care(cfg, index.dim, str(index_path), index.slide_paths), cfg)

    def schedule(step: int, total: int, per_epoch: int) -> dict:
        warm = cfg.warmup_teacher_temp_epochs * per_epoch
        temp = cfg.teacher_temp if step >= warm else cfg.warmup_teacher_temp + (cfg.teacher_temp - cfg.warmup_teacher_temp) * step / warm
        momentum = 1 - (1 - cfg.momentum_teacher) * (math.cos(math.pi * step / total) + 1) / 2
        return {"teacher_temp": float(temp), "momentum": float(momentum)}

    return StageSetup(
        n_samples=len(index),
        make_sample=_SubWSIViews(SubWSIDataset(index, seed=cfg.seed), views, geometry_args(objective.export_model())),
        objective=objective,
        schedule=schedule,
        export_meta=feature_meta(index.slide_paths[0]),
        source=str(index_path),
    )


# ------------------------------------------------------------------------------------------- Stage II
class _SlideWithProfile:
    """(features, grid, molecular vector) of pair i; a slide larger than ``max_patches`` is cropped per epoch."""

    def __init__(self, files: list[Path], vectors: list[np.ndarray], max_patches: int, seed: int) -> None:
        self.files, self.vectors, self.max_patches, self.seed = files, vectors, max_patches, seed

    def __call__(self, i: int, epoch: int):
        from care_core.features import load_features

        pf = load_features(self.files[i])
        grid = pf.grid_indices()
        rows = compact_crop(grid, self.max_patches, np.random.default_rng([self.seed, epoch, i]))
        return np.ascontiguousarray(pf.features[rows], dtype=np.float32), grid[rows], self.vectors[i]


class AlignObjective(nn.Module):
    """Stage II: symmetric InfoNCE between projected slide and molecular embeddings, + lambda_RSL L_RSL.

    batch: list of (features [n, D], grid [n, 2], profile [G]). Under torchrun the negatives come from the
    global batch (``clip_loss(gather=True)``).
    """

    def __init__(self, care: nn.Module, mol_encoder: nn.Module, cfg) -> None:
        from care_core.train.clip import ClipHead, LogitScale

        super().__init__()
        self.student = nn.ModuleDict({
            "care": care,
            "slide_proj": ClipHead(care.config.embed_dim, cfg.proj_dim),
            "mol": mol_encoder,
            "mol_proj": ClipHead(cfg.mol_dim, cfg.proj_dim),
            "logit_scale": LogitScale(cfg.init_temperature),
        })

    def trainable(self) -> nn.Module:
        return self.student

    def export_model(self) -> nn.Module:
        return self.student["care"]

    def forward(self, batch: list, sched: dict) -> tuple[torch.Tensor, dict]:
        import torch.distributed as dist

        from care_core.train.clip import clip_loss

        s = self.student
        out = s["care"]([torch.from_numpy(f) for f, _, _ in batch], [g for _, g, _ in batch], return_patch_tokens=False)
        dev = out.slide_embedding.device
        a = s["slide_proj"](out.slide_embedding.float())
        b = s["mol_proj"](s["mol"](torch.from_numpy(np.stack([v for _, _, v in batch])).to(dev)).float())
        scale = s["logit_scale"]()
        gather = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        loss_clip = clip_loss(a, b, scale, gather=gather)
        loss_rsl = out.rsl_loss.mean()
        loss = loss_clip + s["care"].config.lambda_rsl * loss_rsl
        with torch.no_grad():
            top1 = (a @ b.T).argmax(1).eq(torch.arange(len(a), device=dev)).float().mean()
        return loss, {
            "loss": float(loss.detach()), "loss_clip": float(loss_clip.detach()), "loss_rsl": float(loss_rsl.detach()),
            "rsl_E": float(out.rsl.detach().mean()), "temperature": float(1 / scale.detach()), "batch_top1": float(top1),
        }


def _stage2(cfg, run_dir: Path) -> StageSetup:
    from care_core.train.expression import load_molecular
    from care_core.train.molecular import ProteinEncoder, RNAEncoder

    table = Path(cfg.table)
    if cfg.modality == "rna":
        data = load_molecular(table, rna=cfg.rna, genes=cfg.genes or None, rna_log1p=cfg.rna_log1p)
        pairs, skipped = data.rna, data.skipped_rna
    else:
        data = load_molecular(table, protein=cfg.protein)
        pairs, skipped = data.protein, data.skipped_protein
    files = sorted(pairs)
    first = feature_meta(files[0])
    from care_core.features import load_features

    dim = load_features(files[0]).dim
    care = initial_care(cfg, dim, str(table), files)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 1)
        if cfg.modality == "rna":
            mol = RNAEncoder(data.genes, dim=cfg.mol_dim, depth=cfg.mol_depth, heads=cfg.mol_heads,
                             sample_genes=cfg.sample_genes or None, init_vectors=cfg.gene_vectors or None)
        else:
            mol = ProteinEncoder(data.proteins, dim=cfg.mol_dim, depth=cfg.mol_depth, heads=cfg.mol_heads, top_k=cfg.top_proteins,
                                 init_vectors=cfg.protein_vectors or None)
        mol.standardise_from(np.stack([pairs[f] for f in files]))  # per-gene / per-protein scale, kept in checkpoints
        objective = AlignObjective(care, mol, cfg)
    return StageSetup(
        n_samples=len(files),
        make_sample=_SlideWithProfile(files, [pairs[f] for f in files], cfg.max_patches, cfg.seed),
        objective=objective,
        schedule=lambda step, total, per_epoch: {},
        export_meta=first,
        source=str(table),
        counts={f"skipped_no_{cfg.modality}": skipped},
    )


def build_stage(stage: str, cfg, run_dir: Path) -> StageSetup:
    """The ``StageSetup`` of ``stage`` ('1' | '2' | 'finetune') for ``cfg``."""
    return {"1": _stage1, "2": _stage2, "finetune": build_finetune}[str(stage)](cfg, run_dir)
