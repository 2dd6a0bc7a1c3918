"""Cohort extraction: one task per slide on dask.distributed (a LocalCluster by default), resumable.

A slide is finished when its final `<out_dir>/<stem>.h5` exists, reads back complete and was made with
this run's encoder and grid; those are skipped. An unreadable or incomplete one is redone (its row says
so). Outputs are written to a temp file (`.<stem>.h5.*.tmp`) and renamed, so a crash never leaves a file
that looks finished; the temp files of killed runs are removed at the next run. A failing slide becomes a
"failed" row with its error and the others go on, except after a full disk, which stops the run (every
later slide would fail the same way). A single slide runs in this process: no cluster to start. Every
run, even an interrupted one, leaves its rows in `<out_dir>/extract_summary.csv`.
"""

from __future__ import annotations

import csv
import logging
import os
import signal
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable

from care_core._atomic import check_free_space, check_output_dir, remove_stale_temps
from care_core.errors import InvalidInputError

__all__ = ["SlideEntry", "CohortRow", "CohortSummary", "run_cohort", "read_slide_list_csv", "format_summary"]

STATUSES = ("done", "skipped", "failed", "empty")
SUMMARY_NAME = "extract_summary.csv"  # written into the output folder at the end of every run (even interrupted)


@dataclass(frozen=True)
class SlideEntry:
    """A slide of a cohort and, optionally, its level-0 µm/px (overrides the file's)."""

    path: Path
    mpp: float | None = None


@dataclass(frozen=True)
class CohortRow:
    """Outcome for one slide: status is one of "done", "skipped", "failed", "empty" (no tissue).

    error: why it failed (one line); note: anything else worth saying (e.g. an unreadable old output redone).
    """

    slide: str
    status: str
    n_patches: int = 0
    seconds: float = 0.0
    error: str = ""
    output: str = ""
    note: str = ""


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


def _extract_slide(slide_path: str, out_path: str, mpp: float | None, cfg: dict, note: str = "") -> dict:
    """Worker task: tissue → grid → features → `out_path`; returns a `CohortRow` as a dict, never raises
    (except KeyboardInterrupt: the temp file is removed and the interrupt goes on)."""
    import dask

    t0 = time.perf_counter()
    try:
        with dask.config.set(scheduler="sync"), warnings.catch_warnings():  # read pixels here, not on the cluster
            warnings.simplefilter("ignore")  # a worker's warnings would print with no slide name; rows say it all
            status, n, error = _extract_one(slide_path, out_path, mpp, cfg)
        return asdict(CohortRow(slide_path, status, n, time.perf_counter() - t0, error, out_path, note))
    except Exception as exc:  # reported in the summary; the cohort goes on
        first = (str(exc).strip().splitlines() or [""])[0]
        return asdict(CohortRow(slide_path, "failed", 0, time.perf_counter() - t0, f"{type(exc).__name__}: {first}",
                                note=note))


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
        n = len(grid.coords)  # fail before the encoding, not after it, when the result cannot fit on the disk
        check_free_space(Path(out_path).parent, n * (4 * encoder.dim + 16) + (1 << 16), out_path)
        features = extract_features(slide, grid, encoder, batch_size=cfg["batch_size"], num_workers=cfg["read_threads"])
        remove_stale_temps(Path(out_path).parent, name=Path(out_path).name)  # a killed run's, on this worker's host
        features.save(out_path)
    return "done", features.n_patches, ""


