"""Training prompts of the promptable model: clicks, per-click target sets, boxes
(PROMPTABLE.md §3.2-3.4).

Per image (the original's ``RE_POINT`` path, ``arch:430-513``):

1. :func:`sample_click_masks`: a random permutation of the M masks, repeated ``num_clicks // M + 1``
   times when M < ``num_clicks`` and truncated to ``num_clicks`` (60): one source mask per click.
2. :func:`sample_clicks`: one foreground pixel of each source mask, uniformly at random.
3. :func:`click_targets`: every mask of the image (all M, not only the sampled ones) containing the
   click, in ascending mask order; when more than ``max_targets`` (6, the number of mask tokens)
   contain it, they are shuffled and the first 6 kept. The source mask is always among them when
   there are at most 6.
4. :func:`mask_boxes_cxcywh` / :func:`jitter_click_boxes`: target boxes and the tiny training box
   noise.

Every random draw takes an optional ``torch.Generator`` (default: the global RNG, which the
training loop checkpoints for exact resume).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "CLICK_BOX_PX",
    "MAX_TARGETS",
    "NUM_CLICKS",
    "click_targets",
    "flatten_targets",
    "jitter_click_boxes",
    "mask_boxes_cxcywh",
    "sample_click_masks",
    "sample_clicks",
]

#: Clicks per training image (``MAX_NUM_INSTANCE``).
NUM_CLICKS = 60
#: Targets per click at most (= mask tokens per click).
MAX_TARGETS = 6
#: Side of a training / evaluation click box, pixels (x - 3 .. x + 3).
CLICK_BOX_PX = 6.0


def _check_masks(masks: torch.Tensor) -> None:
    if masks.ndim != 3:
        raise ValueError(f"masks must be (M, H, W) bool, got shape {tuple(masks.shape)}")
    if masks.shape[0] == 0:
        raise ValueError("an image needs at least one mask to sample clicks from")


def sample_click_masks(
    num_masks: int, num_clicks: int = NUM_CLICKS, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Source mask of each click (step 1 of the module doc).

    Returns:
        (num_clicks,) int64 indices in [0, num_masks); distinct when num_masks >= num_clicks.
    """
    if num_masks < 1 or num_clicks < 1:
        raise ValueError(f"need num_masks >= 1 and num_clicks >= 1, got {num_masks}, {num_clicks}")
    perm = torch.randperm(num_masks, generator=generator)
    if num_masks < num_clicks:
        perm = perm.repeat(num_clicks // num_masks + 1)
    return perm[:num_clicks]


def sample_clicks(
    masks: torch.Tensor, num_clicks: int = NUM_CLICKS, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Source masks and one uniformly random foreground pixel of each (steps 1-2).

    Args:
        masks: (M, H, W) bool, every mask non-empty.
        num_clicks: clicks to draw.
        generator: RNG (default: the global one).

    Returns:
        source (num_clicks,) int64 mask indices, points (num_clicks, 2) int64 pixel (x, y).

    Raises:
        ValueError: an empty source mask.
    """
    _check_masks(masks)
    source = sample_click_masks(masks.shape[0], num_clicks, generator)
    points = torch.empty((num_clicks, 2), dtype=torch.int64)
    pixels: dict[int, torch.Tensor] = {}
    for c, m in enumerate(source.tolist()):
        if m not in pixels:
            pixels[m] = torch.nonzero(masks[m].cpu())  # (n, 2) row, col
            if pixels[m].shape[0] == 0:
                raise ValueError(f"mask {m} is empty; drop empty masks before sampling clicks")
        fg = pixels[m]
        k = int(torch.randint(fg.shape[0], (1,), generator=generator))
        points[c, 0] = fg[k, 1]
        points[c, 1] = fg[k, 0]
    return source, points


def click_targets(
    masks: torch.Tensor,
    points: torch.Tensor,
    max_targets: int = MAX_TARGETS,
    generator: torch.Generator | None = None,
) -> list[torch.Tensor]:
    """Target set of each click: the masks containing it (step 3 of the module doc).

    Args:
        masks: (M, H, W) bool, all masks of the image.
        points: (C, 2) int64 pixel (x, y).
        max_targets: cap per click (the number of mask tokens).
        generator: RNG for the shuffle when more than ``max_targets`` masks contain a click.

    Returns:
        C tensors of int64 mask indices, each of length 1..max_targets (ascending unless shuffled).

    Raises:
        ValueError: a click outside the image or inside no mask.
    """
    _check_masks(masks)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"points must be (C, 2) pixel (x, y), got shape {tuple(points.shape)}")
    h, w = masks.shape[-2:]
    xs, ys = points[:, 0].long().cpu(), points[:, 1].long().cpu()
    if bool(((xs < 0) | (xs >= w) | (ys < 0) | (ys >= h)).any()):
        raise ValueError(f"a click lies outside the {h}x{w} image")
    hits = masks.cpu()[:, ys, xs]  # (M, C)
    out = []
    for c in range(points.shape[0]):
        idx = torch.nonzero(hits[:, c]).flatten()
        if idx.numel() == 0:
            raise ValueError(f"click {c} at (x={int(xs[c])}, y={int(ys[c])}) lies inside no mask")
        if idx.numel() > max_targets:
            idx = idx[torch.randperm(idx.numel(), generator=generator)[:max_targets]]
        out.append(idx)
    return out


def flatten_targets(targets: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate per-click target lists (the matcher's target order).

    Returns:
        mask index (T,) int64 and owning click (T,) int64, T = sum of the list lengths.
    """
    if not targets:
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, empty
    masks = torch.cat([t.long().cpu() for t in targets])
    owner = torch.cat([torch.full((len(t),), c, dtype=torch.int64) for c, t in enumerate(targets)])
    return masks, owner


def mask_boxes_cxcywh(masks: torch.Tensor) -> torch.Tensor:
    """Boxes of masks as (cx, cy, w, h) normalised by the mask size (``ori_boxes``, spec §3.1/3.3).

    The box is detectron2's ``BitMasks.get_bounding_boxes``: (x_min, y_min, x_max + 1, y_max + 1),
    zeros for an empty mask, then divided by (W, H, W, H).

    Args:
        masks: (M, H, W) bool.

    Returns:
        (M, 4) float32.
    """
    if masks.ndim != 3:
        raise ValueError(f"masks must be (M, H, W) bool, got shape {tuple(masks.shape)}")
    m, h, w = masks.shape
    boxes = torch.zeros((m, 4), dtype=torch.float32)
    if m == 0:
        return boxes
    rows = masks.any(dim=2).cpu()
    cols = masks.any(dim=1).cpu()
    ar_h = torch.arange(h)
    ar_w = torch.arange(w)
    big = max(h, w) + 1
    y0 = torch.where(rows, ar_h, big).min(dim=1).values
    y1 = torch.where(rows, ar_h, -1).max(dim=1).values + 1
    x0 = torch.where(cols, ar_w, big).min(dim=1).values
    x1 = torch.where(cols, ar_w, -1).max(dim=1).values + 1
    nonempty = rows.any(dim=1)
    xyxy = torch.stack([x0, y0, x1, y1], 1).float() * nonempty[:, None]
    scale = torch.tensor([w, h, w, h], dtype=torch.float32)
    xyxy = xyxy / scale
    return torch.stack(
        [
            (xyxy[:, 0] + xyxy[:, 2]) / 2,
            (xyxy[:, 1] + xyxy[:, 3]) / 2,
            xyxy[:, 2] - xyxy[:, 0],
            xyxy[:, 3] - xyxy[:, 1],
        ],
        1,
    )


def jitter_click_boxes(
    boxes: torch.Tensor,
    noise_scale: float = 0.4,
    factor: float = 0.01,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The training box noise (``dec:366-376``):
    box += U(-1, 1) · (w/2, h/2, w, h) · factor · noise_scale.

    Args:
        boxes: (N, 4) float (cx, cy, w, h) in [0, 1].

    Returns:
        (N, 4) float, clamped to [0, 1] (a new tensor).
    """
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be (N, 4) (cx, cy, w, h), got shape {tuple(boxes.shape)}")
    diff = torch.cat([boxes[:, 2:] / 2, boxes[:, 2:]], 1)
    u = torch.rand(boxes.shape, generator=generator, dtype=boxes.dtype) * 2.0 - 1.0
    return (boxes + u.to(boxes.device) * diff * factor * noise_scale).clamp(0.0, 1.0)
