"""Hand edits of a JSON + tensors pair's JSON, for the fault tests of checkpoints and heads."""

from __future__ import annotations

import json

from care_core.model.pair import meta_sha256


def edit_json(json_path, change, *, resign: bool = False) -> None:
    """Apply ``change(raw)`` to the JSON at ``json_path``; with ``resign`` its sha256 is recomputed as if saved so."""
    raw = json.loads(json_path.read_text())
    change(raw)
    if resign:
        raw["sha256"] = meta_sha256(raw)
    json_path.write_text(json.dumps(raw))
