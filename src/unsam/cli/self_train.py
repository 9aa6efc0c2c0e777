"""``unsam self-train --model RUN_DIR --annotations PSEUDO.json --images DIR -o NEW.json``.

One self-training round (spec §6.6, a documented reconstruction): the model predicts on every
training image; predictions scoring >= ``--score-thresh`` whose IoU with every mask already in the
image's set is < ``--iou-thresh`` are added to the pseudo-masks (``source="model"``).
The predictions are written first to ``NEW.predictions.json`` through the resumable runner (an
interrupted run resumes where it stopped: rerun the same command), then merged into ``NEW.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from unsam.cli.args import add_config_arguments, config_from_args
from unsam.training.selftrain import SelfTrainConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("data")
    g.add_argument("--model", required=True, metavar="RUN_DIR", help="trained model: run folder, model folder or .pth")
    g.add_argument(
        "--annotations", required=True, metavar="PSEUDO.json", help="current pseudo-labels (COCO dataset JSON)"
    )
    g.add_argument("--images", required=True, metavar="DIR", help="folder the JSON's file_name values are relative to")
    g.add_argument("-o", "--output", required=True, metavar="NEW.json", help="COCO dataset JSON to write")
    g.add_argument("--workers", type=int, default=1, help="prediction worker processes (default: 1)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_arguments(parser.add_argument_group("self-training settings"), SelfTrainConfig)
    from unsam.models.whole_image.segmenter import SegmentConfig

    add_config_arguments(parser.add_argument_group("segmenter settings"), SegmentConfig, prefix="segment-")


def run(args: argparse.Namespace) -> int:
    from unsam.cli.common import tqdm_progress
    from unsam.config import config_to_dict
    from unsam.io.coco import load_coco_dataset, write_coco_dataset
    from unsam.models.whole_image.segmenter import SegmentConfig, SegmenterProducer
    from unsam.runner import run_images
    from unsam.training.selftrain import add_model_masks

    config = config_from_args(SelfTrainConfig, args)
    segment = config_from_args(SegmentConfig, args, prefix="segment_")
    # predictions below the self-training threshold are never used: drop them in the segmenter
    segment = dataclasses.replace(segment, score_thresh=max(segment.score_thresh, config.score_thresh))
    pseudo = load_coco_dataset(args.annotations)
    root = Path(args.images)
    if not root.is_dir():
        raise FileNotFoundError(
            f"{root}: image folder not found (the folder {args.annotations}'s file_name values are relative to)"
        )
    missing_names = [img.id for img in pseudo if not img.file_name]
    if missing_names:
        raise ValueError(
            f"{args.annotations}: image id {missing_names[0]} has no file_name; self-training needs one per image"
        )
    names = {img.file_name: img.id for img in pseudo}
    paths = [root / str(img.file_name) for img in pseudo]
    output = Path(args.output)
    predictions_path = output.with_name(output.stem + ".predictions.json")
    progress, close = tqdm_progress("self-train", disable=args.no_progress)
    try:
        result = run_images(
            SegmenterProducer(args.model, segment),
            paths,
            root,
            predictions_path,
            image_ids=names,  # type: ignore[arg-type]
            workers=args.workers,
            progress=progress,
        )
    finally:
        close()
    predictions = {img.id: img.masks for img in load_coco_dataset(predictions_path)}
    merged, stats = add_model_masks(pseudo, predictions, config)
    info = {
        "description": "unsam self-train: pseudo-labels + confident model masks (one round)",
        "model": str(args.model),
        "annotations": str(args.annotations),
        "settings": {"self_train": config_to_dict(config), "segment": config_to_dict(segment)},
    }
    write_coco_dataset(output, merged, info=info)
    print(
        f"wrote {output}: {stats.images} images, {stats.base_masks} pseudo-masks + {stats.added_masks} model masks "
        f"({stats.dropped_masks} confident model masks overlapped existing ones; predictions in {predictions_path}; "
        f"{len(result.skipped)} unreadable image(s))"
    )
    return 0
