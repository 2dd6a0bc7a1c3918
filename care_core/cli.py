"""The `care` command: parse, call one library function, print."""

from __future__ import annotations

import argparse
import sys
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


def _cmd_extract(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from care_core.features import format_summary, get_encoder_spec, read_slide_list_csv, run_cohort

    if bool(args.slides) == bool(args.csv):
        raise SystemExit("care extract: error: give slide files or --csv slides.csv (one of them)")
    slides = read_slide_list_csv(args.csv) if args.csv else args.slides
    spec = get_encoder_spec(args.encoder)
    with tqdm(total=len(slides), unit="slide", desc=f"extract {args.encoder}") as bar:

        def progress(row) -> None:
            bar.update(1)
            bar.set_postfix_str(f"{row.slide}: {row.status}")

        summary = run_cohort(
            slides, args.out, encoder=args.encoder, weights=args.weights, scheduler=args.scheduler,
            n_workers=args.workers, target_mpp=args.target_mpp or spec.mpp, patch_px=args.patch_px or spec.patch_px,
            mpp_override=args.mpp,
            min_tissue=args.min_tissue, batch_size=args.batch_size, device=args.device, progress=progress,
        )
    print(format_summary(summary))
    return 0 if summary.ok else 1


def _untrained_model(inputs: list[Path], seed: int, allow_pickle: bool):
    """A randomly initialised released-config CARE whose input dim fits the first feature file."""
    from care_core.encode import feature_files
    from care_core.features import load_features
    from care_core.model import CARE

    first = load_features(feature_files(inputs, allow_pickle=allow_pickle)[0], allow_pickle=allow_pickle)
    return CARE.from_seed(seed, input_dim=first.dim)


def _cmd_encode(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from care_core.encode import iter_encode_paths

    model = args.model
    if args.untrained is not None:
        if model is not None:
            raise SystemExit("care encode: error: give either --model or --untrained, not both")
        model = _untrained_model(args.features, args.untrained, args.allow_pickle)
        print(f"note: untrained CARE (random weights, seed {args.untrained}): regions are close to the k×k squares")
    bar = None
    for i, total, path, written in iter_encode_paths(args.features, model, args.out, allow_pickle=args.allow_pickle):
        bar = bar or tqdm(total=total, unit="slide", desc="encode")
        bar.update(1)
        bar.write(f"{path.name}: {', '.join(p.name for p in written) or 'skipped (no patches)'}")
    if bar is not None:
        bar.close()
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from care_core.regions import export_encoding_file

    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    written = export_encoding_file(args.encoding, args.out, slide=args.slide, mpp=args.mpp, formats=formats)
    for fmt, path in written.items():
        print(f"{fmt:8s}{path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="care", description="CARE adaptive-region slide encoder for whole-slide images.")
    parser.add_argument("--version", action="version", version=f"napari-care {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="levels, mpp, vendor, tissue area and patch count of a slide")
    p.add_argument("slide", type=Path)
    p.add_argument("--mpp", type=float, default=None, help="µm/px at level 0 (overrides the file's value)")
    p.add_argument("--target-mpp", type=float, default=0.5, help="patch grid resolution in µm/px (default 0.5)")
    p.add_argument("--patch-px", type=int, default=512, help="patch side in px at --target-mpp (default 512)")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("synth", help="write a synthetic H&E-like SVS with its ground-truth compartment mask, "
                                     "or a whole cohort with molecular tables (--cohort N)")
    p.add_argument("out", type=Path, help="output .svs path (mask and JSON sidecar go beside it); with --cohort, a folder")
    p.add_argument("--width-px", type=int, default=None, help="default 24000 (6000 per cohort slide)")
    p.add_argument("--height-px", type=int, default=None, help="default 18000 (4800 per cohort slide)")
    p.add_argument("--seed", type=int, default=0, help="slide seed (with --cohort: cohort seed; slide i gets seed*10000+i)")
    p.add_argument("--mpp", type=float, default=0.5, help="µm/px at level 0 (default 0.5, a 20x scan)")
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
    p.add_argument("--workers", type=int, default=2, help="local cluster worker processes (default 2)")
    p.add_argument("--mpp", type=float, default=None,
                   help="level-0 µm/px for every slide, overriding the files' values (per slide: the CSV's mpp column)")
    p.add_argument("--target-mpp", type=float, default=None,
                   help="patch resolution in µm/px (default: what the encoder expects; 0.5 for most)")
    p.add_argument("--patch-px", type=int, default=None,
                   help="patch side in px at --target-mpp (default: what the encoder expects, e.g. 512 for stain-texture)")
    p.add_argument("--min-tissue", type=float, default=0.25, help="minimum tissue fraction of a kept patch")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.set_defaults(func=_cmd_extract)

    p = sub.add_parser("encode", help="CARE over feature files: slide/ROI embeddings, region table and polygons")
    p.add_argument("features", type=Path, nargs="+", help="feature files (.h5) or folders of them")
    p.add_argument("--model", type=Path, default=None, help="CARE checkpoint (.safetensors with its .json)")
    p.add_argument("--untrained", type=int, default=None, metavar="SEED",
                   help="use a randomly initialised CARE (released config) instead of a checkpoint")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--allow-pickle", action="store_true",
                   help="also read the CARE authors' pickled .npy feature files (pickles can run code)")
    p.set_defaults(func=_cmd_encode)

    p = sub.add_parser("export", help="regions of an encoding as QuPath GeoJSON, ASAP XML, OME-TIFF mask, CSV, npz")
    p.add_argument("encoding", type=Path, help="a <slide>_encoding.npz written by care encode")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--slide", type=Path, default=None, help="the slide file: size and µm/px of the label mask")
    p.add_argument("--mpp", type=float, default=None, help="µm/px at level 0 of --slide (overrides the file's value)")
    p.add_argument("--format", default="geojson,asap,mask,csv,npz",
                   help="comma-separated: geojson, asap, mask, csv, npz (default: all)")
    p.set_defaults(func=_cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CareError as exc:
        print(f"care {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
