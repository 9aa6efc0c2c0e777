"""`--divide model:RUN_DIR`: a trained unsam whole-image model's confident masks as divide
regions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from unsam.io.images import load_image
from unsam.models.whole_image import WholeImageSegmenter, build_model
from unsam.models.whole_image.segment_config import SegmentConfig
from unsam.pipeline import DivideAndConquer
from unsam.records import MaskRecord


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_model")
    WholeImageSegmenter(
        build_model("tiny"), SegmentConfig(min_size=256, max_size=512)
    ).save_pretrained(folder)
    return folder


def test_model_masks_become_the_divide_regions(tiny_model_dir: Path, test_data: Path) -> None:
    image = load_image(test_data / "images" / "astronaut.jpg")
    dico = DivideAndConquer(
        features="classic",
        preset="spec",
        divide=f"model:{tiny_model_dir}",
        divide_max_masks=4,
        divide_score_thresh=0.0,
    )
    expected = sorted(dico.divide_model(image), key=lambda r: -r.score)[:4]
    records = dico(image, image_id=5)
    divide = [r for r in records if r.level == 0]
    assert [r.source for r in divide] == ["model"] * len(divide)
    # the divide records are the model's best masks, in score order, with the model's scores
    exp = [r for r in expected if r.area > 0]
    assert len(divide) == len(exp) >= 1
    assert [r.score for r in divide] == pytest.approx([r.score for r in exp])
    for d, e in zip(divide, exp):
        np.testing.assert_array_equal(d.decode(), e.decode())
    ids = {r.id for r in divide}
    assert all(r.parent_id in ids and r.source == "conquer" for r in records if r.level > 0)


class _StubModel:
    """Stands in for a trained model: two confident rectangles and one below the threshold."""

    def __call__(self, image: np.ndarray) -> list[MaskRecord]:
        h, w = image.shape[:2]
        masks = np.zeros((3, h, w), bool)
        masks[0, : h // 2] = True  # top half: two colours, so conquer can split it
        masks[1, h // 2 :, : w // 2] = True
        masks[2, h // 2 :, w // 2 :] = True
        return MaskRecord.from_masks(masks, scores=[0.6, 0.9, 0.05], source="model")


def test_confident_model_masks_are_divided_and_conquered(tiny_model_dir: Path) -> None:
    image = np.zeros((96, 128, 3), np.uint8)
    image[:48, :64] = (220, 30, 30)
    image[:48, 64:] = (30, 30, 220)
    image[48:] = (30, 200, 30)
    dico = DivideAndConquer(features="classic", preset="spec", divide=f"model:{tiny_model_dir}")
    dico.divide_model = _StubModel()
    records = dico(image, image_id=2)
    divide = [r for r in records if r.level == 0]
    assert [r.score for r in divide] == [0.9, 0.6]  # sorted by score; 0.05 <= 0.1 dropped
    top_half = divide[1]
    parts = [r for r in records if r.parent_id == top_half.id]
    assert parts, "the two-colour top half must be split into parts"
    for part in parts:
        m = part.decode()
        assert (m & ~top_half.decode()).sum() <= 0.1 * m.sum()  # coverage rule
    red = np.zeros((96, 128), bool)
    red[:48, :64] = True
    best = max(parts, key=lambda p: (p.decode() & red).sum() / (p.decode() | red).sum())
    assert (best.decode() & red).sum() / (best.decode() | red).sum() > 0.8


def test_score_threshold_filters_divide_masks(tiny_model_dir: Path, test_data: Path) -> None:
    image = load_image(test_data / "images" / "coffee.jpg")
    dico = DivideAndConquer(
        features="classic", preset="spec", divide=f"model:{tiny_model_dir}", divide_score_thresh=1.0
    )
    assert dico(image) == []  # no mask scores above 1.0: nothing to divide, nothing to conquer


def test_bad_divide_spec_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="model:RUN_DIR"):
        DivideAndConquer(features="classic", divide="detector")
    with pytest.raises((FileNotFoundError, ValueError), match="nowhere"):
        DivideAndConquer(features="classic", divide="model:/nowhere/run")
