"""Detection ops of the CutLER Cascade Mask R-CNN as pure, vectorised torch functions.

Each op reproduces the detectron2 / torchvision kernel the released detector runs
(spec ``CUTLER_DETECTOR.md`` §4): ``roi_align`` (torchvision ``roi_align``, aligned, adaptive
sampling), ``nms`` / ``batched_nms`` (torchvision CPU kernel), ``decode_boxes`` / ``encode_boxes``
(detectron2 ``Box2BoxTransform``), ``paste_masks_in_image`` (detectron2 ``mask_ops``),
``clip_boxes``, ``assign_boxes_to_levels`` (detectron2 ``poolers``). All boxes are XYXY float32
in absolute pixels. The naive loop references live in ``tests/reference/cutler_ops_naive.py``.

Two ROIAlign implementations give the same values (up to float summation order):

- :func:`roi_align` (the CPU choice): one sparse CSR matrix of bilinear weights per chunk of
  boxes, times the ``(N·H·W, C)`` feature rows; it enumerates the data-dependent number of samples
  of every bin, so it reads the sample counts on the host.
- :func:`roi_align_separable` (the GPU choice): the bilinear average of a bin factorises into a
  ``y`` weight row times an ``x`` weight row, so ``out[r] = Wy[r] @ F @ Wx[r]ᵀ`` with dense
  ``(P, H)`` and ``(P, W)`` weight matrices built from a static sample bound: batched matrix
  products and a scatter-add, no host round trip and no data-dependent shape.
  :func:`multilevel_roi_align` on CUDA folds the FPN level choice into the weights (zero rows for
  the other levels) instead of indexing the boxes of each level.

Coordinates, sample positions and bilinear weights are float32 in both (a bf16 box corner near
1000 px is only known to 4 px); the features are upcast to float32 for the average.

Length: the two ROIAlign implementations share torchvision's sampling rules and are tested
against each other and the naive reference; splitting them would separate the CPU and GPU paths of
one op. The other ops are short.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

from unsam.masks import batched_box_nms, box_nms

__all__ = [
    "SCALE_CLAMP",
    "assign_boxes_to_levels",
    "batched_nms",
    "box_area",
    "clip_boxes",
    "decode_boxes",
    "encode_boxes",
    "multilevel_roi_align",
    "nms",
    "nonempty_boxes",
    "paste_masks_in_image",
    "roi_align",
    "roi_align_separable",
    "separable_max_grid",
]

#: Upper clamp of the predicted log-scale deltas dw, dh (detectron2 ``_DEFAULT_SCALE_CLAMP``).
SCALE_CLAMP = math.log(1000.0 / 16)

# Bilinear samples per roi_align chunk: bounds its index memory (~100 bytes per sample).
_ROI_ALIGN_CHUNK = 1 << 20


def _check_boxes(boxes: torch.Tensor, name: str = "boxes") -> None:
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name} must be (N, 4) XYXY, got shape {tuple(boxes.shape)}")


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Areas ``(x1 - x0) * (y1 - y0)`` of ``(N, 4)`` XYXY boxes → ``(N,)`` (same dtype)."""
    _check_boxes(boxes)
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def clip_boxes(boxes: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
    """Clip ``(N, 4)`` XYXY boxes to ``x ∈ [0, w]``, ``y ∈ [0, h]`` (detectron2 ``Boxes.clip``).

    Returns a new ``(N, 4)`` tensor of the input dtype.
    """
    _check_boxes(boxes)
    h, w = image_hw
    x0 = boxes[:, 0].clamp(min=0, max=w)
    y0 = boxes[:, 1].clamp(min=0, max=h)
    x1 = boxes[:, 2].clamp(min=0, max=w)
    y1 = boxes[:, 3].clamp(min=0, max=h)
    return torch.stack((x0, y0, x1, y1), dim=-1)


def nonempty_boxes(boxes: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """``(N,)`` bool: width > threshold and height > threshold."""
    _check_boxes(boxes)
    return ((boxes[:, 2] - boxes[:, 0]) > threshold) & ((boxes[:, 3] - boxes[:, 1]) > threshold)


def decode_boxes(
    deltas: torch.Tensor,
    boxes: torch.Tensor,
    weights: tuple[float, float, float, float],
    scale_clamp: float = SCALE_CLAMP,
) -> torch.Tensor:
    """Apply ``(dx, dy, dw, dh)`` deltas to reference boxes (detectron2 ``apply_deltas``).

    Args:
        deltas: ``(N, 4)`` float regression outputs.
        boxes: ``(N, 4)`` XYXY reference boxes.
        weights: ``(wx, wy, ww, wh)``; deltas are divided by them.
        scale_clamp: upper bound of ``dw``, ``dh`` after the division (no lower bound).

    Returns:
        ``(N, 4)`` float32 XYXY boxes.
    """
    _check_boxes(deltas, "deltas")
    _check_boxes(boxes)
    deltas = deltas.float()
    boxes = boxes.to(deltas.dtype)
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx = deltas[:, 0] / wx
    dy = deltas[:, 1] / wy
    dw = torch.clamp(deltas[:, 2] / ww, max=scale_clamp)
    dh = torch.clamp(deltas[:, 3] / wh, max=scale_clamp)
    pred_ctr_x = dx * widths + ctr_x
    pred_ctr_y = dy * heights + ctr_y
    pred_w = torch.exp(dw) * widths
    pred_h = torch.exp(dh) * heights
    return torch.stack(
        (
            pred_ctr_x - 0.5 * pred_w,
            pred_ctr_y - 0.5 * pred_h,
            pred_ctr_x + 0.5 * pred_w,
            pred_ctr_y + 0.5 * pred_h,
        ),
        dim=-1,
    )


def encode_boxes(
    boxes: torch.Tensor, targets: torch.Tensor, weights: tuple[float, float, float, float]
) -> torch.Tensor:
    """Deltas that :func:`decode_boxes` maps ``boxes`` onto ``targets`` with (``get_deltas``).

    Args:
        boxes: ``(N, 4)`` XYXY reference boxes with positive width and height.
        targets: ``(N, 4)`` XYXY target boxes with positive width and height.
        weights: ``(wx, wy, ww, wh)``.

    Returns:
        ``(N, 4)`` deltas ``(dx, dy, dw, dh)`` in the dtype of ``boxes``.
    """
    _check_boxes(boxes)
    _check_boxes(targets, "targets")
    src_w = boxes[:, 2] - boxes[:, 0]
    src_h = boxes[:, 3] - boxes[:, 1]
    src_cx = boxes[:, 0] + 0.5 * src_w
    src_cy = boxes[:, 1] + 0.5 * src_h
    tgt_w = targets[:, 2] - targets[:, 0]
    tgt_h = targets[:, 3] - targets[:, 1]
    tgt_cx = targets[:, 0] + 0.5 * tgt_w
    tgt_cy = targets[:, 1] + 0.5 * tgt_h
    wx, wy, ww, wh = weights
    return torch.stack(
        (
            wx * (tgt_cx - src_cx) / src_w,
            wy * (tgt_cy - src_cy) / src_h,
            ww * torch.log(tgt_w / src_w),
            wh * torch.log(tgt_h / src_h),
        ),
        dim=-1,
    )


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_thresh: float) -> torch.Tensor:
    """Greedy NMS with torchvision ``nms`` semantics: :func:`unsam.masks.box_nms`."""
    _check_boxes(boxes)
    return box_nms(boxes, scores, iou_thresh)


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou_thresh: float
) -> torch.Tensor:
    """NMS inside each group (torchvision ``batched_nms``): :func:`unsam.masks.batched_box_nms`."""
    _check_boxes(boxes)
    return batched_box_nms(boxes, scores, groups, iou_thresh)


