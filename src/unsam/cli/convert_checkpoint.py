"""``unsam convert-checkpoint UNSAM.pth -o HF_DIR``: official UnSAM whole-image .pth -> transformers
folder."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint", help="official UnSAM whole-image checkpoint (detectron2 Mask2Former R50 .pth)"
    )
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        help="folder to write (safetensors + config.json + preprocessing)",
    )
    parser.add_argument(
        "--num-queries",
        type=int,
        default=None,
        help="expected number of queries (default: read from the checkpoint; UnSAM: 2000)",
    )
    parser.add_argument(
        "--kind",
        choices=("whole-image", "promptable"),
        default="whole-image",
        help=(
            "whole-image (Mask2Former R50, default) or promptable (Semantic-SAM Swin-T) checkpoint"
        ),
    )
    parser.add_argument(
        "--size",
        default=None,
        help="promptable only: model size swin_t (default), tiny, or a config.json",
    )


def run(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    from unsam.models.whole_image.convert import convert_checkpoint

    hf_logging.disable_progress_bar()
    if args.kind == "promptable":
        from unsam.cli.prompt import promptable_config
        from unsam.models.promptable.convert import convert_checkpoint as convert_promptable

        out = convert_promptable(args.checkpoint, args.output, promptable_config(args.size))
        print(
            f"wrote {out}: load it with `unsam prompt IMAGE --point X,Y --model {out}` or "
            f"unsam.PromptablePredictor.from_pretrained({str(out)!r})"
        )
        return 0
    out = convert_checkpoint(args.checkpoint, args.output, num_queries=args.num_queries)
    print(
        f"wrote {out}: load it with `unsam segment IMAGES --model {out}` or "
        f"unsam.WholeImageSegmenter.from_pretrained({str(out)!r})"
    )
    return 0
