"""Loop-by-loop references of the CutLER detector ops (CUTLER_DETECTOR.md §4), numpy float32.

Transcribed from the spec's semantics of torchvision's CPU kernels and detectron2's box coder /
mask paste, one box, bin, sample and pixel at a time. Independent of unsam (never import it).
"""

from __future__ import annotations

import math

import numpy as np

f32 = np.float32


def roi_align_naive(
    feature: np.ndarray,
    box: tuple[float, float, float, float],
    output_size: int,
    spatial_scale: float,
    sampling_ratio: int = 0,
    aligned: bool = True,
) -> np.ndarray:
    """ROIAlign of one box on one ``(C, H, W)`` map → ``(C, P, P)`` float32 (spec §4.1)."""
    c = feature.shape[0]
    p = output_size
    scale = f32(spatial_scale)
    offset = f32(0.5) if aligned else f32(0.0)
    x0, y0, x1, y1 = (f32(v) for v in box)
    start_x = x0 * scale - offset
    start_y = y0 * scale - offset
    end_x = x1 * scale - offset
    end_y = y1 * scale - offset
    roi_w = end_x - start_x
    roi_h = end_y - start_y
    if not aligned:
        roi_w = max(roi_w, f32(1.0))
        roi_h = max(roi_h, f32(1.0))
    bin_h = roi_h / f32(p)
    bin_w = roi_w / f32(p)
    gh = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / f32(p))
    gw = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / f32(p))
    count = f32(max(gh * gw, 1))
    out = np.zeros((c, p, p), dtype=f32)
    for ph in range(p):
        for pw in range(p):
            acc = np.zeros(c, dtype=f32)
            for iy in range(gh):
                y = start_y + f32(ph) * bin_h + (f32(iy + 0.5) * bin_h) / f32(gh)
                for ix in range(gw):
                    x = start_x + f32(pw) * bin_w + (f32(ix + 0.5) * bin_w) / f32(gw)
                    acc = acc + _bilinear(feature, y, x)
            out[:, ph, pw] = acc / count
    return out


def _bilinear(feature: np.ndarray, y: np.float32, x: np.float32) -> np.ndarray:
    _, height, width = feature.shape
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return np.zeros(feature.shape[0], dtype=f32)
    y = max(y, f32(0))
    x = max(x, f32(0))
    y_lo = int(y)
    x_lo = int(x)
    if y_lo >= height - 1:
        y_hi = y_lo = height - 1
        y = f32(y_lo)
    else:
        y_hi = y_lo + 1
    if x_lo >= width - 1:
        x_hi = x_lo = width - 1
        x = f32(x_lo)
    else:
        x_hi = x_lo + 1
    ly = y - f32(y_lo)
    lx = x - f32(x_lo)
    hy = f32(1) - ly
    hx = f32(1) - lx
    return (
        hy * hx * feature[:, y_lo, x_lo]
        + hy * lx * feature[:, y_lo, x_hi]
        + ly * hx * feature[:, y_hi, x_lo]
        + ly * lx * feature[:, y_hi, x_hi]
    )


def iou_naive(a: np.ndarray, b: np.ndarray) -> np.float32:
    """IoU of two XYXY boxes with the torchvision NMS kernel's float32 formula."""
    a = a.astype(f32)
    b = b.astype(f32)
    w = max(f32(0), min(a[2], b[2]) - max(a[0], b[0]))
    h = max(f32(0), min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter / (area_a + area_b - inter)


def nms_naive(boxes: np.ndarray, scores: np.ndarray, iou_thresh: float) -> list[int]:
    """Greedy NMS: visit by descending score (ties by index), drop later boxes with IoU > thr."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    suppressed = set()
    keep = []
    for pos, i in enumerate(order):
        if i in suppressed:
            continue
        keep.append(i)
        for j in order[pos + 1 :]:
            if j not in suppressed and iou_naive(boxes[i], boxes[j]) > iou_thresh:
                suppressed.add(j)
    return keep


def batched_nms_naive(
    boxes: np.ndarray, scores: np.ndarray, groups: np.ndarray, iou_thresh: float
) -> list[int]:
    """NMS inside each group, all kept indices by descending score (ties by index)."""
    kept = []
    for g in sorted(set(groups.tolist())):
        idx = [i for i in range(len(groups)) if groups[i] == g]
        kept += [idx[k] for k in nms_naive(boxes[idx], scores[idx], iou_thresh)]
    return sorted(kept, key=lambda i: (-float(scores[i]), i))


def decode_naive(
    delta: np.ndarray,
    box: np.ndarray,
    weights: tuple[float, float, float, float],
    scale_clamp: float = math.log(1000.0 / 16),
) -> np.ndarray:
    """detectron2 ``apply_deltas`` for one box, float32 scalars."""
    dx, dy, dw, dh = (f32(v) for v in delta)
    x0, y0, x1, y1 = (f32(v) for v in box)
    wx, wy, ww, wh = (f32(v) for v in weights)
    width = x1 - x0
    height = y1 - y0
    cx = x0 + f32(0.5) * width
    cy = y0 + f32(0.5) * height
    dx, dy = dx / wx, dy / wy
    dw = min(dw / ww, f32(scale_clamp))
    dh = min(dh / wh, f32(scale_clamp))
    pcx = dx * width + cx
    pcy = dy * height + cy
    pw = f32(np.exp(dw)) * width
    ph = f32(np.exp(dh)) * height
    return np.array(
        [pcx - f32(0.5) * pw, pcy - f32(0.5) * ph, pcx + f32(0.5) * pw, pcy + f32(0.5) * ph], f32
    )


def paste_values_naive(mask: np.ndarray, box: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
    """Value each image pixel samples from an ``(M, M)`` mask pasted into ``box`` → ``(H, W)``.

    Pixel centre ``(j + .5, i + .5)`` → normalised box coordinate in [-1, 1] → bilinear sample of
    the mask with ``align_corners=False`` and zeros outside (``grid_sample`` semantics).
    """
    height, width = image_hw
    m_h, m_w = mask.shape
    x0, y0, x1, y1 = (f32(v) for v in box)
    out = np.zeros((height, width), dtype=f32)
    for i in range(height):
        gy = (f32(i + 0.5) - y0) / (y1 - y0) * f32(2) - f32(1)
        sy = ((gy + f32(1)) * f32(m_h) - f32(1)) / f32(2)
        for j in range(width):
            gx = (f32(j + 0.5) - x0) / (x1 - x0) * f32(2) - f32(1)
            sx = ((gx + f32(1)) * f32(m_w) - f32(1)) / f32(2)
            ix0, iy0 = math.floor(sx), math.floor(sy)
            tx, ty = sx - f32(ix0), sy - f32(iy0)
            val = f32(0)
            for yy, wy in ((iy0, f32(1) - ty), (iy0 + 1, ty)):
                for xx, wx in ((ix0, f32(1) - tx), (ix0 + 1, tx)):
                    if 0 <= yy < m_h and 0 <= xx < m_w:
                        val += wy * wx * mask[yy, xx]
            out[i, j] = val
    return out
