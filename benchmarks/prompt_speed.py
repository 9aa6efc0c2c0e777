"""Promptable model speed on CPU: encode once + cheap clicks vs the original's per-call recompute
vs SAM.

Measured in one run (random weights; speed does not depend on the values):

1. unsam ``swin_t`` (the paper's Swin-T promptable model) on a 1024x1024 RGB image
   (``PromptablePredictor(short_side=1024)``, padded 1024x1024):
   - ``set_image``: resize/normalise/pad + Swin-T + 6-layer deformable pixel decoder + the 9
     decoder layers' value projections (cached per image);
   - per click: ``decode_clicks`` alone (9 decoder layers + heads, 6 masks at 256²), then
     ``predict_logits`` (plus bilinear upsampling of the 6 masks to 1024²), then ``predict``
     (plus binarisation and 6 RLE-encoded MaskRecords).
2. The original's cost per click: Semantic-SAM's ``evaluate_demo`` recomputes the backbone and
   the pixel decoder on every call unless features are passed in (spec PROMPTABLE.md §2.2), so
   one click = a full forward (normalise + pad + encode + decode) of the same model.
3. transformers ``SamModel(SamConfig())`` (SAM ViT-B, random init): ``get_image_embeddings`` at
   1024², then one point through the prompt encoder + mask decoder (3 masks at 256², upsampled
   to 1024² as SAM's post-processing does).

Timings: set_image / image encoders: median of ``--image-repeats`` runs after one warm-up at
512 px (SAM: at 1024, it has a fixed input size; the warm-up is untimed). Click timings: median of
``--click-repeats`` runs after 2 warm-ups. Prints one JSON line with the numbers and the ratios
and writes benchmarks/results/prompt_speed.json.

Usage: .venv/bin/python benchmarks/prompt_speed.py [--image-repeats 2] [--click-repeats 10]
       [--threads N] [--skip-sam]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch
import torch.nn.functional as F
from common import write_result

from unsam.models.promptable import PromptableConfig, build_model
from unsam.models.promptable.layers import DEMO_BOX_FRACTION, click_boxes
from unsam.models.promptable.predictor import PromptablePredictor, torch_threads


def _median_time(fn, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _image(side: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    img = np.full((side, side, 3), 90, dtype=np.uint8)
    img[side // 4 : side // 2, side // 5 : side // 2] = (220, 40, 40)
    return np.clip(img + rng.integers(0, 50, size=img.shape), 0, 255).astype(np.uint8)


def bench_unsam(args: argparse.Namespace) -> dict[str, float]:
    torch.manual_seed(0)
    model = build_model(PromptableConfig.swin_t()).eval()
    predictor = PromptablePredictor(model, short_side=1024)
    predictor.short_side = 512
    predictor.set_image(_image(512))  # warm-up
    predictor.short_side = 1024
    image = _image(1024)
    set_image_s = _median_time(lambda: predictor.set_image(image), args.image_repeats, 0)
    state = predictor._require_state()
    point = [(300.0, 400.0)]
    pts = torch.tensor(point)

    def decode_only() -> None:
        with torch.inference_mode(), torch_threads(predictor.click_threads):
            model.decode_clicks(state, pts)

    decode_s = _median_time(decode_only, args.click_repeats, 2)
    logits_s = _median_time(lambda: predictor.predict_logits(point), args.click_repeats, 2)
    predict_s = _median_time(lambda: predictor.predict(point), args.click_repeats, 2)
    records = predictor.predict(point)[0]

    def full_forward() -> None:  # the original's path: everything recomputed for one click
        with torch.inference_mode():
            pixels = torch.from_numpy(image).permute(2, 0, 1)[None]
            padded = model.normalize_and_pad(pixels)
            boxes = click_boxes(pts, tuple(padded.shape[-2:]), (DEMO_BOX_FRACTION * 1024,) * 2)
            out = model(padded, boxes)
            F.interpolate(
                out.mask_logits, size=padded.shape[-2:], mode="bilinear", align_corners=False
            )

    full_s = _median_time(full_forward, args.image_repeats, 0)
    return {
        "unsam_set_image_s": set_image_s,
        "unsam_click_decode_ms": 1000 * decode_s,
        "unsam_click_logits_1024_ms": 1000 * logits_s,
        "unsam_click_predict_records_ms": 1000 * predict_s,
        "unsam_masks_per_click": len(records),
        "original_full_forward_per_click_s": full_s,
        "unsam_params_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }


def bench_sam(args: argparse.Namespace) -> dict[str, float]:
    from transformers import SamConfig, SamModel

    torch.manual_seed(0)
    sam = SamModel(SamConfig()).eval()
    pixels = torch.randn(1, 3, 1024, 1024)
    with torch.inference_mode():
        sam.get_image_embeddings(pixels)  # warm-up
    holder: dict[str, torch.Tensor] = {}

    def encode() -> None:
        with torch.inference_mode():
            holder["emb"] = sam.get_image_embeddings(pixels)

    encode_s = _median_time(encode, args.image_repeats, 0)
    points = torch.tensor([[[[300.0, 400.0]]]])
    labels = torch.tensor([[[1]]])

    def click() -> None:
        with torch.inference_mode():
            out = sam(
                image_embeddings=holder["emb"],
                input_points=points,
                input_labels=labels,
                multimask_output=True,
            )
            F.interpolate(
                out.pred_masks[0], size=(1024, 1024), mode="bilinear", align_corners=False
            )

    click_s = _median_time(click, args.click_repeats, 2)
    return {
        "sam_vitb_image_embeddings_s": encode_s,
        "sam_vitb_click_ms": 1000 * click_s,
        "sam_vitb_params_m": sum(p.numel() for p in sam.parameters()) / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-repeats", type=int, default=2)
    parser.add_argument("--click-repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-sam", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data: dict[str, float] = {"image_side": 1024}
    data.update(bench_unsam(args))
    if not args.skip_sam:
        data.update(bench_sam(args))
    click_s = data["unsam_click_predict_records_ms"] / 1000
    data["ratio_original_recompute_vs_unsam_click"] = (
        data["original_full_forward_per_click_s"] / click_s
    )
    data["target_click_ms_met"] = float(data["unsam_click_predict_records_ms"] <= 50.0)
    if "sam_vitb_click_ms" in data:
        data["ratio_sam_click_vs_unsam_click"] = (
            data["sam_vitb_click_ms"] / data["unsam_click_predict_records_ms"]
        )
        data["ratio_sam_encode_vs_unsam_set_image"] = (
            data["sam_vitb_image_embeddings_s"] / data["unsam_set_image_s"]
        )
    write_result("prompt_speed", {"settings": vars(args), **data})
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in data.items()}))


if __name__ == "__main__":
    main()
