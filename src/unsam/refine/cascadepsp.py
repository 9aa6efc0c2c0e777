"""CascadePSP mask refinement as UnSAM's post-processing uses it (spec §4.1, spec/CASCADEPSP.md).

Pure PyTorch (no torchvision, no ``segmentation-refinement`` package):

- :class:`RefinementModule`: the network (6-channel dilated ResNet-50 ``feats``, PSP module
  ``psp``, upsampling blocks ``up_1..3``, heads ``final_28/56/11/21``), module names equal to the
  official state-dict names (CASCADEPSP.md §3). Its ``forward`` is the three-pass cascade of
  ``fast=True`` and returns only ``pred_224`` (the other heads do not affect it, §3.6).
- :func:`safe_forward`: pad to multiples of 8 (image with 0, mask with −1), run, crop (§2.4).
- :func:`refine_crop_global`: ``Refiner.refine(fast=True, L)``: resize so the long side is L,
  ``safe_forward``, resize back (§2.3), with the exact ``F.interpolate`` arguments of the original.
- :func:`unsam_crop_box`, :func:`clamp_side`: UnSAM's context crop and L rule (§1.3-1.4).
- :class:`CascadePSPRefiner`: loads the official weights file ``model`` through
  :func:`official_key_table` (strict, ``weights_only=True``) and refines full-image masks with
  UnSAM's threshold, paste-back and accept rules (§1.5-1.6).

Channel order: CascadePSP was trained on RGB, but UnSAM feeds ``cv2.imread`` BGR arrays (§2.2).
``channel_order="rgb"`` (default, UNSAM_SPEC §4.1) feeds the RGB image; ``"bgr"`` reproduces the
original pseudo-labels' input.

Cost (§5): about 4.3 MMAC per padded input pixel, i.e. ≈ 3.5 TMAC for a 904×904 crop, ≈ 3 min on
2 CPU cores. Every mask of at least 900 px context runs at 900². Use a GPU (``device="cuda"``).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn

from unsam.io.checkpoints import key_mismatch

__all__ = [
    "CASCADEPSP_WEIGHTS_ENV",
    "CASCADEPSP_WEIGHTS_HINT",
    "CascadePSPRefiner",
    "RefinedCrop",
    "RefinementModule",
    "clamp_side",
    "estimate_cpu_seconds",
    "image_to_tensor",
    "load_official_weights",
    "mask_to_tensor",
    "official_key_table",
    "refine_crop_global",
    "safe_forward",
    "unsam_crop_box",
]

logger = logging.getLogger(__name__)

#: Environment variable naming the official weights file when no path is given.
CASCADEPSP_WEIGHTS_ENV = "UNSAM_CASCADEPSP_WEIGHTS"

CASCADEPSP_WEIGHTS_HINT = (
    "download the official CascadePSP weights file 'model' (259 MB, MD5 "
    "7478d4a9c42ab52beb6d7e9683402fe0) from "
    "https://github.com/hkchengrex/CascadePSP/releases/download/v1.0/model and pass its path as "
    f"--refine cascadepsp:PATH (or set {CASCADEPSP_WEIGHTS_ENV}=PATH)"
)

_IMAGE_MEAN = (0.485, 0.456, 0.406)
_IMAGE_STD = (0.229, 0.224, 0.225)

#: Seconds per padded input pixel of one ``refine(fast=True)`` on 2 CPU cores (CASCADEPSP.md §5:
#: 189 s for 904², 2.3 s for 104², torch 2.13 CPU, 1 thread).
CPU_SECONDS_PER_PIXEL = 189.0 / (904 * 904)
#: Multiply-accumulates per padded input pixel (§5: 3,471.6 GMAC for 904²).
MAC_PER_PIXEL = 3471.6e9 / (904 * 904)


# --------------------------------------------------------------------------------------------
# The network (CASCADEPSP.md §3). Attribute names are the official state-dict names.
# --------------------------------------------------------------------------------------------


class _Bottleneck(nn.Module):
    """ResNet bottleneck; the 3×3 conv carries stride and dilation (§3.2)."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(
            planes,
            planes,
            kernel_size=3,
            stride=stride,
            dilation=dilation,
            padding=dilation,
            bias=False,
        )
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + residual)


