"""``unsam baseline felzenszwalb|slic IMAGES_DIR -o PRED.json``: weight-free classical masks."""

from __future__ import annotations

import argparse
from pathlib import Path

from unsam.baselines import BaselineConfig, BaselineProducer
from unsam.cli.args import add_config_arguments, config_from_args
from unsam.cli.common import add_run_arguments, list_inputs, print_run_summary, tqdm_progress, write_overlays
from unsam.runner import assign_image_ids, parse_shard, run_images


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("method", choices=["felzenszwalb", "slic"], help="classical segmentation algorithm")
    parser.add_argument("images", help="folder of images (or one image)")
    parser.add_argument("-o", "--output", required=True, help="COCO dataset JSON to write (with scores)")
    add_run_arguments(parser)
    g = parser.add_argument_group("baseline settings")
    add_config_arguments(g, BaselineConfig)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(BaselineConfig, args, method=args.method)
    listing = list_inputs(args.images, recursive=args.recursive)
    names = [listing.relative(p) for p in listing.images]
    ids = assign_image_ids(names, args.image_ids_from)
    progress, close = tqdm_progress(f"{args.method}", disable=args.no_progress)
    try:
        result = run_images(BaselineProducer(config), listing.images, listing.root, args.output,
                            image_ids=ids, shard=parse_shard(args.shard), workers=args.workers, progress=progress)
    finally:
        close()
    print_run_summary(result)
    if args.overlay_dir:
        n = write_overlays(Path(args.output), listing.root, args.overlay_dir)
        print(f"wrote {n} overlay PNG(s) to {args.overlay_dir}")
    return 0
