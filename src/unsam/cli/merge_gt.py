"""``unsam merge-gt GT.json PSEUDO.json -o MERGED.json [--iou-thresh 0.02]``: UnSAM+ training
targets.

All ground-truth masks (``source="gt"``) plus the pseudo-masks whose IoU with every ground-truth
mask of their image is below the threshold (spec §6.6). Images are matched by file name, else id.
GT may be a COCO dataset JSON or a folder of SA-1B per-image JSONs.
"""

from __future__ import annotations

import argparse

from unsam.cli.args import add_config_arguments, config_from_args
from unsam.training.whole_image.selftrain import MergeGTConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "gt", metavar="GT.json", help="ground truth: COCO dataset JSON or SA-1B JSON folder"
    )
    parser.add_argument(
        "pseudo",
        metavar="PSEUDO.json",
        help="pseudo-labels: COCO dataset JSON (unsam pseudo-label)",
    )
    parser.add_argument(
        "-o", "--output", required=True, metavar="MERGED.json", help="COCO dataset JSON to write"
    )
    add_config_arguments(parser.add_argument_group("merge settings"), MergeGTConfig)


def run(args: argparse.Namespace) -> int:
    from unsam.config import config_to_dict
    from unsam.io.coco import load_mask_sets, write_coco_dataset
    from unsam.training.whole_image.selftrain import merge_ground_truth

    config = config_from_args(MergeGTConfig, args)
    gt = load_mask_sets(args.gt)
    pseudo = load_mask_sets(args.pseudo)
    merged, stats = merge_ground_truth(gt, pseudo, config)
    info = {
        "description": (
            "unsam merge-gt: ground truth + pseudo-masks overlapping no GT mask (UnSAM+)"
        ),
        "gt": str(args.gt),
        "pseudo": str(args.pseudo),
        "settings": config_to_dict(config),
    }
    write_coco_dataset(args.output, merged, info=info)
    print(
        f"wrote {args.output}: {stats.images} images, {stats.base_masks} GT masks + "
        f"{stats.added_masks} pseudo-masks ({stats.dropped_masks} pseudo-masks overlapped GT, "
        f"{config.overlap} >= {config.iou_thresh}; {stats.unmatched_images} pseudo image(s) "
        "without GT)"
    )
    return 0
