"""Many-to-many matching vs a brute-force reference (unsam.training.promptable.matching)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.reference.m2m_matching_ref import brute_force_match, cost_naive
from unsam.training.promptable.matching import (
    INVALID_COST,
    MatcherConfig,
    many_to_many_assignment,
    mask_ce_cost,
    mask_dice_cost,
    match_clicks,
    match_cost_matrix,
)


@pytest.mark.parametrize("seed", range(3))
def test_cost_matrix_matches_naive_formulas(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn((5, 7), generator=g, dtype=torch.float64) * 3
    labels = torch.rand((4, 7), generator=g, dtype=torch.float64).round()
    pb = torch.rand((5, 4), generator=g, dtype=torch.float64) * 0.5 + 0.2
    tb = torch.rand((4, 4), generator=g, dtype=torch.float64) * 0.5 + 0.2
    fast = match_cost_matrix(logits, labels, pb, tb).double().numpy()
    slow = cost_naive(logits.numpy(), labels.numpy(), pb.numpy(), tb.numpy())
    np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        (5 * mask_ce_cost(logits, labels) + 5 * mask_dice_cost(logits, labels)).numpy(),
        cost_naive(logits.numpy(), labels.numpy()),
        rtol=1e-9,
    )


@pytest.mark.parametrize("seed", range(6))
def test_assignment_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    clicks, tokens = 3, 6
    sizes = rng.integers(1, 4, size=clicks)  # 1..3 targets per click
    target_click = np.repeat(np.arange(clicks), sizes)
    query_click = np.repeat(np.arange(clicks), tokens)
    cost = rng.normal(size=(clicks * tokens, target_click.size))
    rows, cols = many_to_many_assignment(cost, query_click, target_click)
    total, best = brute_force_match(cost, query_click, target_click)
    assert sorted(cols.tolist()) == list(range(target_click.size))  # every target matched once
    assert all(query_click[r] == target_click[c] for r, c in zip(rows, cols))  # same click
    assert cost[rows, cols].sum() == pytest.approx(total)
    assert {int(c): int(r) for r, c in zip(rows, cols)} == best  # unique optimum (random costs)


def test_assignment_rejects_too_many_targets_and_nan() -> None:
    with pytest.raises(ValueError, match="click 0 has 3 targets but only 2 tokens"):
        many_to_many_assignment(np.zeros((2, 3)), [0, 0], [0, 0, 0])
    with pytest.raises(ValueError, match="NaN"):
        many_to_many_assignment(np.full((2, 1), np.nan), [0, 0], [0])
    # a cheaper cross-click pairing is never taken
    cost = np.array([[5.0, 0.0], [0.0, 5.0]])
    rows, cols = many_to_many_assignment(cost, [0, 1], [0, 1])
    assert rows.tolist() == [0, 1] and cols.tolist() == [0, 1]
    assert INVALID_COST == 1e6


@pytest.mark.parametrize("seed", range(3))
def test_match_clicks_end_to_end_vs_brute_force(seed: int) -> None:
    """Logits -> shared uniform points -> costs -> assignment, checked against the reference."""
    g = torch.Generator().manual_seed(seed)
    c, k, h, w = 2, 6, 4, 4
    logits = torch.randn((c, k, h, w), generator=g) * 2
    pred_boxes = torch.rand((c, k, 4), generator=g) * 0.5 + 0.25
    masks = torch.rand((5, 16, 16), generator=g) > 0.5
    target_boxes = torch.rand((5, 4), generator=g) * 0.5 + 0.25
    targets = [torch.tensor([0, 3]), torch.tensor([1, 2, 4])]
    cfg = MatcherConfig(num_points=50)
    match = match_clicks(
        logits,
        pred_boxes,
        masks,
        target_boxes,
        targets,
        config=cfg,
        generator=torch.Generator().manual_seed(99),
    )
    # the same points, drawn again
    coords = torch.rand((1, 50, 2), generator=torch.Generator().manual_seed(99))
    grid = 2 * coords[:, :, None] - 1
    pl = F.grid_sample(logits.reshape(1, c * k, h, w), grid, align_corners=False)[0, :, :, 0]
    flat_targets = [0, 3, 1, 2, 4]
    tl = F.grid_sample(
        masks[flat_targets].float()[:, None], grid.expand(5, -1, -1, -1), align_corners=False
    )
    tl = tl[:, 0, :, 0]
    cost = cost_naive(
        pl.double().numpy(),
        tl.double().numpy(),
        pred_boxes.reshape(-1, 4).double().numpy(),
        target_boxes[flat_targets].double().numpy(),
    )
    query_click = np.repeat(np.arange(c), k)
    _total, best = brute_force_match(cost, query_click, [0, 0, 1, 1, 1])
    assert len(match) == 5
    owners = [0, 0, 1, 1, 1]
    position = {(o, t): pos for pos, (o, t) in enumerate(zip(owners, flat_targets))}
    got = {
        position[(int(cl), int(t))]: int(q)
        for q, t, cl in zip(match.query, match.target, match.click)
    }
    assert got == best
    assert match.query.tolist() == sorted(match.query.tolist())  # pairs come sorted by query
