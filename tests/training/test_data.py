"""Training data: augmentation geometry, mask sampling, stream order, sharding, collation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.training.synthetic import make_shapes_dataset
from unsam.io.coco import load_coco_dataset
from unsam.io.images import ImageReadError
from unsam.records import encode_masks
from unsam.training.data import (
    IMAGE_PAD_VALUE,
    StepBatchSampler,
    TrainDataset,
    augment,
    check_images,
    collate,
    crop_offsets,
    sample_mask_indices,
    scaled_size,
)


def _coordinate_image(h: int, w: int) -> np.ndarray:
    """Pixel (y, x) holds (x, y, 7): after any flip/crop each pixel still says where it came
    from."""
    yy, xx = np.mgrid[:h, :w]
    return np.stack([xx, yy, np.full_like(xx, 7)], axis=2).astype(np.uint8)


def _rect_masks(h: int, w: int) -> np.ndarray:
    boxes = [
        (0, 0, 20, 30),
        (50, 70, 90, 120),
        (10, 100, 30, 120),
        (40, 10, 45, 15),
        (0, 0, 90, 120),
    ]
    masks = np.zeros((len(boxes), h, w), dtype=bool)
    for k, (y0, x0, y1, x1) in enumerate(boxes):
        masks[k, y0:y1, x0:x1] = True
    return masks


@pytest.mark.parametrize("seed", range(8))
def test_augment_keeps_image_and_masks_aligned(seed: int) -> None:
    h, w, crop = 90, 120, 64
    image = _coordinate_image(h, w)
    masks = _rect_masks(h, w)
    out, out_masks, (vh, vw) = augment(
        image, encode_masks(masks), crop_size=crop, rng=np.random.default_rng(seed)
    )
    assert out.shape == (crop, crop, 3) and out.dtype == np.uint8
    assert (vh, vw) == (64, 64)  # the image is larger than the crop both ways
    xs, ys = out[:vh, :vw, 0].astype(int), out[:vh, :vw, 1].astype(int)
    # rows are consecutive source rows, columns consecutive source columns (left-right or mirrored)
    assert (np.diff(ys, axis=0) == 1).all() and (np.diff(ys, axis=1) == 0).all()
    dx = np.diff(xs, axis=1)
    assert (dx == 1).all() or (dx == -1).all()
    # every output mask is exactly the source mask sampled at the source coordinates
    expected = [m[ys, xs] for m in masks]
    expected = [e for e in expected if e.any()]
    assert len(out_masks) == len(expected)
    for got, want in zip(out_masks, expected):
        assert np.array_equal(got[:vh, :vw], want)


def test_augment_pads_small_images_and_drops_nothing_inside() -> None:
    h, w = 40, 50
    image = _coordinate_image(h, w)
    masks = np.zeros((2, h, w), dtype=bool)
    masks[0, 5:10, 5:10] = True
    masks[1, 30:40, 0:50] = True
    out, out_masks, valid = augment(
        image, encode_masks(masks), crop_size=64, rng=np.random.default_rng(0), hflip=False
    )
    assert valid == (40, 50)
    assert (out[40:] == IMAGE_PAD_VALUE).all() and (out[:, 50:] == IMAGE_PAD_VALUE).all()
    assert np.array_equal(out[:40, :50], image)
    assert out_masks.shape == (2, 64, 64)
    assert (
        np.array_equal(out_masks[:, :40, :50], masks)
        and not out_masks[:, 40:].any()
        and not out_masks[:, :, 50:].any()
    )


def test_augment_drops_masks_emptied_by_the_crop() -> None:
    h, w = 64, 200
    masks = np.zeros((2, h, w), dtype=bool)
    masks[0, :, :10] = True  # left edge
    masks[1, :, 190:] = True  # right edge: a 64-wide crop never holds both
    kept = []
    for seed in range(8):
        out, out_masks, _ = augment(
            _coordinate_image(h, w),
            encode_masks(masks),
            crop_size=64,
            rng=np.random.default_rng(seed),
        )
        xs = out[:, :, 0].astype(int)  # the source column of every output pixel
        expected = [
            k for k, (lo, hi) in enumerate(((0, 10), (190, 200))) if ((xs >= lo) & (xs < hi)).any()
        ]
        assert len(out_masks) == len(expected) <= 1, seed
        for got, k in zip(out_masks, expected):
            np.testing.assert_array_equal(got, masks[k][out[:, :, 1].astype(int), xs])
        kept.append(tuple(expected))
    assert set(kept) == {(), (0,), (1,)}, (
        kept
    )  # crops in the middle, at the left and at the right edge


def test_scale_jitter_output_size() -> None:
    assert scaled_size((480, 640), 1024, 0.5) == (384, 512)
    assert scaled_size((100, 50), 64, 2.0) == (128, 64)
    image = _coordinate_image(90, 120)
    out, masks, valid = augment(
        image,
        encode_masks(_rect_masks(90, 120)),
        crop_size=64,
        rng=np.random.default_rng(0),
        scale_range=(0.25, 0.25),
    )
    assert valid == scaled_size((90, 120), 64, 0.25) == (12, 16)
    assert (out[12:] == IMAGE_PAD_VALUE).all()
    assert masks.shape[1:] == (64, 64) and not masks[:, 12:].any()


def test_crop_offsets_hand_computed() -> None:
    assert crop_offsets((100, 200), 64, (0.5, 0.25)) == (18, 34)
    assert crop_offsets((50, 60), 64, (0.9, 0.9)) == (0, 0)


def test_mask_sampling_without_replacement() -> None:
    rng = np.random.default_rng(0)
    assert sample_mask_indices(3, 5, rng).tolist() == [0, 1, 2]
    draws = [sample_mask_indices(10, 4, rng) for _ in range(20)]
    for d in draws:
        assert (
            len(set(d.tolist())) == 4 and d.min() >= 0 and d.max() < 10 and (np.diff(d) > 0).all()
        )
    assert len({tuple(d.tolist()) for d in draws}) > 1  # fresh sample at each load


def test_dataset_caps_masks_per_load(tmp_path: Path) -> None:
    h, w = 32, 32
    masks = np.zeros((12, h, w), dtype=bool)
    for k in range(12):
        masks[k, :, k * 2 : k * 2 + 2] = True
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(tmp_path / "a.png")
    from unsam.records import ImageRecord, MaskRecord

    rec = ImageRecord(id=1, file_name="a.png", height=h, width=w).with_masks(
        MaskRecord.from_masks(masks), assign_ids=True
    )
    ds = TrainDataset([rec], tmp_path, crop_size=32, max_masks=5, hflip=False)
    counts = {len(ds[p].masks) for p in range(4)}
    assert counts == {5}
    assert not np.array_equal(ds[0].masks, ds[1].masks)


def test_dataset_is_a_pure_function_of_position(tmp_path: Path) -> None:
    ann, images = make_shapes_dataset(tmp_path, num_images=5)
    records = load_coco_dataset(ann)
    a = TrainDataset(records, images, crop_size=64, seed=3)
    b = TrainDataset(records, images, crop_size=64, seed=3)
    for p in (0, 4, 7, 13):
        sa, sb = a[p], b[p]
        assert sa.image_id == sb.image_id
        assert np.array_equal(sa.image, sb.image) and np.array_equal(sa.masks, sb.masks)
    # each epoch visits every image once, in a seed-dependent order
    epoch0 = [a.image_index(p) for p in range(5)]
    epoch1 = [a.image_index(p) for p in range(5, 10)]
    assert sorted(epoch0) == sorted(epoch1) == list(range(5))
    other = TrainDataset(records, images, crop_size=64, seed=4)
    assert [other.image_index(p) for p in range(10)] != epoch0 + epoch1


def test_step_batch_sampler_shards_the_global_batch() -> None:
    single = list(StepBatchSampler(start_step=2, max_steps=5, batch_size=4))
    assert single == [[8, 9, 10, 11], [12, 13, 14, 15], [16, 17, 18, 19]]
    r0 = list(StepBatchSampler(start_step=2, max_steps=5, batch_size=4, rank=0, world_size=2))
    r1 = list(StepBatchSampler(start_step=2, max_steps=5, batch_size=4, rank=1, world_size=2))
    assert [a + b for a, b in zip(r0, r1)] == single
    with pytest.raises(ValueError, match="not divisible by the 3 training processes"):
        StepBatchSampler(start_step=0, max_steps=1, batch_size=4, rank=0, world_size=3)


def test_collate_targets_for_transformers(tmp_path: Path) -> None:
    ann, images = make_shapes_dataset(tmp_path, num_images=2, hw=(40, 50))
    ds = TrainDataset(load_coco_dataset(ann), images, crop_size=64, hflip=False)
    mean, std = (100.0, 110.0, 120.0), (50.0, 60.0, 70.0)
    batch = collate([ds[0], ds[1]], mean, std)
    assert (
        batch["pixel_values"].shape == (2, 3, 64, 64)
        and batch["pixel_values"].dtype == torch.float32
    )
    assert torch.allclose(
        batch["pixel_values"][0, :, 63, 63],
        torch.tensor([(128 - 100) / 50, (128 - 110) / 60, (128 - 120) / 70]),
    )
    assert batch["pixel_mask"].dtype == torch.int64
    assert batch["pixel_mask"][0, :40, :50].all() and batch["pixel_mask"][0, 40:].sum() == 0
    for m, c, s in zip(batch["mask_labels"], batch["class_labels"], (ds[0], ds[1])):
        assert m.dtype == torch.bool and m.shape == (len(s.masks), 64, 64)
        assert c.dtype == torch.int64 and c.tolist() == [0] * len(s.masks)
        assert torch.equal(m, torch.from_numpy(s.masks))


def test_check_images_names_the_bad_file(tmp_path: Path) -> None:
    ann, images = make_shapes_dataset(tmp_path, num_images=3, empty_last=True)
    records = load_coco_dataset(ann)
    good, bad = check_images(records, images)
    assert [r.id for r in good] == [1, 2] and bad == []  # the image without masks is dropped
    (images / "img_001.png").unlink()
    with pytest.raises(ImageReadError, match=r"img_001\.png.*--skip-bad-images"):
        check_images(records, images)
    good, bad = check_images(records, images, skip_bad=True)
    assert [r.id for r in good] == [1] and bad[0][0].endswith("img_001.png")
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(images / "img_001.png")
    with pytest.raises(ImageReadError, match="differs from the annotation JSON"):
        check_images(records, images)
