"""Fine-tuning CARE + a head on slide labels (CARE_METHOD.md §5), as a trainer stage.

    classification   L = CE(head(x), y) + lambda_RSL L_RSL        x = slide embedding or ROI feature
    survival         L = -(1/#events) sum_{i: event} [r_i - log sum_{j: t_j >= t_i} exp(r_j)] + lambda_RSL L_RSL

Samples of the training split are drawn with replacement, each with probability proportional to
1 / (its class's count) (class-weighted sampling; survival: uniform). After each epoch the validation
split is scored; the best-on-validation weights are kept and exported with the head (a ``Head`` that
``care predict`` and the napari inspector load).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from care_core.errors import InvalidInputError, TrainingConfigError
from care_core.train.stage_base import StageSetup, compact_crop, feature_files, feature_meta, initial_care

__all__ = ["FinetuneObjective", "cox_partial_likelihood", "build_finetune"]


def cox_partial_likelihood(risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
    """Negative Cox partial log-likelihood (Breslow ties) of ``risk`` [n], mean over events (0 without events)."""
    order = torch.argsort(time, descending=True, stable=True)
    r, e = risk[order].float(), event[order].float()
    log_risk_set = torch.logcumsumexp(r, dim=0)  # log sum over j with t_j >= t_i (sorted by decreasing time)
    n_events = e.sum()
    if n_events == 0:
        return risk.sum() * 0.0
    return -((r - log_risk_set) * e).sum() / n_events


class FinetuneObjective(nn.Module):
    """CARE + a linear head; ``forward(batch, sched)`` -> (loss, logs). batch: list of (features, grid, target)."""

    def __init__(self, care: nn.Module, n_outputs: int, survival: bool, use_roi: bool) -> None:
        super().__init__()
        self.student = nn.ModuleDict({"care": care, "head": nn.Linear(care.config.embed_dim, n_outputs)})
        self.survival, self.use_roi = survival, use_roi

    def trainable(self) -> nn.Module:
        return self.student

    def export_model(self) -> nn.Module:
        return self.student["care"]

    def embed(self, batch: list) -> tuple[torch.Tensor, torch.Tensor]:
        """(head inputs [B, E] float32, RSL loss per slide [B])."""
        out = self.student["care"]([torch.from_numpy(f) for f, _, _ in batch], [g for _, g, _ in batch], return_patch_tokens=False)
        if self.use_roi:
            x = out.region_embeddings[out.region_offsets[:-1] + out.roi]
        else:
            x = out.slide_embedding
        return x.float(), out.rsl_loss

    def outputs_loss(self, batch: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, rsl = self.embed(batch)
        logits = self.student["head"](x)
        dev = logits.device
        if self.survival:
            t = torch.tensor([tg[0] for _, _, tg in batch], device=dev)
            e = torch.tensor([tg[1] for _, _, tg in batch], device=dev)
            task = cox_partial_likelihood(logits[:, 0], t, e)
        else:
            task = F.cross_entropy(logits, torch.tensor([int(tg) for _, _, tg in batch], device=dev))
        return logits, task, rsl.mean()

    def forward(self, batch: list, sched: dict) -> tuple[torch.Tensor, dict]:
        _, task, rsl = self.outputs_loss(batch)
        loss = task + self.student["care"].config.lambda_rsl * rsl
        return loss, {"loss": float(loss.detach()), "loss_task": float(task.detach()), "loss_rsl": float(rsl.detach())}


class _LabelledSlide:
    """(features, grid, target) of training slide i (a compact crop of ``max_patches`` when set)."""

    def __init__(self, files: list[Path], targets: list, max_patches: int, seed: int) -> None:
        self.files, self.targets, self.max_patches, self.seed = files, targets, max_patches, seed

    def __call__(self, i: int, epoch: int):
        from care_core.features import load_features

        pf = load_features(self.files[i])
        grid = pf.grid_indices()
        rows = (compact_crop(grid, self.max_patches, np.random.default_rng([self.seed, epoch, i]))
                if self.max_patches else np.arange(len(grid)))
        return np.ascontiguousarray(pf.features[rows], dtype=np.float32), grid[rows], self.targets[i]


def build_finetune(cfg, run_dir: Path):
    """The fine-tuning ``StageSetup``: one fold's training samples, validation scoring, the head export."""
    from care_core.evaluate.cohort import match_features
    from care_core.evaluate.inputs import check_feature_files
    from care_core.evaluate.labels import read_labels
    from care_core.evaluate.splits import load_splits, make_splits, save_splits

    table = read_labels(cfg.labels)
    survival = table.kind == "survival"
    if survival and cfg.batch_size < 2:  # one slide has no pair to rank: the loss would be 0 at every step
        raise TrainingConfigError(f"labels {cfg.labels!r} are survival times: the Cox loss ranks the slides of a batch, "
                                  f"so batch_size={cfg.batch_size} learns nothing; set batch_size >= 2 (16 is a good start)")
    try:  # the pre-flight care evaluate runs: every file's header, one encoder, one width, fit to the init
        files = match_features(table, [str(p) for p in feature_files(cfg.features)])
        check_feature_files(files, cfg.init or None)
    except InvalidInputError as exc:
        raise TrainingConfigError(str(exc)) from exc
    if cfg.splits:
        folds = load_splits(cfg.splits, table)
    else:
        folds = make_splits(table, seed=cfg.seed)
        save_splits(folds, run_dir / "splits")
    if cfg.fold >= len(folds):
        raise TrainingConfigError(f"fold={cfg.fold} but the splits have {len(folds)} folds (0..{len(folds) - 1})")
    fold = folds[cfg.fold]
    if not fold.val:
        raise TrainingConfigError(f"fold {cfg.fold} has no validation slides; early stopping needs a split with val")
    row = {s: i for i, s in enumerate(table.slides)}
    if survival:
        classes = ("risk",)
        target = lambda s: (float(table.time[row[s]]), int(table.event[row[s]]))  # noqa: E731
    else:
        classes = tuple(sorted(set(table.label.tolist())))
        target = lambda s: classes.index(table.label[row[s]])  # noqa: E731
    train_ids, val_ids = list(fold.train), list(fold.val)
    train_files = [files[s] for s in train_ids]
    first = feature_meta(train_files[0])
    from care_core.features import load_features

    care = initial_care(cfg, load_features(train_files[0]).dim, cfg.labels, train_files)
    objective = FinetuneObjective(care, len(classes) if not survival else 1, survival, cfg.input == "roi")
    train_targets = [target(s) for s in train_ids]
    val_data = _LabelledSlide([files[s] for s in val_ids], [target(s) for s in val_ids], cfg.max_patches, cfg.seed)
    if survival:
        weights = np.ones(len(train_ids))
    else:
        counts = np.bincount(train_targets, minlength=len(classes)).astype(float)
        weights = 1.0 / counts[train_targets]
    weights = weights / weights.sum()

    def epoch_order(epoch: int, n: int) -> np.ndarray:  # class-weighted sampling with replacement
        return np.random.default_rng([cfg.seed, epoch, 0xC1A55]).choice(n, size=n, replace=True, p=weights)

    def validate(obj) -> dict:
        from care_core.evaluate.metrics import classification_metrics, concordance_index

        obj.eval()
        with torch.no_grad():
            batch = [val_data(i, 0) for i in range(len(val_ids))]
            outs = [obj.outputs_loss([b]) for b in batch] if not survival else [obj.outputs_loss(batch)]
        obj.train()
        logits = torch.cat([o[0] for o in outs]).float()
        if survival:
            loss = float(outs[0][1])
            t = np.array([b[2][0] for b in batch])
            e = np.array([b[2][1] for b in batch])
            return {"val_loss": loss, "val_c_index": concordance_index(t, e, logits[:, 0].numpy())}
        loss = float(np.mean([float(o[1]) for o in outs]))
        y = np.array([b[2] for b in batch])
        metrics = classification_metrics(y, torch.softmax(logits, 1).numpy())
        return {"val_loss": loss, **{f"val_{k}": v for k, v in metrics.items()}}

    def export(obj, path: Path, care_sha256: str, val: dict) -> Path:
        from care_core.evaluate.heads import Head

        lin = obj.student["head"]
        w, b = lin.weight.detach().double().numpy(), lin.bias.detach().double().numpy()
        if survival:
            arrays = {"coef": w[0], "mean": np.zeros(w.shape[1])}
        elif len(classes) == 2:  # scikit-learn's binary layout: one row scoring class 1
            arrays = {"coef": (w[1] - w[0])[None], "intercept": np.array([b[1] - b[0]])}
        else:
            arrays = {"coef": w, "intercept": b}
        head = Head(name=f"finetune_{Path(cfg.labels).stem}_fold{cfg.fold}", kind="cox" if survival else "linear",
                    input=cfg.input, classes=classes, arrays=arrays, protocol="finetune", metrics=val,
                    model_sha256=care_sha256, encoder=first["encoder"], extra={"fold": cfg.fold, "run": path.parent.name})
        return head.save(path)

    return StageSetup(
        n_samples=len(train_ids),
        make_sample=_LabelledSlide(train_files, train_targets, cfg.max_patches, cfg.seed),
        objective=objective,
        schedule=lambda step, total, per_epoch: {},
        export_meta=first,
        source=cfg.labels,
        counts={"train_slides": len(train_ids), "val_slides": len(val_ids), "classes": len(classes)},
        epoch_order=epoch_order,
        validate=validate,
        export_head=export,
    )
