"""``unsam datasets convert NAME SRC -o GT.json``: class-agnostic COCO ground truth of the paper's
seven evaluation datasets (rules: :mod:`unsam.datasets.convert`)."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from unsam.datasets.convert import CONVERSION_RULES, DATASET_NAMES, convert_dataset
from unsam.io.files import atomic_write_json, check_output_file, check_outputs


def _epilog() -> str:
    def wrap(text: str, indent: str) -> str:
        return textwrap.fill(text, width=100, initial_indent=indent, subsequent_indent=indent)

    rules = "\n".join(
        textwrap.fill(
            f"{n}: {CONVERSION_RULES[n]}",
            width=100,
            initial_indent="  ",
            subsequent_indent="      ",
        )
        for n in DATASET_NAMES
    )
    return "\n".join(
        [
            wrap(
                'SRC and rule per dataset. Every mask becomes category 1 "object"; iscrowd is '
                "kept; polygons stay polygons, other RLE becomes compressed RLE; empty masks are "
                "dropped; images are sorted by id and annotation ids are image_id * 10^6 + k.",
                "",
            ),
            rules,
            "",
            wrap(
                "SA-1B has no validation split: the suite's rule is the first 1000 images by id "
                "(--max-images 1000) of an SA-1B tar not used for training.",
                "",
            ),
            wrap(
                "Layout read by `unsam eval-suite --data-root ROOT`: ROOT/<name>/gt.json, images "
                "in ROOT/<name>/images/. For example:",
                "",
            ),
            (
                "  unsam datasets convert coco instances_val2017.json -o ROOT/coco/gt.json \\\n"
                "      --images-dir ROOT/coco/images"
            ),
        ]
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="datasets_command", metavar="ACTION", required=True)
    p = sub.add_parser(
        "convert",
        help="write a dataset's class-agnostic COCO ground truth",
        description=(
            "Convert one of the paper's evaluation datasets, in its native format, into the "
            "class-agnostic COCO JSON that unsam eval / unsam eval-suite evaluate on."
        ),
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", choices=DATASET_NAMES, help="which dataset SRC is")
    p.add_argument("src", metavar="SRC", help="the dataset's annotation file or folder (see below)")
    p.add_argument(
        "-o", "--output", required=True, metavar="GT.json", help="ground-truth JSON to write"
    )
    p.add_argument(
        "--images-dir",
        metavar="DIR",
        help="keep only images present in DIR (matched by file name, else base name below "
        "DIR); file_name becomes relative to DIR",
    )
    p.add_argument(
        "--max-images", type=int, metavar="N", help="keep the first N images by image id"
    )
    p.add_argument(
        "--paco-annotations",
        choices=["parts", "objects", "all"],
        default="parts",
        help="PACO only: which annotations are evaluated (default: parts; a part "
        "annotation has id != obj_ann_id)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from unsam.cli.common import tqdm_progress

    if args.max_images is not None and args.max_images < 1:
        raise ValueError(f"--max-images must be >= 1, got {args.max_images}")
    out = check_output_file(args.output, "-o")
    src = Path(args.src)
    check_outputs(
        [("-o", out)],
        input_files=[src] if src.is_file() else [],
        input_dirs=[src] if src.is_dir() else [],
    )
    progress, close = tqdm_progress(f"convert {args.name}", disable=args.no_progress)
    try:
        dataset = convert_dataset(
            args.name,
            src,
            images_dir=args.images_dir,
            max_images=args.max_images,
            paco_annotations=args.paco_annotations,
            progress=progress,
        )
    finally:
        close()
    atomic_write_json(out, dataset)
    info = dataset["info"]
    extra = (
        f", {info['missing_images']} image(s) not in {args.images_dir}" if args.images_dir else ""
    )
    dropped = (
        f", {info['dropped_empty_masks']} empty mask(s) dropped"
        if info["dropped_empty_masks"]
        else ""
    )
    print(
        f"wrote {out}: {len(dataset['images'])} images, {len(dataset['annotations'])} masks"
        f"{dropped}{extra}"
    )
    return 0
