"""CutLER Cascade Mask R-CNN: official-checkpoint loading, model pieces and end-to-end runs."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unsam.divide.cutler import (
    KEY_RULES,
    CascadeMaskRCNN,
    CutlerConfig,
    CutlerDetector,
    divide_cutler,
    preprocess_image,
    resize_shape,
    resolve_cutler_weights,
)
from unsam.divide.cutler.model import ConvNorm, FrozenBatchNorm2d, grid_anchors
from unsam.features.base import MissingWeightsError

KEYS_TSV = Path(__file__).resolve().parents[1] / "data" / "cutler_cascade_keys.tsv"
SHARED_TSV = Path(__file__).resolve().parents[3] / "shared" / "spec" / "cutler_cascade_keys.tsv"
# fast test settings (small resize, 150 proposals, 30 masks); the architecture is the full R50 one
FAST = CutlerConfig(min_size=128, max_size=256, rpn_post_nms_topk=150, max_detections=30)


def official_key_table() -> list[tuple[str, tuple[int, ...], str]]:
    """(key, shape, kind) rows of the committed copy of the spec's checkpoint key table."""
    rows = []
    for line in KEYS_TSV.read_text().splitlines()[2:]:
        key, shape, kind = line.split("\t")
        rows.append((key, tuple(json.loads(shape)), kind))
    return rows


def official_state_dict(model: CascadeMaskRCNN) -> dict[str, torch.Tensor]:
    """``model``'s tensors under their official detectron2 names (+ num_batches_tracked)."""
    out = {}
    for name, value in model.state_dict().items():
        official = next(o + name[len(ours) :] for o, ours in KEY_RULES if name.startswith(ours))
        out[official] = value.clone()
        if official.endswith(".norm.running_var"):
            out[official[: -len("running_var")] + "num_batches_tracked"] = torch.tensor(1000)
    return out


def conditioned_model(
    seed: int = 0, fg_bias: float = 2.0, mask_bias: float = 1.0
) -> CascadeMaskRCNN:
    """Random weights that keep activations O(1) through 50 layers, with biased outputs: foreground
    probability ≈ sigmoid(fg_bias) for every ROI, mask probability ≈ sigmoid(mask_bias)."""
    g = torch.Generator().manual_seed(seed)
    model = CascadeMaskRCNN()
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)):
                fan_in = mod.weight[0].numel()
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) / math.sqrt(fan_in))
            elif isinstance(mod, torch.nn.ConvTranspose2d):
                mod.weight.copy_(
                    torch.randn(mod.weight.shape, generator=g) / math.sqrt(mod.weight.shape[0])
                )
            if getattr(mod, "bias", None) is not None and not isinstance(mod, FrozenBatchNorm2d):
                mod.bias.zero_()
            if isinstance(mod, ConvNorm) and name.endswith("conv3"):
                mod.norm.weight.fill_(0.3)  # damp each residual branch
        for pred in model.box_predictors:
            pred.cls_score.weight.mul_(0.01)
            pred.cls_score.bias.copy_(torch.tensor([fg_bias, 0.0]))
            pred.bbox_pred.weight.mul_(0.01)
        model.mask_head.predictor.weight.mul_(0.01)
        model.mask_head.predictor.bias.fill_(mask_bias)
    return model


@pytest.fixture(scope="module")
def model() -> CascadeMaskRCNN:
    """Conditioned random weights, foreground logit bias 2 (score ≈ 0.88); copy before changing."""
    return conditioned_model(seed=0, fg_bias=2.0)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    from PIL import Image

    path = Path(__file__).resolve().parents[1] / "data" / "images" / "coffee.jpg"
    return np.asarray(Image.open(path).convert("RGB"))


# ---------------------------------------------------------------- checkpoint loading


def test_key_table_copy_matches_spec() -> None:
    if not SHARED_TSV.is_file():
        pytest.skip(f"needs {SHARED_TSV} (absent in a clean clone)")
    assert KEYS_TSV.read_text() == SHARED_TSV.read_text()


def test_model_tensors_are_exactly_the_official_table() -> None:
    rows = official_key_table()
    assert len(rows) == 408
    expected = {k: s for k, s, kind in rows if kind != "nbt"}
    got = {
        k: tuple(v.shape)
        for k, v in official_state_dict(CascadeMaskRCNN()).items()
        if not k.endswith("num_batches_tracked")
    }
    assert got == expected
    assert sum(math.prod(s) for s in expected.values()) == 71_834_082