def roi_align(
    features: torch.Tensor,
    rois: torch.Tensor,
    output_size: int,
    spatial_scale: float,
    sampling_ratio: int = 0,
    aligned: bool = True,
) -> torch.Tensor:
    """ROIAlign with torchvision's exact sampling (spec §4.1), vectorised over all samples.

    For each box the ``P×P`` bins are averaged over a ``gh×gw`` grid of bilinear samples,
    ``gh = ceil(roi_h / P)`` when ``sampling_ratio == 0`` (adaptive) else ``sampling_ratio``.
    ``aligned=True`` shifts the box by −0.5 feature pixels (ROIAlignV2). Samples outside
    ``[−1, H] × [−1, W]`` contribute 0; others are clamped to the border.

    Args:
        features: ``(N, C, H, W)`` float feature maps.
        rois: ``(R, 5)`` rows ``(batch_index, x0, y0, x1, y1)`` in image pixels.
        output_size: P, the output side.
        spatial_scale: feature pixels per image pixel (1 / stride).
        sampling_ratio: samples per bin side; 0 = adaptive.
        aligned: pixel-shift the box by −0.5 (True for ROIAlignV2).

    Returns:
        ``(R, C, P, P)`` tensor of the features' dtype.
    """
    if features.ndim != 4:
        raise ValueError(f"features must be (N, C, H, W), got shape {tuple(features.shape)}")
    if rois.ndim != 2 or rois.shape[1] != 5:
        raise ValueError(f"rois must be (R, 5) (batch, x0, y0, x1, y1), got {tuple(rois.shape)}")
    n, c, height, width = features.shape
    p = int(output_size)
    r = rois.shape[0]
    device = features.device
    out = torch.zeros(r * p * p, c, dtype=features.dtype, device=device)
    if r == 0:
        return out.view(0, c, p, p)
    rois = rois.to(features.dtype)
    start_x, start_y, bin_w, bin_h, grid_w, grid_h = _roi_geometry(
        rois, p, spatial_scale, sampling_ratio, aligned, dtype=features.dtype
    )
    count = (grid_h * grid_w).clamp(min=1).to(features.dtype)
    batch = rois[:, 0].to(torch.int64)
    # (N*H*W, C): one row per feature pixel; each output row (box, bin) is a sparse weighted sum
    flat = features.permute(0, 2, 3, 1).reshape(n * height * width, c)
    per_roi = (p * p) * grid_h * grid_w  # samples per box

    # chunks of consecutive boxes with at most ~_ROI_ALIGN_CHUNK samples each
    cum = torch.cumsum(per_roi, 0).tolist()
    begin, done = 0, 0
    while begin < r:
        end = begin + 1
        while end < r and cum[end] - done <= _ROI_ALIGN_CHUNK:
            end += 1
        weights = _sampling_matrix(
            (n * height * width, height, width),
            p,
            slice(begin, end),
            batch,
            start_x,
            start_y,
            bin_w,
            bin_h,
            grid_h,
            grid_w,
            per_roi,
        )
        out[begin * p * p : end * p * p] = weights @ flat
        done = cum[end - 1]
        begin = end
    out = out.view(r, p * p, c) / count[:, None, None]
    return out.permute(0, 2, 1).reshape(r, c, p, p)


