"""The `care` command: parse, call one library function, print."""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
import threading
import time
import warnings
from contextlib import closing, contextmanager
from pathlib import Path

from care_core import __version__
from care_core.errors import CareError


def _cmd_info(args: argparse.Namespace) -> int:
    from care_core.wsi import detect_tissue, open_slide, patch_grid

    with open_slide(args.slide, mpp=args.mpp) as slide:
        info = slide.info
        print(f"slide         {info.path}")
        print(f"vendor        {info.vendor}")
        print(f"dimensions    {info.dimensions[0]} x {info.dimensions[1]} px (level 0)")
        print(f"levels        {info.level_count}")
        for i, ((w, h), ds) in enumerate(zip(info.level_dimensions, info.level_downsamples)):
            print(f"  level {i}     {w} x {h} px  downsample {ds:g}")
        print(f"mpp           {info.mpp if info.mpp is not None else 'unknown (pass --mpp)'}")
        print(f"objective     {info.objective_power if info.objective_power is not None else 'unknown'}")
        print(f"associated    {', '.join(info.associated_images) or 'none'}")
        tissue = detect_tissue(slide)
        area = f"{tissue.area_mm2:.2f} mm²" if tissue.area_mm2 is not None else "unknown (no mpp)"
        print(f"tissue area   {area}")
        if info.mpp is not None:
            grid = patch_grid(slide, tissue, target_mpp=args.target_mpp, patch_px=args.patch_px)
            print(
                f"patches       {len(grid.coords)} of {grid.patch_px} px at {grid.target_mpp:g} µm/px "
                f"({grid.patch_size_level0} px at level 0, read from level {grid.level})"
            )
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from care_core._atomic import check_output_dir

    check_output_dir(args.out if getattr(args, "cohort", None) is not None else args.out.parent)  # before the work
    if args.cohort is not None:
        from care_core.synth.cohort import write_synthetic_cohort

        table = write_synthetic_cohort(args.out, args.cohort, seed=args.seed, width_px=args.width_px or 6000,
                                       height_px=args.height_px or 4800, mpp=args.mpp, features=args.features,
                                       workers=args.workers, progress=print)
        print(f"cohort {table}")
        return 0
    if args.features:
        raise SystemExit("care synth: error: --features needs --cohort N")
    from care_core.synth import write_sample_slide

    sample = write_sample_slide(args.out, width_px=args.width_px or 24000, height_px=args.height_px or 18000,
                                seed=args.seed, mpp=args.mpp)
    print(f"slide  {sample.slide_path}")
    print(f"mask   {sample.mask_path} (labels at 1/{sample.mask_downsample}: {sample.compartments})")
    return 0


def _print_event(ev) -> None:
    """One progress event (a TrainEvent) as one JSON line on stdout, for a parent process (the napari Train
    widget). Once the watcher has closed the pipe (napari quit) all output is dropped and the work goes on."""
    import dataclasses
    import json
    import os

    try:
        print(json.dumps(dataclasses.asdict(ev)), flush=True)
    except BrokenPipeError:
        sys.stdout = sys.stderr = open(os.devnull, "w")


