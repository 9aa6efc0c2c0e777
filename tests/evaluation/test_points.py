"""Interactive point evaluation (unsam.evaluation.points): click rule, metrics, GT readers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.reference.points_ref import click_naive, distance_transform_naive, point_metrics_naive
from unsam.evaluation.points import (
    CLICK_TIE_RTOL,
    PointEvalConfig,
    SegmentResult,
    click_point,
    distance_transform,
    evaluate_image,
    evaluate_points,
    evaluate_segment,
    first_maximum,
    format_point_metrics,
    is_panoptic_json,
    load_instances_gt,
    load_panoptic_gt,
    mask_ious,
    resize_shortest_edge,
    rgb_to_id,
    summarize_points,
)
from unsam.records import ImageRecord, MaskRecord, encode_mask

H = 0.35
# Soft-min distances by hand (kernel exp(-r / 0.35) over the 3x3 offsets):
#   edge pixel of a 1-px-high row next to a source column (replicate padding makes 3 source
#   neighbours: one straight, two diagonal): -0.35 * ln(e^(-1/0.35) + 2 e^(-sqrt2/0.35))
EDGE = -H * math.log(math.exp(-1 / H) + 2 * math.exp(-math.sqrt(2) / H))  # 0.83279
#   corner pixel of a rectangle (2 straight + 3 diagonal background neighbours)
CORNER = -H * math.log(2 * math.exp(-1 / H) + 3 * math.exp(-math.sqrt(2) / H))  # 0.62511


def _blob(seed: int, hw: tuple[int, int] = (11, 13)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: hw[0], : hw[1]]
    m = np.zeros(hw, dtype=bool)
    for _ in range(3):
        cy, cx = rng.uniform(0, hw[0]), rng.uniform(0, hw[1])
        ry, rx = rng.uniform(1.5, 5), rng.uniform(1.5, 5)
        m |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    if not m.any():
        m[hw[0] // 2, hw[1] // 2] = True
    return m


# ---------------------------------------------------------------------------------------------
# distance transform and click
# ---------------------------------------------------------------------------------------------
def test_distance_transform_hand_values_and_kornia_070_offset() -> None:
    """Regression: kornia 0.7.0 adds offset (3 i) // 2 at iteration i (0, 1, 3, 4, ...), not i.

    A row of 5 pixels with a source at the left end: iteration i reaches pixel i + 1 with the
    same soft-min step EDGE, so the values are offset + EDGE.
    """
    x = torch.zeros(1, 1, 1, 5)
    x[..., 0] = 1
    out = distance_transform(x, 3, H)[0, 0, 0]
    expected = torch.tensor([0.0, EDGE, 1 + EDGE, 3 + EDGE, 4 + EDGE])
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_distance_transform_shapes_and_errors() -> None:
    x = torch.zeros(2, 3, 6, 7)
    x[:, :, 0, 0] = 1
    assert distance_transform(x).shape == (2, 3, 6, 7)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        distance_transform(torch.zeros(6, 7))
    with pytest.raises(ValueError, match="odd"):
        distance_transform(x, kernel_size=4)


@pytest.mark.parametrize("seed", range(4))
def test_distance_transform_matches_naive(seed: int) -> None:
    sources = 1.0 - np.pad(_blob(seed), 1).astype(np.float32)
    fast = distance_transform(torch.from_numpy(sources)[None, None])[0, 0].numpy()
    slow = distance_transform_naive(sources)
    np.testing.assert_allclose(fast, slow, atol=1e-5)


@pytest.mark.parametrize("seed", range(8))
def test_click_point_matches_naive_full_image(seed: int) -> None:
    """The bounding-box crop gives the full padded image's click (the naive reference)."""
    mask = _blob(seed)
    x, y, depth = click_point(mask)
    rx, ry, dist = click_naive(mask)
    assert mask[y, x]
    assert depth == pytest.approx(dist.max(), abs=1e-5)
    tol = CLICK_TIE_RTOL * max(1.0, dist.max())
    below = dist.max() - dist
    if not np.any((below > tol / 2) & (below < 2 * tol)):  # no value near the tie boundary
        assert (x, y) == (rx, ry)


