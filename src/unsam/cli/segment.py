"""``unsam segment IMAGES... --model RUN_DIR|HUB_ID|PTH -o PRED.json``: whole-image masks with a
trained model.

Writes a class-agnostic COCO dataset JSON (images with file names + scored annotations) that
``unsam eval --gt GT.json --pred PRED.json`` matches by file name. Runs are resumable (rerun the
same command) and shardable; unreadable images are skipped and reported.

``--model promptable:PATH`` runs the promptable model's point-grid automatic mask generator
instead; its settings are the ``--amg-*`` flags (refused for a whole-image model, as the
whole-image settings are for a promptable one), and the run summary says how many candidate masks
each AMG filter dropped.
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
    from unsam.models.promptable.amg import AMGConfig

    g = parser.add_argument_group(
        "promptable AMG settings (only with --model promptable:PATH; spec PROMPTABLE.md §4)"
    )
    add_config_arguments(g, AMGConfig, prefix=AMG_PREFIX)


#: Prefix of the promptable AMG's flags (``--amg-pred-iou-thresh`` ...).
AMG_PREFIX = "amg_"


def _set_flags(args: argparse.Namespace, config_cls: type, prefix: str = "") -> list[str]:
    """The ``--flags`` of ``config_cls`` the user set."""
    import dataclasses

    return [
        "--" + (prefix + f.name).replace("_", "-")
        for f in dataclasses.fields(config_cls)
        if hasattr(args, prefix + f.name)
    ]


def run(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    from unsam.models.promptable.amg import AMGConfig, PromptableAMGProducer

    device = resolve_device(args.device)  # a CUDA request without CUDA fails before any work
    promptable = args.model.startswith("promptable:")
    amg_flags = _set_flags(args, AMGConfig, AMG_PREFIX)
    if amg_flags and not promptable:
        raise ValueError(
            f"{', '.join(amg_flags)}: the --amg-* settings are for the promptable model's "
            "automatic mask generator (--model promptable:PATH), not for a whole-image model"
        )
    whole_flags = [f for f in _set_flags(args, SegmentConfig) if f not in ("--device", "--dtype")]
    if whole_flags and promptable:
        raise ValueError(
            f"{', '.join(whole_flags)}: whole-image model settings; the promptable AMG "
            "(--model promptable:PATH) takes the --amg-* settings"
        )
    config = config_from_args(SegmentConfig, args, device=str(device))
    amg = config_from_args(AMGConfig, args, prefix=AMG_PREFIX) if promptable else None
    listing = prepare_folder_run(args)  # bad flags and outputs fail before any work
    if promptable:  # the promptable model's point-grid AMG (PROMPTABLE.md §4)
        producer = PromptableAMGProducer(
            args.model.removeprefix("promptable:"), amg, device=device, dtype=args.dtype
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
