"""Opt-in adapter for the authors' released CARE (a model-hub repository with remote code).

The authors' model code ships inside their hub repository, so loading it executes that code. We only
ever load a *local snapshot* (nothing is downloaded here) and only when the caller passes
``trust_remote_code=True``. ``transformers`` is not a dependency of this package; it is imported
lazily with a clear message when missing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from care_core.errors import CheckpointError

__all__ = ["AuthorsModelAdapter", "load_authors_model"]

_EMBEDDING_KEYS = ("slide_embedding", "slide_embeds", "wsi_embedding", "pooler_output", "embedding")


class AuthorsModelAdapter:
    """Wraps the authors' hub model so ``encode(PatchFeatures)`` returns a ``SlideEncoding``.

    The released model is called as ``model(features [1, N, D], coords [1, N, 2])`` (level-0 px).
    Only the slide embedding is read from its output (a tensor, or a mapping / attribute named one of
    ``slide_embedding``, ``slide_embeds``, ``wsi_embedding``, ``pooler_output``, ``embedding``); the
    fields it does not expose (regions, weights, ROI, RSL) are None.
    """

    def __init__(self, model, snapshot_dir: Path) -> None:
        self.model = model
        self.snapshot_dir = snapshot_dir

    def _slide_embedding(self, output):
        if hasattr(output, "detach"):
            return output
        for key in _EMBEDDING_KEYS:
            value = output.get(key) if isinstance(output, dict) else getattr(output, key, None)
            if value is not None:
                return value
        raise CheckpointError(
            f"the model in {self.snapshot_dir} returned {type(output).__name__} without any of {_EMBEDDING_KEYS}; "
            "this adapter does not know how to read its slide embedding"
        )

    def encode(self, features):
        import torch

        from care_core.model.encoding import SlideEncoding

        device = next(self.model.parameters()).device
        x = torch.as_tensor(np.asarray(features.features, dtype=np.float32), device=device)[None]
        coords = torch.as_tensor(features.coords, device=device)[None]
        with torch.inference_mode():
            z = self._slide_embedding(self.model(x, coords))
        return SlideEncoding(
            slide_embedding=z.detach().float().cpu().numpy().reshape(-1),
            coords=np.asarray(features.coords, dtype=np.int64),
            grid=features.grid_indices(),
            patch_size_level0=features.patch_size_level0,
            mpp=features.mpp,
            patch_px=features.patch_px,
            meta={"encoder": features.encoder, "slide_path": features.slide_path, "model": str(self.snapshot_dir)},
        )


def load_authors_model(snapshot_dir: str | Path, *, trust_remote_code: bool = False) -> AuthorsModelAdapter:
    """Load a local snapshot of the authors' hub repository (runs its code: needs ``trust_remote_code=True``)."""
    snapshot = Path(snapshot_dir)
    if not (snapshot / "config.json").is_file():
        raise CheckpointError(
            f"snapshot_dir={str(snapshot)!r} is not a model-hub snapshot (no config.json there); download the "
            "authors' repository first (e.g. `huggingface-cli download <repo> --local-dir DIR`) and pass DIR"
        )
    if not trust_remote_code:
        raise CheckpointError(
            f"loading {snapshot} runs the Python code shipped in that repository; read it, then pass "
            "trust_remote_code=True to allow it"
        )
    try:
        from transformers import AutoModel
    except ImportError as exc:
        raise CheckpointError("the authors' model needs the `transformers` package: pip install transformers") from exc
    model = AutoModel.from_pretrained(str(snapshot), trust_remote_code=True, local_files_only=True)
    return AuthorsModelAdapter(model.eval(), snapshot)