@pytest.fixture(scope="module")
def random_official_state() -> dict[str, torch.Tensor]:
    """Every key of the official table with its shape, random values (int64 num_batches_tracked)."""
    g = torch.Generator().manual_seed(1)
    return {
        key: torch.tensor(12345) if kind == "nbt" else torch.randn(shape, generator=g)
        for key, shape, kind in official_key_table()
    }


@pytest.mark.parametrize("layout", ["training", "bare_module_prefix", "numpy"])
def test_official_checkpoint_loads_every_tensor(
    tmp_path: Path, layout: str, random_official_state: dict[str, torch.Tensor]
) -> None:
    state = random_official_state
    if layout == "training":  # raw CutLER run: model + trainer state + iteration
        obj: object = {
            "model": {
                **state,
                "pixel_mean": torch.zeros(3, 1, 1),
                "pixel_std": torch.ones(3, 1, 1),
                "proposal_generator.anchor_generator.cell_anchors.0": torch.zeros(3, 4),
            },
            "trainer": {
                "iteration": 7,
                "_trainer": {
                    "iteration": 7,
                    "optimizer": {
                        "state": {0: {"momentum_buffer": torch.zeros(2)}},
                        "param_groups": [{"lr": 0.01, "params": [0]}],
                    },
                },
            },
            "iteration": 7,
        }
    elif layout == "bare_module_prefix":
        obj = {"module." + k: v for k, v in state.items()}
    else:  # numpy arrays (and numpy scalars), as fvcore accepts; the largest stay tensors (speed)
        obj = {
            "model": {k: v.numpy() if v.numel() < 1_000_000 else v for k, v in state.items()},
            "iteration": np.int64(7),
        }
    path = tmp_path / "cutler_cascade_final.pth"
    torch.save(obj, path)
    del obj
    detector = CutlerDetector.from_checkpoint(path)
    path.unlink()
    ours = detector.model.state_dict()
    rules = dict(KEY_RULES)
    loaded = 0
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        prefix = next(p for p in rules if key.startswith(p))
        assert torch.equal(ours[rules[prefix] + key[len(prefix) :]], value), key
        loaded += 1
    assert loaded == len(ours) == 347


def _save_official(path: Path, state: dict[str, torch.Tensor]) -> Path:
    torch.save({"model": state}, path)
    return path


@pytest.fixture(scope="module")
def small_official_state() -> dict[str, torch.Tensor]:
    return official_state_dict(CascadeMaskRCNN())


def test_missing_key_is_an_error_naming_file_and_key(
    tmp_path: Path, small_official_state: dict[str, torch.Tensor]
) -> None:
    state = dict(small_official_state)
    del state["roi_heads.box_predictor.2.bbox_pred.bias"]
    path = _save_official(tmp_path / "ckpt.pth", state)
    with pytest.raises(
        ValueError, match=r"ckpt\.pth.*1 missing: roi_heads\.box_predictor\.2\.bbox_pred\.bias"
    ):
        CutlerDetector.from_checkpoint(path)


def test_unexpected_key_is_an_error(
    tmp_path: Path, small_official_state: dict[str, torch.Tensor]
) -> None:
    state = {
        **small_official_state,
        "roi_heads.box_head.3.fc1.weight": torch.zeros(1),
        "backbone.bottom_up.res6.0.conv1.weight": torch.zeros(1),
    }
    path = _save_official(tmp_path / "ckpt.pth", state)
    with pytest.raises(ValueError, match=r"2 unexpected: .*box_head\.3\.fc1\.weight"):
        CutlerDetector.from_checkpoint(path)


def test_wrong_shape_is_an_error(
    tmp_path: Path, small_official_state: dict[str, torch.Tensor]
) -> None:
    state = {
        **small_official_state,
        "roi_heads.mask_head.predictor.weight": torch.zeros(2, 256, 1, 1),
    }
    path = _save_official(tmp_path / "ckpt.pth", state)
    with pytest.raises(
        ValueError, match=r"mask_head\.predictor\.weight \(2, 256, 1, 1\) != \(1, 256, 1, 1\)"
    ):
        CutlerDetector.from_checkpoint(path)


def test_arbitrary_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "hook": Path("/tmp")}, path)
    with pytest.raises(Exception, match="refused to load it: .* asks for .*pathlib"):
        CutlerDetector.from_checkpoint(path)


