"""Cohort extraction: one task per slide on dask.distributed (a LocalCluster by default), resumable.

A slide is finished when its final `<out_dir>/<stem>.h5` exists; those are skipped. Outputs are written to
a temp file (`.<stem>.h5.*.tmp`) and renamed, so a crash never leaves a file that looks finished. A
failing slide becomes a "failed" row with its error; the others go on.
"""

from __future__ import annotations

import csv
import logging
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable

from care_core.errors import InvalidInputError

__all__ = ["SlideEntry", "CohortRow", "CohortSummary", "run_cohort", "read_slide_list_csv", "format_summary"]

STATUSES = ("done", "skipped", "failed", "empty")


@dataclass(frozen=True)
class SlideEntry:
    """A slide of a cohort and, optionally, its level-0 µm/px (overrides the file's)."""

    path: Path
    mpp: float | None = None


@dataclass(frozen=True)
class CohortRow:
    """Outcome for one slide: status is one of "done", "skipped", "failed", "empty" (no tissue)."""

    slide: str
    status: str
    n_patches: int = 0
    seconds: float = 0.0
    error: str = ""
    output: str = ""


@dataclass
class CohortSummary:
    """Rows in input order, the output folder and the encoder used."""

    rows: list[CohortRow]
    out_dir: Path
    encoder: str
    counts: dict = field(init=False)

    def __post_init__(self) -> None:
        self.counts = {s: sum(r.status == s for r in self.rows) for s in STATUSES}

    @property
    def ok(self) -> bool:
        """False when any slide failed."""
        return self.counts["failed"] == 0


def read_slide_list_csv(path: str | os.PathLike) -> list[SlideEntry]:
    """Slides of a CSV with a `slide` or `path` column and an optional `mpp` column.

    Relative slide paths are taken relative to the CSV's folder; blank `mpp` cells mean "from the file".
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() for c in reader.fieldnames or []]
            rows = list(reader)
    except OSError as exc:
        raise InvalidInputError(f"cannot read slide list {str(path)!r}: {exc}") from exc
    col = next((c for c in ("slide", "path") if c in columns), None)
    if col is None:
        raise InvalidInputError(f"{str(path)!r} has columns {columns}; it needs a 'slide' or 'path' column (and optionally 'mpp')")
    entries = []
    for line, row in enumerate(rows, start=2):
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
        if not row[col]:
            raise InvalidInputError(f"{str(path)!r} line {line}: empty {col!r} cell")
        mpp_text = row.get("mpp", "")
        try:
            mpp = float(mpp_text) if mpp_text else None
        except ValueError:
            raise InvalidInputError(f"{str(path)!r} line {line}: mpp={mpp_text!r} is not a number (µm/px)") from None
        if mpp is not None and not mpp > 0:
            raise InvalidInputError(f"{str(path)!r} line {line}: mpp={mpp_text!r} must be positive (µm/px)")
        slide = Path(row[col]).expanduser()
        entries.append(SlideEntry(slide if slide.is_absolute() else path.parent / slide, mpp))
    return entries


@lru_cache(maxsize=2)
def _cached_encoder(name: str, weights: str | None, device: str):
    from care_core.features.registry import get_encoder

    return get_encoder(name, weights=weights, device=device)


def _extract_slide(slide_path: str, out_path: str, mpp: float | None, cfg: dict) -> dict:
    """Worker task: tissue → grid → features → `out_path`; returns a `CohortRow` as a dict, never raises."""
    import dask

    t0 = time.perf_counter()
    try:
        with dask.config.set(scheduler="sync"):  # read pixels here; never ship the slide's graph to the cluster
            status, n, note = _extract_one(slide_path, out_path, mpp, cfg)
        return asdict(CohortRow(slide_path, status, n, time.perf_counter() - t0, note, out_path))
    except Exception as exc:  # reported in the summary; the cohort goes on
        return asdict(CohortRow(slide_path, "failed", 0, time.perf_counter() - t0, f"{type(exc).__name__}: {exc}"))


def _extract_one(slide_path: str, out_path: str, mpp: float | None, cfg: dict) -> tuple[str, int, str]:
    """Write the features of one slide; returns (status, n_patches, note)."""
    import numpy as np

    from care_core.errors import MissingMppError, NoTissueError
    from care_core.features.extract import extract_features
    from care_core.features.store import PatchFeatures
    from care_core.wsi import detect_tissue, open_slide, patch_grid

    encoder = _cached_encoder(cfg["encoder"], cfg["weights"], cfg["device"])
    with open_slide(slide_path, mpp=mpp) as slide:
        if slide.mpp is None:
            raise MissingMppError(f"{slide_path}: the slide records no pixel size; give its µm/px in an 'mpp' "
                                  "column of the slide list or with --mpp")
        try:
            grid = patch_grid(slide, detect_tissue(slide), target_mpp=cfg["target_mpp"], patch_px=cfg["patch_px"],
                              min_tissue=cfg["min_tissue"])
        except NoTissueError as exc:
            size_level0 = max(1, int(round(cfg["patch_px"] * cfg["target_mpp"] / slide.mpp)))
            PatchFeatures(
                np.zeros((0, encoder.dim), np.float32), np.zeros((0, 2), np.int64), size_level0,
                mpp=cfg["target_mpp"], patch_px=cfg["patch_px"], encoder=encoder.name,
                weights_sha256=encoder.weights_sha256, slide_path=str(slide_path),
                slide_size_level0=tuple(slide.dimensions), extra={"no_tissue": str(exc)},
            ).save(out_path)
            return "empty", 0, str(exc)
        features = extract_features(slide, grid, encoder, batch_size=cfg["batch_size"], num_workers=cfg["read_threads"])
        features.save(out_path)
    return "done", features.n_patches, ""


def _finished(path: Path, encoder_name: str, cfg: dict) -> tuple[int, str]:
    """(patches, "") of a finished feature file made with this run's encoder and grid, else (0, why not)."""
    import h5py

    with h5py.File(path, "r") as f:
        made = (str(f.attrs.get("encoder", "")), f.attrs.get("mpp"), f.attrs.get("patch_px"))
        n = int(f["coords"].shape[0])
    wanted = (encoder_name, cfg["target_mpp"], cfg["patch_px"])
    if made[0] != wanted[0] or made[1] is None or abs(float(made[1]) - wanted[1]) > 1e-6 or made[2] != wanted[2]:
        return 0, (f"{path} exists from encoder {made[0]!r} at {made[1]} µm/px, {made[2]} px, not {wanted[0]!r} at "
                   f"{wanted[1]:g} µm/px, {wanted[2]} px; write to another --out folder or delete it")
    return n, ""