def _existing(path: Path, encoder_name: str, cfg: dict) -> tuple[str, int, str]:
    """What an existing output is: ("skipped", patches, "") when it is complete and made with this run's
    encoder and grid; ("failed", 0, why) when it is another run's; ("redo", 0, why) when it cannot be read."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("features", "coords") if k not in f]
            if missing:
                return "redo", 0, f"redone: the old {path.name} lacked {missing}"
            feats, coords = f["features"], f["coords"]
            if feats.ndim != 2 or coords.shape != (feats.shape[0], 2):
                return "redo", 0, f"redone: the old {path.name} had features {feats.shape} and coords {coords.shape}"
            if len(coords):  # the last rows are the last bytes written: a cut file fails here
                feats[-1], coords[-1]
            made = (str(f.attrs.get("encoder", "")), f.attrs.get("mpp"), f.attrs.get("patch_px"))
            made_sha = str(f.attrs.get("weights_sha256", ""))
            n = int(coords.shape[0])
    except Exception as exc:  # any h5py/OS error: the file is not something to trust
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return "redo", 0, f"redone: the old {path.name} was unreadable ({first})"
    wanted = (encoder_name, cfg["target_mpp"], cfg["patch_px"])
    try:
        same = made[0] == wanted[0] and abs(float(made[1]) - wanted[1]) <= 1e-6 and int(made[2]) == wanted[2]
    except (TypeError, ValueError):
        same = False
    if not same:
        return "failed", 0, (f"{path} exists from encoder {made[0]!r} at {made[1]} µm/px, {made[2]} px, not "
                             f"{wanted[0]!r} at {wanted[1]:g} µm/px, {wanted[2]} px; write to another --out folder or "
                             "delete it")
    sha = cfg.get("weights_sha256")
    if sha and made_sha and made_sha != sha:  # same encoder name, other weights: its features are not this run's
        return "failed", 0, (f"{path} was made with other {encoder_name!r} weights (sha256 {made_sha[:12]}…, not "
                             f"{sha[:12]}… of --weights); write to another --out folder or delete it")
    return "skipped", n, ""


def _check_settings(**values) -> None:
    """Raise InvalidInputError for a numeric setting no slide could use (checked before any work)."""
    import math

    rules = {"target_mpp": ("a positive number of µm/px", lambda v: v > 0), "mpp_override": (
        "a positive number of µm/px or None", lambda v: v > 0), "min_tissue": ("a fraction in [0, 1]", lambda v: 0 <= v <= 1)}
    for name, value in values.items():
        if value is None and name == "mpp_override":
            continue
        what, ok = rules.get(name, ("a positive integer", lambda v: v >= 1 and float(v).is_integer()))
        try:
            good = math.isfinite(float(value)) and ok(float(value))
        except (TypeError, ValueError):
            good = False
        if not good:
            raise InvalidInputError(f"{name}={value!r} must be {what}")


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
    processes with 1 thread each (a single slide to do runs in this process instead). mpp_override: level-0 µm/px used for every slide instead of
    the file's value (a `SlideEntry.mpp`, e.g. the CSV's mpp column, wins over it). read_threads: patch-reading threads inside each task. progress: called with each
    row as it finishes (skipped rows first). Slides with no tissue get an empty (0 × D) file and a warning.
    """
    from care_core.features.registry import get_encoder_spec

    spec = get_encoder_spec(encoder)  # unknown names fail here, before any cluster starts
    _check_settings(target_mpp=target_mpp, patch_px=patch_px, mpp_override=mpp_override, min_tissue=min_tissue,
                    n_workers=n_workers, batch_size=batch_size, read_threads=read_threads)
    out_dir = check_output_dir(out_dir)  # a file, a read-only folder or a full disk fail before any work
    stale = remove_stale_temps(out_dir)
    if stale:
        warnings.warn(f"{out_dir}: removed {len(stale)} temp file(s) left by killed runs", stacklevel=2)
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
    if weights is not None and Path(weights).is_file():  # finished files must come from these very weights
        from care_core.features.timm_encoders import sha256_file

        cfg["weights_sha256"] = sha256_file(weights)
    rows: dict[int, CohortRow] = {}
    todo = []
    for i, e in enumerate(entries):
        out = out_dir / f"{Path(e.path).stem}.h5"
        status, n, why = _existing(out, spec.name, cfg) if out.exists() else ("redo", 0, "")
        if status == "redo":
            todo.append((i, e, out, why))
            continue
        rows[i] = CohortRow(str(e.path), status, n, 0.0, why if status == "failed" else "", str(out))
        if progress is not None:
            progress(rows[i])
    try:
        if len(todo) == 1 and scheduler is None:  # one slide: no cluster to start (its start costs more than the slide)
            i, e, out, why = todo[0]
            rows[i] = CohortRow(**_extract_slide(str(e.path), str(out), _mpp(e, mpp_override), cfg, why))
            if progress is not None:
                progress(rows[i])
        elif todo:
            _run_tasks(todo, cfg, scheduler, n_workers, mpp_override, progress, rows)
    finally:  # workers stopped mid-write (interrupt, crash) leave temp files: theirs are dead now
        remove_stale_temps(out_dir)
        for i, e in enumerate(entries):  # only when interrupted
            rows.setdefault(i, CohortRow(str(e.path), "failed", error="not run: the run was interrupted"))
        _write_summary_csv(rows, out_dir / SUMMARY_NAME)
    summary = CohortSummary([rows[i] for i in range(len(entries))], out_dir, spec.name)
    for row in summary.rows:
        if row.status == "empty":
            warnings.warn(f"{row.slide}: no tissue found, wrote an empty feature file ({row.error})", stacklevel=2)
    return summary


