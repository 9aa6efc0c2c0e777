"""``unsam pseudo-label IMAGES_DIR -o OUT.json``: divide-and-conquer pseudo-labels, resumable.

Each finished image is appended to ``OUT.json.work.jsonl``; rerunning the same command after an
interruption continues where it stopped and writes the same file an uninterrupted run would.
"""

from __future__ import annotations

import argparse
from typing import Any

from unsam.cli.args import add_config_arguments, config_from_args, given_fields
from unsam.cli.common import (
    add_run_arguments,
    prepare_folder_run,
    run_folder,
)
from unsam.conquer.region import ConquerConfig
from unsam.divide.maskcut import MaskCutConfig
from unsam.features.base import FeatureConfig
from unsam.pipeline import DicoProducer, PipelineConfig
from unsam.refine.crf import RefineConfig
from unsam.runtime import add_device_arguments

NESTED = (
    ("feature", "feature_", FeatureConfig),
    ("maskcut", "maskcut_", MaskCutConfig),
    ("conquer", "conquer_", ConquerConfig),
    ("refine", "refine_", RefineConfig),
)


class _RefineAction(argparse.Action):
    """``--refine none|crf|cascadepsp|cascadepsp:PATH`` -> refine_method (+
    refine_cascadepsp_weights)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        method, sep, path = str(values).partition(":")
        if method not in ("none", "crf", "cascadepsp") or (
            sep and (method != "cascadepsp" or not path)
        ):
            parser.error(
                f"argument --refine: invalid choice {values!r} (choose none, crf, cascadepsp or "
                "cascadepsp:PATH, where PATH is the CascadePSP weights file 'model')"
            )
        namespace.refine_method = method
        if path:
            namespace.refine_cascadepsp_weights = path


def add_pipeline_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of PipelineConfig and its stage configs (--maskcut-*, --conquer-*, --refine-*)."""
    g = parser.add_argument_group("pipeline")
    # --device / --dtype: the shared rule of every command (unsam.runtime), PipelineConfig fields
    add_config_arguments(g, PipelineConfig, skip=("explicit", "device", "dtype"))
    add_device_arguments(g)
    g.add_argument(
        "--refine",
        dest="refine_method",
        action=_RefineAction,
        default=argparse.SUPPRESS,
        metavar="{none,crf,cascadepsp,cascadepsp:PATH}",
        help="shorthand for --refine-method (default: none); cascadepsp:PATH also sets "
        "--refine-cascadepsp-weights PATH",
    )
    for name, prefix, cls in NESTED:  # each stage's flags in its own group, nested CRF ones too
        group = parser.add_argument_group(f"{name} ({cls.__doc__.splitlines()[0]})")
        add_config_arguments(group, cls, prefix=prefix, recurse=True)


def pipeline_config_from_args(args: argparse.Namespace) -> PipelineConfig:
    """The pipeline settings of the flags given; those flags are recorded as ``explicit``, so a
    preset (``--preset released``, the classic features') never overrides them."""
    # --device / --dtype always carry a value (unsam.runtime's defaults); no preset sets them
    skip = ("explicit", "device", "dtype")
    given = tuple(name for name in given_fields(PipelineConfig, args) if name not in skip)
    return config_from_args(PipelineConfig, args, explicit=given)  # stage configs: prefixed flags


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "images", help="folder of images (sorted; other files are skipped and reported)"
    )
    parser.add_argument("-o", "--output", required=True, help="COCO dataset JSON to write")
    add_run_arguments(parser)
    add_pipeline_arguments(parser)


def run(args: argparse.Namespace) -> int:
    config = pipeline_config_from_args(args)
    listing = prepare_folder_run(args)  # bad flags and outputs fail before any work
    producer = DicoProducer(config)
    # load weights in this process first: errors surface at once, before any worker
    producer.setup()
    return run_folder(producer, listing.images, listing.root, args, desc="pseudo-label")
