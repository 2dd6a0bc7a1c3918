"""`SlideEncoding`: what CARE says about one slide, as plain numpy arrays (no torch needed to read it)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from care_core._atomic import atomic_path

__all__ = ["SlideEncoding", "HeadPrediction"]

_ARRAYS = (
    "slide_embedding", "region_embeddings", "patch_region", "region_subregion", "pi", "alpha", "beta",
    "candidates", "candidate_scores", "coords", "grid", "region_token_means",
)


@dataclass(frozen=True)
class HeadPrediction:
    """What one trained head says about one slide.

    head: the head's name (its file stem).  classes: class names, in column order; ("risk",) for a Cox head.
    slide_proba: [C] float32 class probabilities of the slide (a Cox head: the risk score, higher = worse).
    region_proba: [R, C] float32 the same head applied to each region embedding (None when the encoding
    has no regions or the head's input is not in the region-embedding space).
    """

    head: str
    classes: tuple[str, ...]
    slide_proba: np.ndarray
    region_proba: np.ndarray | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        slide = np.asarray(self.slide_proba, dtype=np.float32).reshape(-1)
        if slide.shape != (len(self.classes),):
            raise ValueError(f"head {self.head!r}: slide_proba has shape {slide.shape}, expected ({len(self.classes)},)")
        object.__setattr__(self, "slide_proba", slide)
        if self.region_proba is not None:
            region = np.asarray(self.region_proba, dtype=np.float32)
            if region.ndim != 2 or region.shape[1] != len(self.classes):
                raise ValueError(f"head {self.head!r}: region_proba has shape {region.shape}, "
                                 f"expected (R, {len(self.classes)})")
            object.__setattr__(self, "region_proba", region)

    @property
    def slide_class(self) -> str:
        """The most probable class of the slide (for a Cox head: "risk")."""
        return self.classes[int(np.argmax(self.slide_proba))]

    @property
    def region_class(self) -> np.ndarray | None:
        """[R] int64 index into ``classes`` of each region's most probable class (None without regions)."""
        return None if self.region_proba is None else np.argmax(self.region_proba, axis=1).astype(np.int64)


@dataclass
class SlideEncoding:
    """CARE output for one slide. All arrays are numpy; a field an encoder cannot provide is None.

    slide_embedding: [E] float32 z.  region_embeddings: [R, E] float32 g^AR.
    patch_region: [N] int64 region id per patch (0..R-1, regions numbered in raster order of the square
    they came from).  region_subregion: [R] int64 that square (sub-region id, raster order).
    pi, alpha, beta: [R] float32 fused / coverage / attention weights (pi sums to 1).
    roi: index of the ROI region (argmax pi).  rsl: E, the mean expected candidate rank (NaN with fixed
    regions); rsl_loss: (E - E*)^2.  candidates: [N, c] candidate squares (-1 = none);
    candidate_scores: [N, c] w = rho * mu.  coords: [N, 2] level-0 (x, y) top-left of each patch;
    grid: [N, 2] (col, row) grid index; patch_size_level0: patch side in level-0 px.
    mpp, patch_px: µm/px and patch side (px) at which the features were made (None when unknown).
    region_token_means: [R, E] float32 each region's mean ARSA patch output (what region search compares:
    it groups regions by tissue better than g^AR; None in encodings made before it existed).
    meta: provenance (encoder, slide path, model config / checkpoint hash).
    predictions: one HeadPrediction per head applied to this slide (``care predict``), empty by default.
    """

    slide_embedding: np.ndarray
    region_embeddings: np.ndarray | None = None
    patch_region: np.ndarray | None = None
    region_subregion: np.ndarray | None = None
    pi: np.ndarray | None = None
    alpha: np.ndarray | None = None
    beta: np.ndarray | None = None
    roi: int | None = None
    rsl: float | None = None
    rsl_loss: float | None = None
    candidates: np.ndarray | None = None
    candidate_scores: np.ndarray | None = None
    coords: np.ndarray | None = None
    grid: np.ndarray | None = None
    patch_size_level0: int | None = None
    mpp: float | None = None
    patch_px: int | None = None
    region_token_means: np.ndarray | None = None
    meta: dict = field(default_factory=dict)
    predictions: list[HeadPrediction] = field(default_factory=list)

    @property
    def n_regions(self) -> int | None:
        return None if self.pi is None else int(len(self.pi))

    @property
    def roi_embedding(self) -> np.ndarray | None:
        """g^AR of the ROI region [E], the paper's ROI feature."""
        if self.roi is None or self.region_embeddings is None:
            return None
        return self.region_embeddings[self.roi]

    @property
    def region_weights(self) -> np.ndarray | None:
        """[R, 3] columns (pi, alpha, beta)."""
        if self.pi is None:
            return None
        return np.stack([self.pi, self.alpha, self.beta], axis=1)

    @property
    def patch_side_um(self) -> float | None:
        """Side of one patch in µm (patch_px * mpp), None when either is unknown."""
        if self.mpp is None or self.patch_px is None:
            return None
        return float(self.patch_px) * float(self.mpp)

    @classmethod
    def from_output(cls, out, b: int, features, config) -> SlideEncoding:
        """Slide ``b`` of a batched ``CAREOutput`` (torch) as a SlideEncoding; ``features`` is its PatchFeatures."""
        p0, p1 = int(out.patch_offsets[b]), int(out.patch_offsets[b + 1])
        r0, r1 = int(out.region_offsets[b]), int(out.region_offsets[b + 1])
        f32 = lambda t: t.detach().float().cpu().numpy()  # noqa: E731
        i64 = lambda t: t.detach().cpu().numpy().astype(np.int64)  # noqa: E731
        return cls(
            slide_embedding=f32(out.slide_embedding[b]),
            region_embeddings=f32(out.region_embeddings[r0:r1]),
            patch_region=i64(out.patch_region[p0:p1]),
            region_subregion=i64(out.region_subregion[r0:r1]),
            pi=f32(out.pi[r0:r1]),
            alpha=f32(out.alpha[r0:r1]),
            beta=f32(out.beta[r0:r1]),
            roi=int(out.roi[b]),
            rsl=float(out.rsl[b]),
            rsl_loss=float(out.rsl_loss[b]),
            candidates=i64(out.candidates[p0:p1]),
            candidate_scores=None if out.candidate_scores is None else f32(out.candidate_scores[p0:p1]),
            coords=np.asarray(features.coords, dtype=np.int64),
            grid=np.asarray(features.grid_indices(), dtype=np.int64),
            patch_size_level0=int(features.patch_size_level0),
            mpp=features.mpp,
            patch_px=features.patch_px,
            region_token_means=None if out.region_token_means is None else f32(out.region_token_means[r0:r1]),
            meta={"encoder": features.encoder, "slide_path": features.slide_path, "care_config": config.to_dict()},
        )

    def save_npz(self, path: str | Path) -> Path:
        """Write every array and scalar to one ``.npz`` (atomically); ``load_npz`` reads it back."""
        path = Path(path)
        arrays = {k: getattr(self, k) for k in _ARRAYS if getattr(self, k) is not None}
        scalars = {k: getattr(self, k) for k in ("roi", "rsl", "rsl_loss", "patch_size_level0", "mpp", "patch_px")}
        arrays["scalars_json"] = np.array(json.dumps(scalars))
        arrays["meta_json"] = np.array(json.dumps(self.meta, default=str))
        heads = []
        for i, pred in enumerate(self.predictions):  # arrays as pred<i>_slide / pred<i>_region, names in JSON
            arrays[f"pred{i}_slide"] = pred.slide_proba
            if pred.region_proba is not None:
                arrays[f"pred{i}_region"] = pred.region_proba
            heads.append({"head": pred.head, "classes": list(pred.classes)})
        arrays["predictions_json"] = np.array(json.dumps(heads))
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        return path

    @classmethod
    def load_npz(cls, path: str | Path) -> SlideEncoding:
        """Read a ``save_npz`` file (files written before predictions existed load with none)."""
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in _ARRAYS if k in z.files}
            scalars = json.loads(str(z["scalars_json"]))
            meta = json.loads(str(z["meta_json"]))
            heads = json.loads(str(z["predictions_json"])) if "predictions_json" in z.files else []
            predictions = [
                HeadPrediction(h["head"], tuple(h["classes"]), z[f"pred{i}_slide"],
                               z[f"pred{i}_region"] if f"pred{i}_region" in z.files else None)
                for i, h in enumerate(heads)
            ]
        return cls(**arrays, **scalars, meta=meta, predictions=predictions)