class _ResNet50Extractor(nn.Module):
    """CascadePSP's ``feats``: ResNet-50 with a 6-channel stem, output stride 8 (§3.2).

    ``forward(x)`` takes (B, 6, H, W) and returns ``(x, x_1, x_2)``: layer4 (B, 2048, H/8, W/8),
    the raw conv1 output before BN (B, 64, H/2, W/2) and layer1 (B, 256, H/4, W/4).
    """

    def __init__(self) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(6, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, 3)
        self.layer2 = self._make_layer(128, 4, stride=2)
        self.layer3 = self._make_layer(256, 6, stride=1, dilation=2)
        self.layer4 = self._make_layer(512, 3, stride=1, dilation=4)

    def _make_layer(
        self, planes: int, blocks: int, stride: int = 1, dilation: int = 1
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * 4, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * 4),
            )
        layers = [_Bottleneck(self.inplanes, planes, stride, downsample)]  # block 0: dilation 1
        self.inplanes = planes * 4
        layers += [_Bottleneck(self.inplanes, planes, dilation=dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x_1 = self.conv1(x)
        x = self.maxpool(self.relu(self.bn1(x_1)))
        x_2 = self.layer1(x)
        x = self.layer4(self.layer3(self.layer2(x_2)))
        return x, x_1, x_2


class _PSPModule(nn.Module):
    """Pyramid pooling (1, 2, 3, 6), concat [s1, s2, s3, s6, feats], 1×1 conv, ReLU (§3.3)."""

    def __init__(
        self, features: int = 2048, out_features: int = 1024, sizes: Sequence[int] = (1, 2, 3, 6)
    ):
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d((s, s)),
                nn.Conv2d(features, features, kernel_size=1, bias=False),
            )
            for s in sizes
        )
        self.bottleneck = nn.Conv2d(features * (len(sizes) + 1), out_features, kernel_size=1)
        self.relu = nn.ReLU()

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        h, w = feats.shape[-2:]
        priors = [
            F.interpolate(stage(feats), size=(h, w), mode="bilinear", align_corners=False)
            for stage in self.stages
        ]
        return self.relu(self.bottleneck(torch.cat([*priors, feats], 1)))


def _preact_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.BatchNorm2d(cin),
        nn.ReLU(inplace=True),
        nn.Conv2d(cin, cout, kernel_size=3, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, kernel_size=3, padding=1),
    )


