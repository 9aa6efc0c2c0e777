"""Training data for the whole-image model: COCO dataset JSON + image folder → augmented crops
(spec §6.3).

Every sample is a pure function of ``(seed, position)``, where ``position`` counts images in the
global training stream (epoch ``e`` visits the images in the order of a permutation seeded by
``(seed, e)``). Data order and augmentation are therefore independent of the number of processes
and loader workers, and resuming at step ``t`` only needs ``t``: the stream restarts at position
``t * batch_size``.

Augmentation, as the original's ``sam_instance_tsv`` mapper (spec §6.3):

1. all masks are class 0; when an image has more than ``max_masks_per_image`` masks, that many are
   sampled uniformly without replacement, freshly at each load;
2. random horizontal flip (p = 0.5);
3. optional large-scale jitter (detectron2 ``ResizeScale``: the image is resized to fit
   ``crop_size * s``, s ~ U(min_scale, max_scale)); off by default, as in the paper;
4. ``FixedSizeCrop``: a random ``crop_size`` window where the image is larger, then padding at the
   bottom/right to ``crop_size`` (image pad value 128, masks pad 0). detectron2 draws one uniform
   number for both axes' offsets (crops slide along a diagonal); here each axis gets its own;
5. masks that are empty after the crop are dropped.

Padding is background for the mask loss, as in the original (transformers' Mask2Former ignores
``pixel_mask``; it is still returned so callers can see the valid region).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import torch

from unsam.io.images import ImageReadError, image_size, load_image
from unsam.records import ImageRecord, decode_rles

__all__ = [
    "IMAGE_PAD_VALUE",
    "TrainSample",
    "sample_mask_indices",
    "scaled_size",
    "crop_offsets",
    "augment",
    "epoch_permutation",
    "TrainDataset",
    "StepBatchSampler",
    "collate",
    "check_images",
]

logger = logging.getLogger(__name__)

#: Pixel value of the padded area of a training crop (detectron2 FixedSizeCrop pad_value).
IMAGE_PAD_VALUE = 128

_DECODE_CHUNK = 32  # masks decoded at full resolution at a time (bounds memory on large images)


@dataclass(frozen=True)
class TrainSample:
    """One augmented training crop.

    Attributes:
        image: (S, S, 3) uint8 RGB, padded with :data:`IMAGE_PAD_VALUE`.
        masks: (n, S, S) bool target masks (n may be 0), padded with False.
        valid_hw: (h, w) of the image content at the top-left of the crop; the rest is padding.
        image_id: id of the source image.
        position: position in the global training stream.
    """

    image: npt.NDArray[np.uint8]
    masks: npt.NDArray[np.bool_]
    valid_hw: tuple[int, int]
    image_id: int
    position: int


def sample_mask_indices(
    num_masks: int, max_masks: int, rng: np.random.Generator
) -> npt.NDArray[np.int64]:
    """Indices of the masks used at one load: all of them, or ``max_masks`` drawn without
    replacement.

    Returns:
        (k,) int64, ascending, k = min(num_masks, max_masks).
    """
    if num_masks <= max_masks:
        return np.arange(num_masks, dtype=np.int64)
    return np.sort(rng.choice(num_masks, size=max_masks, replace=False)).astype(np.int64)


def scaled_size(image_hw: tuple[int, int], crop_size: int, scale: float) -> tuple[int, int]:
    """detectron2 ``ResizeScale``: size that fits the image into ``crop_size * scale``
    (aspect kept).

    Returns:
        (h, w) in pixels, each at least 1.
    """
    h, w = image_hw
    factor = min(crop_size * scale / h, crop_size * scale / w)
    return max(1, int(round(h * factor))), max(1, int(round(w * factor)))


def crop_offsets(image_hw: tuple[int, int], crop_size: int, u: Sequence[float]) -> tuple[int, int]:
    """Top-left (y0, x0) of the crop window for uniform draws ``u = (uy, ux)`` in [0, 1)."""
    max_y = max(image_hw[0] - crop_size, 0)
    max_x = max(image_hw[1] - crop_size, 0)
    return int(round(max_y * float(u[0]))), int(round(max_x * float(u[1])))


def augment(
    image: npt.NDArray[np.uint8],
    rles: Sequence[dict[str, Any]],
    *,
    crop_size: int,
    rng: np.random.Generator,
    max_masks: int = 500,
    hflip: bool = True,
    scale_range: tuple[float, float] | None = None,
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.bool_], tuple[int, int]]:
    """Sample masks, flip, (jitter), crop and pad one image with its masks (module doc, steps 1-5).

    The random draws happen in a fixed order (mask sample, flip, scale, crop offsets), so a given
    ``rng`` state always gives the same crop.

    Args:
        image: (H, W, 3) uint8 RGB.
        rles: the image's masks as COCO compressed RLEs of size (H, W).
        crop_size: side S of the output, pixels.
        rng: numpy generator (consumed).
        max_masks: cap on masks per load.
        hflip: allow the random horizontal flip.
        scale_range: (min, max) scale of the jitter, or None for no jitter.

    Returns:
        image (S, S, 3) uint8, masks (n, S, S) bool without empty masks, valid (h, w).
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3), got shape {image.shape}")
    h, w = image.shape[:2]
    for i, r in enumerate(rles):
        if tuple(int(v) for v in r["size"]) != (h, w):
            raise ValueError(
                f"mask {i} has size {list(r['size'])} but the image is {[h, w]} (H, W)"
            )
    keep = sample_mask_indices(len(rles), max_masks, rng)
    flip = bool(hflip) and bool(rng.random() < 0.5)
    out_hw = (h, w)
    if scale_range is not None:
        out_hw = scaled_size((h, w), crop_size, float(rng.uniform(scale_range[0], scale_range[1])))
    y0, x0 = crop_offsets(out_hw, crop_size, rng.random(2))
    ch, cw = min(crop_size, out_hw[0] - y0), min(crop_size, out_hw[1] - x0)

    def geometry(arr: npt.NDArray[Any], interpolation: int) -> npt.NDArray[Any]:
        if flip:
            arr = arr[:, ::-1]
        if out_hw != (h, w):
            arr = cv2.resize(
                np.ascontiguousarray(arr), (out_hw[1], out_hw[0]), interpolation=interpolation
            )
        return arr[y0 : y0 + ch, x0 : x0 + cw]

    out_image = np.full((crop_size, crop_size, 3), IMAGE_PAD_VALUE, dtype=np.uint8)
    out_image[:ch, :cw] = geometry(image, cv2.INTER_LINEAR)
    crops: list[npt.NDArray[np.bool_]] = []
    selected = [rles[int(k)] for k in keep]
    for start in range(0, len(selected), _DECODE_CHUNK):
        full = decode_rles(selected[start : start + _DECODE_CHUNK])
        for m in full:
            crop = geometry(m.view(np.uint8), cv2.INTER_NEAREST)
            if crop.any():
                crops.append(crop.astype(bool))
    masks = np.zeros((len(crops), crop_size, crop_size), dtype=bool)
    for i, c in enumerate(crops):
        masks[i, :ch, :cw] = c
    return out_image, masks, (ch, cw)


