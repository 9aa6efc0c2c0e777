"""``unsam eval-suite --pred-dir DIR|--model M --data-root ROOT``: class-agnostic AR@1000 / AP on
the paper's seven datasets, printed in the paper's table layout next to its reported rows."""

from __future__ import annotations

import argparse
from pathlib import Path

from unsam.evaluation.suite import (
    DATASET_ORDER,
    dataset_images,
    dataset_paths,
    evaluate_suite,
    format_suite_table,
    model_tag,
    parse_dataset_names,
    predict_dataset,
    suite_to_json,
)
from unsam.io.files import atomic_write_json, check_output_file, check_outputs

_EPILOG = (
    "Layout: ROOT/<name>/gt.json (written by `unsam datasets convert`) and ROOT/<name>/images/, "
    f'<name> in {", ".join(DATASET_ORDER)}. Datasets without gt.json are listed as "not present" '
    '(a column of "–"). With --pred-dir, predictions are PRED_DIR/<name>.json (COCO results list '
    "or dataset JSON, matched by file name). With --model, the model segments each dataset's "
    "images into ROOT/<name>/pred_<model-name>.json (resumable: rerun to continue)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from unsam.cli.args import add_config_arguments
    from unsam.models.whole_image.segment_config import SegmentConfig

    parser.epilog = _EPILOG
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--pred-dir", metavar="DIR", help="folder holding <name>.json predictions")
    source.add_argument(
        "--model",
        metavar="M",
        help="a training run folder, save_pretrained folder, official .pth or hub id; "
        "its predictions are written to ROOT/<name>/pred_<model-name>.json",
    )
    parser.add_argument(
        "--data-root", required=True, metavar="ROOT", help="folder of prepared datasets"
    )
    parser.add_argument(
        "--datasets",
        metavar="LIST",
        help=f"comma-separated subset (default: all of {','.join(DATASET_ORDER)})",
    )
    parser.add_argument(
        "--json", metavar="OUT.json", help="also write the results as JSON (fractions)"
    )
    g = parser.add_argument_group("model runs (--model)")
    g.add_argument("--workers", type=int, default=1, help="worker processes (default: 1)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="start a dataset's predictions over when they were made with other settings",
    )
    add_config_arguments(
        parser.add_argument_group("whole-image model settings (--model)"), SegmentConfig
    )


def _predict(args: argparse.Namespace, names: tuple[str, ...]) -> dict[str, Path]:
    from unsam.cli.args import config_from_args
    from unsam.cli.common import print_run_summary, tqdm_progress
    from unsam.models.whole_image.producer import SegmenterProducer
    from unsam.models.whole_image.segment_config import SegmentConfig

    tag = model_tag(args.model)
    present = [n for n in names if dataset_paths(args.data_root, n)[0].is_file()]
    outputs = {n: Path(args.data_root) / n / f"pred_{tag}.json" for n in present}
    if not present:
        return outputs
    for name in present:  # every image is there before the model is loaded
        dataset_images(args.data_root, name)
    producer = SegmenterProducer(args.model, config_from_args(SegmentConfig, args))
    producer.setup()  # a missing model fails once, before any progress bar
    for name in present:
        progress, close = tqdm_progress(f"segment {name}", disable=args.no_progress)
        try:
            result = predict_dataset(
                producer,
                args.data_root,
                name,
                outputs[name],
                workers=args.workers,
                progress=progress,
                overwrite=args.overwrite,
            )
        finally:
            close()
        print_run_summary(result)
    return outputs


def run(args: argparse.Namespace) -> int:
    names = parse_dataset_names(args.datasets)
    root = Path(args.data_root)
    if not root.is_dir():
        raise NotADirectoryError(f"--data-root {root}: no such folder")
    if args.json:
        check_output_file(args.json, "--json")
    if args.model is not None:
        predictions = _predict(args, names)
    else:
        pred_dir = Path(args.pred_dir)
        if not pred_dir.is_dir():
            raise NotADirectoryError(f"--pred-dir {pred_dir}: no such folder")
        predictions = {n: pred_dir / f"{n}.json" for n in names}
    if args.json:
        inputs = [dataset_paths(root, n)[0] for n in names] + list(predictions.values())
        check_outputs([("--json", args.json)], input_files=inputs)
    entries = evaluate_suite(root, predictions, names)
    print(format_suite_table(entries))
    if args.json:
        atomic_write_json(args.json, suite_to_json(entries), indent=2)
        print(f"wrote {args.json}")
    return 0
