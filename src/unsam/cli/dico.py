"""``unsam dico IMAGE -o overlay.png [--json masks.json]``: divide-and-conquer on one image."""

from __future__ import annotations

import argparse
from collections import Counter

from unsam.cli.common import add_overlay_arguments
from unsam.cli.pseudo_label import add_pipeline_arguments, pipeline_config_from_args
from unsam.io.coco import write_sam_json
from unsam.io.files import check_output_file, check_outputs
from unsam.io.images import load_image
from unsam.io.overlay import draw_level_panels, write_overlay, write_png
from unsam.pipeline import DivideAndConquer
from unsam.records import ImageRecord


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="image file")
    parser.add_argument(
        "-o", "--output", help="overlay PNG to write (optional when --json is given)"
    )
    parser.add_argument(
        "--json", metavar="MASKS.json", help="also write the masks (SAM/SA-1B per-image JSON)"
    )
    parser.add_argument(
        "--image-id", type=int, default=0, help="image id stored in the records (default: 0)"
    )
    parser.add_argument(
        "--levels",
        action="store_true",
        help="overlay as level panels: photo | objects | coarse parts | fine parts",
    )
    add_overlay_arguments(parser.add_argument_group("overlay"))
    add_pipeline_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if args.output is None and args.json is None:
        raise ValueError("give -o OVERLAY.png, --json MASKS.json, or both")
    if args.output is not None and not str(args.output).lower().endswith(".png"):
        raise ValueError(f"-o {args.output}: the overlay is a PNG; give a file name ending in .png")
    for flag, path in (("-o", args.output), ("--json", args.json)):
        if path is not None:
            check_output_file(path, flag)
    check_outputs([("-o", args.output), ("--json", args.json)], input_files=[args.image])
    config = pipeline_config_from_args(args)
    image = load_image(args.image)
    dico = DivideAndConquer(config=config)
    records = dico(image, image_id=args.image_id)
    if args.output is not None and args.levels:
        write_png(args.output, draw_level_panels(image, records, top_k=args.overlay_top_k))
    elif args.output is not None:
        write_overlay(
            args.output, image, records, top_k=args.overlay_top_k, min_score=args.overlay_min_score
        )
    levels = Counter(r.level for r in records)
    timing = ", ".join(f"{k} {v:.2f} s" for k, v in dico.last_timings.items())
    print(
        f"{args.image}: {len(records)} masks (by level: "
        + ", ".join(f"{k}: {levels[k]}" for k in sorted(levels))
        + f"); {timing}"
    )
    if args.output is not None:
        print(f"wrote {args.output}")
    if args.json:
        h, w = image.shape[:2]
        write_sam_json(
            args.json,
            ImageRecord(
                id=args.image_id, file_name=str(args.image), height=h, width=w, masks=tuple(records)
            ),
        )
        print(f"wrote {args.json}")
    return 0
