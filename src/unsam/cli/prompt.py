"""``unsam prompt IMAGE --point X,Y [--point ...] --model M -o OUT.json [--overlay out.png]``.

Runs the promptable model on clicks: each click gives 6 masks of increasing granularity with a
predicted IoU. The JSON is an SA-1B / SAM-style per-image file (``image`` + ``annotations``); each
annotation carries its click in ``point_coords`` and its token in ``level`` (1..6). The overlay
shows one row per click and one column per granularity.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from unsam.records import MaskRecord

if TYPE_CHECKING:
    from unsam.models.promptable.config import PromptableConfig

#: Largest side of one overlay panel, pixels.
PANEL_SIDE = 320


def _point(text: str) -> tuple[float, float]:
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--point {text!r}: expected X,Y in pixels, e.g. 120,85"
        ) from None
    return x, y


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # "--point -5,10": argparse takes "-5,10" for an option unless it looks like a negative
    # number; this command has no option that does, so any "-<digit>..." is a value (Python 3.13's
    # own rule), and a click outside the image gets its own error.
    parser._negative_number_matcher = re.compile(r"^-\.?\d")
    parser.add_argument("image", help="image file")
    parser.add_argument(
        "--point",
        type=_point,
        action="append",
        required=True,
        metavar="X,Y",
        help="a click in pixels of the image (repeat for more clicks)",
    )
    parser.add_argument(
        "--model",
        required=True,
        help="a folder written by `unsam convert-checkpoint --kind promptable` or "
        "save_pretrained, or an official UnSAM promptable .pth",
    )
    parser.add_argument(
        "-o", "--output", required=True, help="JSON file to write (SAM-style masks)"
    )
    parser.add_argument(
        "--overlay", metavar="PNG", help="also write an overlay: one row per click, 6 granularities"
    )
    parser.add_argument(
        "--image-id", type=int, default=0, help="image id stored in the records (default: 0)"
    )
    from unsam.runtime import add_device_arguments

    add_device_arguments(parser)
    parser.add_argument(
        "--config",
        default=None,
        help="model size of an official .pth: swin_t (default), tiny or a config.json",
    )
    g = parser.add_argument_group("click settings")
    g.add_argument(
        "--short-side",
        type=int,
        default=None,
        help="shortest side of the model input, pixels (original demo: 640; evaluation: 800); "
        "default: the size a train-promptable run was trained at (the image fitted into that "
        "square), else 640",
    )
    g.add_argument(
        "--box-size",
        type=float,
        default=None,
        help=(
            "click box side in model-input pixels (training/evaluation: 6; default: 0.005 of the "
            "image side)"
        ),
    )
    g.add_argument(
        "--joint",
        action="store_true",
        help="decode the clicks jointly as the original demo (they then influence each other)",
    )
    g.add_argument(
        "--iou-thresh",
        type=float,
        default=None,
        help="drop masks with predicted IoU below this (original demo: 0.5; default: keep all 6)",
    )
    g.add_argument(
        "--dedup-iou-thresh",
        type=float,
        default=None,
        help="drop a mask whose IoU with a kept one exceeds this (original demo: 0.95)",
    )
    g.add_argument(
        "--min-region-area",
        type=int,
        default=0,
        help="fill holes / remove islands smaller than this many pixels (original demo: 100)",
    )


def promptable_config(value: str | None) -> PromptableConfig | None:
    """``swin_t`` / ``tiny`` / a config.json path -> PromptableConfig; None stays None (default
    size)."""
    from unsam.models.promptable.config import CONFIG_NAMES, PromptableConfig

    if value is None:
        return None
    if value in CONFIG_NAMES:
        return PromptableConfig.named(value)  # type: ignore[arg-type]
    return PromptableConfig.load(value)


def click_overlay(
    image: npt.NDArray[np.uint8], clicks: list[list[MaskRecord]], points: list[tuple[float, float]]
) -> npt.NDArray[np.uint8]:
    """One row per click, one panel per mask (token order), each labelled ``L<level> iou=<value>``.

    Returns:
        (rows·h, 6·w, 3) uint8 RGB, panels downscaled so their longest side is <= PANEL_SIDE.
    """
    import cv2

    from unsam.io.overlay import draw_overlay

    h, w = image.shape[:2]
    scale = min(1.0, PANEL_SIDE / max(h, w))
    ph, pw = max(1, round(h * scale)), max(1, round(w * scale))
    cols = max(1, max((len(c) for c in clicks), default=1))
    canvas = np.full((len(clicks) * ph, cols * pw, 3), 255, dtype=np.uint8)
    for row, (records, (x, y)) in enumerate(zip(clicks, points, strict=True)):
        for col, rec in enumerate(records):
            panel = draw_overlay(image, [rec], alpha=0.55)
            panel = cv2.resize(panel, (pw, ph), interpolation=cv2.INTER_AREA)
            cx, cy = round(x * scale), round(y * scale)
            cv2.rectangle(panel, (cx - 3, cy - 3), (cx + 3, cy + 3), (255, 0, 0), -1)
            label = f"L{rec.level} iou={rec.predicted_iou:.2f}"
            cv2.rectangle(panel, (0, 0), (min(pw, 8 * len(label) + 6), 16), (0, 0, 0), -1)
            cv2.putText(
                panel,
                label,
                (3, 12),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.4,
                (255, 255, 255),
                1,
                cv2.LINE_AA,
            )
            canvas[row * ph : (row + 1) * ph, col * pw : (col + 1) * pw] = panel
    return canvas


def run(args: argparse.Namespace) -> int:
    from unsam.io.coco import write_sam_json
    from unsam.io.files import check_output_file, check_outputs
    from unsam.io.images import load_image
    from unsam.io.overlay import write_png
    from unsam.models.promptable.predictor import PromptablePredictor
    from unsam.records import ImageRecord
    from unsam.runtime import resolve_device

    if args.overlay is not None and not str(args.overlay).lower().endswith(".png"):
        raise ValueError(
            f"--overlay {args.overlay}: the overlay is a PNG; give a file name ending in .png"
        )
    for flag, path in (("-o", args.output), ("--overlay", args.overlay)):
        if path is not None:
            check_output_file(path, flag)
    check_outputs([("-o", args.output), ("--overlay", args.overlay)], input_files=[args.image])
    device = resolve_device(args.device)  # a CUDA request without CUDA fails before any work
    image = load_image(args.image)
    h, w = image.shape[:2]
    for x, y in args.point:
        if not (0 <= x < w and 0 <= y < h):
            raise ValueError(f"--point {x:g},{y:g} is outside the {w}x{h} image {args.image}")
    predictor = PromptablePredictor.from_pretrained(
        args.model,
        device=device,
        dtype=args.dtype,
        config=promptable_config(args.config),
        short_side="auto" if args.short_side is None else args.short_side,
    )
    predictor.set_image(image, image_id=args.image_id)
    clicks = predictor.predict(
        args.point,
        independent=not args.joint,
        box_size=args.box_size,
        iou_thresh=args.iou_thresh,
        dedup_iou_thresh=args.dedup_iou_thresh,
        min_region_area=args.min_region_area,
    )
    records = [r for click in clicks for r in click]
    write_sam_json(
        args.output,
        ImageRecord(
            id=args.image_id, file_name=str(args.image), height=h, width=w, masks=tuple(records)
        ),
    )
    if args.overlay is not None:
        write_png(args.overlay, click_overlay(image, clicks, list(args.point)))
    summary = "; ".join(
        f"click {i} ({x:g},{y:g}): " + ", ".join(f"L{r.level} {r.predicted_iou:.2f}" for r in click)
        for i, (click, (x, y)) in enumerate(zip(clicks, args.point, strict=True))
    )
    print(f"{args.image}: {len(records)} masks for {len(clicks)} click(s) [{summary}]")
    print(f"wrote {Path(args.output)}" + (f" and {args.overlay}" if args.overlay else ""))
    return 0