def run_cohort(
    slides: Iterable[str | os.PathLike | SlideEntry],
    out_dir: str | os.PathLike,
    *,
    encoder: str,
    weights: str | os.PathLike | None = None,
    scheduler: str | None = None,
    n_workers: int = 2,
    target_mpp: float = 0.5,
    patch_px: int = 512,
    mpp_override: float | None = None,
    min_tissue: float = 0.25,
    batch_size: int = 32,
    read_threads: int = 2,
    device: str = "auto",
    progress: Callable[[CohortRow], None] | None = None,
) -> CohortSummary:
    """Extract `<out_dir>/<stem>.h5` for every slide, one dask task per slide; returns the summary.

    scheduler: "tcp://host:port" of a running dask scheduler, or None for a LocalCluster of `n_workers`
    processes with 1 thread each. mpp_override: level-0 µm/px used for every slide instead of
    the file's value (a `SlideEntry.mpp`, e.g. the CSV's mpp column, wins over it). read_threads: patch-reading threads inside each task. progress: called with each
    row as it finishes (skipped rows first). Slides with no tissue get an empty (0 × D) file and a warning.
    """
    from care_core.features.registry import get_encoder_spec

    spec = get_encoder_spec(encoder)  # unknown names fail here, before any cluster starts
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = [s if isinstance(s, SlideEntry) else SlideEntry(Path(s)) for s in slides]
    stems: dict[str, Path] = {}
    for e in entries:
        other = stems.setdefault(Path(e.path).stem, Path(e.path))
        if other != Path(e.path):
            raise InvalidInputError(f"slides {str(other)!r} and {str(e.path)!r} share the name {Path(e.path).stem!r}; "
                             "their outputs would collide: rename one or run them into different --out folders")
    cfg = {"encoder": encoder, "weights": None if weights is None else str(weights), "device": device,
           "target_mpp": float(target_mpp), "patch_px": int(patch_px), "min_tissue": float(min_tissue),
           "batch_size": int(batch_size), "read_threads": int(read_threads)}
    rows: dict[int, CohortRow] = {}
    todo = []
    for i, e in enumerate(entries):
        out = out_dir / f"{Path(e.path).stem}.h5"
        if out.is_file():
            n, clash = _finished(out, spec.name, cfg)
            rows[i] = CohortRow(str(e.path), "failed" if clash else "skipped", n, 0.0, clash, str(out))
            if progress is not None:
                progress(rows[i])
        else:
            todo.append((i, e, out))
    if todo:
        rows.update(_run_tasks(todo, cfg, scheduler, n_workers, mpp_override, progress))
    summary = CohortSummary([rows[i] for i in range(len(entries))], out_dir, spec.name)
    for row in summary.rows:
        if row.status == "empty":
            warnings.warn(f"{row.slide}: no tissue found, wrote an empty feature file ({row.error})", stacklevel=2)
    return summary


def _run_tasks(todo, cfg: dict, scheduler: str | None, n_workers: int, mpp_override, progress) -> dict[int, CohortRow]:
    from distributed import Client, LocalCluster, as_completed

    cluster = None
    if scheduler is None:
        cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None,
                               silence_logs=logging.ERROR)
    try:
        with Client(cluster if cluster is not None else scheduler) as client:
            futures = {
                client.submit(_extract_slide, str(e.path), str(out), e.mpp if e.mpp is not None else mpp_override,
                              cfg, key=f"care-extract-{out.stem}-{os.getpid()}-{time.time_ns()}", pure=False): (i, e)
                for i, e, out in todo
            }
            rows = {}
            for future in as_completed(futures):
                i, e = futures[future]
                try:
                    row = CohortRow(**future.result())
                except Exception as exc:  # the worker itself died (e.g. killed for memory)
                    row = CohortRow(str(e.path), "failed", 0, 0.0, f"worker lost: {type(exc).__name__}: {exc}")
                rows[i] = row
                if progress is not None:
                    progress(row)
            return rows
    finally:
        if cluster is not None:
            cluster.close()


def format_summary(summary: CohortSummary) -> str:
    """Plain-text table: one line per slide (name, status, patches, seconds, error) and a totals line."""
    head = ("slide", "status", "patches", "seconds", "error")
    body = [(Path(r.slide).name, r.status, str(r.n_patches), f"{r.seconds:.1f}", r.error.splitlines()[0] if r.error else "")
            for r in summary.rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]

    def fmt(cells) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

    lines = [fmt(head), fmt(tuple("-" * w for w in widths)), *(fmt(b) for b in body)]
    counts = ", ".join(f"{n} {s}" for s, n in summary.counts.items())
    lines.append(f"{len(summary.rows)} slides ({counts}) with encoder {summary.encoder!r} → {summary.out_dir}")
    return "\n".join(lines)
