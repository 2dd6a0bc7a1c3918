"""CARE's transformers at a few static shapes, optionally compiled: the `bucket_shapes` and `compile` config fields.

CARE runs its two [CLS] transformers (sub-regions, ARSA) and the query pool over padded chunks whose shape
[groups, width] changes with every batch. ``bucket_shapes`` pads each chunk up to the next size of a small
geometric set (8, 12, 16, 24, 32, 48, ...: from 8 on, under 1/3 of the slots are padding) in both dimensions, so
``torch.compile`` and CUDA graphs see few shapes; the padded groups and slots are masked out and cut off the
output, so the real rows get the same values up to float rounding (matrix products of another size sum in
another order). ``compile`` wraps the same calls in ``torch.compile``.

Both act on the modules' ``forward`` only (an attribute of the instance): parameter names, checkpoints and
the eager path are unchanged, and `restore` puts the class's forward back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["COMPILE_MODES", "bucket", "speed_up", "restore"]

# '' = eager; torch.compile modes (inductor); 'aot_eager' traces forward and backward without generating code
COMPILE_MODES = ("", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs", "aot_eager")


def bucket(n: int) -> int:
    """The smallest size of {8, 12, 16, 24, 32, 48, ...} (2^i and 3 * 2^(i-1)) that holds ``n`` (>= 1)."""
    size = 8
    while size < n:
        size = size * 3 // 2 if size & (size - 1) == 0 else size * 4 // 3
    return size


class _StaticForward:
    """A module's forward(tokens [G, L, E], mask [G, L]) run at bucketed [G, L] (padding masked out and cut off)."""

    def __init__(self, forward, pad: bool, compile_mode: str) -> None:
        self.eager, self.pad = forward, pad
        if not compile_mode:
            self.run = forward
        elif compile_mode == "aot_eager":
            self.run = torch.compile(forward, backend="aot_eager", dynamic=False if pad else None)
        else:
            self.run = torch.compile(forward, mode=compile_mode, dynamic=False if pad else None)

    def __call__(self, tokens: torch.Tensor, mask: torch.Tensor):
        if not self.pad:
            return self.run(tokens, mask)
        g, n = mask.shape
        rows, width = bucket(g), bucket(n)
        tokens = F.pad(tokens, (0, 0, 0, width - n, 0, rows - g))
        mask = F.pad(mask, (0, width - n, 0, rows - g))
        mask[g:, 0] = True  # a padded group holds one (zero) token: no attention row is all masked (NaN)
        out = self.run(tokens, mask)
        if isinstance(out, tuple):  # ClsEncoder: ([CLS] outputs, token outputs)
            return out[0][:g], out[1][:g, :n]
        return out[:g]  # QueryPool


def speed_up(model: nn.Module, *, bucket_shapes: bool, compile_mode: str) -> int:
    """Give every ClsEncoder and QueryPool inside ``model`` a bucketed and/or compiled forward; the number changed."""
    from care_core.model.layers import ClsEncoder, QueryPool

    if compile_mode not in COMPILE_MODES:
        raise ValueError(f"compile={compile_mode!r} is not one of {COMPILE_MODES}")
    if not (bucket_shapes or compile_mode):
        return 0
    if compile_mode:  # every module instance and bucket is a cache entry of the same code; the default is 8
        import torch._dynamo.config as dynamo_config

        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 128)
        dynamo_config.accumulated_recompile_limit = max(dynamo_config.accumulated_recompile_limit, 1024)
    changed = 0
    for module in model.modules():
        if isinstance(module, (ClsEncoder, QueryPool)) and "forward" not in vars(module):
            module.forward = _StaticForward(module.forward, bucket_shapes, compile_mode)
            changed += 1
    return changed


def restore(model: nn.Module) -> None:
    """Undo `speed_up`: the class's own forward again."""
    for module in model.modules():
        if isinstance(vars(module).get("forward"), _StaticForward):
            del module.forward
