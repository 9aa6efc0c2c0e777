"""``unsam demo [--model M] [--whole-image M] [--port P] [--host 127.0.0.1]``: the interactive demo.

Opens a local web page: upload an image (or pick a bundled one), click on it and see the 6 masks
of the click with their predicted IoU; "Segment everything" shows the best masks of the whole
image; the masks download as a COCO JSON. Works with any of the models, or none (then clicks are
answered from divide-and-conquer masks on the weight-free classic features). The server listens on
127.0.0.1 by default and never opens a public share link.
"""

from __future__ import annotations

import argparse
import importlib.util
import os

INSTALL_HINT = 'the demo needs gradio: pip install "unsam[demo]" (or pip install gradio==6.31.0)'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        help="promptable model for clicks: a folder (unsam convert-checkpoint --kind promptable "
        "/ save_pretrained) or an official UnSAM promptable .pth (default: none; clicks "
        "pick from the segment-everything masks)",
    )
    parser.add_argument(
        "--whole-image",
        default=None,
        metavar="MODEL",
        help="whole-image model for 'Segment everything': a model folder, a training run folder "
        "or an official UnSAM .pth (default: the promptable model's automatic mask "
        "generator, else divide-and-conquer on classic features)",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: 127.0.0.1, this machine only)",
    )
    parser.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    from unsam.runtime import add_device_arguments

    add_device_arguments(parser)
    parser.add_argument(
        "--max-side",
        type=int,
        default=640,
        help="shrink images so their longest side is at most this many pixels; masks and the "
        "COCO JSON are at that size (default: 640)",
    )
    parser.add_argument(
        "--top-k", type=int, default=30, help="masks drawn by 'Segment everything' (default: 30)"
    )
    parser.add_argument(
        "--short-side",
        type=int,
        default=None,
        help="shortest side of the promptable model's input for clicks, pixels (default: the size "
        "a train-promptable run was trained at, else 640, the original demo)",
    )
    parser.add_argument(
        "--points-per-side",
        type=int,
        default=32,
        help="point grid of the promptable automatic mask generator (default: 32)",
    )


def run(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("gradio") is None:
        raise ImportError(INSTALL_HINT)
    if args.max_side is not None and args.max_side < 16:
        raise ValueError(f"--max-side {args.max_side}: expected at least 16 pixels")
    if not 0 < args.port < 65536:
        raise ValueError(f"--port {args.port}: expected a port number in 1..65535")
    if args.top_k < 1:
        raise ValueError(f"--top-k {args.top_k}: expected at least 1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from unsam.demo.app import build_demo, launch_demo
    from unsam.demo.backend import DemoBackend

    amg = None
    if args.model is not None and args.whole_image is None:
        from unsam.models.promptable.amg import AMGConfig

        amg = AMGConfig(points_per_side=args.points_per_side)
    backend = DemoBackend(
        args.model,
        args.whole_image,
        device=args.device,
        dtype=args.dtype,
        max_side=args.max_side,
        short_side="auto" if args.short_side is None else args.short_side,
        amg=amg,
    )  # bad model paths fail here, before the server starts
    demo = build_demo(backend, top_k=args.top_k)
    print(
        f"unsam demo: clicks {backend.click_source}; segment everything: "
        f"{backend.everything_source}"
    )
    print(f"unsam demo: open http://{args.host}:{args.port} (Ctrl+C to stop)")
    launch_demo(demo, host=args.host, port=args.port, block=True, quiet=True)
    return 0
