"""The original's ``Refiner.refine(fast=True)`` around the network (CASCADEPSP.md §2):

- :func:`image_to_tensor`, :func:`mask_to_tensor`: the network's inputs (ImageNet-normalised RGB,
  mask in [-1, 1]);
- :func:`safe_forward`: pad to multiples of 8 (image with 0, mask with −1), run, crop (§2.4);
- :func:`refine_crop_global`: resize so the long side is L, ``safe_forward``, resize back (§2.3),
  with the exact ``F.interpolate`` arguments of the original.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from unsam.refine.cascadepsp.modeling import RefinementModule

__all__ = [
    "image_to_tensor",
    "mask_to_tensor",
    "padded_hw",
    "probabilities_to_mask",
    "refine_crop_global",
    "safe_forward",
]


_IMAGE_MEAN = (0.485, 0.456, 0.406)


_IMAGE_STD = (0.229, 0.224, 0.225)


def image_to_tensor(image: npt.NDArray[np.uint8]) -> torch.Tensor:
    """``ToTensor`` + ImageNet ``Normalize`` of an (h, w, 3) uint8 array -> (1, 3, h, w) float32
    (§2.2)."""
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(255)
    mean = torch.tensor(_IMAGE_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(_IMAGE_STD, dtype=torch.float32)[:, None, None]
    return ((t - mean) / std)[None]


def mask_to_tensor(mask: npt.NDArray[np.bool_]) -> torch.Tensor:
    """(h, w) bool (or 0/255 uint8, thresholded at > 127) -> (1, 1, h, w) float32 of −1 / +1
    (§2.2)."""
    m = np.asarray(mask)
    fg = m > 127 if m.dtype == np.uint8 else m.astype(bool)
    t = torch.from_numpy(np.ascontiguousarray(fg)).float()
    return ((t - 0.5) / 0.5)[None, None]


def safe_forward(model: RefinementModule, im: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
    """Pad to multiples of 8 and run the model; crop the output back (§2.4).

    If either side is not a multiple of 8, *both* become ``(d // 8 + 1) * 8`` (a side that is
    already a multiple still grows by 8). The image is padded with 0, the mask with −1, content
    at the top-left. The padded tensors keep the inputs' dtype and memory format.

    Args:
        im: (B, 3, h, w) normalised image; seg: (B, 1, h, w) mask in [−1, 1].

    Returns:
        (B, 1, h, w) ``pred_224`` probabilities.
    """
    b, _, ph, pw = im.shape
    if ph % 8 or pw % 8:
        nh, nw = (ph // 8 + 1) * 8, (pw // 8 + 1) * 8
        fmt = _memory_format(im)
        p_im = im.new_zeros((b, 3, nh, nw)).contiguous(memory_format=fmt)
        p_seg = seg.new_full((b, 1, nh, nw), -1.0).contiguous(memory_format=fmt)
        p_im[:, :, :ph, :pw] = im
        p_seg[:, :, :ph, :pw] = seg
        im, seg = p_im, p_seg
    return model(im, seg)[:, :, :ph, :pw]


def _memory_format(t: torch.Tensor) -> torch.memory_format:
    return (
        torch.channels_last
        if t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
        else torch.contiguous_format
    )


def padded_hw(hw: tuple[int, int], side: int) -> tuple[int, int]:
    """The network input size for a crop of size ``hw`` at long side L = ``side`` (§2.3-2.4)."""
    h, w = hw
    s = max(h, w)
    if s != side:
        r = side / s
        h, w = math.floor(h * r), math.floor(w * r)
    if h % 8 or w % 8:
        h, w = (h // 8 + 1) * 8, (w // 8 + 1) * 8
    return h, w


def refine_crop_global(
    model: RefinementModule,
    im: torch.Tensor,
    seg: torch.Tensor,
    side: int,
    *,
    dtype: torch.dtype | None = None,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> torch.Tensor:
    """``Refiner.refine(fast=True, L=side)`` on normalised tensors (§2.3), batched over same-size
    crops.

    The resizes to L run in the inputs' dtype (float32 from :func:`image_to_tensor` /
    :func:`mask_to_tensor`); the resized inputs are then cast to the network's ``dtype`` (weights
    and activations, not autocast) and ``memory_format``; the network's output comes back as
    float32 before the resize back to crop size.

    Args:
        im: (B, 3, h, w) normalised image crops; seg: (B, 1, h, w) in {−1, +1}.
        side: L, the long side the network sees.
        dtype: the network's compute dtype (its weights' dtype); None = ``im.dtype``.
        memory_format: memory format of the network's inputs (``torch.channels_last`` for the
            oneDNN / cuDNN NHWC kernels).

    Returns:
        (B, 1, h, w) probabilities (float32).
    """
    h, w = im.shape[-2:]
    s = max(h, w)
    if s < side:
        r = side / s
        im = F.interpolate(im, scale_factor=r, mode="bicubic", align_corners=False)
        seg = F.interpolate(seg, scale_factor=r, mode="bilinear", align_corners=False)
    elif s > side:
        r = side / s
        im = F.interpolate(im, scale_factor=r, mode="area")
        seg = F.interpolate(seg, scale_factor=r, mode="area")
    dtype = im.dtype if dtype is None else dtype
    im = im.to(dtype).contiguous(memory_format=memory_format)
    seg = seg.to(dtype).contiguous(memory_format=memory_format)
    # float32 from here: the resize back to crop size and UnSAM's threshold (uint8(255 p) > 128)
    # decide single pixels, so they run on the float32 probability (bf16 holds 8 bits: 255 p has
    # a spacing of up to 1 near p = 1, which would move pixels across the > 128 cut by rounding)
    pred = safe_forward(model, im, seg).float()
    if s < side:
        pred = F.interpolate(pred, size=(h, w), mode="area")
    elif s > side:
        pred = F.interpolate(pred, size=(h, w), mode="bilinear", align_corners=True)
    return pred


def probabilities_to_mask(pred: torch.Tensor) -> torch.Tensor:
    """UnSAM's threshold: ``uint8(float32(p) · 255) > 128`` (§1.5, §2.5); bool, same shape.

    Always in float32 (the original's ``(pred * 255).astype(np.uint8)`` on a float32 map), whatever
    dtype the network ran in."""
    return (pred.float() * 255).to(torch.uint8) > 128
