"""Golden test: unsam's whole-image Mask2Former (R50, 2000 queries) against UnSAM's official
``whole_image_segmentation`` (UnSAM @ de201b8 + detectron2 @ 02b5c4e) outputs.

Fixture: tests/data/fidelity/whole_image/ (README there): rule-generated weights, COCO
000000000139.jpg at test size 512/1024, 100 detections, CPU float32. Both inference paths are
held to it: the reference path (transformers' decoder forward, ``reference=True``) and the
default fast path (``predict_top_masks``: only the top-k queries' masks are projected). Checked
in the README's order: network input, class logits of all queries, the top-20 queries and their
low-resolution mask logits, the 100 kept queries, and the final masks and scores (the official
post-processing: upsample, threshold, score = probability x mean in-mask sigmoid).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.golden.common import (
    IMAGE_139,
    assert_weight_checks,
    case_param,
    check_weights,
    decode_rles,
    float32_without_tf32,
    hungarian,
    load_golden,
    make_weights,
    mask_iou_matrix,
)

PATHS = ["reference", "fast"]
CASES = [
    case_param("cpu", "float32"),
    case_param("cpu", "bfloat16"),
    case_param("cuda", "float32"),
    case_param("cuda", "bfloat16"),
]

# cpu-float32: the README's limits (about 5x the fast path's observed differences: class logits
# 2.4e-5, mask logits 1.6e-5, scores 2.5e-6, mask IoU >= 0.999995; the reference path was
# bit-exact on the fixture's machine), except the logits: on this project's CPU (AMD EPYC,
# AVX-512) the fast path's top-k masks differ by 1.2e-4 (|logit| up to 21) and its class logits
# by 4.1e-5 (reference path: 2.3e-5 and 2.7e-5), so 5e-4 and 2e-4.
# Query order and the kept sets are held to what the class-logit limit allows: a softmax
# probability moves by at most 0.25 x 2 x that limit, so two queries whose official probabilities
# are closer than that (the top-20's closest pair is 6.6e-6 apart) may swap, and only queries that
# close to the top-20 / top-100 boundary may enter or leave.
# The fast path's own limits (FAST_PATH): it computes the attention masks at the attention
# resolution, and a mask logit within rounding of 0 may flip an attention-mask entry (documented in
# its docstring). With 1 thread this happens on this fixture: one query's class logits move by
# 4.5e-4, one of the 512,000 top-20 mask logits changes sign, scores move by 1.0e-5 and the worst
# mask IoU is 0.99978 (2 threads: 4.1e-5, 0, 2.5e-6, 0.999994). Limits: about 4x the 1-thread
# figures.
# cuda-float32 (TF32 off): not measured yet (no GPU was lent when these were written); 10x the
# CPU limits. Tighten from the first GPU run's printed figures.
# bfloat16 (SegmentConfig(dtype="bfloat16")): weights and activations in bf16 (8-bit mantissa);
# the sine position embeddings, the deformable-attention sampling, the valid ratios, the class
# head (so the foreground probabilities) and the post-processing (resize, threshold, in-mask
# sigmoid, score product) stay float32 (unsam.models.whole_image.precision / postprocessing).
# Measured on this CPU, reference / fast path (1 thread; 2 threads alike but where said): input
# mean 2.0e-4 rel (the input rounded to bf16 once); class logits 0.066 / 0.066 (0.074 with 2
# threads), foreground probabilities 0.013 / 0.015; the official top-20 order stepped up by at
# most 0.0017 / 0.0023 in probability, 0 / 2 queries entered or left the top 20 and 2 / 4 the
# kept 100, all within 4.9e-4 of the boundary; top-20 mask logits 0.39 / 0.47 (values up to 21);
# all 100 final masks matched at IoU >= 0.9 (smallest 0.956 / 0.952, 0.903 with 2 threads), mean
# IoU 0.988 / 0.987, scores 0.014 / 0.024 apart (mean 0.0016 / 0.0024). Limits: about 3x those
# figures (IoU: 3x the shortfall from 1); order_slack replaces the class-logit-derived slack
# above for the order and the sets; mask_iou_min is left out (the matching already holds every
# pair to IoU >= 0.9). These are larger than the whole-image bf16 unit tests' measured figures
# (scores 0.0043 against float32 on photos), and larger than rounding the weights alone
# (scores 0.0037, mask IoU >= 0.977) or autocast (0.0025, >= 0.983) give here on the fast path.
# What these limits cannot see: one float32 step run in bf16 (class head, sine positions, the
# deformable reference points) stays within the bf16 spread (tests/models/test_whole_image_bf16.py
# holds them); with none of them installed the class logits are NaN and the case fails.
# cuda-bfloat16: the CPU bf16 limits; tighten from the first GPU run's printed figures.
BF16 = {"input_mean_rel": 5e-4, "class_logit": 0.2, "prob": 0.05, "order_slack": 0.007,
        "mask_logit": 1.5, "matched": 97, "mask_iou_mean": 0.96, "score": 0.07,
        "score_mean": 0.007}  # fmt: skip
TOLERANCES: dict[str, dict[str, Any]] = {
    "cpu-float32": {"input_mean_rel": 1e-9, "class_logit": 2e-4, "mask_logit": 5e-4,
                    "matched": 100, "score": 1e-5, "mask_iou_min": 0.999},
    "cuda-float32": {"input_mean_rel": 1e-8, "class_logit": 2e-3, "mask_logit": 5e-3,
                     "matched": 98, "score": 1e-4, "mask_iou_min": 0.99},
    "cpu-bfloat16": BF16,
    "cuda-bfloat16": dict(BF16),
}  # fmt: skip
FAST_PATH: dict[str, dict[str, Any]] = {"cpu-float32": {"class_logit": 2e-3, "score": 5e-5}}


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    return load_golden("whole_image")


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """The rule's weights, checked, saved as the official ``{"model": state_dict}`` .pth
    (detectron2 names; the segmenter converts them on load)."""
    sd = make_weights("whole_image")
    checks = check_weights("whole_image", sd)
    path = tmp_path_factory.mktemp("whole_image") / "unsam_whole_image_fixture.pth"
    torch.save({"model": sd}, path)
    return path, checks


def run_whole_image(
    checkpoint: Path, path: str, device: str = "cpu", dtype: str = "float32"
) -> dict[str, Any]:
    """``WholeImageSegmenter.from_pretrained(pth, config=SegmentConfig(min_size=512,
    max_size=1024, max_masks=100, device=device, dtype=dtype))`` and one ``segmenter(image,
    reference=...)`` call; the model input and raw outputs are read with hooks on the model, the
    fast path's top-k masks by wrapping ``predict_top_masks``."""
    import unsam
    from unsam import WholeImageSegmenter
    from unsam.models.whole_image import SegmentConfig

    config = SegmentConfig(min_size=512, max_size=1024, max_masks=100, device=device, dtype=dtype)
    seg = WholeImageSegmenter.from_pretrained(checkpoint, config=config)
    seen: dict[str, Any] = {}

    def pre(module: Any, args: tuple, kwargs: dict) -> None:
        x = kwargs.get("pixel_values", args[0] if args else None)
        seen["input"], seen["input_dtype"] = x.float().cpu(), str(x.dtype)

    def post(module: Any, args: tuple, kwargs: dict, out: Any) -> None:
        seen["class_logits"] = out.class_queries_logits[0].float().cpu()
        masks = out.masks_queries_logits
        seen["mask_logits"] = masks[0].float().cpu() if masks is not None else None

    if path == "fast":
        top_masks = seg.predict_top_masks

        def spy(*args: Any, **kwargs: Any) -> Any:
            seen["top"] = top = top_masks(*args, **kwargs)
            return top

        seg.predict_top_masks = spy  # type: ignore[method-assign]
    hooks = [
        seg.model.register_forward_pre_hook(pre, with_kwargs=True),
        seg.model.register_forward_hook(post, with_kwargs=True),
    ]
    image = unsam.load_image(IMAGE_139)
    try:
        seen["records"] = seg(image, reference=path == "reference")
    finally:
        for h in hooks:
            h.remove()
    return seen