def test_missing_weights_error_is_one_sentence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(MissingWeightsError) as err:
        CutlerDetector.from_checkpoint(tmp_path / "nope.pth")
    text = str(err.value)
    assert "\n" not in text and text.endswith(".") and text.count(". ") == 0
    for part in (
        "nope.pth",
        "cutler_cascade_final.pth",
        "--divide cutler:PATH",
        "UNSAM_CUTLER_WEIGHTS",
    ):
        assert part in text
    monkeypatch.delenv("UNSAM_CUTLER_WEIGHTS", raising=False)
    with pytest.raises(MissingWeightsError, match="UNSAM_CUTLER_WEIGHTS is not set"):
        resolve_cutler_weights("cutler")
    ckpt = tmp_path / "c.pth"
    ckpt.write_bytes(b"x")
    monkeypatch.setenv("UNSAM_CUTLER_WEIGHTS", str(ckpt))
    assert resolve_cutler_weights("cutler") == ckpt
    assert resolve_cutler_weights(f"cutler:{ckpt}") == ckpt


# ---------------------------------------------------------------- pre-processing and pieces


def test_config_defaults_are_the_released_ones() -> None:
    cfg = CutlerConfig()
    assert (cfg.min_size, cfg.max_size) == (800, 1333)
    assert cfg.pixel_mean == (123.675, 116.28, 103.53) and cfg.pixel_std == (58.395, 57.12, 57.375)
    assert (cfg.rpn_pre_nms_topk, cfg.rpn_post_nms_topk, cfg.rpn_nms_thresh) == (1000, 1000, 0.65)
    assert (cfg.score_thresh, cfg.nms_thresh, cfg.max_detections, cfg.mask_thresh) == (
        0.1,
        0.5,
        100,
        0.5,
    )
    with pytest.raises(ValueError, match="score_thresh=1.5 is outside"):
        CutlerConfig(score_thresh=1.5)


def test_resize_shape_follows_detectron2() -> None:
    assert resize_shape((1500, 2250), 800, 1333) == (800, 1200)
    assert resize_shape((2250, 1500), 800, 1333) == (1200, 800)
    assert resize_shape((100, 2000), 800, 1333) == (67, 1333)  # long side capped
    assert resize_shape((480, 640), 800, 1333) == (800, 1067)  # 1066.67 rounds up


def test_preprocess_rgb_order_normalisation_and_padding() -> None:
    img = np.zeros((40, 60, 3), dtype=np.uint8)
    img[..., 0] = 255  # pure red
    cfg = CutlerConfig(min_size=40, max_size=100)
    x, hw = preprocess_image(img, cfg)
    assert hw == (40, 60) and x.shape == (1, 3, 64, 64)
    torch.testing.assert_close(
        x[0, :, 0, 0], torch.tensor([(255 - 123.675) / 58.395, -116.28 / 57.12, -103.53 / 57.375])
    )
    assert torch.equal(x[0, :, 40:], torch.zeros(3, 24, 64))  # bottom/right padding is 0
    assert torch.equal(x[0, :, :, 60:], torch.zeros(3, 64, 4))