def _axis_weights(
    start: torch.Tensor,
    bin_size: torch.Tensor,
    grid: torch.Tensor,
    p: int,
    length: int,
    max_grid: int,
) -> torch.Tensor:
    """Dense ``(R, P, length)`` float32 weights of one axis: entry ``[r, i, t]`` sums the 1-D
    bilinear weights that the samples of bin ``i`` of box ``r`` give to row (or column) ``t``,
    each sample counted only when it lies in ``[-1, length]`` (torchvision's rule, per axis).

    Samples ``k < grid[r]`` of ``max_grid`` enumerated ones are used; the others are masked.
    """
    r = start.shape[0]
    device = start.device
    dtype = start.dtype
    bins = torch.arange(p, device=device, dtype=dtype)
    k = torch.arange(max_grid, device=device, dtype=dtype)
    g = grid.to(dtype).clamp(min=1.0)[:, None, None]
    b = bin_size[:, None, None]
    # torchvision's float32 expression order: (start + bin * i) + ((k + .5) * bin) / grid
    pos = start[:, None, None] + bins[None, :, None] * b + ((k[None, None, :] + 0.5) * b) / g
    used = k[None, None, :] < grid[:, None, None].to(dtype)
    valid = used & (pos >= -1.0) & (pos <= length)
    pos = pos.clamp(min=0)
    lo = pos.to(torch.int64)
    edge = lo >= length - 1
    lo = torch.where(edge, torch.full_like(lo, length - 1), lo)
    hi = torch.where(edge, lo, lo + 1)
    pos = torch.where(edge, lo.to(dtype), pos)
    frac = pos - lo.to(dtype)
    zero = torch.zeros((), dtype=dtype, device=device)
    w_lo = torch.where(valid, 1.0 - frac, zero)
    w_hi = torch.where(valid, frac, zero)
    out = torch.zeros(r, p, length, dtype=dtype, device=device)
    out.scatter_add_(2, lo.reshape(r, p, -1), w_lo.reshape(r, p, -1))
    out.scatter_add_(2, hi.reshape(r, p, -1), w_hi.reshape(r, p, -1))
    return out


