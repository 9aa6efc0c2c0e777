"""Speed of the CutLER Cascade Mask R-CNN divide on CPU at the released 800/1333 test resize.

Random weights (no checkpoint needed), conditioned so that activations stay O(1) and every ROI
scores ≈ 0.88: the detector then returns the full 100 detections, the worst case for the mask
head and the pasting. One warm-up run, then ``--repeats`` timed runs of ``CutlerDetector.detect``
on one ``--height``×``--width`` photo (a bundled test image, upscaled). Prints one JSON line with
the median seconds per image, the median seconds per step (pre-processing, backbone+FPN, RPN,
box heads (3 cascade stages incl. final NMS), mask head, paste) and the peak RSS.

Usage: .venv/bin/python benchmarks/cutler_speed.py [--repeats 3] [--height 480 --width 640]
Writes benchmarks/results/cutler_speed.json.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

import numpy as np
import torch
from common import peak_rss_bytes, write_result
from PIL import Image

from unsam.divide.cutler import (
    CascadeMaskRCNN,
    CutlerConfig,
    CutlerDetector,
    resize_shape,
)
from unsam.divide.cutler.model import ConvNorm


def conditioned_random_model(seed: int) -> CascadeMaskRCNN:
    """Weights ~ N(0, 1/fan_in), damped residual branches, foreground bias 2, mask bias 1."""
    g = torch.Generator().manual_seed(seed)
    model = CascadeMaskRCNN()
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.ConvTranspose2d)):
                fan_in = (
                    mod.weight.shape[0]
                    if isinstance(mod, torch.nn.ConvTranspose2d)
                    else (mod.weight[0].numel())
                )
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) / math.sqrt(fan_in))
                if mod.bias is not None:
                    mod.bias.zero_()
            if isinstance(mod, ConvNorm) and name.endswith("conv3"):
                mod.norm.weight.fill_(0.3)
        for pred in model.box_predictors:
            pred.cls_score.weight.mul_(0.01)
            pred.cls_score.bias.copy_(torch.tensor([2.0, 0.0]))
            pred.bbox_pred.weight.mul_(0.01)
        model.mask_head.predictor.weight.mul_(0.01)
        model.mask_head.predictor.bias.fill_(1.0)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    photo = Image.open(REPO / "tests" / "data" / "images" / "astronaut.jpg").convert("RGB")
    image = np.asarray(photo.resize((args.width, args.height), Image.BICUBIC))
    config = CutlerConfig()
    detector = CutlerDetector(conditioned_random_model(args.seed), config, device=args.device)

    detector.detect(image)  # warm-up
    totals, steps = [], {}
    num = 0
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        dets = detector.detect(image)
        totals.append(time.perf_counter() - t0)
        num = len(dets)
        for key, value in detector.last_timings.items():
            steps.setdefault(key, []).append(value)
    peak_rss_mb = peak_rss_bytes() / 2**20
    result = {
        "image_hw": [args.height, args.width],
        "network_input_hw": [-(-v // 32) * 32 for v in resize_shape(image.shape[:2], 800, 1333)],
        "device": args.device,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "detections": num,
        "seconds_per_image": round(statistics.median(totals), 3),
        "seconds_per_step": {
            k: round(statistics.median(v), 3) for k, v in steps.items() if k != "total"
        },
        "peak_rss_mb": round(peak_rss_mb, 1),
    }
    print(json.dumps(result))
    write_result("cutler_speed", result)


if __name__ == "__main__":
    main()
