"""``unsam segment IMAGES... --model RUN_DIR|HUB_ID|PTH -o PRED.json``: whole-image masks with a
trained model.

Writes a class-agnostic COCO dataset JSON (images with file names + scored annotations) that
``unsam eval --gt GT.json --pred PRED.json`` matches by file name. Runs are resumable (rerun the
same command) and shardable; unreadable images are skipped and reported.
"""

from __future__ import annotations

import argparse

from unsam.cli.args import add_config_arguments, config_from_args
from unsam.cli.common import (
    add_run_arguments,
    prepare_folder_run,
    run_folder,
)
from unsam.models.whole_image.loading import HUB_ID
from unsam.models.whole_image.producer import SegmenterProducer
from unsam.models.whole_image.segment_config import SegmentConfig
from unsam.runtime import add_device_arguments, resolve_device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", help="image files and/or folders of images")
    parser.add_argument(
        "--model",
        required=True,
        help=(
            "a training run folder, a save_pretrained folder, an official UnSAM .pth, or a hub id "
            f"({HUB_ID}); promptable:PATH runs the promptable model's point-grid automatic mask "
            "generator"
        ),
    )
    parser.add_argument(
        "-o", "--output", required=True, help="COCO dataset JSON to write (images + scored masks)"
    )
    add_run_arguments(parser)
    parser.set_defaults(overlay_min_score=0.5)  # as the original demo: confident masks only
    g = parser.add_argument_group("whole-image model settings")
    add_device_arguments(g)
    add_config_arguments(g, SegmentConfig, skip=("device", "dtype"))


def run(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    device = resolve_device(args.device)  # a CUDA request without CUDA fails before any work
    config = config_from_args(SegmentConfig, args, device=str(device))
    listing = prepare_folder_run(args)  # bad flags and outputs fail before any work
    if args.model.startswith(
        "promptable:"
    ):  # the promptable model's point-grid AMG (PROMPTABLE.md §4)
        from unsam.models.promptable.amg import PromptableAMGProducer

        producer = PromptableAMGProducer(
            args.model.removeprefix("promptable:"), device=device, dtype=args.dtype
        )
    else:
        producer = SegmenterProducer(args.model, config)
    # load (and convert / download) once, before the progress bar, so errors come first
    producer.setup()
    return run_folder(
        producer,
        listing.images,
        listing.root,
        args,
        desc="segment",
        info={"model": producer.settings()["model"]},
    )