def _roi_geometry(
    rois: torch.Tensor,
    p: int,
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, ...]:
    """Per box: start x/y, bin width/height in ``dtype`` (float32: torchvision's arithmetic),
    int64 grid w/h (torchvision's rules); shared by the sparse and the separable ROIAlign."""
    rois = rois.to(dtype)
    offset = 0.5 if aligned else 0.0
    start_x = rois[:, 1] * spatial_scale - offset
    start_y = rois[:, 2] * spatial_scale - offset
    roi_w = rois[:, 3] * spatial_scale - offset - start_x
    roi_h = rois[:, 4] * spatial_scale - offset - start_y
    if not aligned:
        roi_w = roi_w.clamp(min=1.0)
        roi_h = roi_h.clamp(min=1.0)
    # divided by a tensor, not the Python number: CUDA turns a division by a scalar into a product
    # with its reciprocal, one ulp off, and ceil() then gives 49 of 500 boxes another sample grid
    # than the CPU (measured: 1e-3 differences on an H200)
    size = torch.full_like(roi_w, float(p))
    bin_w = roi_w / size
    bin_h = roi_h / size
    if sampling_ratio > 0:
        grid_h = torch.full_like(start_x, sampling_ratio, dtype=torch.int64)
        grid_w = grid_h.clone()
    else:
        grid_h = torch.ceil(roi_h / size).to(torch.int64).clamp(min=0)
        grid_w = torch.ceil(roi_w / size).to(torch.int64).clamp(min=0)
    return start_x, start_y, bin_w, bin_h, grid_w, grid_h


def separable_max_grid(length: int, output_size: int, sampling_ratio: int = 0) -> int:
    """Samples per bin side that :func:`roi_align_separable` enumerates for a feature axis of
    ``length``: ``sampling_ratio``, or ``ceil(2 * (length + 2) / P)`` (adaptive), enough for every
    ROI up to twice the map plus 2 feature pixels along that axis (the detector's boxes are clipped
    to the image, so they are never longer than the map)."""
    if sampling_ratio > 0:
        return int(sampling_ratio)
    return max(1, math.ceil(2 * (length + 2) / output_size))


