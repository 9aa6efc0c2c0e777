"""Bottom-up merging (spec §3.2) against the naive reference and hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import torch

from tests.reference.merge_naive import merge_naive, planted_features
from unsam.conquer.merge import DEFAULT_THETAS, MergeLevel, merge_regions


def assert_same_level(
    fast: MergeLevel, slow: tuple[float, int, np.ndarray, tuple[int, ...]]
) -> None:
    """Same partition up to relabelling, and the same clusters emitted."""
    theta, level, labels, emitted = slow
    assert (fast.theta, fast.level) == (theta, level)
    a, b = fast.labels.ravel().tolist(), labels.ravel().tolist()
    mapping = dict(zip(a, b))
    assert len(set(zip(a, b))) == len(mapping) == len(set(b)), f"level {level}: partitions differ"
    assert sorted(mapping[e] for e in fast.emitted) == sorted(emitted), (
        f"level {level}: emitted clusters differ"
    )


def random_features(h: int, w: int, c: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((h, w, c)).astype(np.float32)


CASES = [  # (id, features) — small channel counts make random features merge at every level
    *[(f"random8x8c4-s{s}", random_features(8, 8, 4, s)) for s in range(3)],
    *[(f"random16x16c16-s{s}", random_features(16, 16, 16, s)) for s in range(2)],
    ("random32x32c16", random_features(32, 32, 16, 7)),
    ("random12x20c3", random_features(12, 20, 3, 3)),  # non-square grid
    ("planted16x16c32", planted_features(16, 16, 32, objects=3, parts=3, seed=1)),
    ("planted32x32c48", planted_features(32, 32, 48, seed=2)),
    # few distinct vectors: many exact ties, so the tie rule must match too
    (
        "palette16x16",
        np.random.default_rng(5).integers(0, 3, size=(16, 16, 1)) * np.eye(3)[None, None, 0]
        + np.random.default_rng(6).integers(0, 2, size=(16, 16, 3)),
    ),
]


@pytest.mark.parametrize("feats", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_matches_naive_reference(feats: np.ndarray) -> None:
    fast = merge_regions(torch.as_tensor(np.asarray(feats, dtype=np.float32)))
    slow = merge_naive(np.asarray(feats, dtype=np.float32))
    assert len(fast) == len(slow) == len(DEFAULT_THETAS)
    for f, s in zip(fast, slow):
        assert_same_level(f, s)
        np.testing.assert_array_equal(f.labels, s[2])  # same fresh-id scheme: even the ids agree
    # the cases are meant to exercise merging and emission at several levels
    assert len({len(np.unique(f.labels)) for f in fast}) > 1


@pytest.mark.parametrize("seed", range(3))
def test_levels_nested_and_clusters_4_connected(seed: int) -> None:
    levels = merge_regions(torch.from_numpy(planted_features(32, 32, 24, seed=seed)))
    for prev, nxt in zip(levels, levels[1:]):
        pairs = set(zip(prev.labels.ravel().tolist(), nxt.labels.ravel().tolist()))
        assert len(pairs) == len(np.unique(prev.labels)), "a cluster was split by a later level"
    for lvl in levels:
        for cid in np.unique(lvl.labels):
            _, count = scipy.ndimage.label(lvl.labels == cid)  # default structure: 4-connectivity
            assert count == 1, f"cluster {cid} at level {lvl.level} is not 4-connected"


# 2x3 grid, patch ids 0 1 2 / 3 4 5. Cosines (hand-computed):
#   vertical  (0,3)=0.99504  (1,4)=0.99590  (2,5)=0.98058
#   horizontal (0,1)=(1,2)=0.70711  (3,4)=0.71345  (4,5)=0.87886
# theta 0.9: merge (1,4)->6, (0,3)->7, (2,5)->8; then cos(6,7)=0.73690, cos(6,8)=0.80320 < 0.9.
# theta 0.8: merge (6,8)->9; cos(7,9)=0.54230 < 0.8.   theta 0.5: merge (7,9)->10 (no neighbour).
HAND = np.array([[[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]], [[10.0, 1.0], [1.0, 1.2], [0.2, 1.0]]])


def test_hand_computed_example() -> None:
    levels = merge_regions(torch.tensor(HAND), thetas=(0.9, 0.8, 0.5), min_size=2)
    assert [(lv.level, lv.theta) for lv in levels] == [(1, 0.9), (2, 0.8), (3, 0.5)]
    np.testing.assert_array_equal(levels[0].labels, [[7, 6, 8], [7, 6, 8]])
    assert levels[0].emitted == (6, 7, 8)
    np.testing.assert_array_equal(levels[1].labels, [[7, 9, 9], [7, 9, 9]])
    assert levels[1].emitted == (7, 9)
    np.testing.assert_array_equal(levels[2].labels, np.full((2, 3), 10))
    assert levels[2].emitted == ()  # one cluster that absorbed everything has no neighbour
    masks = levels[1].patch_masks()
    np.testing.assert_array_equal(masks, [[[1, 0, 0], [1, 0, 0]], [[0, 1, 1], [0, 1, 1]]])


def test_hand_example_min_size() -> None:
    levels = merge_regions(HAND, thetas=(0.9, 0.8), min_size=3)  # numpy input works too
    assert levels[0].emitted == ()  # three 2-patch clusters
    assert levels[1].emitted == (9,)  # cluster 9 has 4 patches, cluster 7 only 2


def test_threshold_is_inclusive() -> None:
    """A pair whose similarity equals theta is merged (the original stops only when best <
    theta)."""
    feats = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # cosine exactly 0.0
    assert merge_regions(feats, thetas=(0.0,), min_size=1)[0].labels.tolist() == [[2, 2]]
    assert merge_regions(feats, thetas=(0.01,), min_size=1)[0].labels.tolist() == [[0, 1]]


def test_single_cluster_absorbing_everything_is_not_emitted() -> None:
    feats = torch.ones(4, 4, 3) + 0.01 * torch.randn(
        4, 4, 3, generator=torch.Generator().manual_seed(0)
    )
    levels = merge_regions(feats)
    for lvl in levels:
        assert len(np.unique(lvl.labels)) == 1
        assert lvl.emitted == ()


def test_every_level_returned_even_when_empty() -> None:
    """Random 768-d features barely correlate: early levels emit nothing but keep their index."""
    levels = merge_regions(torch.from_numpy(random_features(8, 8, 768, 0)))
    assert [lv.level for lv in levels] == [1, 2, 3, 4, 5, 6]
    assert [lv.theta for lv in levels] == list(DEFAULT_THETAS)
    assert levels[0].emitted == ()
    np.testing.assert_array_equal(levels[0].labels, np.arange(64).reshape(8, 8))


def test_emitted_respects_min_size_and_neighbours() -> None:
    feats = random_features(16, 16, 6, 11)
    for min_size in (1, 4, 9):
        for lvl in merge_regions(feats, min_size=min_size):
            ids, counts = np.unique(lvl.labels, return_counts=True)
            big = {int(i) for i, n in zip(ids, counts) if n >= min_size}
            expected = (
                big if len(ids) > 1 else set()
            )  # with >= 2 clusters every one has a neighbour
            assert set(lvl.emitted) == expected


def test_dtypes_and_devices_give_identical_results() -> None:
    feats = planted_features(16, 16, 16, objects=2, parts=3, seed=4)
    a = merge_regions(torch.from_numpy(feats))
    b = merge_regions(feats.astype(np.float64))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.labels, y.labels)
        assert x.emitted == y.emitted
    half = merge_regions(torch.from_numpy(feats).to(torch.bfloat16))
    assert len(half) == 6 and half[0].labels.shape == (16, 16)


def test_one_patch_grid() -> None:
    levels = merge_regions(torch.ones(1, 1, 5), thetas=(0.5,), min_size=1)
    assert levels[0].labels.tolist() == [[0]] and levels[0].emitted == ()


@pytest.mark.parametrize(
    ("feats", "kwargs", "message"),
    [
        (torch.zeros(4, 4), {}, "must be an \\(h, w, C\\)"),  # missing channel axis
        (torch.full((2, 2, 3), float("nan")), {}, "NaN or infinite"),
        (torch.ones(2, 2, 3), {"thetas": ()}, "thetas is empty"),
        (torch.ones(2, 2, 3), {"thetas": (1.5,)}, "outside \\[-1, 1\\]"),
        (torch.ones(2, 2, 3), {"min_size": 0}, "min_size must be a positive"),
    ],
)
def test_invalid_input_raises(feats: torch.Tensor, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        merge_regions(feats, **kwargs)


def test_zero_features_do_not_produce_nan() -> None:
    feats = torch.zeros(3, 3, 4)
    feats[0, 0] = 1.0
    levels = merge_regions(feats, thetas=(0.5, 0.0), min_size=1)
    np.testing.assert_array_equal(
        levels[0].labels, np.arange(9).reshape(3, 3)
    )  # all cosines 0 < 0.5
    assert levels[0].emitted == tuple(range(9))
    assert len(np.unique(levels[1].labels)) == 1  # 0 >= 0.0: everything merges
