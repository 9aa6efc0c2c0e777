"""Naive transcriptions of CascadePSP's ``refine(fast=True)`` and UnSAM's ``postprocess``.

Written line by line from spec/CASCADEPSP.md §1-§2 (which cites ``[U] cascadepsp.py`` and
``[C] main.py`` / ``eval_helper.py``), in the original's order, with no batching and full-size
canvases. Does not import unsam. ``model`` is any callable ``(im, seg) -> pred_224``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def coco_bbox(mask: np.ndarray) -> tuple[float, float, float, float]:
    """pycocotools ``toBbox``: [x, y, w, h] with w = xmax - xmin + 1 (loops, no numpy tricks)."""
    h, w = mask.shape
    xs, ys = [], []
    for y in range(h):
        for x in range(w):
            if mask[y, x]:
                xs.append(x)
                ys.append(y)
    if not xs:
        return 0.0, 0.0, 0.0, 0.0
    return (
        float(min(xs)),
        float(min(ys)),
        float(max(xs) - min(xs) + 1),
        float(max(ys) - min(ys) + 1),
    )


def crop_bounds(mask: np.ndarray) -> tuple[int, int, int, int]:
    """``[U] cascadepsp.py:27-36``: x1r, y1r, x2r, y2r."""
    height, width = mask.shape
    x1, y1, w, h = coco_bbox(mask)
    xc = x1 + w / 2
    yc = y1 + h / 2
    longer_side = max(w, h)
    x1r = int(max(0, xc - longer_side))
    y1r = int(max(0, yc - longer_side))
    x2r = int(min(width, xc + longer_side))
    y2r = int(min(height, yc + longer_side))
    return x1r, y1r, x2r, y2r


def clamp_l(
    x1r: int, y1r: int, x2r: int, y2r: int, scale: float = 1, min_l: int = 100, max_l: int = 900
) -> int:
    """``[U] cascadepsp.py:41``."""
    return int(max(min(max(x2r - x1r, y2r - y1r) * scale, max_l), min_l))


def safe_forward(model: Model, im: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
    """``[C] eval_helper.py:13-45`` (fast mode: no inter_s8 / inter_s4)."""
    b, _, ph, pw = seg.shape
    if (ph % 8 != 0) or (pw % 8 != 0):
        new_h = (ph // 8 + 1) * 8
        new_w = (pw // 8 + 1) * 8
        p_im = torch.zeros(b, 3, new_h, new_w)
        p_seg = torch.zeros(b, 1, new_h, new_w) - 1
        p_im[:, :, 0:ph, 0:pw] = im
        p_seg[:, :, 0:ph, 0:pw] = seg
        im = p_im
        seg = p_seg
    pred = model(im, seg)
    return pred[:, :, 0:ph, 0:pw]


def resize_max_side(im: torch.Tensor, size: int, method: str) -> torch.Tensor:
    """``[C] eval_helper.py:4-11``."""
    h, w = im.shape[-2:]
    max_side = max(h, w)
    ratio = size / max_side
    if method in ("bilinear", "bicubic"):
        return F.interpolate(im, scale_factor=ratio, mode=method, align_corners=False)
    return F.interpolate(im, scale_factor=ratio, mode=method)


def process_im_single_pass(
    model: Model, image: torch.Tensor, seg: torch.Tensor, L: int
) -> torch.Tensor:
    """``[C] eval_helper.py:171-192``."""
    _, _, h, w = image.shape
    if max(h, w) < L:
        im_small = resize_max_side(image, L, "bicubic")
        seg_small = resize_max_side(seg, L, "bilinear")
    elif max(h, w) > L:
        im_small = resize_max_side(image, L, "area")
        seg_small = resize_max_side(seg, L, "area")
    else:
        im_small = image
        seg_small = seg
    pred = safe_forward(model, im_small, seg_small)
    if max(h, w) < L:
        pred = F.interpolate(pred, size=(h, w), mode="area")
    elif max(h, w) > L:
        pred = F.interpolate(pred, size=(h, w), mode="bilinear", align_corners=True)
    return pred


def refine(model: Model, image_u8: np.ndarray, mask_u8: np.ndarray, L: int) -> np.ndarray:
    """``[C] main.py:55-75`` with ``fast=True``: HxWx3 uint8 + HxW 0/255 uint8 -> HxW uint8."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    image = torch.from_numpy(np.ascontiguousarray(image_u8)).permute(2, 0, 1).float().div(255)
    image = ((image - mean) / std).unsqueeze(0)
    m = ((mask_u8 > 127).astype(np.uint8) * 255).astype(np.float32) / 255
    seg = ((torch.from_numpy(m) - 0.5) / 0.5).view(1, 1, *m.shape)
    with torch.no_grad():
        output = process_im_single_pass(model, image, seg, L)
    return (output[0, 0].cpu().numpy() * 255).astype("uint8")


