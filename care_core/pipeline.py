"""One slide through the whole pipeline (tissue → patch grid → patch features → CARE → heads), as a generator
that yields progress and returns the result; results are cached on disk per slide file + settings, so a
second run on the same slide is a file read. The napari widget drives it from a worker thread."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["PipelineProgress", "SlideResult", "ResultCache", "care_cache_dir", "iter_slide_pipeline"]


@dataclass(frozen=True)
class PipelineProgress:
    """Where the pipeline is: `stage` ("tissue", "features", "care", "heads" or "cache"), `done` of `total`."""

    stage: str
    done: int
    total: int


@dataclass
class SlideResult:
    """What one run gives: the `SlideEncoding` (with head predictions), the tissue mask (bool raster,
    `tissue_downsample` level-0 px per mask px), seconds per stage, and whether it came from the cache."""

    encoding: object
    tissue_mask: np.ndarray
    tissue_downsample: float
    timings: dict = field(default_factory=dict)
    cached: bool = False
    cache_dir: Path | None = None


def care_cache_dir() -> Path:
    """napari-care's cache: $NAPARI_CARE_CACHE, else $XDG_CACHE_HOME/napari-care, else ~/.cache/napari-care."""
    if os.environ.get("NAPARI_CARE_CACHE"):
        return Path(os.environ["NAPARI_CARE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "napari-care"


_ENCODING_VERSION = 2  # 2: encodings keep their regions' mean tokens (region search); older cached ones are redone


def _file_id(path: str | os.PathLike | None) -> list | None:
    """What identifies a file's content cheaply: resolved path, size, modification time (ns)."""
    if path is None:
        return None
    p = Path(path).resolve()
    stat = p.stat()
    return [str(p), stat.st_size, stat.st_mtime_ns]


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ResultCache:
    """Per-slide cached results under `root` (``<root>/<slide stem>-<id>/``): tissue mask and patch features
    keyed by slide file + grid settings, encodings keyed by those + model + heads. Every file is written
    atomically, so a cancelled or crashed run leaves no entry."""

    root: Path

    @classmethod
    def default(cls) -> ResultCache:
        return cls(care_cache_dir() / "results")

    def slide_dir(self, slide_path: str | os.PathLike) -> Path:
        return self.root / f"{Path(slide_path).stem}-{_digest(_file_id(slide_path))}"

    def size_bytes(self) -> int:
        """Bytes the cache holds on disk."""
        if not self.root.is_dir():
            return 0
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())

    def clear(self) -> int:
        """Delete every cached result; returns the bytes freed."""
        freed = self.size_bytes()
        if self.root.is_dir():
            shutil.rmtree(self.root)
        return freed


def _load_tissue(path: Path) -> tuple[np.ndarray, float]:
    with np.load(path, allow_pickle=False) as z:
        return z["mask"].astype(bool), float(z["downsample"])


def _save_tissue(path: Path, mask: np.ndarray, downsample: float) -> None:
    from care_core._atomic import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, mask=mask, downsample=np.float64(downsample))