@lru_cache(maxsize=4)
def epoch_permutation(seed: int, epoch: int, num_images: int) -> npt.NDArray[np.int64]:
    """Order in which epoch ``epoch`` visits the images: a permutation seeded by (seed, epoch)."""
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(num_images).astype(np.int64)


def check_images(
    images: Sequence[ImageRecord], image_root: str | os.PathLike[str], *, skip_bad: bool = False
) -> tuple[list[ImageRecord], list[tuple[str, str]]]:
    """Check that every training image exists and has the size its JSON entry says.

    Reads headers only. Images without a mask are dropped (the original's
    ``FILTER_EMPTY_ANNOTATIONS``).

    Args:
        images: records from the annotation JSON (``file_name`` relative to ``image_root``).
        image_root: the image folder.
        skip_bad: drop unreadable / mis-sized images instead of raising.

    Returns:
        (usable images in input order, [(file, reason), ...] of skipped bad images).

    Raises:
        ImageReadError / ValueError: a bad image, naming the file and the fix (unless ``skip_bad``).
    """
    root = Path(image_root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"{root}: image folder not found "
            "(pass the folder the JSON's file_name values are relative to)"
        )
    good: list[ImageRecord] = []
    bad: list[tuple[str, str]] = []
    empty = 0
    for img in images:
        if not img.masks:
            empty += 1
            continue
        if img.file_name is None:
            raise ValueError(
                f"image id {img.id} has no file_name in the annotation JSON; "
                "training needs one per image"
            )
        path = root / img.file_name
        try:
            if not path.is_file():
                raise ImageReadError(
                    path,
                    "no such file "
                    "(is --images the folder the JSON's file_name values are relative to?)",
                )
            hw = image_size(path)
            if hw != (img.height, img.width):
                raise ImageReadError(
                    path,
                    f"size {hw[0]}x{hw[1]} (HxW) differs from the annotation JSON's "
                    f"{img.height}x{img.width}",
                )
        except ImageReadError as exc:
            if not skip_bad:
                raise ImageReadError(
                    exc.path, f"{exc.reason}; fix it or train with --skip-bad-images"
                ) from None
            bad.append((str(path), exc.reason))
            continue
        good.append(img)
    if empty:
        logger.info("dropped %d image(s) without masks", empty)
    if bad:
        logger.warning(
            "skipped %d unreadable image(s); first: %s (%s)", len(bad), bad[0][0], bad[0][1]
        )
    return good, bad