def compare_whole_image(
    out: dict[str, Any], golden: dict[str, np.ndarray], path: str
) -> dict[str, Any]:
    s: dict[str, Any] = {}
    x = out["input"].double()
    s["input_shape"] = tuple(x.shape)
    s["input_dtype"] = out["input_dtype"]
    s["input_mean_rel"] = abs(float(x.mean()) - float(golden["input_mean"])) / abs(
        float(golden["input_mean"])
    )
    cls = out["class_logits"]
    s["class_logit"] = float((cls - torch.from_numpy(golden["class_logits"])).abs().max())
    prob = cls.double().softmax(-1)[:, 0]
    gp = torch.from_numpy(golden["class_logits"]).double().softmax(-1)[:, 0]
    s["prob"] = float((prob - gp).abs().max())  # foreground probability, every query
    order = torch.sort(prob, descending=True, stable=True).indices
    s["top20"] = order[:20].tolist()
    top20 = torch.from_numpy(golden["top20_query"])
    if path == "reference":
        masks = out["mask_logits"][top20]
        kept = order[:100].tolist()
    else:  # only the top-k queries' masks exist on the fast path
        top = out["top"]
        rows = {int(q): i for i, q in enumerate(top.query_indices.tolist())}
        s["top20_in_topk"] = all(int(q) in rows for q in top20)
        masks = top.mask_logits.float().cpu()[[rows.get(int(q), 0) for q in top20]]
        kept = top.query_indices.tolist()
    s["mask_logit"] = float((masks - torch.from_numpy(golden["top20_mask_logits"])).abs().max())
    s["mask_sign_flips"] = int(
        ((masks > 0) != torch.from_numpy(golden["top20_mask_logits"] > 0)).sum()
    )
    g_order = torch.sort(gp, descending=True, stable=True).indices
    assert g_order[:20].tolist() == golden["top20_query"].tolist()
    # order: how far the port's probabilities step up along the official top-20 order (<= 0 when
    # the orders agree)
    s["order_violation"] = float((prob[top20[1:]] - prob[top20[:-1]]).max())
    # sets: the official probability distance to the boundary of any query that entered or left
    sets = [("top20", s["top20"], top20.tolist(), 20)]
    sets.append(("kept", kept, golden["final_query"].tolist(), 100))
    for name, mine, official, k in sets:
        boundary = float(gp[g_order[k - 1]] + gp[g_order[k]]) / 2
        moved = set(mine) ^ set(official)
        s[f"{name}_moved"] = len(moved)
        s[f"{name}_moved_dist"] = max([abs(float(gp[q]) - boundary) for q in moved] or [0.0])
    records = out["records"]
    hw = tuple(int(v) for v in golden["image_hw"])
    gm = decode_rles(golden["final_rle_counts"], hw)
    if records:
        pm = decode_rles(np.array([r.rle["counts"] for r in records]), hw)
        iou = mask_iou_matrix(pm, gm)
    else:  # (none: the final-mask test fails, not the fixture)
        pm, iou = np.zeros((0, *hw), dtype=bool), np.zeros((0, len(gm)))
    rows_, cols = hungarian(iou, min_iou=0.9)
    scores = np.array([r.score for r in records], dtype=np.float32)
    s["num_records"] = len(records)
    s["matched"] = len(rows_)
    pairs = iou[rows_, cols] if len(rows_) else np.zeros(1)  # nothing matched: IoU 0
    s["mask_iou_min"], s["mask_iou_mean"] = float(pairs.min()), float(pairs.mean())
    s["masks_identical"] = int(sum(np.array_equal(pm[r], gm[c]) for r, c in zip(rows_, cols)))
    score = np.abs(scores[rows_] - golden["final_scores"][cols]) if len(rows_) else np.ones(1)
    s["score"], s["score_mean"] = float(score.max()), float(score.mean())
    s["scores_descending"] = bool(np.all(np.diff(scores) <= 0))
    return s


