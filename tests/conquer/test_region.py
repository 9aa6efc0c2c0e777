"""Per-image conquer driver (spec §3.1, §3.3) with fake, colour-based feature extractors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.reference.conquer_naive import conquer_naive, pil_resize_image
from unsam.conquer.region import ConquerConfig, ConquerMask, conquer, region_box

RED, BLUE, GREEN, GREY = (255, 0, 0), (0, 0, 255), (0, 255, 0), (128, 128, 128)


class ColourExtractor:
    """Patch feature = mean patch colour in [-0.5, 0.5]^3 (``texture``: minus the crop's mean, +
    spread).

    Red and blue have cosine -1/3, so a red/blue crop never merges across colours. Records every
    batch it is called with.
    """

    name = "colour"
    patch_size = 8

    def __init__(self, texture: bool = False) -> None:
        self.texture = texture
        self.feature_dim = 6 if texture else 3
        self.calls: list[np.ndarray] = []

    def __call__(self, images: np.ndarray) -> torch.Tensor:
        self.calls.append(np.array(images))
        b, s, s2, _ = images.shape
        p = self.patch_size
        patches = images.reshape(b, s // p, p, s2 // p, p, 3).astype(np.float64) / 255.0
        feats = [patches.mean(axis=(2, 4)) - 0.5]
        if self.texture:  # contrast against the crop's mean colour, plus colour spread
            feats = [feats[0] - feats[0].mean(axis=(1, 2), keepdims=True), patches.std(axis=(2, 4))]
        return torch.from_numpy(np.concatenate(feats, axis=-1)).float()


def two_colour_scene() -> tuple[np.ndarray, list[np.ndarray]]:
    """A 100x120 grey image with a 64x64 red|blue square at x 20..83, y 10..73, plus odd regions."""
    image = np.full((100, 120, 3), GREY, dtype=np.uint8)
    image[10:74, 20:52] = RED
    image[10:74, 52:84] = BLUE
    square = np.zeros((100, 120), dtype=bool)
    square[10:74, 20:84] = True
    notched = square.copy()
    notched[10:42, 52:84] = False  # top-right quadrant missing: same box, half the blue is outside
    empty = np.zeros_like(square)
    line = np.zeros_like(square)
    line[50, 5:60] = True  # one row high: degenerate, skipped
    return image, [square, notched, empty, line]


def test_region_box_includes_last_row_and_column() -> None:
    mask = np.zeros((10, 12), dtype=bool)
    mask[2, 3] = mask[7, 9] = True
    assert region_box(mask) == (3, 2, 10, 8)
    assert region_box(np.zeros((4, 4), bool)) is None
    one_row = np.zeros((4, 4), bool)
    one_row[1, :] = True
    assert region_box(one_row) is None


def test_two_colour_square_splits_and_window_nms() -> None:
    image, divide = two_colour_scene()
    extractor = ColourExtractor()
    out = conquer(image, divide, extractor, ConquerConfig(crop_size=64))
    # one extractor call for the two valid regions; the crop is exactly 64x64, so not resized
    assert len(extractor.calls) == 1 and extractor.calls[0].shape == (2, 64, 64, 3)
    np.testing.assert_array_equal(extractor.calls[0][0], image[10:74, 20:84])

    red = np.zeros((64, 64), dtype=bool)
    red[:, :32] = True
    square = [m for m in out if m.parent == 0]
    # red and blue are emitted at all 6 levels: 12 equal-area candidates R B R B ...; the window
    # of 5 keeps positions 0, 1, 6, 7 -> red and blue at levels 1 and 4 (spec §3.3, bug 17)
    assert [(m.level, m.theta) for m in square] == [(1, 0.6), (1, 0.6), (4, 0.3), (4, 0.3)]
    assert all(m.box_xyxy == (20, 10, 84, 74) and m.mask.shape == (64, 64) for m in square)
    assert sorted(int(m.mask[:, :32].all()) + 2 * int(m.mask[:, 32:].all()) for m in square) == [
        1,
        1,
        2,
        2,
    ]
    assert all(m.mask.sum() == 64 * 32 for m in square)

    notched = [m for m in out if m.parent == 1]
    # blue has coverage 0.5 against the notched mask and is dropped; 6 red copies -> positions 0, 5
    assert [m.level for m in notched] == [1, 6]
    for m in notched:
        np.testing.assert_array_equal(m.mask, red)
    assert [m.parent for m in out] == [0, 0, 0, 0, 1, 1]  # region by region, nothing for 2 and 3


def test_full_nms_keeps_one_copy() -> None:
    image, divide = two_colour_scene()
    out = conquer(image, divide, ColourExtractor(), ConquerConfig(crop_size=64, full_nms=True))
    assert [(m.parent, m.level) for m in out] == [(0, 1), (0, 1), (1, 1)]


def test_crop_includes_last_row_and_column_and_is_resized() -> None:
    """The divide mask's last row/column (green here) is part of the crop (spec §10 bug 13)."""
    image = np.full((60, 70, 3), GREY, dtype=np.uint8)
    image[15:40, 10:28] = RED
    image[15:40, 28:47] = BLUE
    image[39, 10:47] = GREEN  # last row of the region
    image[15:40, 46] = GREEN  # last column
    mask = np.zeros((60, 70), dtype=bool)
    mask[15:40, 10:47] = True
    extractor = ColourExtractor()
    out = conquer(image, [mask], extractor, ConquerConfig(crop_size=32))
    expected_crop = pil_resize_image(image[15:40, 10:47], 32, 32)
    np.testing.assert_array_equal(extractor.calls[0][0], expected_crop)
    assert (extractor.calls[0][0][-1, :, 1] > 200).any()  # green reached the bottom row
    assert out and all(m.box_xyxy == (10, 15, 47, 40) and m.mask.shape == (25, 37) for m in out)


