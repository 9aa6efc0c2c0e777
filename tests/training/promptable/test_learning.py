"""Real learning test: the tiny promptable model learns the 5 bundled COCO images' masks.

The 5 images of examples/coco shrunk to 128 px with their official masks (26 masks of >= 16 px);
the tiny model trains 200 steps (batch 1, 20 clicks per image, 256 loss points, lr 1e-3, the
paper's optimizer otherwise) and is evaluated with the 1-click protocol on the same images
through ``PromptablePredictor.from_pretrained(RUN_DIR)``.
Measured on the shared 2-core machine, 1 torch thread, seed 0: Point(Oracle) mIoU 0.180
(Point(Max) 0.145) after 200 steps, 0.049 (0.043) untrained; 300 steps gave 0.336 (0.267).
About 50-75 s of training depending on machine load. The assertion asks for more than twice the
untrained value and at least 0.10.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.training.coco_subset import write_coco_subset
from unsam.evaluation.points import (
    PointEvalConfig,
    evaluate_points,
    load_instances_gt,
    predictor_predict_fn,
)
from unsam.io.images import load_image
from unsam.training.engine import read_loss_csv
from unsam.training.promptable.config import PromptableTrainConfig
from unsam.training.promptable.trainer import train_promptable

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "coco"
SIDE = 128


@pytest.mark.slow
def test_tiny_promptable_model_learns_coco_masks(tmp_path: Path) -> None:
    from unsam.models.promptable.modeling import build_model
    from unsam.models.promptable.predictor import PromptablePredictor

    ann, images = write_coco_subset(
        EXAMPLES / "instances.json",
        EXAMPLES / "images",
        tmp_path / "data",
        num_images=5,
        max_side=SIDE,
        min_masks=1,
        max_masks=20,
        min_area=16,
    )
    gt = load_instances_gt(ann)
    assert len(gt) == 5 and sum(len(r.masks) for r in gt) >= 20

    def oracle(predictor: PromptablePredictor) -> dict:
        metrics, _ = evaluate_points(
            predictor_predict_fn(predictor),
            gt,
            lambda r: load_image(images / r.file_name),
            config=PointEvalConfig(short_side=None),
        )
        return metrics

    torch.manual_seed(0)
    untrained = oracle(PromptablePredictor(build_model("tiny"), short_side=None))
    config = PromptableTrainConfig(
        config="tiny",
        max_steps=200,
        batch_size=1,
        lr=1e-3,
        image_size=SIDE,
        num_clicks=20,
        num_points=256,
        checkpoint_every=200,
    )
    result = train_promptable(config, ann, images, tmp_path / "run")
    rows = read_loss_csv(tmp_path / "run" / "loss.csv")
    first, last = sum(r["loss"] for r in rows[:20]) / 20, sum(r["loss"] for r in rows[-20:]) / 20
    assert last < 0.8 * first, (first, last)
    trained = oracle(PromptablePredictor.from_pretrained(result.run_dir, short_side=None))
    print(
        f"Point(Oracle) untrained {untrained['point_oracle_miou']:.3f} "
        f"trained {trained['point_oracle_miou']:.3f}; "
        f"Point(Max) {untrained['point_max_miou']:.3f} -> {trained['point_max_miou']:.3f}"
    )
    assert trained["point_oracle_miou"] > max(2 * untrained["point_oracle_miou"], 0.10), (
        untrained,
        trained,
    )
    assert trained["point_max_miou"] > untrained["point_max_miou"]