def _noisy_distance_transform(monkeypatch: pytest.MonkeyPatch, seed: int, ulps: int = 4) -> None:
    """Make :func:`click_point` see the distance map with +-``ulps`` float32 ulps of noise per
    value: what another CPU's kernels may round differently."""
    import unsam.evaluation.points as points

    real = points.distance_transform
    rng = np.random.default_rng(seed)

    def noisy(image: torch.Tensor, kernel_size: int = 3, h: float = 0.35) -> torch.Tensor:
        d = real(image, kernel_size, h)
        steps = torch.from_numpy(rng.integers(-ulps, ulps + 1, size=tuple(d.shape)))
        return d + steps.to(d.dtype) * torch.finfo(d.dtype).eps * d.abs()

    monkeypatch.setattr(points, "distance_transform", noisy)


def _rect(hw: tuple[int, int], y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros(hw, dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


@pytest.mark.parametrize("seed", range(12))
def test_click_point_is_machine_independent(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """Regression: the distance values of a symmetric mask tie only up to float rounding, which
    depends on the CPU's kernels; on some machines the 2x2 case clicked (5, 3) instead of
    (4, 3). Values within CLICK_TIE_RTOL of the maximum tie, so rounding noise never moves the
    click: the first tied pixel in row-major order wins."""
    cases = [
        (_rect((12, 14), 3, 5, 4, 6), (4, 3)),  # 2x2: four equal corners
        (_rect((12, 14), 3, 7, 4, 10), (6, 4)),  # 4x6: a 2x2 plateau
        (_rect((60, 80), 10, 50, 5, 75), (25, 29)),  # 40x70: a ridge of 60 equal deep values
        (_rect((10, 10), 0, 4, 0, 4), (1, 1)),  # the Point(Max) hand case's GT A
    ]
    exact = [click_point(m)[:2] for m, _ in cases]
    assert exact == [want for _, want in cases]
    _noisy_distance_transform(monkeypatch, seed)
    assert [click_point(m)[:2] for m, _ in cases] == exact


def test_first_maximum_tolerance() -> None:
    """Ties within CLICK_TIE_RTOL * max(1, |max|): first in row-major order; beyond it, the
    maximum."""
    assert first_maximum(torch.tensor([[1.0, 3.0], [3.0 + 2e-5, 0.0]])) == 1  # tied: first
    assert first_maximum(torch.tensor([[1.0, 3.0], [3.0 + 1e-4, 0.0]])) == 2  # a real maximum
    assert first_maximum(np.array([500.0, 500.004, 499.9])) == 0  # 4e-3 < 1e-5 * 500
    assert first_maximum(np.array([500.0, 500.01, 499.9])) == 1
    with pytest.raises(ValueError, match="empty"):
        first_maximum(np.zeros((0,)))


def test_click_point_hand_cases_first_maximum() -> None:
    m = np.zeros((12, 14), dtype=bool)
    m[3:5, 4:6] = True  # 2x2: all four equal (CORNER) -> first in row-major order = top-left
    x, y, d = click_point(m)
    assert (x, y) == (4, 3) and d == pytest.approx(CORNER, abs=1e-5)
    m = np.zeros((12, 14), dtype=bool)
    m[3:7, 4:10] = True  # 4x6: rows 1-2, cols 2-3 of the box tie at 1 + EDGE -> row 1, col 2
    x, y, d = click_point(m)
    assert (x, y) == (6, 4) and d == pytest.approx(1 + EDGE, abs=1e-5)
    m = np.zeros((12, 14), dtype=bool)
    m[3:8, 4:9] = True  # 5x5: the centre is the unique maximum
    assert click_point(m)[:2] == (6, 5)
    assert click_point(torch.from_numpy(m))[:2] == (6, 5)
    assert click_point(np.zeros((4, 4), dtype=bool)) == (0, 0, 0.0)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        click_point(np.zeros((1, 4, 4), dtype=bool))


def test_click_point_mask_touching_the_border() -> None:
    """The original pads one background pixel, so a full-image mask's click is its centre."""
    x, y, _ = click_point(np.ones((5, 5), dtype=bool))
    assert (x, y) == (2, 2)


# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------
def test_mask_ious_hand_values() -> None:
    gt = np.zeros((4, 4), dtype=bool)
    gt[:2, :2] = True  # 4 px
    p = np.zeros((3, 4, 4), dtype=bool)
    p[0, :2, :2] = True  # identical -> 1
    p[1, :2, :] = True  # 8 px containing gt -> 4/8
    p[2, 3, 3] = True  # disjoint -> 0
    np.testing.assert_allclose(mask_ious(p, gt), [1.0, 0.5, 0.0])
    with pytest.raises(ValueError, match="K, H, W"):
        mask_ious(p[0], gt)


def _square(hw: tuple[int, int], y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros(hw, dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


class TablePredictor:
    """Returns prepared (masks, predicted_iou) looked up by the last click; records the calls."""

    def __init__(self, table: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]) -> None:
        self.table = table
        self.calls: list[tuple[np.ndarray, np.ndarray]] = []

    def __call__(self, image: np.ndarray, points: np.ndarray, labels: np.ndarray):
        self.calls.append((points.copy(), labels.copy()))
        key = (int(points[-1, 0]), int(points[-1, 1]))
        return self.table[key]


@pytest.mark.parametrize("noise_seed", [None, 0, 1, 2])
def test_point_max_oracle_noc_hand_case(monkeypatch: pytest.MonkeyPatch, noise_seed) -> None:
    """Two GT squares on a 10x10 image; the model's 3 masks per click have known IoUs.

    GT A = rows 0-3, cols 0-3 (16 px), click (1, 1) (first of the 2x2 centre tie).
    GT B = rows 5-9, cols 5-9 (25 px), click (7, 7) (unique centre).
    A: masks IoU [0.5, 1.0, 0.25], predicted [0.9, 0.2, 0.9]: Max -> first max = mask 0 -> 0.5;
       Oracle -> 1.0.
    B: masks IoU [0.64, 0.0, 1.0], predicted [0.1, 0.8, 0.3]: Max = 0.0; Oracle = 1.0.
    Point(Max) = 0.25, Point(Oracle) = 1.0; NoC@0.5 = (1 + 20) / 2 = 10.5, NoC@0.8 = 20.
    """
    if noise_seed is not None:  # as computed on another machine: the same clicks
        _noisy_distance_transform(monkeypatch, noise_seed)
    hw = (10, 10)
    gt_a, gt_b = _square(hw, 0, 4, 0, 4), _square(hw, 5, 10, 5, 10)
    a_masks = np.stack([_square(hw, 0, 4, 0, 8), gt_a, _square(hw, 0, 2, 0, 2)])
    b_masks = np.stack([_square(hw, 5, 9, 5, 9), _square(hw, 0, 1, 0, 1), gt_b])
    predictor = TablePredictor(
        {(1, 1): (a_masks, np.array([0.9, 0.2, 0.9])), (7, 7): (b_masks, np.array([0.1, 0.8, 0.3]))}
    )
    np.testing.assert_allclose(mask_ious(a_masks, gt_a), [0.5, 1.0, 0.25])
    np.testing.assert_allclose(mask_ious(b_masks, gt_b), [0.64, 0.0, 1.0])
    image = np.zeros((*hw, 3), dtype=np.uint8)
    rec = ImageRecord(
        id=7,
        file_name="x.png",
        height=10,
        width=10,
        masks=(MaskRecord(rle=encode_mask(gt_a), id=1), MaskRecord(rle=encode_mask(gt_b), id=2)),
    )
    config = PointEvalConfig(short_side=None)
    metrics, results = evaluate_points(predictor, [rec], lambda r: image, config=config)
    assert [r.clicks for r in results] == [((1, 1, 1),), ((7, 7, 1),)]
    assert metrics["point_max_miou"] == pytest.approx(0.25)
    assert metrics["point_oracle_miou"] == pytest.approx(1.0)
    assert metrics["NoC@0.5"] == pytest.approx(10.5)
    assert metrics["NoC@0.8"] == metrics["NoC@0.85"] == metrics["NoC@0.9"] == pytest.approx(20.0)
    assert metrics["num_segments"] == 2 and metrics["num_images"] == 1
    assert metrics["num_segments_small"] == 2 and metrics["point_max_miou_large"] is None
    naive = point_metrics_naive(
        [(gt_a, a_masks, np.array([0.9, 0.2, 0.9])), (gt_b, b_masks, np.array([0.1, 0.8, 0.3]))]
    )
    assert metrics["point_max_miou"] == pytest.approx(naive["max"])
    assert metrics["point_oracle_miou"] == pytest.approx(naive["oracle"])
    assert metrics["NoC@0.5"] == pytest.approx(naive["NoC@0.5"])
    text = format_point_metrics(metrics, title="t")
    assert "point_max_miou" in text and " 25.00" in text


def test_iterative_protocol_positive_and_negative_clicks() -> None:
    """max_clicks > 1: next click at the deeper error region of the Max mask.

    GT = rows 0-5 x cols 0-9 (60 px) on a 12x12 image. Click 1 at its deepest point.
    Prediction 1: rows 0-1 only (IoU 20/60) -> the false negative rows 2-5 -> positive click 2.
    Prediction 2: GT plus rows 6-11 (IoU 60/132; no false negative) -> negative click 3 in
    rows 6-11.
    Prediction 3: exactly GT -> IoU 1 >= 0.9, stop. NoC@0.3 = 1, @0.45 = 2, @0.5 = 3.
    """
    hw = (12, 12)
    gt = _square(hw, 0, 6, 0, 10)
    first = click_point(gt)[:2]
    top = _square(hw, 0, 2, 0, 10)  # 20 px of 60 -> IoU 1/3
    fn_click = click_point(gt & ~top)[:2]
    bigger = gt | _square(hw, 6, 12, 0, 12)  # 60 + 72 = 132 px -> IoU 60/132
    fp_click = click_point(bigger & ~gt)[:2]
    assert len({first, fn_click, fp_click}) == 3
    predictor = TablePredictor(
        {
            first: (top[None], np.array([0.5])),
            fn_click: (bigger[None], np.array([0.5])),
            fp_click: (gt[None], np.array([0.5])),
        }
    )
    config = PointEvalConfig(short_side=None, max_clicks=5)
    res = evaluate_segment(predictor, np.zeros((*hw, 3), np.uint8), gt, config=config)
    assert res.clicks == ((*first, 1), (*fn_click, 1), (*fp_click, 0))
    np.testing.assert_allclose(res.max_ious, [20 / 60, 60 / 132, 1.0])
    assert [res.noc(t) for t in (0.3, 0.45, 0.5, 0.9)] == [1, 2, 3, 3]
    assert predictor.calls[-1][1].tolist() == [1, 1, 0]  # all clicks so far, with labels
    # one click only: the original's NoC (1 if reached else 20)
    res1 = evaluate_segment(
        predictor, np.zeros((*hw, 3), np.uint8), gt, config=PointEvalConfig(short_side=None)
    )
    assert res1.clicks == ((*first, 1),) and res1.noc(0.5) == 20 and res1.noc(0.3) == 1


def test_size_buckets_use_coco_area_ranges() -> None:
    def result(area: float) -> SegmentResult:
        return SegmentResult(0, None, area, ((0, 0, 1),), (0.5,), (0.5,))

    assert [result(a).size for a in (0, 1023, 1024, 9215, 9216, 1e6)] == [
        "small",
        "small",
        "medium",
        "medium",
        "large",
        "large",
    ]
    m = summarize_points([result(10), result(5000), result(5000)])
    assert (m["num_segments_small"], m["num_segments_medium"], m["num_segments_large"]) == (1, 2, 0)


def test_resize_shortest_edge_matches_detectron2() -> None:
    assert resize_shortest_edge((429, 640), 800, 1333) == (800, 1193)  # 640 * 800 / 429 = 1193.47
    assert resize_shortest_edge((640, 480), 800, 1333) == (1067, 800)  # 1066.67 -> int(x + 0.5)
    assert resize_shortest_edge((100, 1000), 800, 1333) == (133, 1333)  # long side capped
    assert resize_shortest_edge((100, 146), 25, 1333) == (
        25,
        37,
    )  # 36.5 rounds up (int(x + 0.5)), not to even


def test_evaluate_image_resizes_image_and_masks() -> None:
    gt = _square((20, 30), 5, 15, 10, 20)
    rec = ImageRecord(
        id=1, file_name="a.png", height=20, width=30, masks=(MaskRecord(rle=encode_mask(gt), id=3),)
    )
    seen = {}

    def predict(image, points, labels):
        seen["shape"] = image.shape
        seen["point"] = points[0].tolist()
        m = np.zeros(image.shape[:2], dtype=bool)
        m[10:30, 20:40] = True  # the GT square at 2x
        return m[None], np.array([1.0])

    res = evaluate_image(
        predict, np.zeros((20, 30, 3), np.uint8), rec, config=PointEvalConfig(short_side=40)
    )
    assert seen["shape"] == (40, 60, 3)
    assert res[0].max_ious == (1.0,)
    assert res[0].area == 100.0  # the original-resolution area decides the size bucket
    assert 20 <= seen["point"][0] < 40 and 10 <= seen["point"][1] < 30
    with pytest.raises(ValueError, match="does not match the GT size"):
        evaluate_image(predict, np.zeros((21, 30, 3), np.uint8), rec)


def test_bad_prediction_shape_is_reported() -> None:
    gt = _square((8, 8), 2, 6, 2, 6)
    with pytest.raises(ValueError, match="predict must return"):
        evaluate_segment(
            lambda i, p, lab: (np.zeros((6, 4, 4), bool), np.zeros(6)),
            np.zeros((8, 8, 3), np.uint8),
            gt,
        )


# ---------------------------------------------------------------------------------------------
# GT readers
# ---------------------------------------------------------------------------------------------
def test_load_instances_gt_skips_crowd(tmp_path: Path) -> None:
    def poly(x0: int, y0: int, x1: int, y1: int) -> list[list[float]]:
        return [[x0, y0, x1, y0, x1, y1, x0, y1]]

    data = {
        "images": [{"id": 5, "file_name": "a.jpg", "height": 20, "width": 20}],
        "annotations": [
            {
                "id": 1,
                "image_id": 5,
                "segmentation": poly(1, 1, 8, 8),
                "iscrowd": 0,
                "category_id": 1,
            },
            {
                "id": 2,
                "image_id": 5,
                "segmentation": poly(10, 10, 18, 18),
                "iscrowd": 1,
                "category_id": 1,
            },
            {"id": 3, "image_id": 5, "segmentation": poly(2, 12, 6, 18), "category_id": 1},
        ],
        "categories": [{"id": 1, "name": "x"}],
    }
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(data))
    recs = load_instances_gt(path)
    assert [m.id for m in recs[0].masks] == [1, 3]
    assert all(m.source == "gt" for m in recs[0].masks)
    assert not is_panoptic_json(path)


def test_load_panoptic_gt_reads_png_ids_and_skips_crowd(tmp_path: Path) -> None:
    ids = np.zeros((6, 8), dtype=np.int64)
    big = 3 + 256 * 2 + 256 * 256 * 1  # needs all three channels: R=3, G=2, B=1
    ids[:3, :4] = big
    ids[3:, :] = 7  # stuff segment
    ids[:3, 4:] = 9  # crowd segment
    rgb = np.stack([ids % 256, (ids // 256) % 256, ids // 65536], axis=-1).astype(np.uint8)
    np.testing.assert_array_equal(rgb_to_id(rgb), ids)
    (tmp_path / "pan").mkdir()
    Image.fromarray(rgb).save(tmp_path / "pan" / "000001.png")
    data = {
        "images": [{"id": 1, "file_name": "000001.jpg", "height": 6, "width": 8}],
        "annotations": [
            {
                "image_id": 1,
                "file_name": "000001.png",
                "segments_info": [
                    {"id": big, "category_id": 1, "iscrowd": 0, "area": 12},
                    {"id": 9, "category_id": 2, "iscrowd": 1, "area": 12},
                    {"id": 7, "category_id": 3, "iscrowd": 0, "area": 24},
                ],
            }
        ],
        "categories": [],
    }
    path = tmp_path / "pan.json"
    path.write_text(json.dumps(data))
    assert is_panoptic_json(path)
    recs = load_panoptic_gt(path)  # default PNG folder: the JSON path without .json
    assert len(recs) == 1 and recs[0].file_name == "000001.jpg" and recs[0].hw == (6, 8)
    assert [m.id for m in recs[0].masks] == [big, 7]
    assert [m.area for m in recs[0].masks] == [12, 24]
    assert load_panoptic_gt(path, tmp_path / "pan", max_images=0) == []
    with pytest.raises(FileNotFoundError, match="panoptic-dir"):
        load_panoptic_gt(path, tmp_path / "missing")
