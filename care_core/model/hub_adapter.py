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

class AuthorsModelAdapter:
    """Wraps the authors' hub model so ``encode(PatchFeatures)`` returns a ``SlideEncoding``.

    The released model is called as its authors' loading example and TRIDENT's CARE wrapper call it:
    ``model(features [B, N, D] float32, N_values [B] int64 (patches per slide), grid_indices [B, N, 2] int64)``
    with grid indices = level-0 coords // patch side in level-0 px, and the slide embedding is read from
    the output's ``wsi_embedding``. The fields it does not expose (regions, weights, ROI, RSL) are None.
    """

    def __init__(self, model, snapshot_dir: Path) -> None:
        self.model = model
        self.snapshot_dir = snapshot_dir

    def _slide_embedding(self, output):
        value = output.get("wsi_embedding") if isinstance(output, dict) else getattr(output, "wsi_embedding", None)
        if value is None:
            raise CheckpointError(
                f"the model in {self.snapshot_dir} returned {type(output).__name__} without `wsi_embedding`; it is not "
                "the authors' CARE (or a version this adapter does not know)"
            )
        return value

    def inputs(self, features):
        """The three tensors of the authors' call for one slide: features [1, N, D], N_values [1], grid [1, N, 2]."""
        import torch

        features.check_values()
        params = next(iter(self.model.parameters()), None)
        device = params.device if params is not None else torch.device("cpu")
        side = int(features.extra.get("patch_side_level0", features.patch_size_level0))  # TRIDENT divides by the side
        x = torch.as_tensor(np.asarray(features.features, dtype=np.float32), device=device)[None]
        n_values = torch.tensor([features.n_patches], dtype=torch.long, device=device)
        grid = torch.as_tensor(np.asarray(features.coords, dtype=np.int64) // side, device=device)[None]
        return x, n_values, grid

    def encode(self, features):
        import torch

        from care_core.model.encoding import SlideEncoding

        with torch.inference_mode():
            z = self._slide_embedding(self.model(*self.inputs(features)))
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
