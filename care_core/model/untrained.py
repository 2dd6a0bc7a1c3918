"""An untrained CARE that stands in for a checkpoint: the same architecture, random weights.

"Untrained versus trained" compares training only when everything else is equal, so `--untrained` (CLI and
window) builds the architecture of the checkpoint it replaces (the shipped demo by default) and, for features of
the same encoder and width, takes its input standardisation too; without that checkpoint it is the released
configuration (CARE_METHOD.md §2).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["untrained_care"]


def untrained_care(seed: int, input_dim: int, *, encoder: str = "", like: str | Path | None = None):
    """A CARE with random weights (fixed by `seed`) taking `input_dim`-d features; returns (model, description).

    like: the checkpoint whose architecture it copies (default: the shipped demo). Its feature statistics
    (input_norm) are copied when the checkpoint expects `encoder` at `input_dim`; another width or encoder
    keeps the architecture at `input_dim` with unit statistics. No checkpoint there: the released config.
    """
    from care_core.errors import CareError
    from care_core.model.care import CARE
    from care_core.model.checkpoint import DEMO_CHECKPOINT, load_checkpoint

    ref_path = Path(like) if like is not None else DEMO_CHECKPOINT
    try:
        ref = load_checkpoint(ref_path)
    except (CareError, OSError):
        return CARE.from_seed(seed, input_dim=input_dim), "the released config"
    config = {**ref.config.to_dict(), "input_dim": int(input_dim)}
    model = CARE.from_seed(seed, config)
    meta = ref.checkpoint_meta
    same_input = int(input_dim) == meta.input_dim and (not encoder or not meta.encoder or encoder == meta.encoder)
    if model.config.input_norm and same_input:
        model.set_feature_statistics(ref.feature_mean, ref.feature_std)
    name = "the demo checkpoint" if ref_path == DEMO_CHECKPOINT else ref_path.name
    return model, f"the architecture of {name}" + ("" if same_input else f" at input_dim={input_dim}")
