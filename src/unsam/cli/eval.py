"""``unsam eval --gt GT.json --pred PRED.json [--json OUT.json]``: class-agnostic COCO AR/AP."""

from __future__ import annotations

import argparse

from unsam.evaluation.ar import METRIC_KEYS, evaluate, format_metrics
from unsam.io.files import atomic_write_json, check_output_file, check_outputs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--gt",
        required=True,
        help="ground truth: COCO-style JSON, or a folder of SA-1B per-image JSONs",
    )
    parser.add_argument(
        "--pred",
        required=True,
        help="predictions: COCO results list or dataset JSON (pseudo-labels)",
    )
    parser.add_argument(
        "--json", metavar="OUT.json", help="also write the metrics as JSON (fractions in [0, 1])"
    )
    parser.add_argument(
        "--max-dets",
        default="1,10,100,1000",
        help="detections per image, ascending (default: 1,10,100,1000)",
    )
    parser.add_argument(
        "--iou-type",
        choices=["segm", "bbox"],
        default="segm",
        help="match masks (default) or boxes",
    )
    parser.add_argument(
        "--backend",
        choices=["faster-coco-eval", "pycocotools"],
        default="faster-coco-eval",
        help="COCOeval implementation (same numbers; pycocotools is slower)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        max_dets = [int(v) for v in args.max_dets.split(",") if v.strip()]
    except ValueError:
        raise ValueError(
            f"--max-dets must be comma-separated integers, got {args.max_dets!r}"
        ) from None
    if args.json:
        check_output_file(args.json, "--json")
        check_outputs([("--json", args.json)], input_files=[args.gt, args.pred])
    metrics = evaluate(
        args.gt, args.pred, max_dets=max_dets, iou_type=args.iou_type, backend=args.backend
    )
    print(
        format_metrics(
            metrics, title=f"class-agnostic {args.iou_type} metrics: {args.pred} vs {args.gt}"
        )
    )
    if args.json:
        keys = [k for k in metrics if k in METRIC_KEYS or k.startswith(("AR", "AP"))]
        atomic_write_json(args.json, {k: metrics[k] for k in keys}, indent=2)
        print(f"wrote {args.json}")
    return 0