class TrainDataset(torch.utils.data.Dataset):
    """Map-style dataset indexed by *stream position*: ``dataset[p]`` is the augmented sample at p.

    Args:
        images: image records with their masks (from :func:`unsam.io.coco.load_coco_dataset`).
        image_root: folder the records' ``file_name`` values are relative to.
        crop_size: training crop side, pixels.
        seed: seed of data order and augmentation.
        max_masks: masks sampled per load.
        hflip: random horizontal flip.
        scale_range: (min, max) jitter scale or None.
    """

    def __init__(
        self,
        images: Sequence[ImageRecord],
        image_root: str | os.PathLike[str],
        *,
        crop_size: int,
        seed: int = 0,
        max_masks: int = 500,
        hflip: bool = True,
        scale_range: tuple[float, float] | None = None,
    ) -> None:
        if len(images) == 0:
            raise ValueError("no training images with masks; check the annotation JSON")
        self.images = list(images)
        self.image_root = Path(image_root)
        self.crop_size = int(crop_size)
        self.seed = int(seed)
        self.max_masks = int(max_masks)
        self.hflip = bool(hflip)
        self.scale_range = scale_range

    @property
    def num_images(self) -> int:
        return len(self.images)

    def image_index(self, position: int) -> int:
        """Index into ``images`` of the image at stream position ``position``."""
        epoch, offset = divmod(int(position), self.num_images)
        return int(epoch_permutation(self.seed, epoch, self.num_images)[offset])

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, position: int) -> TrainSample:
        record = self.images[self.image_index(position)]
        path = self.image_root / str(record.file_name)
        image = load_image(path)
        if image.shape[:2] != (record.height, record.width):
            raise ImageReadError(
                path,
                f"size {image.shape[0]}x{image.shape[1]} differs from the JSON's "
                f"{record.height}x{record.width}",
            )
        rng = np.random.default_rng([self.seed, int(position)])
        img, masks, valid = augment(
            image,
            [m.rle for m in record.masks],
            crop_size=self.crop_size,
            rng=rng,
            max_masks=self.max_masks,
            hflip=self.hflip,
            scale_range=self.scale_range,
        )
        return TrainSample(
            image=img, masks=masks, valid_hw=valid, image_id=record.id, position=int(position)
        )


class StepBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Yields, for each step ``t`` in ``[start_step, max_steps)``, this process's share of the
    batch.

    Step ``t`` uses stream positions ``[t*B, (t+1)*B)`` (B = global batch); process ``rank`` of
    ``world_size`` takes the ``rank``-th contiguous slice of ``B / world_size`` positions.
    """

    def __init__(
        self,
        *,
        start_step: int,
        max_steps: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size % world_size:
            raise ValueError(
                f"batch size {batch_size} is not divisible by the {world_size} training processes; "
                "pass a multiple of the process count"
            )
        self.start_step = int(start_step)
        self.max_steps = int(max_steps)
        self.batch_size = int(batch_size)
        self.per_rank = self.batch_size // world_size
        self.rank = int(rank)

    def __len__(self) -> int:
        return max(self.max_steps - self.start_step, 0)

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.max_steps):
            first = step * self.batch_size + self.rank * self.per_rank
            yield list(range(first, first + self.per_rank))


def collate(
    samples: Sequence[TrainSample], mean: Sequence[float], std: Sequence[float]
) -> dict[str, Any]:
    """Stack samples into Mask2Former inputs.

    Args:
        samples: augmented crops, all of side S.
        mean, std: per-channel RGB normalisation in 0-255 units.

    Returns:
        ``pixel_values`` (B, 3, S, S) float32 normalised, ``pixel_mask`` (B, S, S) int64 (1 = image,
        0 = padding), ``mask_labels`` list of (n_i, S, S) bool (the loss takes them as float32 once
        on its device: a quarter of the bytes to copy to a GPU), ``class_labels`` list of (n_i,)
        int64 zeros, ``image_ids`` list of int, ``positions`` list of int.
    """
    if not samples:
        raise ValueError("cannot collate an empty batch")
    images = torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).float()
    m = torch.tensor([float(v) for v in mean]).view(1, 3, 1, 1)
    sd = torch.tensor([float(v) for v in std]).view(1, 3, 1, 1)
    size = images.shape[-2:]
    pixel_mask = torch.zeros((len(samples), *size), dtype=torch.int64)
    for i, s in enumerate(samples):
        pixel_mask[i, : s.valid_hw[0], : s.valid_hw[1]] = 1
    return {
        "pixel_values": (images - m) / sd,
        "pixel_mask": pixel_mask,
        "mask_labels": [torch.from_numpy(np.ascontiguousarray(s.masks, bool)) for s in samples],
        "class_labels": [torch.zeros(len(s.masks), dtype=torch.int64) for s in samples],
        "image_ids": [s.image_id for s in samples],
        "positions": [s.position for s in samples],
    }