def textured_scene(seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Smooth random colours with blobs, and blob-shaped divide masks of assorted sizes."""
    rng = np.random.default_rng(seed)
    h, w = 90, 110
    yy, xx = np.mgrid[0:h, 0:w] / 40.0
    waves = [
        np.sin(yy * rng.uniform(1, 3) + xx * rng.uniform(1, 3) + rng.uniform(0, 6))
        for _ in range(3)
    ]
    image = np.stack(waves, -1)
    image = (image * 60 + 128).astype(np.float64)
    divide = []
    for _ in range(5):
        cy, cx = rng.uniform(10, h - 10), rng.uniform(10, w - 10)
        ry, rx = rng.uniform(6, 35), rng.uniform(6, 45)
        blob = ((np.mgrid[0:h, 0:w][0] - cy) / ry) ** 2 + (
            (np.mgrid[0:h, 0:w][1] - cx) / rx
        ) ** 2 < 1
        image[blob] = image[blob] * 0.5 + rng.uniform(0, 255, size=3) * 0.5
        divide.append(blob)
    return np.clip(image, 0, 255).astype(np.uint8), divide


@pytest.mark.parametrize(("seed", "full_nms"), [(1, False), (2, False), (1, True), (2, True)])
def test_matches_reference_pipeline(seed: int, full_nms: bool) -> None:
    image, divide = textured_scene(seed)
    cfg = ConquerConfig(crop_size=64, full_nms=full_nms, batch_size=2)
    extractor = ColourExtractor(texture=True)
    out = conquer(image, divide, extractor, cfg)
    assert [len(c) for c in extractor.calls] == [2, 2, 1]  # 5 regions in chunks of batch_size
    expected = conquer_naive(image, divide, ColourExtractor(texture=True), cfg)
    assert len(out) == len(expected) > 5
    assert len({m.level for m in out}) > 2  # several granularities survive
    for got, (parent, level, theta, box, mask) in zip(out, expected):
        assert isinstance(got, ConquerMask)
        box = tuple(int(v) for v in box)
        assert (got.parent, got.level, got.theta, got.box_xyxy) == (parent, level, theta, box)
        np.testing.assert_array_equal(got.mask, mask)
        x0, y0, x1, y1 = got.box_xyxy
        inside = (got.mask & divide[parent][y0:y1, x0:x1]).sum() / got.mask.sum()
        assert inside > 0.9  # coverage rule


def test_invalid_inputs() -> None:
    image, divide = two_colour_scene()
    with pytest.raises(ValueError, match="divide mask 0 has shape"):
        conquer(image, [divide[0][:50]], ColourExtractor(), ConquerConfig(crop_size=64))
    with pytest.raises(ValueError, match="uint8 RGB"):
        conquer(image.astype(np.float32), divide, ColourExtractor(), ConquerConfig(crop_size=64))
    with pytest.raises(ValueError, match="multiple of the extractor's patch size"):
        conquer(image, divide, ColourExtractor(), ConquerConfig(crop_size=60))

    class Broken(ColourExtractor):
        def __call__(self, images: np.ndarray) -> torch.Tensor:
            return super().__call__(images)[:, 0]

    with pytest.raises(ValueError, match="expected a \\(B, h, w, C\\) tensor"):
        conquer(image, divide, Broken(), ConquerConfig(crop_size=64))
    assert conquer(image, [], ColourExtractor(), ConquerConfig(crop_size=64)) == []


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("crop_size", 0, "crop_size"),
        ("thetas", (), "thetas"),
        ("thetas", (0.5, 2.0), "thetas"),
        ("min_size", 0, "min_size"),
        ("coverage_thresh", 1.0, "coverage_thresh"),
        ("nms_iou_thresh", -0.1, "nms_iou_thresh"),
        ("nms_window", 1, "nms_window"),
        ("batch_size", 0, "batch_size"),
    ],
)
def test_config_validation(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ConquerConfig(**{field: value})


def test_config_defaults_are_the_originals() -> None:
    cfg = ConquerConfig()
    assert (cfg.crop_size, cfg.thetas, cfg.min_size) == (256, (0.6, 0.5, 0.4, 0.3, 0.2, 0.1), 4)
    assert (cfg.coverage_thresh, cfg.nms_iou_thresh, cfg.nms_window, cfg.full_nms) == (
        0.9,
        0.9,
        5,
        False,
    )
    import dataclasses

    assert all(f.metadata.get("help") for f in dataclasses.fields(ConquerConfig))


@pytest.mark.data
def test_real_image_with_classic_extractor(coco_gt, coco_images) -> None:
    """Smoke test against the real FeatureExtractor contract on a COCO image, GT masks as divide
    masks."""
    features = pytest.importorskip("unsam.features")
    from pycocotools.coco import COCO

    from unsam.io.images import load_image

    coco = COCO(str(coco_gt))
    info = coco.loadImgs(139)[0]  # 000000000139.jpg, a living room with many objects
    image = load_image(coco_images / info["file_name"])
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[139], iscrowd=False))[:6]
    divide = [coco.annToMask(a).astype(bool) for a in anns]
    out = conquer(image, divide, features.ClassicFeatureExtractor(), ConquerConfig())
    assert out, "expected some conquer masks on a real image"
    assert [m.parent for m in out] == sorted(m.parent for m in out)
    for parent in {m.parent for m in out}:
        region = [m for m in out if m.parent == parent]
        box = region_box(divide[parent])
        x0, y0, x1, y1 = box
        for m in region:
            assert m.box_xyxy == box and m.mask.shape == (y1 - y0, x1 - x0)
            assert (m.mask & divide[parent][y0:y1, x0:x1]).sum() / m.mask.sum() > 0.9
        assert [m.level for m in region] == sorted(m.level for m in region)


def test_merge_processes_give_the_serial_result() -> None:
    """ConquerConfig.merge_workers > 0 merges the regions in spawned processes: same masks."""
    from unsam.conquer.region import merge_workers_for

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(96, 128, 3), dtype=np.uint8)
    masks = []
    for y0, x0, h, w in ((5, 8, 40, 60), (30, 50, 50, 70), (0, 0, 96, 128)):
        m = np.zeros((96, 128), bool)
        m[y0 : y0 + h, x0 : x0 + w] = True
        masks.append(m)

    class Planted:
        name, patch_size, feature_dim = "planted", 8, 16

        def __call__(self, images: np.ndarray) -> torch.Tensor:
            g = torch.Generator().manual_seed(int(images.sum()) % 1000)
            base = torch.randn(len(images), 4, 4, 16, generator=g)
            return base.repeat_interleave(2, 1).repeat_interleave(2, 2)[
                :, :, :, :
            ] + 0.3 * torch.randn(len(images), 8, 8, 16, generator=g)

    serial = conquer(image, masks, Planted(), ConquerConfig(crop_size=64, merge_workers=0))
    parallel = conquer(image, masks, Planted(), ConquerConfig(crop_size=64, merge_workers=2))
    assert serial and len(serial) == len(parallel)
    for a, b in zip(serial, parallel, strict=True):
        assert (a.parent, a.level, a.box_xyxy) == (b.parent, b.level, b.box_xyxy)
        np.testing.assert_array_equal(a.mask, b.mask)
    assert merge_workers_for(ConquerConfig(), Planted()) == 0  # no device: in this process
