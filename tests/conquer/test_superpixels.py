"""Superpixel conquer units: graph merging against the naive reference, cell bookkeeping, driver."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conquer.test_region import (
    BLUE,
    GREY,
    RED,
    ColourExtractor,
    textured_scene,
    two_colour_scene,
)
from tests.reference.merge_graph_naive import merge_graph_naive
from tests.reference.merge_naive import planted_features
from tests.reference.nms_loop import nms_loop
from unsam.conquer.merge import grid_edges, merge_graph, merge_regions
from unsam.conquer.region import ConquerConfig, conquer
from unsam.conquer.superpixels import (
    cluster_nms,
    colour_features,
    felzenszwalb_superpixels,
    pool_patch_features,
    region_adjacency,
    superpixel_clusters,
)

THETAS = (0.9, 0.7, 0.5, 0.3, 0.1, -0.1)


def random_labels(h: int, w: int, n: int, seed: int) -> np.ndarray:
    """Voronoi cells of n random seeds: a label map like a superpixel map (some labels may be
    absent)."""
    rng = np.random.default_rng(seed)
    pts = rng.uniform(0, 1, size=(n, 2)) * (h, w)
    yy, xx = np.mgrid[0:h, 0:w]
    d = (yy[..., None] - pts[:, 0]) ** 2 + (xx[..., None] - pts[:, 1]) ** 2
    return np.unique(d.argmin(-1), return_inverse=True)[1].reshape(h, w)


def adjacency_loop(labels: np.ndarray) -> np.ndarray:
    pairs = set()
    h, w = labels.shape
    for y in range(h):
        for x in range(w):
            for dy, dx in ((0, 1), (1, 0)):
                if y + dy < h and x + dx < w and labels[y, x] != labels[y + dy, x + dx]:
                    a, b = sorted((int(labels[y, x]), int(labels[y + dy, x + dx])))
                    pairs.add((a, b))
    return np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)


@pytest.mark.parametrize("seed", range(4))
def test_merge_graph_matches_naive_reference(seed: int) -> None:
    labels = random_labels(24, 30, 40, seed)
    n = int(labels.max()) + 1
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((n, 4)) + rng.uniform(
        0, 1, size=4
    )  # a shared component: merges happen
    weights = np.bincount(labels.ravel())
    edges = region_adjacency(labels)
    fast = merge_graph(
        feats, edges[rng.permutation(len(edges))][:, ::-1], THETAS, min_size=30, weights=weights
    )
    slow = merge_graph_naive(feats, edges, THETAS, min_size=30, weights=weights)
    for f, (theta, level, lab, emitted) in zip(fast, slow, strict=True):
        assert (f.theta, f.level) == (theta, level)
        np.testing.assert_array_equal(f.labels, lab)  # same fresh-id scheme: the ids agree
        assert f.emitted == emitted
    assert len({len(np.unique(f.labels)) for f in fast}) > 2  # several distinct levels
    assert any(f.emitted for f in fast)


def test_merge_graph_on_the_grid_is_merge_regions() -> None:
    feats = planted_features(16, 20, 24, seed=3)
    grid = merge_regions(torch.from_numpy(feats), min_size=4)
    graph = merge_graph(feats.reshape(-1, 24), grid_edges(16, 20), min_size=4)
    for a, b in zip(grid, graph, strict=True):
        np.testing.assert_array_equal(a.labels.ravel(), b.labels)
        assert a.emitted == b.emitted and (a.theta, a.level) == (b.theta, b.level)


def test_merge_graph_weights_only_gate_emission() -> None:
    feats = np.array([[1.0, 0.0], [1.0, 0.05], [0.0, 1.0]])
    edges = np.array([[0, 1], [1, 2]])
    plain = merge_graph(feats, edges, (0.9,), min_size=2)
    heavy = merge_graph(feats, edges, (0.9,), min_size=2, weights=np.array([1, 1, 5]))
    np.testing.assert_array_equal(plain[0].labels, [3, 3, 2])
    np.testing.assert_array_equal(heavy[0].labels, [3, 3, 2])
    assert plain[0].emitted == (3,)  # node 2 weighs 1 < 2
    assert heavy[0].emitted == (2, 3)


@pytest.mark.parametrize(
    ("feats", "edges", "kwargs", "message"),
    [
        (np.ones(3), np.zeros((0, 2), int), {}, "\\(N, C\\) node-feature"),
        (np.ones((3, 2)), np.array([[0, 3]]), {}, "ids out of range or a self-loop"),
        (np.ones((3, 2)), np.array([[1, 1]]), {}, "self-loop"),
        (np.ones((3, 2)), np.array([[0, 1], [1, 0]]), {}, "pair twice"),
        (np.ones((3, 2)), np.array([[0.0, 1.0]]), {}, "integer array"),
        (
            np.ones((3, 2)),
            np.array([[0, 1]]),
            {"weights": np.array([1, 0, 1])},
            "positive integers",
        ),
        (np.full((3, 2), np.nan), np.array([[0, 1]]), {}, "NaN"),
    ],
)
def test_merge_graph_invalid_inputs(feats, edges, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        merge_graph(feats, edges, (0.5,), **kwargs)


def test_merge_graph_without_edges() -> None:
    levels = merge_graph(np.ones((2, 3)), np.zeros((0, 2), dtype=np.int64), (0.5,))
    np.testing.assert_array_equal(levels[0].labels, [0, 1])
    assert levels[0].emitted == ()  # no neighbours


@pytest.mark.parametrize("seed", range(3))
def test_region_adjacency_matches_loop(seed: int) -> None:
    labels = random_labels(20, 17, 25, seed)
    np.testing.assert_array_equal(region_adjacency(labels), adjacency_loop(labels))


def test_pool_patch_features_matches_loop() -> None:
    rng = np.random.default_rng(0)
    labels = random_labels(21, 35, 12, 1)
    feats = rng.standard_normal((4, 6, 3))
    pooled = pool_patch_features(feats, labels)
    h, w = labels.shape
    for k in range(int(labels.max()) + 1):
        rows = [
            feats[y * 4 // h, x * 6 // w] for y in range(h) for x in range(w) if labels[y, x] == k
        ]
        np.testing.assert_allclose(pooled[k], np.mean(rows, axis=0), rtol=1e-12, atol=1e-12)


def test_felzenszwalb_labels_are_consecutive() -> None:
    image, _ = textured_scene(0)
    fine = felzenszwalb_superpixels(image, 20.0, min_size=10)
    coarse = felzenszwalb_superpixels(image, 500.0, min_size=10)
    for lab in (fine, coarse):
        assert lab.shape == image.shape[:2] and lab.dtype == np.int64
        assert set(np.unique(lab).tolist()) == set(range(int(lab.max()) + 1))
    assert fine.max() > coarse.max() > 0
    with pytest.raises(ValueError, match="uint8 RGB"):
        felzenszwalb_superpixels(image.astype(np.float32), 20.0)


def test_superpixel_clusters_bookkeeping_is_exact() -> None:
    image, divide = textured_scene(2)
    feats = ColourExtractor(texture=True)(image[None, :88, :104])[
        0
    ].numpy()  # any grid is stretched over
    scales = (30.0, 120.0)
    clusters = superpixel_clusters(
        image,
        feats,
        scales=scales,
        thetas=THETAS,
        superpixel_min_size=10,
        min_area=40,
        colour_weight=0.5,
    )
    assert len(clusters) > 10 and set(clusters.scale.tolist()) == {0, 1}
    masks = np.stack([clusters.mask(i) for i in range(len(clusters))])
    areas = masks.reshape(len(masks), -1).sum(1)
    np.testing.assert_array_equal(clusters.areas, areas)
    assert areas.min() >= 40
    np.testing.assert_array_equal(
        clusters.overlap(divide[0]), (masks & divide[0]).reshape(len(masks), -1).sum(1)
    )
    # every candidate is a union of superpixels of its own scale
    maps = [felzenszwalb_superpixels(image, s, 0.8, 10) for s in scales]
    for m, s in zip(masks, clusters.scale):
        lab = maps[s]
        inside = np.bincount(lab[m], minlength=lab.max() + 1)
        total = np.bincount(lab.ravel(), minlength=lab.max() + 1)
        assert np.all((inside == 0) | (inside == total))
    # distinct clusters of one scale; the first level of each is the one recorded
    for s in (0, 1):
        sub = masks[clusters.scale == s].reshape(-1, masks.shape[1] * masks.shape[2])
        assert len(np.unique(sub, axis=0)) == len(sub)
    assert clusters.persistence.min() >= 1 and clusters.persistence.max() > 1
    # sparse IoU equals the dense one
    flat = masks.reshape(len(masks), -1).astype(np.float64)
    inter = flat @ flat.T
    dense = inter / (areas[:, None] + areas[None, :] - inter)
    np.testing.assert_allclose(clusters.iou().toarray(), dense, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("window", [None, 3, 5])
def test_cluster_nms_matches_loop_reference(window: int | None) -> None:
    image, _ = textured_scene(1)
    feats = ColourExtractor(texture=True)(image[None, :88, :104])[0].numpy()
    clusters = superpixel_clusters(
        image, feats, scales=(30.0, 60.0, 120.0), thetas=THETAS, superpixel_min_size=10
    )
    masks = [clusters.mask(i) for i in range(len(clusters))]
    areas = clusters.areas
    for thresh in (0.5, 0.8):
        fast = cluster_nms(clusters.iou(), areas, thresh, window)
        slow = nms_loop(masks, areas.tolist(), thresh, window)
        assert sorted(fast) == sorted(slow)
        assert len(fast) < len(masks)


def test_conquer_superpixels_follow_boundaries_better_than_patches() -> None:
    """A red disc on blue: patch masks are unions of ~10-pixel blocks, superpixel masks follow the
    disc's edge (up to the 1-2 px anti-aliasing fringe of Felzenszwalb's smoothing)."""
    image = np.full((160, 180, 3), BLUE, dtype=np.uint8)
    yy, xx = np.mgrid[:160, :180]
    disc = (yy - 80) ** 2 + (xx - 85) ** 2 < 45**2
    image[disc] = RED
    region = np.zeros((160, 180), dtype=bool)
    region[10:150, 10:170] = True
    target = disc[10:150, 10:170]

    def best_iou(units: str) -> float:
        cfg = ConquerConfig(
            crop_size=64,
            units=units,
            superpixel_scales=(50.0, 200.0),
            superpixel_min_area=16,
            superpixel_colour_weight=0.0,
        )
        out = conquer(image, [region], ColourExtractor(), cfg)
        assert out and all(
            m.box_xyxy == (10, 10, 170, 150) and m.mask.shape == (140, 160) for m in out
        )
        if units == "superpixels":
            # one part (the disc) from each of the two scales, scale 0 first (measured)
            assert [(m.scale, m.level) for m in out] == [(0, 1), (1, 1)]
        return max((m.mask & target).sum() / (m.mask | target).sum() for m in out)

    superpixels, patches = best_iou("superpixels"), best_iou("patches")
    assert superpixels > 0.85 and superpixels > patches + 0.05
    # with the superpixels' own colour the anti-aliased fringe joins the right side: exact disc
    cfg = ConquerConfig(
        crop_size=64,
        units="superpixels",
        superpixel_scales=(50.0, 200.0),
        superpixel_min_area=16,
        superpixel_colour_weight=0.5,
    )
    out = conquer(image, [region], ColourExtractor(), cfg)
    assert any(np.array_equal(m.mask, target) for m in out)


def test_colour_features_hand_values() -> None:
    import cv2

    image = np.zeros((4, 6, 3), dtype=np.uint8)
    image[:, :2] = RED
    image[:, 2:] = (0, 0, 40)  # dark blue: Lab spread on L is small but above the floor
    labels = np.zeros((4, 6), dtype=np.int64)
    labels[:, 2:] = 1
    lab = (
        cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
        .reshape(-1, 3)
        .astype(np.float64)
    )
    spread = np.maximum(lab.std(0), 4.0)
    expected = np.stack(
        [
            lab.reshape(4, 6, 3)[:, :2].reshape(-1, 3).mean(0),
            lab.reshape(4, 6, 3)[:, 2:].reshape(-1, 3).mean(0),
        ]
    )
    expected = (expected - lab.mean(0)) / spread / np.sqrt(3.0) * 2.5
    np.testing.assert_allclose(colour_features(image, labels, 3, 2.5)[:2], expected, rtol=1e-6)
    np.testing.assert_allclose(
        colour_features(image, labels, 3, 2.5)[2],
        -lab.mean(0) / spread / np.sqrt(3.0) * 2.5,
        rtol=1e-6,
    )  # an empty label: zero colour, centred
    flat = np.full((4, 6, 3), 128, dtype=np.uint8)
    np.testing.assert_allclose(
        colour_features(flat, labels, 2, 1.0), 0.0, atol=1e-9
    )  # floor: no noise blow-up


def test_conquer_superpixels_coverage_filter_and_nms() -> None:
    image, divide = two_colour_scene()
    cfg = ConquerConfig(
        crop_size=64,
        units="superpixels",
        superpixel_scales=(50.0, 100.0, 200.0),
        full_nms=True,
        superpixel_min_area=16,
    )
    out = conquer(image, divide, ColourExtractor(), cfg)
    assert {m.parent for m in out} == {0, 1}
    red = np.zeros((64, 64), dtype=bool)
    red[:, :32] = True
    notched = [m.mask for m in out if m.parent == 1]
    assert len(notched) == 1 and np.array_equal(notched[0], red)  # blue half lies 50% outside
    square = [m.mask for m in out if m.parent == 0]
    assert (
        len(square) == 2
    )  # red and blue once each: the copies of 3 scales x 6 levels are suppressed


def test_conquer_superpixels_downscales_large_crops() -> None:
    image = np.full((200, 300, 3), GREY, dtype=np.uint8)
    image[20:180, 30:150] = RED
    image[20:180, 150:270] = BLUE
    square = np.zeros((200, 300), dtype=bool)
    square[20:180, 30:270] = True
    cfg = ConquerConfig(
        crop_size=64, units="superpixels", superpixel_max_side=60, superpixel_min_area=16
    )
    out = conquer(image, [square], ColourExtractor(), cfg)
    red = np.zeros((160, 240), dtype=bool)
    red[:, :120] = True
    assert out and all(m.mask.shape == (160, 240) for m in out)
    best = max((m.mask & red).sum() / (m.mask | red).sum() for m in out)
    assert best > 0.97  # upsampled from a 40x60 working grid


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("units", "pixels", "units"),
        ("superpixel_scales", (), "superpixel_scales"),
        ("superpixel_scales", (0.0,), "superpixel_scales"),
        ("superpixel_min_area", 0, "superpixel_min_area"),
        ("superpixel_max_side", 8, "superpixel_max_side"),
        ("superpixel_colour_weight", -1.0, "superpixel_colour_weight"),
    ],
)
def test_config_validation(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ConquerConfig(**{field: value})