def roi_align_separable(
    features: torch.Tensor,
    rois: torch.Tensor,
    output_size: int,
    spatial_scale: float,
    sampling_ratio: int = 0,
    aligned: bool = True,
    *,
    box_weights: torch.Tensor | None = None,
    max_bytes: int = 256 << 20,
) -> torch.Tensor:
    """:func:`roi_align` as dense separable products: the GPU path (no host round trip).

    The average of bin ``(i, j)`` over its ``gh × gw`` bilinear samples is
    ``Σ_y Σ_x Wy[i, y] · Wx[j, x] · F[:, y, x] / (gh · gw)``, the validity test and the bilinear
    weights being products of a ``y`` and an ``x`` factor. So each box costs two matrix products
    with its ``(P, H)`` and ``(P, W)`` weight matrices (:func:`_axis_weights`). Exact for every ROI
    no longer than ``2 * (side + 2)`` feature pixels along each axis (see
    :func:`separable_max_grid`); it gives the same values as :func:`roi_align` up to float32
    summation order.

    Args:
        features: ``(N, C, H, W)`` feature maps (any float dtype; averaged in float32).
        rois: ``(R, 5)`` rows ``(batch_index, x0, y0, x1, y1)`` in image pixels.
        output_size: P.
        spatial_scale: feature pixels per image pixel.
        sampling_ratio: samples per bin side; 0 = adaptive.
        aligned: pixel-shift the box by −0.5 (ROIAlignV2).
        box_weights: optional ``(R,)`` factor per box (0 drops a box: how
            :func:`multilevel_roi_align` keeps only each box's own level without indexing).
        max_bytes: bound on the ``(boxes, P, C, W)`` intermediate (float32 on the CPU, float64
            on CUDA); boxes are taken in chunks of ``max(1, max_bytes // (itemsize * P * C * W))``.

    Returns:
        ``(R, C, P, P)`` float32.
    """
    if features.ndim != 4:
        raise ValueError(f"features must be (N, C, H, W), got shape {tuple(features.shape)}")
    if rois.ndim != 2 or rois.shape[1] != 5:
        raise ValueError(f"rois must be (R, 5) (batch, x0, y0, x1, y1), got {tuple(rois.shape)}")
    n, c, height, width = features.shape
    p = int(output_size)
    r = rois.shape[0]
    if r == 0:
        return features.new_zeros(0, c, p, p, dtype=torch.float32)
    start_x, start_y, bin_w, bin_h, grid_w, grid_h = _roi_geometry(
        rois, p, spatial_scale, sampling_ratio, aligned
    )
    gy = separable_max_grid(height, p, sampling_ratio)
    gx = separable_max_grid(width, p, sampling_ratio)
    # float64 products on CUDA: float32 products may run in TF32 (10-bit mantissa) where
    # torch.backends.cuda.matmul allows it or TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1 forces it, which
    # would round the bilinear weights, i.e. the sampling positions, to ~1e-3 (no measurable cost
    # on an H200: CutLER 0.147 -> 0.144 s/image)
    acc = torch.float64 if features.device.type == "cuda" else torch.float32
    wy = _axis_weights(start_y, bin_h, grid_h, p, height, gy).to(acc)  # (R, P, H)
    wx = _axis_weights(start_x, bin_w, grid_w, p, width, gx).to(acc)  # (R, P, W)
    scale = 1.0 / (grid_h * grid_w).clamp(min=1).to(acc)
    if box_weights is not None:
        scale = scale * box_weights.to(acc)
    wy = wy * scale[:, None, None]
    if n > 1:  # rows of the other images stay zero: (R, P, N * H)
        batch = rois[:, 0].to(torch.int64)
        onehot = torch.nn.functional.one_hot(batch, n).to(wy.dtype)  # (R, N)
        wy = (onehot[:, None, :, None] * wy[:, :, None, :]).reshape(r, p, n * height)
    # (N * H, C * W): one row per image row; float32 average of the (possibly bf16) features
    rows = features.to(acc).permute(0, 2, 1, 3).reshape(n * height, c * width)
    out = features.new_empty(r, c, p, p, dtype=torch.float32)
    step = max(1, int(max_bytes) // (rows.element_size() * p * c * width))
    wx_t = wx.transpose(1, 2)[:, None]  # (R, 1, W, P)
    for begin in range(0, r, step):  # chunk sizes come from shapes: no host read of the data
        end = min(r, begin + step)
        t = (wy[begin:end].reshape(-1, n * height) @ rows).view(end - begin, p, c, width)
        out[begin:end] = torch.matmul(t, wx_t[begin:end]).permute(0, 2, 1, 3).float()
    return out


def _sampling_matrix(
    shape: tuple[int, int, int],
    p: int,
    rows: slice,
    batch: torch.Tensor,
    start_x: torch.Tensor,
    start_y: torch.Tensor,
    bin_w: torch.Tensor,
    bin_h: torch.Tensor,
    grid_h: torch.Tensor,
    grid_w: torch.Tensor,
    per_roi: torch.Tensor,
) -> torch.Tensor:
    """Sparse CSR ``(B·P·P, N·H·W)`` bilinear weights (built by construction: valid CSR) of boxes
    ``rows``: row (box, bin) holds the 4 corner weights of each of its ``gh·gw`` samples, in the
    kernel's summation order."""
    num_pixels, height, width = shape
    device = start_x.device
    dtype = start_x.dtype
    counts = per_roi[rows]
    total = int(counts.sum())
    box = torch.repeat_interleave(torch.arange(rows.start, rows.stop, device=device), counts)
    first = torch.cumsum(counts, 0) - counts
    local = torch.arange(total, device=device) - torch.repeat_interleave(first, counts)
    gh, gw = grid_h[box], grid_w[box]
    per_bin = gh * gw
    bin_index = local // per_bin
    sample = local % per_bin
    ph, pw = bin_index // p, bin_index % p
    iy, ix = sample // gw, sample % gw
    # same float32 expression order as torchvision: (start + p*bin) + ((i + .5)*bin)/grid
    bh, bw = bin_h[box], bin_w[box]
    y = start_y[box] + ph.to(dtype) * bh + ((iy.to(dtype) + 0.5) * bh) / gh.to(dtype)
    x = start_x[box] + pw.to(dtype) * bw + ((ix.to(dtype) + 0.5) * bw) / gw.to(dtype)

    valid = (y >= -1.0) & (y <= height) & (x >= -1.0) & (x <= width)
    y = y.clamp(min=0)
    x = x.clamp(min=0)
    y_lo = y.to(torch.int64)
    x_lo = x.to(torch.int64)
    y_edge = y_lo >= height - 1
    x_edge = x_lo >= width - 1
    y_lo = torch.where(y_edge, height - 1, y_lo)
    x_lo = torch.where(x_edge, width - 1, x_lo)
    y_hi = torch.where(y_edge, y_lo, y_lo + 1)
    x_hi = torch.where(x_edge, x_lo, x_lo + 1)
    y = torch.where(y_edge, y_lo.to(dtype), y)
    x = torch.where(x_edge, x_lo.to(dtype), x)
    ly = y - y_lo.to(dtype)
    lx = x - x_lo.to(dtype)
    hy = 1.0 - ly
    hx = 1.0 - lx
    zero = torch.zeros((), dtype=dtype, device=device)
    values = torch.stack(
        [
            torch.where(valid, hy * hx, zero),
            torch.where(valid, hy * lx, zero),
            torch.where(valid, ly * hx, zero),
            torch.where(valid, ly * lx, zero),
        ],
        dim=1,
    ).reshape(-1)
    base = batch[box] * (height * width)
    row_lo = base + y_lo * width
    row_hi = base + y_hi * width
    columns = torch.stack(
        [row_lo + x_lo, row_lo + x_hi, row_hi + x_lo, row_hi + x_hi], dim=1
    ).reshape(-1)
    # samples are ordered box-major then bin: each output row's entries are contiguous
    row_len = torch.repeat_interleave(4 * grid_h[rows] * grid_w[rows], p * p)
    crow = torch.zeros(row_len.numel() + 1, dtype=torch.int64, device=device)
    torch.cumsum(row_len, 0, out=crow[1:])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(
            crow,
            columns,
            values,
            size=(row_len.numel(), num_pixels),
            dtype=dtype,
            device=device,
            check_invariants=False,
        )


def assign_boxes_to_levels(
    boxes: torch.Tensor,
    min_level: int,
    max_level: int,
    canonical_box_size: float = 224.0,
    canonical_level: int = 4,
) -> torch.Tensor:
    """FPN level of each box (detectron2 ``assign_boxes_to_levels``), 0-based from ``min_level``.

    ``floor(canonical_level + log2(sqrt(area) / canonical_box_size + 1e-8))`` clamped to
    ``[min_level, max_level]``.

    Args:
        boxes: ``(N, 4)`` XYXY boxes.

    Returns:
        ``(N,)`` int64 in ``[0, max_level - min_level]``.
    """
    sizes = torch.sqrt(box_area(boxes))
    # a tensor divisor: the same rounding on CUDA as on the CPU (see _roi_geometry)
    canonical = torch.full_like(sizes, float(canonical_box_size))
    levels = torch.floor(canonical_level + torch.log2(sizes / canonical + 1e-8))
    return levels.clamp(min=min_level, max=max_level).to(torch.int64) - min_level


def multilevel_roi_align(
    features: list[torch.Tensor],
    boxes: torch.Tensor,
    output_size: int,
    strides: tuple[int, ...],
    sampling_ratio: int = 0,
    method: str = "auto",
) -> torch.Tensor:
    """ROIAlignV2 of one image's boxes, each from its FPN level (detectron2 ``ROIPooler``).

    Args:
        features: one ``(1, C, H_l, W_l)`` map per level, finest first; level ``l`` has stride
            ``strides[l]`` (powers of two, consecutive levels).
        boxes: ``(R, 4)`` XYXY boxes in input-image pixels.
        output_size: P.
        strides: pixel stride of each level.
        sampling_ratio: 0 = adaptive.
        method: ``"sparse"`` (:func:`roi_align` on each level's boxes), ``"separable"``
            (:func:`roi_align_separable` on every box, weighted 0 off its level: no host round
            trip) or ``"auto"``: sparse on the CPU, separable elsewhere.

    Returns:
        ``(R, C, P, P)`` float32 pooled features in box order.
    """
    _check_boxes(boxes)
    if len(features) != len(strides):
        raise ValueError(f"got {len(features)} feature maps for {len(strides)} strides")
    if method not in ("auto", "sparse", "separable"):
        raise ValueError(f"method must be 'auto', 'sparse' or 'separable', got {method!r}")
    if method == "auto":
        method = "sparse" if features[0].device.type == "cpu" else "separable"
    c = features[0].shape[1]
    # float32: sample positions, bilinear weights and the average (ROI coordinates in bf16 would
    # be off by pixels); bf16 features are upcast level by level
    out = features[0].new_zeros(boxes.shape[0], c, output_size, output_size, dtype=torch.float32)
    if boxes.shape[0] == 0:
        return out
    boxes = boxes.float()
    min_level = round(math.log2(strides[0]))
    levels = assign_boxes_to_levels(boxes, min_level, min_level + len(strides) - 1)
    rois = torch.cat([boxes.new_zeros(boxes.shape[0], 1), boxes], dim=1)
    for level, (feat, stride) in enumerate(zip(features, strides, strict=True)):
        if method == "separable":  # every box, weighted 0 off its level: no data-dependent index
            out += roi_align_separable(
                feat,
                rois,
                output_size,
                1.0 / stride,
                sampling_ratio,
                True,
                box_weights=(levels == level).to(torch.float32),
            )
            continue
        idx = torch.nonzero(levels == level).flatten()
        if idx.numel():
            out[idx] = roi_align(
                feat.float(), rois[idx], output_size, 1.0 / stride, sampling_ratio, True
            )
    return out


def paste_masks_in_image(
    masks: torch.Tensor, boxes: torch.Tensor, image_hw: tuple[int, int], threshold: float = 0.5
) -> torch.Tensor:
    """Paste per-box mask probabilities into the image (detectron2 ``paste_masks_in_image``).

    Pixel ``(i, j)`` samples the box's mask at its centre ``(j + 0.5, i + 0.5)`` with bilinear
    ``grid_sample`` (zero padding, ``align_corners=False``) and is set where the value is
    ``>= threshold``. As in detectron2 on CPU, each mask is evaluated only in the window
    ``[floor(x0) − 1, ceil(x1) + 1]`` (same for y) around its box; pixels farther away cannot
    reach the threshold.

    Args:
        masks: ``(N, M, M)`` float mask probabilities in [0, 1] (M = 28 for Mask R-CNN).
        boxes: ``(N, 4)`` XYXY boxes in the target image's pixels.
        image_hw: ``(H, W)`` of the target image.
        threshold: binarisation cutoff.

    Returns:
        ``(N, H, W)`` bool masks.
    """
    _check_boxes(boxes)
    if masks.ndim != 3 or masks.shape[0] != boxes.shape[0]:
        raise ValueError(
            f"masks must be (N, M, M) with N = {boxes.shape[0]} boxes, got {tuple(masks.shape)}"
        )
    img_h, img_w = image_hw
    out = torch.zeros(masks.shape[0], img_h, img_w, dtype=torch.bool, device=masks.device)
    boxes = boxes.float()
    for k in range(masks.shape[0]):
        box = boxes[k]
        x0_int = int(torch.clamp(box[0].floor() - 1, min=0))
        y0_int = int(torch.clamp(box[1].floor() - 1, min=0))
        x1_int = int(torch.clamp(box[2].ceil() + 1, max=img_w))
        y1_int = int(torch.clamp(box[3].ceil() + 1, max=img_h))
        if x1_int <= x0_int or y1_int <= y0_int:
            continue
        x0, y0, x1, y1 = box[0], box[1], box[2], box[3]
        img_y = torch.arange(y0_int, y1_int, device=masks.device, dtype=torch.float32) + 0.5
        img_x = torch.arange(x0_int, x1_int, device=masks.device, dtype=torch.float32) + 0.5
        img_y = (img_y - y0) / (y1 - y0) * 2 - 1
        img_x = (img_x - x0) / (x1 - x0) * 2 - 1
        gx = img_x[None, :].expand(img_y.shape[0], img_x.shape[0])
        gy = img_y[:, None].expand(img_y.shape[0], img_x.shape[0])
        grid = torch.stack([gx, gy], dim=2)[None].to(masks.dtype)
        vals = F.grid_sample(masks[k][None, None], grid, align_corners=False)[0, 0]
        out[k, y0_int:y1_int, x0_int:x1_int] = vals >= threshold
    return out