def iter_slide_pipeline(
    slide_path: str | os.PathLike,
    *,
    encoder: str = "stain-texture",
    weights: str | os.PathLike | None = None,
    model: str | os.PathLike | None = None,
    untrained_seed: int = 0,
    heads: Sequence[str | os.PathLike] = (),
    mpp: float | None = None,
    target_mpp: float | None = None,
    patch_px: int | None = None,
    min_tissue: float = 0.25,
    device: str = "auto",
    cache: ResultCache | None = None,
    stop: threading.Event | None = None,
):
    """Encode one slide with CARE; yields `PipelineProgress`, returns a `SlideResult` (None when stopped).

    model: a CARE checkpoint, or None for an untrained CARE of the demo checkpoint's architecture (random weights,
    `untrained_seed`; ``care_core.model.untrained_care``) sized to the features. heads: saved heads (``care_core.evaluate.load_head``) whose
    predictions go into ``encoding.predictions``. target_mpp / patch_px: the patch grid, by default what the
    checkpoint was trained on, else what the encoder expects. device: "auto", "cpu" or "cuda[:N]" for the
    patch encoder and CARE. cache: where results are kept (None: no cache). A checkpoint that cannot take
    this encoder's features fails before any slide work. stop: when set, the run ends at the next batch
    (cleanly, in the calling thread, nothing written) and returns None.
    """
    from care_core.errors import InvalidInputError
    from care_core.features import PatchFeatures, get_encoder, get_encoder_spec, iter_extract, load_features
    from care_core.features.registry import resolve_device
    from care_core.model import untrained_care
    from care_core.model.checkpoint import check_features, load_checkpoint, model_sha256
    from care_core.model.encoding import SlideEncoding
    from care_core.wsi import detect_tissue, open_slide, patch_grid

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    spec = get_encoder_spec(encoder)
    care = None if model is None else load_checkpoint(model)
    meta = None if care is None else care.checkpoint_meta
    target_mpp = target_mpp or (meta and meta.feature_mpp) or spec.mpp
    patch_px = patch_px or (meta and meta.patch_px) or spec.patch_px
    if meta is not None:  # what extraction will produce, checked against the checkpoint before it runs
        planned = PatchFeatures(np.zeros((0, spec.dim), np.float32), np.zeros((0, 2)), 1, mpp=target_mpp,
                                patch_px=patch_px, encoder=spec.name, slide_path=str(slide_path))
        check_features(meta, planned)
    head_models = []
    if heads:
        from care_core.evaluate import load_head

        head_models = [load_head(h) for h in heads]  # a bad or mismatched head fails before any slide work
        for head in head_models:
            head.check_compatible(meta, spec.name, model_sha256="")
    feature_key = _digest([_file_id(slide_path), spec.name, _file_id(weights), target_mpp, patch_px, min_tissue, mpp])
    model_id = ["untrained", untrained_seed] if care is None else [meta.tensors_sha256 or _file_id(model), meta.config]
    encoding_key = _digest([feature_key, model_id, [_file_id(h) for h in heads], _ENCODING_VERSION])
    folder = None if cache is None else cache.slide_dir(slide_path)
    tissue_file = None if folder is None else folder / f"tissue-{feature_key}.npz"
    features_file = None if folder is None else folder / f"features-{feature_key}.h5"
    encoding_file = None if folder is None else folder / f"encoding-{encoding_key}.npz"
    timings["setup"] = time.perf_counter() - t0

    if encoding_file is not None and encoding_file.is_file() and tissue_file.is_file():
        t = time.perf_counter()
        yield PipelineProgress("cache", 0, 1)
        encoding = SlideEncoding.load_npz(encoding_file)
        tissue_mask, tissue_ds = _load_tissue(tissue_file)
        yield PipelineProgress("cache", 1, 1)
        timings["cache"] = time.perf_counter() - t
        return SlideResult(encoding, tissue_mask, tissue_ds, timings, cached=True, cache_dir=folder)

    device = resolve_device(device)
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise InvalidInputError(f"device={device!r} but this machine has no CUDA GPU; choose device 'auto' or 'cpu'")
    with open_slide(slide_path, mpp=mpp) as slide:
        slide_size, slide_mpp = tuple(int(v) for v in slide.dimensions), slide.mpp
        if features_file is not None and features_file.is_file() and tissue_file.is_file():
            t = time.perf_counter()
            yield PipelineProgress("cache", 0, 1)
            features = load_features(features_file)
            tissue_mask, tissue_ds = _load_tissue(tissue_file)
            yield PipelineProgress("cache", 1, 1)
            timings["cache"] = time.perf_counter() - t
        else:
            t = time.perf_counter()
            yield PipelineProgress("tissue", 0, 1)
            tissue = detect_tissue(slide)
            grid = patch_grid(slide, tissue, target_mpp=target_mpp, patch_px=patch_px, min_tissue=min_tissue)
            tissue_mask, tissue_ds = tissue.mask, float(tissue.downsample)
            yield PipelineProgress("tissue", 1, 1)
            timings["tissue"] = time.perf_counter() - t
            t = time.perf_counter()
            patch_encoder = get_encoder(encoder, weights, device)  # missing weights fail here, before any read
            extract = iter_extract(slide, grid, patch_encoder)
            try:
                while True:
                    if stop is not None and stop.is_set():
                        return None
                    try:
                        step = next(extract)
                    except StopIteration as done:
                        features = done.value
                        break
                    yield PipelineProgress("features", step.done, step.total)
            finally:
                extract.close()  # stops the readers and encoders in this thread
            timings["features"] = time.perf_counter() - t
            if features_file is not None:
                features.save(features_file)
                _save_tissue(tissue_file, tissue_mask, tissue_ds)
    if stop is not None and stop.is_set():
        return None
    t = time.perf_counter()
    yield PipelineProgress("care", 0, 1)
    if care is None:
        care, _ = untrained_care(untrained_seed, features.dim, encoder=features.encoder or "")
    care.to(device)
    encoding = care.encode(features)
    encoding.meta.update(slide_size_level0=list(slide_size), slide_mpp=slide_mpp, model_sha256=model_sha256(care),
                         model=str(model) if model is not None else f"untrained (seed {untrained_seed})")
    yield PipelineProgress("care", 1, 1)
    timings["care"] = time.perf_counter() - t
    if head_models:
        t = time.perf_counter()
        for i, head in enumerate(head_models):
            yield PipelineProgress("heads", i, len(head_models))
            encoding.predictions.append(head.predict(encoding, features))
        yield PipelineProgress("heads", len(head_models), len(head_models))
        timings["heads"] = time.perf_counter() - t
    if encoding_file is not None:
        encoding.save_npz(encoding_file)
    return SlideResult(encoding, tissue_mask, tissue_ds, timings, cached=False, cache_dir=folder)
