"""``unsam segment IMAGES... --model RUN_DIR|HUB_ID|PTH -o PRED.json``: whole-image masks with a trained model.

Writes a class-agnostic COCO dataset JSON (images with file names + scored annotations) that
``unsam eval --gt GT.json --pred PRED.json`` matches by file name. Runs are resumable (rerun the
same command) and shardable; unreadable images are skipped and reported.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from unsam.cli.args import add_config_arguments, config_from_args
from unsam.cli.common import add_run_arguments, list_inputs, run_folder
from unsam.models.whole_image.segmenter import HUB_ID, SegmentConfig, SegmenterProducer
from unsam.runner import parse_shard


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", help="image files and/or folders of images")
    parser.add_argument(
        "--model",
        required=True,
        help=f"a training run folder, a save_pretrained folder, an official UnSAM .pth, or a hub id ({HUB_ID})",
    )
    parser.add_argument("-o", "--output", required=True, help="COCO dataset JSON to write (images + scored masks)")
    parser.add_argument(
        "--overlay-min-score",
        type=float,
        default=0.5,
        help="overlays draw only masks scoring at least this, as the original demo (default: 0.5)",
    )
    add_run_arguments(parser)
    g = parser.add_argument_group("whole-image model settings")
    add_config_arguments(g, SegmentConfig)


def _collect_images(inputs: list[str], recursive: bool) -> tuple[Path, list[Path]]:
    """Sorted, de-duplicated image paths of all inputs and the folder their names are relative to."""
    listings = [list_inputs(p, recursive=recursive) for p in inputs]
    root = Path(os.path.commonpath([str(listing.root.resolve()) for listing in listings]))
    paths = {p.resolve() for listing in listings for p in listing.images}
    images = sorted(paths, key=lambda p: p.relative_to(root).as_posix())
    return root, images


def run(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    config = config_from_args(SegmentConfig, args)
    parse_shard(args.shard)  # bad flags fail before the model is loaded
    root, images = _collect_images(args.images, args.recursive)
    producer = SegmenterProducer(args.model, config)
    producer.setup()  # load (and convert / download) once, before the progress bar, so errors come first
    run_folder(producer, images, root, args, desc="segment", info={"model": producer.settings()["model"]},
               overlay_min_score=args.overlay_min_score)
    return 0