def test_backbone_shapes_and_p6(model: CascadeMaskRCNN) -> None:
    with torch.inference_mode():
        feats = model.features(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [
        (1, 256, 16, 24),
        (1, 256, 8, 12),
        (1, 256, 4, 6),
        (1, 256, 2, 3),
        (1, 256, 1, 2),
    ]
    assert torch.equal(feats[4], feats[3][..., ::2, ::2])


def test_anchor_and_rpn_flatten_order(model: CascadeMaskRCNN) -> None:
    """Anchor index (y·W + x)·3 + a; objectness channel a and delta channel 4a + j at (y, x)."""
    cells = torch.tensor([[-1.0, -2, 1, 2], [-3, -3, 3, 3], [-4, -1, 4, 1]])
    anchors = grid_anchors(cells, (2, 3), 8)
    assert anchors.shape == (18, 4)
    y, x, a = 1, 2, 2
    assert anchors[(y * 3 + x) * 3 + a].tolist() == [16 - 4, 8 - 1, 16 + 4, 8 + 1]
    feat = torch.randn(1, 256, 2, 3)
    with torch.inference_mode():
        logits, deltas = model.rpn(feat)
        t = F.relu(model.rpn.conv(feat))
        raw_logits = model.rpn.objectness_logits(t)[0]
        raw_deltas = model.rpn.anchor_deltas(t)[0]
    assert logits[(y * 3 + x) * 3 + a] == raw_logits[a, y, x]
    assert torch.equal(deltas[(y * 3 + x) * 3 + a], raw_deltas[4 * a : 4 * a + 4, y, x])


def test_cascade_scores_average_stages_and_boxes_chain(model: CascadeMaskRCNN) -> None:
    """Stage k predicts fg logit b_k and delta dx = 0.1·wx: score = mean softmax, and each stage
    moves the box right by 0.1 of its width (three stages: 0.3)."""
    model = copy.deepcopy(model)
    fg = (1.0, -1.0, 3.0)
    with torch.no_grad():
        for k, pred in enumerate(model.box_predictors):
            pred.cls_score.weight.zero_()
            pred.cls_score.bias.copy_(torch.tensor([fg[k], 0.0]))
            pred.bbox_pred.weight.zero_()
            wx = (10.0, 20.0, 30.0)[k]
            pred.bbox_pred.bias.copy_(torch.tensor([0.1 * wx, 0.0, 0.0, 0.0]))
    proposals = torch.tensor(
        [[10.0, 10.0, 50.0, 40.0], [0.0, 5.0, 20.0, 60.0], [100.0, 0.0, 128.0, 30.0]]
    )  # pushed past x = 128: clipped
    with torch.inference_mode():
        feats = model.features(torch.randn(1, 3, 64, 128))
        boxes, scores = model.detect_boxes(feats, proposals, (64, 128))
    expected = sum(1 / (1 + math.exp(-b)) for b in fg) / 3
    torch.testing.assert_close(scores, torch.full((3,), expected))
    x0, x1 = proposals[:, 0].clone(), proposals[:, 2].clone()
    for stage in range(3):  # inputs of stages 1 and 2 are clipped to the image, output is not
        if stage:
            x1 = x1.clamp(max=128.0)
        shift = 0.1 * (x1 - x0)
        x0, x1 = x0 + shift, x1 + shift
    assert x1[2] > 128 and boxes[2, 2] > 128
    torch.testing.assert_close(boxes[:, 0], x0)
    torch.testing.assert_close(boxes[:, 2], x1)
    torch.testing.assert_close(boxes[:, 1:4:2], proposals[:, 1:4:2])


# ---------------------------------------------------------------- end to end


def test_random_weights_run_end_to_end(model: CascadeMaskRCNN, image: np.ndarray) -> None:
    model = copy.deepcopy(model)
    with torch.no_grad():
        for pred in model.box_predictors:
            pred.cls_score.bias.zero_()  # unbiased: scores spread around 0.5
    detector = CutlerDetector(model, FAST)
    masks = detector(image)
    scores = [s for _, s in masks]
    assert scores == sorted(scores, reverse=True)
    for mask, score in masks:
        assert mask.shape == image.shape[:2] and mask.dtype == bool and 0.1 < score <= 1.0
    assert set(detector.last_timings) >= {"backbone", "rpn", "box_heads", "mask_head", "paste"}


def test_biased_weights_give_detections_above_threshold(
    model: CascadeMaskRCNN, image: np.ndarray
) -> None:
    dets = CutlerDetector(model, FAST).detect(image)
    assert len(dets) == 30  # more pass the threshold and NMS: the cap applies
    assert dets.masks.shape == (len(dets), *image.shape[:2])
    assert np.all(dets.scores > 0.1) and np.all(np.diff(dets.scores) <= 0)
    h, w = image.shape[:2]
    assert np.all(dets.boxes_xyxy >= 0) and np.all(dets.boxes_xyxy[:, 2::2] <= w)
    assert np.all(dets.boxes_xyxy[:, 3] <= h)
    # uniform mask probability sigmoid(1) > 0.5 fills each box: mask ≈ box
    for box, mask in zip(dets.boxes_xyxy[:5], dets.masks[:5], strict=True):
        xs = np.nonzero(mask)[1]
        assert xs.min() >= math.floor(box[0]) and xs.max() <= math.ceil(box[2])
        assert mask.sum() >= 0.5 * (box[2] - box[0]) * (box[3] - box[1])
    # the UnSAM divide rule
    ten = CutlerDetector(model, dataclasses.replace(FAST, max_detections=10))
    divided = divide_cutler(image, ten, score_thresh=0.1, max_masks=7)
    assert len(divided) == 7 and [s for _, s in divided] == [float(s) for s in dets.scores[:7]]
    assert all(np.array_equal(m, dets.masks[k]) for k, (m, _) in enumerate(divided))
    few = CutlerDetector(model, dataclasses.replace(FAST, max_detections=3))
    assert len(few(image)) == 3
    none = CutlerDetector(model, dataclasses.replace(FAST, score_thresh=0.95))
    assert none(image) == []  # every score ≈ sigmoid(2) = 0.88
