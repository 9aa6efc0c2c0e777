"""Draw docs/pipeline.png: one image through divide-and-conquer, one panel per stage.

Usage: python scripts/make_docs_figure.py [IMAGE] [--features classic] [-o docs/pipeline.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

import unsam
from unsam.io.overlay import draw_overlay, write_png
from unsam.masks import resize_image

REPO = Path(__file__).resolve().parents[1]


def panel(image: np.ndarray, title: str, width: int) -> np.ndarray:
    h, w = image.shape[:2]
    img = resize_image(image, (round(h * width / w), width))
    canvas = Image.new("RGB", (width, img.shape[0] + 28), "white")
    canvas.paste(Image.fromarray(img), (0, 28))
    ImageDraw.Draw(canvas).text((6, 8), title, fill="black")
    return np.asarray(canvas)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("image", nargs="?", default=str(REPO / "examples/coco/images/000000229358.jpg"))
    p.add_argument("--features", default="classic")
    p.add_argument("-o", "--output", default=str(REPO / "docs/pipeline.png"))
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--top-k", type=int, default=30, help="masks drawn per panel (the best-scoring)")
    args = p.parse_args()
    image = unsam.load_image(args.image)
    records = unsam.DivideAndConquer(features=args.features)(image)
    levels = sorted({r.level for r in records if r.level > 0})
    half = len(levels) // 2
    fine = [r for r in records if r.level in levels[:half]]
    coarse = [r for r in records if r.level in levels[half:]]
    divide = [r for r in records if r.level == 0 and r.source != "image"]
    k = args.top_k

    def shown(group: list) -> str:
        return f"best {min(k, len(group))} of {len(group)}"

    panels = [
        panel(image, "input", args.width),
        panel(
            draw_overlay(image, divide, top_k=k),
            f"divide: MaskCut regions ({len(divide)})",
            args.width,
        ),
        panel(
            draw_overlay(image, coarse, top_k=k),
            f"conquer: coarse parts ({shown(coarse)})",
            args.width,
        ),
        panel(
            draw_overlay(image, fine, top_k=k), f"conquer: fine parts ({shown(fine)})", args.width
        ),
    ]
    height = max(x.shape[0] for x in panels)
    row = np.concatenate(
        [
            np.pad(x, ((0, height - x.shape[0]), (0, 4), (0, 0)), constant_values=255)
            for x in panels
        ],
        axis=1,
    )
    write_png(args.output, row)
    print(f"wrote {args.output}: {len(records)} masks, features={args.features}")


if __name__ == "__main__":
    main()
