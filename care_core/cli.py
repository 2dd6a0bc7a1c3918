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
