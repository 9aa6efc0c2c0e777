"""PromptablePredictor: caching, records, click independence, save/load, demo filtering."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unsam.features.base import MissingWeightsError
from unsam.models.promptable import PromptableConfig, PromptableModel, build_model
from unsam.models.promptable.maskops import resized_hw
from unsam.models.promptable.predictor import PromptablePredictor


@pytest.fixture(scope="module")
def model() -> PromptableModel:
    torch.manual_seed(0)
    m = build_model(PromptableConfig.tiny()).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return m


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    img = np.zeros((70, 90, 3), dtype=np.uint8)
    img[10:50, 20:70] = (200, 40, 40)
    return np.clip(img + rng.integers(0, 60, size=img.shape), 0, 255).astype(np.uint8)


def _predictor(model: PromptableModel) -> PromptablePredictor:
    return PromptablePredictor(model, short_side=64)


def test_set_image_runs_the_backbone_once(model, image, monkeypatch) -> None:
    calls = []
    original = model.backbone.forward

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(model.backbone, "forward", counting)
    pred = _predictor(model)
    pred.set_image(image)
    first = pred.predict([(30, 20)])
    second = pred.predict([(30, 20), (60, 40)])
    assert len(calls) == 1
    assert [r.rle for r in first[0]] == [r.rle for r in second[0]]
    pred.set_image(image[:, ::-1].copy())
    assert len(calls) == 2


def test_records_shapes_and_values(model, image) -> None:
    pred = _predictor(model)
    pred.set_image(image, image_id=7)
    assert pred.input_hw == resized_hw((70, 90), 64) == (64, 82)
    clicks = pred.predict([(30.0, 20.0), (60.0, 40.0)])
    logits, iou = pred.predict_logits([(30.0, 20.0), (60.0, 40.0)])
    assert logits.shape == (2, 6, 64, 82) and iou.shape == (2, 6)
    # clicks are given in original pixels and reach the model in model-input pixels
    state = pred._require_state()
    with torch.no_grad():
        direct, direct_iou = model.decode_clicks(
            state, torch.tensor([[30.0 * 82 / 90, 20.0 * 64 / 70]])
        )
    # equal up to float32 summation order (128-channel products of N(0, 0.3) weights)
    torch.testing.assert_close(
        model.upsample_masks(direct, state)[0], logits[0], atol=1e-4, rtol=1e-5
    )
    torch.testing.assert_close(direct_iou[0], iou[0], atol=1e-4, rtol=1e-5)
    assert [len(c) for c in clicks] == [6, 6]
    for n, records in enumerate(clicks):
        full = F.interpolate(logits[n][None], size=(70, 90), mode="bilinear", align_corners=False)[
            0
        ]
        for k, rec in enumerate(records):
            assert rec.level == k + 1 and rec.image_id == 7 and rec.source == "promptable"
            assert rec.rle["size"] == [70, 90]
            assert rec.point_coords == ((30.0, 20.0),) if n == 0 else ((60.0, 40.0),)
            assert rec.predicted_iou == pytest.approx(float(iou[n, k]))
            assert rec.score == pytest.approx(min(max(float(iou[n, k]), 0.0), 1.0))
            np.testing.assert_array_equal(rec.decode(), (full[k] > 0).numpy())
    areas = {r.area for c in clicks for r in c}
    assert len(areas) > 1  # the random model does give different masks


def test_clicks_are_independent_unless_joint(model, image) -> None:
    pred = _predictor(model)
    pred.set_image(image)
    alone = pred.predict_logits([(30.0, 20.0)])
    together = pred.predict_logits([(30.0, 20.0), (60.0, 40.0), (5.0, 60.0)])
    torch.testing.assert_close(together[0][0], alone[0][0], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(together[1][0], alone[1][0], atol=1e-4, rtol=1e-5)
    joint = pred.predict_logits([(30.0, 20.0), (60.0, 40.0), (5.0, 60.0)], independent=False)
    assert (joint[0][0] - alone[0][0]).abs().max() > 1e-3


def test_save_load_round_trip_identical(model, image, tmp_path) -> None:
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "config.json").is_file() and (
        tmp_path / "m" / "model.safetensors"
    ).is_file()
    a, b = _predictor(model), PromptablePredictor.from_pretrained(tmp_path / "m", short_side=64)
    assert b.model.config == model.config
    for p in (a, b):
        p.set_image(image)
    la, ia = a.predict_logits([(30.0, 20.0), (60.0, 40.0)])
    lb, ib = b.predict_logits([(30.0, 20.0), (60.0, 40.0)])
    assert torch.equal(la, lb) and torch.equal(ia, ib)


def test_demo_filtering_rules(model, image) -> None:
    pred = _predictor(model)
    pred.set_image(image)
    _, iou = pred.predict_logits([(30.0, 20.0)])
    # nothing passes: the lowest-scored token is kept (the original's fallback)
    only = pred.predict([(30.0, 20.0)], iou_thresh=float(iou.max()) + 1.0)[0]
    assert [r.level for r in only] == [int(iou[0].argmin()) + 1]
    # threshold between scores keeps exactly the tokens above it, in token order
    thresh = float(iou[0].sort().values[3])
    kept = pred.predict([(30.0, 20.0)], iou_thresh=thresh)[0]
    assert [r.level for r in kept] == [k + 1 for k in range(6) if iou[0, k] >= thresh]
    # dedup at -1: every later mask duplicates the first kept (highest IoU) one
    dedup = pred.predict([(30.0, 20.0)], dedup_iou_thresh=-1.0)[0]
    assert [r.level for r in dedup] == [int(iou[0].argmax()) + 1]


def test_errors(model, image, tmp_path) -> None:
    pred = _predictor(model)
    with pytest.raises(RuntimeError, match="set_image"):
        pred.predict([(1, 1)])
    with pytest.raises(ValueError, match="uint8"):
        pred.set_image(image.astype(np.float32))
    with pytest.raises(MissingWeightsError, match="convert-checkpoint"):
        PromptablePredictor.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingWeightsError, match="model.safetensors"):
        PromptablePredictor.from_pretrained(tmp_path / "empty")


@pytest.mark.parametrize(
    ("hw", "short", "long", "expected"),
    [
        ((480, 640), 640, None, (640, 853)),  # demo: long side truncated (853.33)
        ((640, 480), 640, None, (853, 640)),
        ((480, 640), 800, 1333, (800, 1067)),  # evaluation: rounded (1066.67)
        ((100, 1000), 800, 1333, (133, 1333)),  # long side capped at 1333
        ((50, 60), None, None, (50, 60)),  # no resize
    ],
)
def test_resized_hw(hw, short, long, expected) -> None:
    assert resized_hw(hw, short, long) == expected


@pytest.mark.parametrize(
    "point",
    [(-50.0, 99999.0), (-0.5, 10.0), (90.0, 10.0), (10.0, 70.0), (float("nan"), 5.0)],
)
def test_clicks_outside_the_image_are_refused(model, image, point) -> None:
    """Regression: predict((-50, 99999)) returned masks. A click must lie in [0, W) x [0, H), as
    the CLI requires; the error names the click and the image size (90x70)."""
    pred = _predictor(model)
    pred.set_image(image)
    with pytest.raises(ValueError, match=r"click \(.*\) is outside the 90x70 image"):
        pred.predict([(10.0, 10.0), point])
    with pytest.raises(ValueError, match="outside the 90x70 image"):
        pred.predict_logits([point])
    assert len(pred.predict([(0.0, 0.0), (89.9, 69.9)])) == 2  # the corners are inside


def test_a_trained_model_is_shown_images_at_its_training_size(image) -> None:
    """Issue 16: a train-promptable run records its image size (``train_image_size``); the
    predictor ("auto"), the AMG (short_side None) and eval-points resize images the way training
    did (fitted into the square), while an official model keeps the original's 640."""
    from unsam.models.promptable.amg import AMGConfig, PromptableMaskGenerator

    torch.manual_seed(0)
    trained = build_model(dataclasses.replace(PromptableConfig.tiny(), train_image_size=64))
    pred = PromptablePredictor(trained)
    pred.set_image(image)  # 70 x 90 fitted into 64 x 64
    assert pred.input_hw == (50, 64)
    official = PromptablePredictor(build_model(PromptableConfig.tiny()))
    official.set_image(image)
    assert min(official.input_hw) == 640
    amg = PromptableMaskGenerator(
        PromptablePredictor(trained), AMGConfig(points_per_side=2, pred_iou_thresh=1e9)
    )
    amg.generate(image)
    assert amg.predictor.input_hw == (50, 64)
    with pytest.raises(ValueError, match="train_image_size"):
        PromptableConfig(train_image_size=16)