RUNS = [
    pytest.param((c.values[0], p), id=f"{c.id}-{p}", marks=c.marks) for c in CASES for p in PATHS
]


@pytest.fixture(scope="module", params=RUNS)
def result(request: pytest.FixtureRequest, weights: tuple[Path, Any], golden: dict) -> dict:
    case, path = request.param
    with float32_without_tf32(case):
        out = run_whole_image(weights[0], path, case.device, case.dtype)
    stats = compare_whole_image(out, golden, path)
    print(f"whole_image {case.id} {path}: {stats}")  # shown with a failure
    tol = {**TOLERANCES[case.id], **(FAST_PATH.get(case.id, {}) if path == "fast" else {})}
    return {"case": case, "path": path, "stats": stats, "tol": tol}


def test_weights_are_the_fixture_weights(weights: tuple[Path, Any]) -> None:
    assert_weight_checks(weights[1])


def test_network_input(result: dict, golden: dict, record_property: Any) -> None:
    record_property("golden_figures", repr(result["stats"]))  # for junit reports
    s = result["stats"]
    assert s["input_shape"] == (1, 3, *golden["padded_hw"])
    assert s["input_dtype"] == str(result["case"].torch_dtype)  # the case's dtype really ran
    assert s["input_mean_rel"] <= result["tol"]["input_mean_rel"]