def area(m: np.ndarray) -> float:
    return np.count_nonzero(m) / m.size


def iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.count_nonzero(np.logical_and(a, b))
    union = np.count_nonzero(a) + np.count_nonzero(b) - inter
    return inter / union if union else 0.0


def postprocess(
    model: Model,
    image: np.ndarray,
    masks: list[np.ndarray],
    min_area: float = 0.0,
    max_area: float = 0.9,
    iou_thresh: float = 0.5,
) -> list[np.ndarray | None]:
    """``[U] cascadepsp.py:17-64`` on decoded masks: refined full mask, or None when dropped."""
    height, width = image.shape[:2]
    out: list[np.ndarray | None] = []
    for mask in masks:
        mask = mask.astype(np.uint8)
        if not mask.any():  # UnSAM never stores an empty mask (coco_annotator.py:48-50); drop it
            out.append(None)
            continue
        x1r, y1r, x2r, y2r = crop_bounds(mask)
        image_crop = image[y1r:y2r, x1r:x2r, :]
        mask_crop = mask[y1r:y2r, x1r:x2r]
        L = clamp_l(x1r, y1r, x2r, y2r)
        refined = refine(model, image_crop, mask_crop * 255, L)
        refined = (refined > 128).astype(np.uint8)
        full = np.zeros((height, width), dtype=np.uint8)
        full[y1r:y2r, x1r:x2r] = refined
        if area(full) < min_area or area(full) > max_area:
            out.append(None)
            continue
        if iou(mask, full) < iou_thresh:
            out.append(None)
            continue
        out.append(full.astype(bool))
    return out


def adaptive_avg_pool_naive(x: np.ndarray, size: int) -> np.ndarray:
    """(C, H, W) -> (C, size, size): bin i spans [floor(i H / s), ceil((i + 1) H / s))."""
    c, h, w = x.shape
    out = np.zeros((c, size, size), dtype=np.float64)
    for i in range(size):
        y0, y1 = (i * h) // size, -((-(i + 1) * h) // size)
        for j in range(size):
            x0, x1 = (j * w) // size, -((-(j + 1) * w) // size)
            out[:, i, j] = x[:, y0:y1, x0:x1].mean(axis=(1, 2))
    return out


def bilinear_naive(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """(C, h, w) -> (C, out_h, out_w), ``align_corners=False`` (half-pixel centres, clamped at
    0)."""
    c, h, w = x.shape
    out = np.zeros((c, out_h, out_w), dtype=np.float64)
    for oy in range(out_h):
        sy = max((oy + 0.5) * h / out_h - 0.5, 0.0)
        y0 = int(np.floor(sy))
        y1 = min(y0 + 1, h - 1)
        ly = sy - y0
        for ox in range(out_w):
            sx = max((ox + 0.5) * w / out_w - 0.5, 0.0)
            x0 = int(np.floor(sx))
            x1 = min(x0 + 1, w - 1)
            lx = sx - x0
            out[:, oy, ox] = (1 - ly) * ((1 - lx) * x[:, y0, x0] + lx * x[:, y0, x1]) + ly * (
                (1 - lx) * x[:, y1, x0] + lx * x[:, y1, x1]
            )
    return out


def psp_naive(
    feats: np.ndarray,
    stage_weights: list[np.ndarray],
    bottleneck_w: np.ndarray,
    bottleneck_b: np.ndarray,
) -> np.ndarray:
    """PSPModule (spec §3.3) on (C, h, w): pool 1/2/3/6, 1x1 conv, upsample, concat, 1x1 conv,
    ReLU."""
    _, h, w = feats.shape
    priors = []
    for size, weight in zip((1, 2, 3, 6), stage_weights):
        pooled = adaptive_avg_pool_naive(feats, size)
        conv = np.einsum("oc,chw->ohw", weight[:, :, 0, 0], pooled)
        priors.append(bilinear_naive(conv, h, w))
    priors.append(feats.astype(np.float64))
    cat = np.concatenate(priors, axis=0)
    out = np.einsum("oc,chw->ohw", bottleneck_w[:, :, 0, 0], cat) + bottleneck_b[:, None, None]
    return np.maximum(out, 0.0)
