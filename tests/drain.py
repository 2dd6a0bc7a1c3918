"""Running a generator with progress (``iter_slide_pipeline`` and the like) to its end, as the tests do."""

from __future__ import annotations


def drain(gen) -> tuple[list, object]:
    """(every value ``gen`` yields, the value it returns)."""
    steps = []
    while True:
        try:
            steps.append(next(gen))
        except StopIteration as stop:
            return steps, stop.value