def test_class_logits_of_every_query(result: dict) -> None:
    s, tol = result["stats"], result["tol"]
    assert s["class_logit"] <= tol["class_logit"]
    if "prob" in tol:  # bf16: the foreground probabilities too
        assert s["prob"] <= tol["prob"]


def _order_slack(tol: dict) -> float:
    """How far the port may reorder the official queries, in probability: bf16 its measured
    ``order_slack``; float32 the most a probability moves within the class-logit limit."""
    return float(tol.get("order_slack", 0.5 * tol["class_logit"]))


def test_top20_queries_and_their_mask_logits(result: dict, golden: dict) -> None:
    """The 20 most probable queries, in order, and their final-layer mask logits at 1/4
    resolution (looked up by query index)."""
    s, tol = result["stats"], result["tol"]
    slack = _order_slack(tol)
    assert s["order_violation"] <= slack
    assert s["top20_moved_dist"] <= slack, s["top20_moved"]
    assert s.get("top20_in_topk", True)
    assert s["mask_logit"] <= tol["mask_logit"]


def test_kept_queries(result: dict) -> None:
    """The 100 queries kept by foreground probability (before any upsampling)."""
    s, tol = result["stats"], result["tol"]
    assert s["kept_moved_dist"] <= _order_slack(tol), s["kept_moved"]


def test_final_masks_and_scores(result: dict, golden: dict) -> None:
    """Official post-processing: masks matched by IoU (the official instances are unsorted)."""
    s, tol = result["stats"], result["tol"]
    assert s["num_records"] == len(golden["final_scores"])
    assert s["matched"] >= tol["matched"]
    if "mask_iou_min" in tol:  # float32
        assert s["mask_iou_min"] >= tol["mask_iou_min"]
    else:  # bf16: every matched pair is at IoU >= 0.9 already; their mean
        assert s["mask_iou_mean"] >= tol["mask_iou_mean"]
        assert s["score_mean"] <= tol["score_mean"]
    assert s["score"] <= tol["score"]
    assert s["scores_descending"]