def _mpp(entry: SlideEntry, mpp_override: float | None) -> float | None:
    return entry.mpp if entry.mpp is not None else mpp_override


def _disk_full(row: CohortRow) -> bool:
    return row.error.startswith("OutputError: disk full")


@contextmanager
def _quiet_cluster_start():
    """Start worker processes with Ctrl-C ignored (inherited through exec), so that an interrupt reaches this
    process only, which then closes the cluster (no worker tracebacks); a Ctrl-C during the few seconds of the
    start is ignored. Outside the main thread, only the port notice is silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Port .* is already in use")  # another cluster's; any port does
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, old)


def _write_summary_csv(rows: dict[int, CohortRow], path: Path) -> None:
    """The rows as a CSV (one line per slide, input order), written atomically; a failure to write it (a full
    disk) never hides the run's own outcome."""
    from care_core._atomic import atomic_path

    names = [f.name for f in fields(CohortRow)]
    try:
        with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=names, lineterminator="\n")
            writer.writeheader()
            for i in sorted(rows):
                writer.writerow({**asdict(rows[i]), "seconds": f"{rows[i].seconds:.2f}"})
    except OSError as exc:
        warnings.warn(f"could not write the run summary {path} ({exc})", stacklevel=3)


def _run_tasks(todo, cfg: dict, scheduler: str | None, n_workers: int, mpp_override, progress,
               rows: dict[int, CohortRow]) -> None:
    """Run `todo` on a cluster, adding each slide's row to `rows` as it finishes (kept when interrupted)."""
    from distributed import as_completed

    with dask_client(scheduler, n_workers) as client:
        futures = {
            client.submit(_extract_slide, str(e.path), str(out), _mpp(e, mpp_override), cfg, why,
                          key=f"care-extract-{out.stem}-{os.getpid()}-{time.time_ns()}", pure=False): (i, e)
            for i, e, out, why in todo
        }
        full = None
        for future in as_completed(futures):
            i, e = futures[future]
            try:
                row = CohortRow(**future.result())
            except Exception as exc:  # the worker process itself died
                row = CohortRow(str(e.path), "failed", 0, 0.0,
                                f"worker process died on this slide ({type(exc).__name__}): out of memory or a "
                                "crash in a native library; run it alone to see")
            rows[i] = row
            if full is None and _disk_full(row):  # every later slide would fail the same way
                full = row
                for other in futures:
                    other.cancel()
            if progress is not None:
                progress(row)
        if full is not None:
            for i, e in futures.values():
                if i not in rows or rows[i].error.startswith("worker process died"):
                    rows[i] = CohortRow(str(e.path), "failed", 0, 0.0,
                                        f"not run: the output disk is full (see {Path(full.slide).name})")


@contextmanager
def dask_client(scheduler: str | None, n_workers: int):
    """A dask Client of the running scheduler at ``scheduler`` (tcp://host:port), or of a local cluster of
    ``n_workers`` single-threaded worker processes started (quietly) for the block and closed after it. A task
    that kills its worker is not retried (allowed-failures 0): the slide is reported, not run again."""
    import dask
    from distributed import Client, LocalCluster

    cluster = None
    if scheduler is None:
        with dask.config.set({"distributed.scheduler.allowed-failures": 0}), _quiet_cluster_start():
            cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None,
                                   silence_logs=logging.ERROR)
    try:
        with Client(cluster if cluster is not None else scheduler) as client:
            yield client
    finally:
        if cluster is not None:
            cluster.close()


def format_summary(summary: CohortSummary) -> str:
    """Plain-text table: one line per slide (name, status, patches, seconds, error or note) and a totals line."""
    head = ("slide", "status", "patches", "seconds", "error")
    body = [(Path(r.slide).name, r.status, str(r.n_patches), f"{r.seconds:.1f}", " ".join((r.error or r.note).split()))
            for r in summary.rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]

    def fmt(cells) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

    lines = [fmt(head), fmt(tuple("-" * w for w in widths)), *(fmt(b) for b in body)]
    counts = ", ".join(f"{n} {s}" for s, n in summary.counts.items())
    lines.append(f"{len(summary.rows)} slides ({counts}) with encoder {summary.encoder!r} → {summary.out_dir}")
    return "\n".join(lines)