class _PSPUpsample(nn.Module):
    """×2 bilinear, pre-activation residual convs on [x, skip], 1×1 shortcut of x (§3.4)."""

    def __init__(self, x_channels: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = _preact_block(in_channels, out_channels)
        self.conv2 = _preact_block(out_channels, out_channels)
        self.shortcut = nn.Conv2d(x_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        p = self.conv(torch.cat([x, up], 1)) + self.shortcut(x)
        return p + self.conv2(p)


class RefinementModule(nn.Module):
    """CascadePSP's ``RefinementModule`` (segmentation-refinement 0.6), inference of ``fast=True``.

    ``state_dict()`` has the 426 official names (``cascadepsp_keys.tsv``, column ``key``).
    """

    def __init__(self) -> None:
        super().__init__()
        self.feats = _ResNet50Extractor()
        self.psp = _PSPModule(2048, 1024, (1, 2, 3, 6))
        self.up_1 = _PSPUpsample(1024, 1024 + 256, 512)
        self.up_2 = _PSPUpsample(512, 512 + 64, 256)
        self.up_3 = _PSPUpsample(256, 256 + 3, 32)
        self.final_28 = nn.Sequential(
            nn.Conv2d(1024, 32, kernel_size=1), nn.ReLU(inplace=True), nn.Conv2d(32, 1, 1)
        )
        self.final_56 = nn.Sequential(
            nn.Conv2d(512, 32, kernel_size=1), nn.ReLU(inplace=True), nn.Conv2d(32, 1, 1)
        )
        self.final_11 = nn.Conv2d(32 + 3, 32, kernel_size=1)
        self.final_21 = nn.Conv2d(32, 1, kernel_size=1)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        """Three-pass cascade (§3.6); only the full-resolution output is computed in pass 3.

        Args:
            x: (B, 3, H, W) float, ImageNet-normalised image; H and W multiples of 8.
            seg: (B, 1, H, W) float in [−1, 1], the coarse mask (−1 background, +1 foreground).

        Returns:
            (B, 1, H, W) ``pred_224``: foreground probability in [0, 1], same dtype as ``x``.
        """

        def up(t: torch.Tensor, factor: int) -> torch.Tensor:
            return torch.tanh(
                F.interpolate(t, scale_factor=factor, mode="bilinear", align_corners=False)
            )

        # pass 1: A = B = seg
        f, _, _ = self.feats(torch.cat([x, seg, seg, seg], 1))
        t8 = up(self.final_28(self.psp(f)), 8)
        # pass 2: A = B = T8
        f, _, f_2 = self.feats(torch.cat([x, seg, t8, t8], 1))
        p = self.psp(f)
        t8b = up(self.final_28(p), 8)
        t4 = up(self.final_56(self.up_1(p, f_2)), 4)
        # pass 3: A = T8b, B = T4
        f, f_1, f_2 = self.feats(torch.cat([x, seg, t8b, t4], 1))
        p = self.up_3(self.up_2(self.up_1(self.psp(f), f_2), f_1), x)
        p = F.relu(self.final_11(torch.cat([p, x], 1)))
        return torch.sigmoid(self.final_21(p))


# --------------------------------------------------------------------------------------------
# The weights file: one key table, strict loading (§3.8, §4.4)
# --------------------------------------------------------------------------------------------

_FILE_PREFIX = "module."  # nn.DataParallel prefix of every key in the official file


def official_key_table() -> dict[str, tuple[str, tuple[int, ...]]]:
    """The key table of the official weights file: file key -> (module key, shape).

    The file stores ``RefinementModule.state_dict()`` saved from ``nn.DataParallel``, so each file
    key is ``"module." + key`` and the module names are the official ones (426 rows, equal to
    ``cascadepsp_keys.tsv``). ``num_batches_tracked`` rows (int64 scalars) are unused in eval.
    """
    with torch.device("meta"):  # shapes only, no allocation
        model = RefinementModule()
    return {_FILE_PREFIX + k: (k, tuple(v.shape)) for k, v in model.state_dict().items()}


def _read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        from unsam.features.base import MissingWeightsError

        raise MissingWeightsError(
            f"CascadePSP weights {path} do not exist; {CASCADEPSP_WEIGHTS_HINT}"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling errors come in many types
        raise ValueError(
            f"{path}: cannot be read with torch.load(weights_only=True) ({type(exc).__name__}: "
            f"{exc}); expected the official CascadePSP weights file 'model' (a state dict of "
            "tensors)"
        ) from None
    if (
        not isinstance(obj, dict)
        or not obj
        or not all(isinstance(v, torch.Tensor) for v in obj.values())
    ):
        raise ValueError(
            f"{path}: not a state dict of tensors; expected the official CascadePSP weights file "
            "'model'"
        )
    return {str(k): v for k, v in obj.items()}


def load_official_weights(model: RefinementModule, path: str | os.PathLike[str]) -> None:
    """Load the official CascadePSP weights file into ``model``, strictly, through the key table.

    Keys may carry the ``module.`` prefix (the official file) or not. ``num_batches_tracked`` may
    be absent (it is never read in eval). Every other table row must be present with its shape,
    and the file may hold nothing else.

    Raises:
        MissingWeightsError: the file does not exist (the message says where to download it).
        ValueError: unreadable file, or missing / unexpected keys / wrong shapes (named, with the
            file).
    """
    path = Path(path)
    raw = _read_checkpoint(path)
    table = official_key_table()
    by_module_key = {key: (file_key, shape) for file_key, (key, shape) in table.items()}
    loaded: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    bad_shape: list[str] = []
    present: set[str] = set()  # keys found with a wrong shape (reported as such, not as missing)
    for file_key, tensor in raw.items():
        key = file_key.removeprefix(_FILE_PREFIX)
        row = by_module_key.get(key)
        if row is None or key in loaded:
            unexpected.append(file_key)
            continue
        if tuple(tensor.shape) != row[1]:
            bad_shape.append(f"{file_key} {tuple(tensor.shape)} (expected {row[1]})")
            present.add(key)
            continue
        loaded[key] = tensor
    missing = [
        fk
        for fk, (k, _) in table.items()
        if k not in loaded and k not in present and not k.endswith("num_batches_tracked")
    ]
    problems = key_mismatch(missing, unexpected, bad_shape, examples=6)
    if problems:
        raise ValueError(
            f"{path}: does not match the CascadePSP key table ({problems}); expected the "
            "official weights file 'model' of segmentation-refinement 0.6"
        )
    # num_batches_tracked left out of the file keeps the module's value (0), as the original's
    # loader
    result = model.load_state_dict(loaded, strict=False)
    left = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if left or result.unexpected_keys:  # cannot happen when the table is the module's own names
        raise ValueError(f"{path}: internal key-table mismatch: {left} {result.unexpected_keys}")


# --------------------------------------------------------------------------------------------
# Refiner.refine(fast=True) (§2)
# --------------------------------------------------------------------------------------------


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
    at the top-left.

    Args:
        im: (B, 3, h, w) normalised image; seg: (B, 1, h, w) mask in [−1, 1].

    Returns:
        (B, 1, h, w) ``pred_224`` probabilities.
    """
    b, _, ph, pw = im.shape
    if ph % 8 or pw % 8:
        nh, nw = (ph // 8 + 1) * 8, (pw // 8 + 1) * 8
        p_im = im.new_zeros((b, 3, nh, nw))
        p_seg = seg.new_full((b, 1, nh, nw), -1.0)
        p_im[:, :, :ph, :pw] = im
        p_seg[:, :, :ph, :pw] = seg
        im, seg = p_im, p_seg
    return model(im, seg)[:, :, :ph, :pw]


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
    model: RefinementModule, im: torch.Tensor, seg: torch.Tensor, side: int
) -> torch.Tensor:
    """``Refiner.refine(fast=True, L=side)`` on normalised tensors (§2.3), batched over same-size
    crops.

    Args:
        im: (B, 3, h, w) normalised image crops; seg: (B, 1, h, w) in {−1, +1}.
        side: L, the long side the network sees.

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
    pred = safe_forward(model, im, seg).float()
    if s < side:
        pred = F.interpolate(pred, size=(h, w), mode="area")
    elif s > side:
        pred = F.interpolate(pred, size=(h, w), mode="bilinear", align_corners=True)
    return pred


def probabilities_to_mask(pred: torch.Tensor) -> torch.Tensor:
    """UnSAM's threshold: ``uint8(float32(p) · 255) > 128`` (§1.5, §2.5); bool, same shape."""
    return (pred.float() * 255).to(torch.uint8) > 128


# --------------------------------------------------------------------------------------------
# UnSAM's post-processing (§1)
# --------------------------------------------------------------------------------------------


def unsam_crop_box(
    mask: npt.NDArray[np.bool_], context_ratio: float = 2.0
) -> tuple[int, int, int, int] | None:
    """UnSAM's context crop (§1.3): square of side 2·max(w, h) on the box centre, clipped, int().

    Args:
        mask: (H, W) bool.
        context_ratio: crop side as a multiple of max(w, h) of the mask's box (UnSAM hard-codes 2).

    Returns:
        (x0, y0, x1, y1), exclusive x1 / y1, or None for an empty mask. The crop always holds the
        whole mask.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    x, y = float(cols[0]), float(rows[0])
    w, h = float(cols[-1]) + 1 - x, float(rows[-1]) + 1 - y
    xc, yc = x + w / 2, y + h / 2
    half = context_ratio / 2 * max(w, h)
    height, width = mask.shape
    return (
        int(max(0.0, xc - half)),
        int(max(0.0, yc - half)),
        int(min(float(width), xc + half)),
        int(min(float(height), yc + half)),
    )


def clamp_side(crop_hw: tuple[int, int], min_side: int = 100, max_side: int = 900) -> int:
    """UnSAM's L: the crop's longer side clamped to [min_side, max_side] (§1.4)."""
    return int(max(min(max(crop_hw), max_side), min_side))


def estimate_cpu_seconds(
    crop_hws: Iterable[tuple[int, int]], min_side: int = 100, max_side: int = 900
) -> float:
    """Expected CPU seconds to refine crops of these sizes (§5: ≈ 189 s per 904² on 2 cores)."""
    total = 0
    for hw in crop_hws:
        ph, pw = padded_hw(hw, clamp_side(hw, min_side, max_side))
        total += ph * pw
    return total * CPU_SECONDS_PER_PIXEL


@dataclass(frozen=True)
class RefinedCrop:
    """One refined mask, kept as a crop so that hundreds of them stay small.

    Attributes:
        index: position of the mask in the input sequence.
        box_xyxy: (x0, y0, x1, y1) crop in image pixels, exclusive x1 / y1; None for an empty input.
        mask: (y1 − y0, x1 − x0) bool refined crop (zero outside the crop); None when rejected.
        iou: IoU(raw mask, refined mask) over the whole image (0 for an empty refined mask).
        area_frac: refined area / image area.
    """

    index: int
    box_xyxy: tuple[int, int, int, int] | None
    mask: npt.NDArray[np.bool_] | None
    iou: float
    area_frac: float

    def full_mask(self, image_hw: tuple[int, int]) -> npt.NDArray[np.bool_] | None:
        """The refined mask pasted into a zero (H, W) bool canvas, or None when rejected."""
        if self.mask is None or self.box_xyxy is None:
            return None
        x0, y0, x1, y1 = self.box_xyxy
        out = np.zeros(image_hw, dtype=bool)
        out[y0:y1, x0:x1] = self.mask
        return out


class CascadePSPRefiner:
    """CascadePSP refinement of full-image masks with UnSAM's rules (spec §4.1, CASCADEPSP.md §1).

    For each mask: crop (:func:`unsam_crop_box`), L = clamp(long side, ``min_side``,
    ``max_side``), ``refine(fast=True, L)``, keep ``uint8(255 p) > 128``, paste into a zero canvas,
    reject when the refined area is > ``max_area_frac`` of the image or IoU(raw, refined) <
    ``min_iou`` (an empty result has IoU 0). Rejected masks are dropped, not kept unrefined.

    Crops of the same size are batched (BatchNorm runs in eval mode, so batching does not change
    the result beyond float rounding). A batch holds at most ``batch_pixels`` padded input pixels
    (one crop always fits), so memory is bounded whatever the image or mask count.

    Peak memory (float32, CPU): about ``M + A · P``, where M ≈ 0.5 GiB is the process with the
    model (259 MiB of weights), P the padded input pixels of one batch (≤ max(``batch_pixels``,
    904²)) and A ≈ 5.6 kB per padded pixel (peak RSS measured by ``benchmarks/cascadepsp_speed.py``
    at 904²: 4.9 GiB; the PSP concat alone is 10240 channels at 1/8 resolution = 640 B/px), plus
    the uint8 image, the caller's masks and one batch of bool crops. :meth:`iter_refined` yields
    crop-sized results; :meth:`refine_masks` additionally returns one (H, W) bool array per kept
    mask. No full-resolution float map is ever allocated, so a 4000×3000 image with 300 masks peaks
    at ≈ 0.5 GiB + 5.6 kB · 904² ≈ 5 GiB with the default ``batch_pixels`` (one 900-px crop at a
    time), whatever the number of masks.

    Args:
        model: a :class:`RefinementModule` with weights (see :meth:`from_checkpoint`).
        device: torch device, e.g. ``"cpu"`` or ``"cuda"``.
        channel_order: ``"rgb"`` feeds the RGB image (the model was trained on RGB; default);
            ``"bgr"`` flips it first, as UnSAM's ``cv2.imread`` input did.
        min_side, max_side: L clamp in pixels (UnSAM: 100, 900).
        context_ratio: crop side as a multiple of max(box w, box h) (UnSAM: 2).
        max_area_frac: reject a refined mask covering more than this fraction of the image (0.9).
        min_iou: reject a refined mask whose IoU with the raw mask is below this (0.5).
        batch_pixels: padded input pixels per batch (default 904², i.e. one full-size crop).
        dtype: compute dtype (float32 as the original; bfloat16 is faster on some CPUs/GPUs and
            changes a few boundary pixels, see the benchmark).
        channels_last: run convolutions in channels-last memory format.
    """

    def __init__(
        self,
        model: RefinementModule,
        *,
        device: str | torch.device = "cpu",
        channel_order: Literal["rgb", "bgr"] = "rgb",
        min_side: int = 100,
        max_side: int = 900,
        context_ratio: float = 2.0,
        max_area_frac: float = 0.9,
        min_iou: float = 0.5,
        batch_pixels: int = 904 * 904,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
    ) -> None:
        if channel_order not in ("rgb", "bgr"):
            raise ValueError(f"channel_order must be 'rgb' or 'bgr', got {channel_order!r}")
        if not 1 <= min_side <= max_side:
            raise ValueError(
                f"need 1 <= min_side <= max_side, got {min_side}, {max_side} (UnSAM: 100, 900)"
            )
        if not 0.0 < max_area_frac <= 1.0 or not 0.0 <= min_iou <= 1.0:
            raise ValueError(
                f"max_area_frac={max_area_frac} must be in (0, 1], min_iou={min_iou} in [0, 1]"
            )
        if not context_ratio > 0:
            raise ValueError(f"context_ratio={context_ratio} must be > 0 (UnSAM: 2)")
        if batch_pixels < 1:
            raise ValueError(f"batch_pixels={batch_pixels} must be >= 1")
        self.device = torch.device(device)
        self.dtype = dtype
        self.channels_last = channels_last
        self.channel_order = channel_order
        self.min_side, self.max_side = int(min_side), int(max_side)
        self.context_ratio = float(context_ratio)
        self.max_area_frac, self.min_iou = float(max_area_frac), float(min_iou)
        self.batch_pixels = int(batch_pixels)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.eval().to(device=self.device, dtype=dtype, memory_format=memory_format)
        self._warned = False

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        device: str | torch.device = "cpu",
        **kwargs: object,
    ) -> CascadePSPRefiner:
        """Build the refiner from the official weights file ``model``.

        Args:
            path: the file; None reads the environment variable ``UNSAM_CASCADEPSP_WEIGHTS``.
            device: torch device.
            **kwargs: the other :class:`CascadePSPRefiner` arguments.

        Raises:
            MissingWeightsError: no path given, or the file does not exist (says what to download).
            ValueError: the file does not match the key table (names the keys).
        """
        if path is None:
            path = os.environ.get(CASCADEPSP_WEIGHTS_ENV) or None
        if path is None:
            from unsam.features.base import MissingWeightsError

            raise MissingWeightsError(f"no CascadePSP weights given; {CASCADEPSP_WEIGHTS_HINT}")
        with torch.device("meta"):  # no random init: every tensor is overwritten by the strict load
            model = RefinementModule()
        model = model.to_empty(device="cpu")
        for name, buffer in model.named_buffers():
            if name.endswith(
                "num_batches_tracked"
            ):  # the one key the file may lack (unused in eval)
                buffer.zero_()
        load_official_weights(model, path)
        refiner = cls(model, device=device, **kwargs)  # type: ignore[arg-type]
        if refiner.device.type == "cpu":
            logger.warning(
                "CascadePSP runs on the CPU: one 904x904 crop is about 3.5 TMAC, about 3 min on 2 "
                "cores, and every mask with context >= 900 px costs that much; use --device cuda "
                "for real runs"
            )
        return refiner

    @classmethod
    def from_config(cls, config: Any, *, device: str | torch.device = "cpu") -> CascadePSPRefiner:
        """Build from a :class:`unsam.refine.RefineConfig` (weights path, L clamp, accept rules).

        Raises:
            MissingWeightsError, ValueError: see :meth:`from_checkpoint`.
        """
        return cls.from_checkpoint(
            config.cascadepsp_weights,
            device=device,
            channel_order=config.cascadepsp_channel_order,
            min_side=config.min_side,
            max_side=config.max_side,
            context_ratio=config.context_ratio,
            max_area_frac=config.max_area_frac,
            min_iou=config.min_iou,
        )

    def _crops(
        self, image: npt.NDArray[np.uint8], masks: Iterable[npt.NDArray[np.bool_]]
    ) -> Iterator[tuple[int, tuple[int, int, int, int] | None, npt.NDArray[np.bool_] | None]]:
        hw = image.shape[:2]
        for i, m in enumerate(masks):
            if np.shape(m) != hw:
                raise ValueError(f"mask {i} has shape {np.shape(m)}; expected the image's {hw}")
            raw = np.asarray(m, dtype=bool)
            box = unsam_crop_box(raw, self.context_ratio)
            if box is None:
                yield i, None, None
                continue
            x0, y0, x1, y1 = box
            yield i, box, raw[y0:y1, x0:x1].copy()

    def _run_batch(
        self,
        image: npt.NDArray[np.uint8],
        batch: list[tuple[int, tuple[int, int, int, int], npt.NDArray[np.bool_]]],
    ) -> list[npt.NDArray[np.bool_]]:
        """Refined bool crops of same-size crops (one forward)."""
        x0, y0, x1, y1 = batch[0][1]
        side = clamp_side((y1 - y0, x1 - x0), self.min_side, self.max_side)
        ims, segs = [], []
        for _, (bx0, by0, bx1, by1), crop in batch:
            img = image[by0:by1, bx0:bx1]
            if self.channel_order == "bgr":
                img = img[:, :, ::-1]
            ims.append(image_to_tensor(img))
            segs.append(mask_to_tensor(crop))
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        im = torch.cat(ims).to(self.device, self.dtype).contiguous(memory_format=memory_format)
        seg = torch.cat(segs).to(self.device, self.dtype).contiguous(memory_format=memory_format)
        with torch.inference_mode():
            pred = refine_crop_global(self.model, im, seg, side)
            keep = probabilities_to_mask(pred)[:, 0].cpu().numpy()
        return list(keep)

    def warn_cpu_time(
        self, image_hw: tuple[int, int], masks: Iterable[npt.NDArray[np.bool_]]
    ) -> float | None:
        """Log (WARNING, once per refiner) the expected CPU time of refining ``masks``, from their
        crop sizes.

        Masks are read one at a time (bounded memory). Does nothing on a GPU or after the first
        call.

        Returns:
            The estimate in seconds, or None when nothing was logged.
        """
        if self._warned or self.device.type != "cpu":
            return None
        self._warned = True
        crops = []
        for m in masks:
            box = unsam_crop_box(np.asarray(m, dtype=bool), self.context_ratio)
            if box is not None:
                crops.append((box[3] - box[1], box[2] - box[0]))
        seconds = estimate_cpu_seconds(crops, self.min_side, self.max_side)
        logger.warning(
            "CascadePSP on CPU: %d masks of this %dx%d image need about %.1f TMAC, expected %.0f s "
            "(%.1f min) on 2 cores (one 904x904 crop = 3.5 TMAC = about 3 min)",
            len(crops),
            image_hw[1],
            image_hw[0],
            MAC_PER_PIXEL * seconds / CPU_SECONDS_PER_PIXEL / 1e12,
            seconds,
            seconds / 60,
        )
        return seconds

    def iter_refined(
        self, image: npt.NDArray[np.uint8], masks: Iterable[npt.NDArray[np.bool_]]
    ) -> Iterator[RefinedCrop]:
        """Refine masks lazily, one bounded batch at a time, yielding crop-sized results in input
        order.

        Args:
            image: (H, W, 3) uint8 RGB.
            masks: (H, W) bool masks; consumed lazily (at most one batch of crops is held).

        Yields:
            One :class:`RefinedCrop` per mask, in input order.
        """
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
        if isinstance(masks, Sequence):
            self.warn_cpu_time(image.shape[:2], masks)
        total = float(image.shape[0] * image.shape[1])
        pending: list[
            tuple[int, tuple[int, int, int, int] | None, npt.NDArray[np.bool_] | None]
        ] = []
        pixels = 0

        def flush() -> Iterator[RefinedCrop]:
            groups: dict[tuple[int, int], list[int]] = {}
            for j, (_, box, crop) in enumerate(pending):
                if crop is not None:
                    groups.setdefault(crop.shape, []).append(j)
            results: dict[int, npt.NDArray[np.bool_]] = {}
            for shape, members in groups.items():
                side = clamp_side(shape, self.min_side, self.max_side)
                per = max(1, self.batch_pixels // max(1, math.prod(padded_hw(shape, side))))
                for start in range(0, len(members), per):
                    chunk = members[start : start + per]
                    outs = self._run_batch(image, [pending[j] for j in chunk])  # type: ignore[misc]
                    results.update(zip(chunk, outs))
            for j, (index, box, crop) in enumerate(pending):
                if crop is None or box is None:
                    yield RefinedCrop(index, None, None, 0.0, 0.0)
                    continue
                refined = results[j]
                inter = np.count_nonzero(refined & crop)
                union = np.count_nonzero(refined | crop)
                iou = inter / union if union else 0.0
                area = np.count_nonzero(refined) / total
                ok = area <= self.max_area_frac and iou >= self.min_iou
                yield RefinedCrop(index, box, refined if ok else None, float(iou), float(area))

        for item in self._crops(image, masks):
            crop = item[2]
            if crop is not None:
                side = clamp_side(crop.shape, self.min_side, self.max_side)
                need = math.prod(padded_hw(crop.shape, side))
                if pending and pixels + need > self.batch_pixels:
                    yield from flush()
                    pending, pixels = [], 0
                pixels += need
            pending.append(item)
        if pending:
            yield from flush()

    def refine_masks(
        self, image: npt.NDArray[np.uint8], masks: Sequence[npt.NDArray[np.bool_]]
    ) -> list[tuple[npt.NDArray[np.bool_] | None, float]]:
        """Refine full-resolution masks of one image with UnSAM's accept rules.

        Args:
            image: (H, W, 3) uint8 RGB.
            masks: (H, W) bool masks.

        Returns:
            One ``(refined (H, W) bool mask or None if rejected, IoU(raw, refined))`` per mask, in
            order. Empty input masks give ``(None, 0.0)``.

        Raises:
            ValueError: wrong image dtype/shape or a mask of another size.
        """
        hw = image.shape[:2]
        return [(r.full_mask(hw), r.iou) for r in self.iter_refined(image, masks)]
