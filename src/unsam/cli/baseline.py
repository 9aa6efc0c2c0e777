"""``unsam baseline felzenszwalb|slic IMAGES_DIR -o PRED.json``: weight-free classical masks."""

from __future__ import annotations

import argparse

from unsam.baselines import BaselineConfig, BaselineProducer
from unsam.cli.args import add_config_arguments, config_from_args
from unsam.cli.common import (
    add_run_arguments,
    prepare_folder_run,
    run_folder,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "method", choices=["felzenszwalb", "slic"], help="classical segmentation algorithm"
    )
    parser.add_argument("images", help="folder of images (or one image)")
    parser.add_argument(
        "-o", "--output", required=True, help="COCO dataset JSON to write (with scores)"
    )
    add_run_arguments(parser)
    g = parser.add_argument_group("baseline settings")
    add_config_arguments(g, BaselineConfig, skip=("method",))  # the positional METHOD sets it


def run(args: argparse.Namespace) -> int:
    config = config_from_args(BaselineConfig, args, method=args.method)
    listing = prepare_folder_run(args)  # bad flags and outputs fail before any work
    return run_folder(
        BaselineProducer(config), listing.images, listing.root, args, desc=args.method
    )