class _Pace:
    """TrainEvents of one phase of counted items (slides, folds), timed from the phase's start: samples_per_s
    holds items per second, eta_s the seconds left at that rate (None before the first item)."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def event(self, kind: str, done: int, total: int, **fields):
        from care_core.train.trainer import TrainEvent

        elapsed = time.monotonic() - self.t0
        return TrainEvent(kind, done, total, samples_per_s=done / elapsed if elapsed > 0 else 0.0,
                          eta_s=elapsed / done * (total - done) if done else None, **fields)


def _cmd_extract(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from care_core.features import format_summary, get_encoder_spec, read_slide_list_csv, run_cohort

    if bool(args.slides) == bool(args.csv):
        raise SystemExit("care extract: error: give slide files or --csv slides.csv (one of them)")
    slides = read_slide_list_csv(args.csv) if args.csv else args.slides
    spec = get_encoder_spec(args.encoder)
    # --events-json: stdout holds only JSON lines (start, one "extract" per slide, end); the summary goes to stderr
    bar = None if args.events_json else tqdm(total=len(slides), unit="slide", desc=f"extract {args.encoder}")
    pace, finished = _Pace(), []

    def progress(row) -> None:
        finished.append(row)
        if bar is None:
            _print_event(pace.event("extract", len(finished), len(slides), path=row.output or None,
                                    metrics={"slide": Path(row.slide).stem, "status": row.status}))
        else:
            bar.update(1)
            bar.set_postfix_str(f"{row.slide}: {row.status}")

    if bar is None:
        _print_event(pace.event("start", 0, len(slides)))
    try:
        summary = run_cohort(
            slides, args.out, encoder=args.encoder, weights=args.weights, scheduler=args.scheduler,
            n_workers=args.workers, target_mpp=args.target_mpp or spec.mpp, patch_px=args.patch_px or spec.patch_px,
            mpp_override=args.mpp,
            min_tissue=args.min_tissue, batch_size=args.batch_size, device=args.device, progress=progress,
        )
    finally:
        if bar is not None:
            bar.close()
    print(format_summary(summary), file=sys.stderr if bar is None else sys.stdout)
    if bar is None:
        failed = summary.counts["failed"]
        n = len(slides)
        _print_event(pace.event("end", n, n, metrics={"done": n - failed, "failed": failed}))
    return 0 if summary.ok else 1


def _untrained_model(inputs: list[Path], seed: int, allow_pickle: bool):
    """A randomly initialised CARE (seed `seed`) of the demo checkpoint's architecture (the released config when the
    demo is not installed), sized to the features: the input dim and encoder of the first readable feature file;
    files of another dim then fail one by one. A note on stderr says what was built."""
    from care_core.encode import feature_files
    from care_core.errors import FeatureFileError
    from care_core.features import load_features
    from care_core.model import untrained_care

    files, errors = feature_files(inputs, allow_pickle=allow_pickle), []
    for path in files:
        try:
            pf = load_features(path, allow_pickle=allow_pickle)
            break
        except CareError as exc:
            errors.append(str(exc))
    else:
        raise FeatureFileError(f"none of the {len(files)} feature files can be read to size an untrained CARE "
                               f"(first: {errors[0]})")
    model, how = untrained_care(seed, pf.dim, encoder=pf.encoder or "")
    print(f"note: untrained CARE (random weights, seed {seed}) of {how}: its regions are close to the k×k squares",
          file=sys.stderr)
    return model


def _encode_model(args: argparse.Namespace):
    """What `care encode` runs: --model PATH, --untrained SEED, or None (the shipped demo checkpoint)."""
    if args.untrained is None:
        if args.model is None:
            print("care encode: note: no --model given: the shipped demo CARE checkpoint runs (trained on synthetic "
                  "slides; expects stain-texture features of 512 px at 0.5 µm/px)", file=sys.stderr)
        return args.model
    if args.model is not None:
        raise SystemExit("care encode: error: give either --model or --untrained, not both")
    return _untrained_model(args.features, args.untrained, args.allow_pickle)


def _cmd_encode(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from care_core.encode import iter_encode_paths

    bar, counts = None, {"encoded": 0, "skipped": 0, "failed": 0}
    results = iter_encode_paths(args.features, _encode_model(args), args.out, allow_pickle=args.allow_pickle,
                                keep_going=True, resume=not args.redo)
    try:
        for r in results:
            bar = bar or tqdm(total=r.total, unit="slide", desc="encode")
            bar.update(1)
            kind = "failed" if r.error else "encoded" if r.written else "skipped"
            counts[kind] += 1
            bar.write(f"{r.path.name}: " + (f"failed: {r.error}" if r.error else ", ".join(p.name for p in r.written) or r.note))
            _raise_if_signalled()
    finally:  # before any error line
        results.close()  # an interrupt between two slides releases the folder's lock now, not at exit
        if bar is not None:
            bar.close()
    print(f"{sum(counts.values())} feature files ({', '.join(f'{n} {k}' for k, n in counts.items())}) → {args.out}")
    return 1 if counts["failed"] else 0


def _cmd_export(args: argparse.Namespace) -> int:
    from care_core.regions import export_encoding_file

    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    written = export_encoding_file(args.encoding, args.out, slide=args.slide, mpp=args.mpp, formats=formats)
    for fmt, path in written.items():
        print(f"{fmt:8s}{path}")
    return 0


def _cmd_index(args: argparse.Namespace) -> int:
    from care_core.search import build_index, remove_slides

    def progress(slide, what):
        print(f"{slide}: {what}")

    if not args.inputs and not args.remove:
        raise SystemExit("care index: error: give encodings or feature files to add, or --remove SLIDE")
    if args.remove:
        index = remove_slides(args.out, args.remove, progress=progress)
    if args.inputs:
        index = build_index(args.inputs, args.out, model=args.model, progress=progress, scheduler=args.scheduler,
                            n_workers=args.workers, representation=args.representation)
    n = sum(s["n_regions"] for s in index["slides"].values())
    print(f"index {args.out}: {len(index['slides'])} slides, {n} regions, {index['embed_dim']}-d, "
          f"CARE model {index['model_sha256'][:12]}, encoder {index['encoder'] or 'unknown'}")
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    from care_core.search import search_index, write_hits

    if args.region is not None and args.slide is None:
        raise SystemExit("care search: error: --region needs --slide")
    same = True if args.same_slide else False if args.other_slides else None
    hits = search_index(args.index, slide=args.slide, region=args.region, embedding=args.embedding, k=args.k,
                        same_slide=same)
    width = max([5, *(len(h.slide) for h in hits)])
    print(f"{'rank':>4}  {'slide':{width}s}  {'region':>6}  {'similarity':>10}  {'centroid (x, y) px':>18}  predicted")
    for h in hits:
        where = "" if h.centroid is None else f"{h.centroid[0]:.0f}, {h.centroid[1]:.0f}"
        region = "" if h.region < 0 else h.region
        print(f"{h.rank:>4}  {h.slide:{width}s}  {region:>6}  {h.similarity:>10.4f}  {where:>18}  {h.predicted}")
    if args.out is not None:
        print(f"results: {write_hits(hits, args.out)}")
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from care_core.train.trainer import Stopped

    run_dir = args.resume or args.out
    if run_dir is None:
        print(f"care {args.command}: error: give --out RUN_DIR for a new run or --resume RUN_DIR", file=sys.stderr)
        return 2
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    try:
        _show_training(args, run_dir)
    except Stopped:
        raise _Terminated() from None  # SIGTERM, taken between two steps
    return 0


def _show_training(args: argparse.Namespace, run_dir: Path) -> None:
    """Run ``care pretrain|finetune``, showing its events as a bar (or JSON lines with --events-json)."""
    from tqdm import tqdm

    from care_core.train.trainer import train

    bar = None
    steps = getattr(args, "profile_steps", None)
    overrides = {"profile_steps": steps} if steps is not None else None
    for ev in train(args.config, run_dir, stage=args.stage, resume=args.resume is not None, overrides=overrides):
        if args.events_json:  # after a closed pipe training goes on: metrics.jsonl keeps the record
            _print_event(ev)
        elif ev.kind == "start":
            bar = tqdm(total=ev.total_steps, initial=ev.step, unit="step", desc=f"{args.command} {run_dir}")
            for k, v in ev.metrics.items():
                tqdm.write(f"{k}: {v}")
        elif ev.kind == "step":
            bar.update(ev.step - bar.n)
            bar.set_postfix(loss=f"{ev.metrics.get('loss', float('nan')):.4f}", lr=f"{ev.lr:.2e}")
        elif ev.kind == "validate":
            tqdm.write(f"epoch {ev.epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in ev.metrics.items()))
        elif ev.kind == "checkpoint" and ev.path and "head" in Path(ev.path).name:
            print(f"head: {ev.path}")
        elif ev.kind == "end":
            bar.close()
            print(f"CARE checkpoint: {ev.path}")


def _care_model(args: argparse.Namespace, command: str):
    """The CARE of --model / --untrained (None when neither is given)."""
    if args.untrained is not None:
        if args.model is not None:
            raise SystemExit(f"care {command}: error: give either --model or --untrained, not both")
        return _untrained_model(args.features, args.untrained, getattr(args, "allow_pickle", False))
    if args.model is None:
        return None
    from care_core.encode import resolve_model

    return resolve_model(args.model)


def _cmd_predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from care_core.encode import resolve_model
    from care_core.evaluate.predict import iter_predict

    from care_core.model import demo_heads

    model = _care_model(args, "predict")
    heads = args.head or ([] if model is not None else demo_heads())
    if not heads:
        raise SystemExit("care predict: error: give --head (the demo heads go only with the demo checkpoint, "
                         "and are not installed)" if model is None else "care predict: error: give --head")
    model = model or resolve_model(None)
    bar = None
    with closing(iter_predict(args.features, model, heads, args.out, allow_pickle=args.allow_pickle)) as slides:
        for i, total, path, written in slides:
            bar = bar or tqdm(total=total, unit="slide", desc="predict")
            bar.update(1)
    if bar is not None:
        bar.close()
    print(f"slide predictions: {args.out / 'slide_predictions.csv'}")
    return 0


def _evaluate_event(ev, paces: dict):
    """The TrainEvent of an EvaluateEvent: encode 0 (inputs checked) -> start, encode -> encode (per slide),
    fold -> validate (epoch: the 0-based fold; metrics: the fold's). ``paces`` times the two phases."""
    if ev.stage == "fold":
        return paces["fold"].event("validate", ev.done, ev.total, epoch=ev.done - 1, metrics=dict(ev.metrics or {}))
    if ev.done == 0:
        paces["encode"] = _Pace()
    out = paces["encode"].event("encode" if ev.done else "start", ev.done, ev.total,
                                metrics={"slide": ev.message} if ev.done else {})
    if ev.done == ev.total:
        paces["fold"] = _Pace()  # the folds start now
    return out


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from care_core.evaluate.run import iter_evaluate

    model = _care_model(args, "evaluate")
    bars: dict[str, tqdm] = {}
    gen = iter_evaluate(args.labels, args.features, model=model, protocol=args.protocol, input=args.input,
                        out_dir=args.out, splits=args.splits, n_folds=args.folds, val=not args.no_val, seed=args.seed,
                        annotations=args.annotations, finetune=args.finetune_config, final_head=args.final_head)
    paces: dict = {}
    with closing(gen):  # an interrupt between two events releases the folder's lock now, not at exit
        while True:
            try:
                ev = next(gen)
            except StopIteration as stop:
                result = stop.value
                break
            if args.events_json:
                _print_event(_evaluate_event(ev, paces))
                continue
            unit = "slide" if ev.stage == "encode" else "fold"
            bar = bars.get(ev.stage) or bars.setdefault(ev.stage, tqdm(total=ev.total, unit=unit, desc=ev.stage))
            bar.update(ev.done - bar.n)
            if ev.metrics:
                bar.set_postfix({k: f"{v:.3f}" for k, v in ev.metrics.items()})
    for bar in bars.values():
        bar.close()
    text = sys.stderr if args.events_json else sys.stdout  # --events-json: stdout holds only JSON lines
    print((args.out / "results.md").read_text(), end="", file=text)
    print(f"results: {args.out / 'results.json'}", file=text)
    if "final_head" in result:
        print(f"final head: {result['final_head']}", file=text)
    if args.events_json:
        from care_core.train.trainer import TrainEvent

        _print_event(TrainEvent("end", result["n_folds"], result["n_folds"],
                                metrics={k: v["mean"] for k, v in result["summary"].items()},
                                path=result.get("final_head", str(args.out / "results.json"))))
    return 0


def _number(kind: type, low: float, high: float = float("inf"), *, low_ok: bool = False):
    """An argparse type: a finite `kind` above `low` (or equal, with low_ok) and at most `high`."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number")
        if not (value >= low if low_ok else value > low) or not value <= high:
            bounds = f"{'>=' if low_ok else '>'} {low:g}" + (f" and <= {high:g}" if high < float("inf") else "")
            raise argparse.ArgumentTypeError(f"{text} is out of range (must be {bounds})")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


POSITIVE, COUNT, FRACTION = _number(float, 0), _number(int, 0), _number(float, 0, 1, low_ok=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="care", description="CARE adaptive-region slide encoder for whole-slide images.")
    parser.add_argument("--version", action="version", version=f"napari-care {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="levels, mpp, vendor, tissue area and patch count of a slide")
    p.add_argument("slide", type=Path)
    p.add_argument("--mpp", type=POSITIVE, default=None, help="µm/px at level 0 (overrides the file's value)")
    p.add_argument("--target-mpp", type=POSITIVE, default=0.5, help="patch grid resolution in µm/px (default 0.5)")
    p.add_argument("--patch-px", type=COUNT, default=512, help="patch side in px at --target-mpp (default 512)")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("synth", help="write a synthetic H&E-like SVS with its ground-truth compartment mask, "
                                     "or a whole cohort with molecular tables (--cohort N)")
    p.add_argument("out", type=Path, help="output .svs path (mask and JSON sidecar go beside it); with --cohort, a folder")
    p.add_argument("--width-px", type=COUNT, default=None, help="default 24000 (6000 per cohort slide)")
    p.add_argument("--height-px", type=COUNT, default=None, help="default 18000 (4800 per cohort slide)")
    p.add_argument("--seed", type=int, default=0, help="slide seed (with --cohort: cohort seed; slide i gets seed*10000+i)")
    p.add_argument("--mpp", type=POSITIVE, default=0.5, help="µm/px at level 0 (default 0.5, a 20x scan)")
    p.add_argument("--cohort", type=int, default=None, metavar="N",
                   help="write N slides, RNA (rna.h5ad) and protein (protein.csv) tables and cohort.csv into OUT")
    p.add_argument("--features", action="store_true", help="with --cohort: also extract stain-texture features")
    p.add_argument("--workers", type=int, default=2, help="with --features: extraction worker processes (default 2)")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("extract", help="patch features for one slide or a cohort (one dask task per slide)")
    p.add_argument("slides", type=Path, nargs="*", help="slide files (or use --csv)")
    p.add_argument("--csv", type=Path, default=None, help="CSV with a 'slide' (or 'path') column and optional 'mpp'")
    p.add_argument("--encoder", default="stain-texture", help="patch encoder name (default stain-texture)")
    p.add_argument("--weights", type=Path, default=None, help="local weight file of the encoder")
    p.add_argument("--out", type=Path, required=True, help="output folder: one <slide stem>.h5 per slide")
    p.add_argument("--scheduler", default=None, help="tcp://host:port of a running dask scheduler (default: a local cluster)")
    p.add_argument("--workers", type=COUNT, default=2, help="local cluster worker processes (default 2)")
    p.add_argument("--mpp", type=POSITIVE, default=None,
                   help="level-0 µm/px for every slide, overriding the files' values (per slide: the CSV's mpp column)")
    p.add_argument("--target-mpp", type=POSITIVE, default=None,
                   help="patch resolution in µm/px (default: what the encoder expects; 0.5 for most)")
    p.add_argument("--patch-px", type=COUNT, default=None,
                   help="patch side in px at --target-mpp (default: what the encoder expects, e.g. 512 for stain-texture)")
    p.add_argument("--min-tissue", type=FRACTION, default=0.25, help="minimum tissue fraction of a kept patch")
    p.add_argument("--batch-size", type=COUNT, default=32)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--events-json", action="store_true",
                   help="print progress as one JSON line per event (start, one per finished slide, end) instead of "
                        "the bar; the summary table goes to stderr")
    p.set_defaults(func=_cmd_extract)

    p = sub.add_parser("encode", help="CARE over feature files: slide/ROI embeddings, region table and polygons")
    p.add_argument("features", type=Path, nargs="+", help="feature files (.h5) or folders of them")
    p.add_argument("--model", type=Path, default=None, help="CARE checkpoint (.safetensors with its .json)")
    p.add_argument("--untrained", type=int, default=None, metavar="SEED",
                   help="use a randomly initialised CARE instead of a checkpoint: the released config, with the "
                        "features' input dim when they are not 768-d (a note says so)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--allow-pickle", action="store_true",
                   help="also read the CARE authors' pickled .npy feature files (pickles can run code)")
    p.add_argument("--redo", action="store_true",
                   help="encode every file again (by default a slide whose outputs record the same features and model "
                        "is skipped, so a stopped run resumes)")
    p.set_defaults(func=_cmd_encode)

    p = sub.add_parser("export", help="regions of an encoding as QuPath GeoJSON, ASAP XML, OME-TIFF mask, CSV, npz")
    p.add_argument("encoding", type=Path, help="a <slide>_encoding.npz written by care encode")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--slide", type=Path, default=None, help="the slide file: size and µm/px of the label mask")
    p.add_argument("--mpp", type=float, default=None, help="µm/px at level 0 of --slide (overrides the file's value)")
    p.add_argument("--format", default="geojson,asap,mask,csv,npz",
                   help="comma-separated: geojson, asap, mask, csv, npz (default: all)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("index", help="a region index of a cohort's CARE region and slide embeddings, for care search")
    p.add_argument("inputs", type=Path, nargs="*",
                   help="encodings (<slide>_encoding.npz), feature files (.h5, encoded first) or folders of them")
    p.add_argument("--out", type=Path, required=True, help="index folder (created; slides are added or replaced)")
    p.add_argument("--remove", nargs="+", default=[], metavar="SLIDE", help="remove these slides (names in the index) first")
    p.add_argument("--workers", type=COUNT, default=1,
                   help="encode feature files on a local dask cluster of this many processes (default 1: in this process)")
    p.add_argument("--scheduler", default=None, help="tcp://host:port: encode feature files as tasks on a running dask scheduler")
    p.add_argument("--representation", choices=["tokens", "cls"], default=None,
                   help="what regions are searched by: tokens, the mean ARSA output of their patches (a new index's "
                        "default), or cls, CARE's region embedding g^AR")
    p.add_argument("--model", type=Path, default=None,
                   help="CARE checkpoint for feature files (default: the shipped demo checkpoint)")
    p.set_defaults(func=_cmd_index)

    p = sub.add_parser("search", help="regions (or slides) most like a region, a slide or an embedding, from an index")
    p.add_argument("index", type=Path, help="index folder written by care index")
    query = p.add_mutually_exclusive_group(required=True)
    query.add_argument("--slide", default=None, help="the query slide: its name in the index or its _encoding.npz")
    query.add_argument("--embedding", type=Path, default=None, help="a .npy [E] embedding of the index's CARE model")
    p.add_argument("--region", type=int, default=None, help="region id of --slide (without it: slide search)")
    p.add_argument("-k", type=COUNT, default=20, help="number of answers (default 20)")
    side = p.add_mutually_exclusive_group()
    side.add_argument("--same-slide", action="store_true", help="only regions of the query's slide")
    side.add_argument("--other-slides", action="store_true", help="only regions of other slides")
    p.add_argument("--out", type=Path, default=None, help="also write the answers to a .csv or .json file")
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser("pretrain", help="pretrain CARE: Stage I (iBOT on feature grids) or Stage II (RNA / protein alignment)")
    p.add_argument("--stage", choices=["1", "2"], default=None, help="1: iBOT; 2: molecular alignment (needed with --config)")
    p.add_argument("--config", type=Path, default=None, help="config file (.toml, .yaml or .json); see docs/training.md")
    p.add_argument("--out", type=Path, default=None, help="run folder of a new run")
    p.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its last checkpoint (its own config unless --config is given)")
    p.add_argument("--threads", type=COUNT, default=None,
                   help="CPU threads of torch (default: one per core; 1 is often faster on a busy machine)")
    p.add_argument("--events-json", action="store_true", help="print each progress event as one JSON line instead of the bar")
    p.add_argument("--profile-steps", type=COUNT, default=None, metavar="N",
                   help="record N steps with torch.profiler into RUN_DIR/profile/ (trace.json, top.txt, summary.json)")
    p.set_defaults(func=_cmd_pretrain)

    p = sub.add_parser("finetune", help="fine-tune CARE + a head on slide labels (the paper's protocol), one fold")
    p.add_argument("--config", type=Path, default=None, help="config file with labels, features, fold, ...; see docs/training.md")
    p.add_argument("--out", type=Path, default=None, help="run folder of a new run")
    p.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR", help="continue the run in RUN_DIR")
    p.add_argument("--threads", type=COUNT, default=None,
                   help="CPU threads of torch (default: one per core; 1 is often faster on a busy machine)")
    p.add_argument("--events-json", action="store_true", help="print each progress event as one JSON line instead of the bar")
    p.set_defaults(func=_cmd_pretrain, stage="finetune")

    p = sub.add_parser("predict", help="apply trained heads to feature files: class probabilities per slide and per region")
    p.add_argument("features", type=Path, nargs="+", help="feature files (.h5) or folders of them")
    p.add_argument("--model", type=Path, default=None, help="CARE checkpoint the heads were trained with")
    p.add_argument("--untrained", type=int, default=None, metavar="SEED", help="an untrained CARE (random weights, seed)")
    p.add_argument("--head", type=Path, action="append", default=[],
                   help="a head written by care evaluate (.safetensors with its .json); repeat for several "
                        "(default with the demo checkpoint: the demo heads)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--allow-pickle", action="store_true", help="also read the CARE authors' pickled .npy feature files")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("evaluate", help="the paper's cross-validated probes on a labelled cohort; saves results and heads")
    p.add_argument("--labels", type=Path, required=True,
                   help="CSV/Parquet: slide, label (or time + event), optional patient")
    p.add_argument("--features", type=Path, nargs="+", required=True, help="feature files (.h5) or folders of them")
    p.add_argument("--model", type=Path, default=None, help="CARE checkpoint (not needed for --input mean or abmil)")
    p.add_argument("--untrained", type=int, default=None, metavar="SEED", help="an untrained CARE (random weights, seed)")
    p.add_argument("--protocol", choices=["lr", "knn", "survival", "abmil", "finetune"], default="lr",
                   help="lr: logistic regression, knn, survival: penalised Cox, abmil: ABMIL baseline, "
                        "finetune: CARE + head fine-tuned per fold (default lr)")
    p.add_argument("--finetune-config", type=Path, default=None,
                   help="with --protocol finetune: a config file overriding the paper's fine-tuning settings")
    p.add_argument("--input", choices=["slide", "roi", "mean"], default="slide",
                   help="slide embedding, ROI feature, or mean-pooled patch features (baseline); default slide")
    p.add_argument("--splits", type=Path, default=None, help="folder of splits_<k>.csv to reuse (the CARE authors' layout)")
    p.add_argument("--folds", type=int, default=5, help="folds when making splits (default 5)")
    p.add_argument("--no-val", action="store_true", help="no validation split: C = 0.5 / default k (80/20 splits)")
    p.add_argument("--seed", type=int, default=0, help="seed of the splits (default 0)")
    p.add_argument("--annotations", type=Path, default=None,
                   help="folder of <slide>.geojson (QuPath) or .xml (ASAP): train a region classifier on region embeddings")
    p.add_argument("--final-head", action="store_true",
                   help="after the folds, fit one head on every labelled sample (lr, knn, survival, region classifiers; "
                        "hyper-parameters from the folds) and save it as OUT/heads/<name>_all, with the cross-validated "
                        "metrics as its estimate: the head to apply to new slides")
    p.add_argument("--events-json", action="store_true",
                   help="print progress as one JSON line per event (start, encode, validate per fold, end) instead of "
                        "the bars; the results table goes to stderr")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.set_defaults(func=_cmd_evaluate)
    return parser


@contextmanager
def _plain_messages(command: str):
    """Warnings as one line `care <command>: warning: ...` (no source lines); libraries' log chatter
    (tifffile's notes on damaged files, which our own one-line error covers) silenced."""
    def show(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"care {command}: warning: {message}", file=sys.stderr)

    tiff_log = logging.getLogger("tifffile")
    old_show, old_level = warnings.showwarning, tiff_log.level
    warnings.showwarning = show
    tiff_log.setLevel(logging.CRITICAL)  # it logs damaged-file notes as errors; our own error says it
    try:
        yield
    finally:
        warnings.showwarning = old_show
        tiff_log.setLevel(old_level)


class _Terminated(KeyboardInterrupt):
    """SIGTERM (a batch system's time limit, `kill`), unwound like Ctrl-C so that temp files are removed."""


_SIGNALLED: list[type[KeyboardInterrupt]] = []  # the interrupts received during this command


def _raise_if_signalled() -> None:
    """Raise again a Ctrl-C / SIGTERM whose first raise Python dropped (it landed in a finaliser or a weakref
    callback: "Exception ignored in ..."), so a loop over slides stops at the next slide instead of going on."""
    if _SIGNALLED:
        raise _SIGNALLED[-1]()


@contextmanager
def _signals_unwind(between_steps: bool = False):
    """Ctrl-C raises KeyboardInterrupt and SIGTERM _Terminated where the program is (each remembered for
    `_raise_if_signalled`); with ``between_steps`` (training) SIGTERM only asks the trainer to stop before its next
    step: an exception raised inside a step can land in C-extension code (h5py, torch) that cannot unwind from it
    (a SystemError, or a swallowed raise and a run that goes on)."""
    if between_steps:
        from care_core.train.trainer import STOP

    def handler(signum, frame):
        if between_steps and signum == signal.SIGTERM:
            STOP.set()
            return
        kind = _Terminated if signum == signal.SIGTERM else KeyboardInterrupt
        _SIGNALLED.append(kind)
        raise kind()

    def unraisable(info) -> None:  # a dropped interrupt is raised again at the next slide: no traceback for it
        if not isinstance(info.exc_value, KeyboardInterrupt):
            old_unraisable(info)

    _SIGNALLED.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    old_unraisable, sys.unraisablehook = sys.unraisablehook, unraisable
    try:
        yield
    finally:
        sys.unraisablehook = old_unraisable
        for sig, previous in old.items():
            signal.signal(sig, previous)


def main(argv: list[str] | None = None) -> int:
    """Run the `care` command; exit status 0 (all went well), 1 (some slides failed), 2 (an error stopped it),
    130 / 143 (Ctrl-C / SIGTERM: temp files are removed, finished outputs kept)."""
    args = build_parser().parse_args(argv)
    with _plain_messages(args.command), _signals_unwind(between_steps=args.command in ("pretrain", "finetune")):
        try:
            return args.func(args)
        except CareError as exc:
            print(f"care {args.command}: error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as exc:
            what = "terminated (SIGTERM)" if isinstance(exc, _Terminated) else "interrupted"
            print(f"care {args.command}: {what}; partial outputs removed (finished ones are kept)", file=sys.stderr)
            return 143 if isinstance(exc, _Terminated) else 130


if __name__ == "__main__":
    sys.exit(main())
