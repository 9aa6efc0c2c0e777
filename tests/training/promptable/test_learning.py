"""Real learning test: the tiny promptable recipe learns the 5 bundled COCO images' masks.

``train-promptable --config tiny`` (the CPU recipe, PromptableTrainConfig.for_model("tiny")) cut
to 300 of its 1500 steps, on examples/coco with its official masks (31 masks; the images fitted
into the recipe's 128-px square), then ``unsam eval-points`` on the same images, which evaluates a
train-promptable run at the size it was trained at, against the untrained model of the same
seed. Measured on the shared 2-core machine (issue 16): untrained Point(Oracle) 0.003 / Point(Max)
0.001; after 300 steps 0.339 / 0.278 (the whole 1500-step recipe: README, benchmarks). The
assertion asks for 20x the untrained values and at least 0.25 / 0.2. About 50 s of training on a
quiet machine (0.17 s of CPU a step).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unsam.cli.main import main
from unsam.evaluation.points import (
    PointEvalConfig,
    evaluate_points,
    load_instances_gt,
    predictor_predict_fn,
)
from unsam.io.images import load_image
from unsam.models.promptable.predictor import PromptablePredictor, auto_input_size
from unsam.training.engine import read_loss_csv
from unsam.training.promptable.config import PromptableTrainConfig
from unsam.training.promptable.trainer import initial_model, train_promptable

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "coco"
STEPS = 300


@pytest.mark.slow
def test_tiny_promptable_recipe_learns_coco_masks(tmp_path: Path) -> None:
    ann, images = EXAMPLES / "instances.json", EXAMPLES / "images"
    config = PromptableTrainConfig.for_model("tiny", max_steps=STEPS, checkpoint_every=STEPS)
    untrained_model = initial_model(config).eval()
    short, longest = auto_input_size(untrained_model.config)
    assert (short, longest) == (128, 128)
    untrained, _ = evaluate_points(
        predictor_predict_fn(PromptablePredictor(untrained_model, short_side=None)),
        load_instances_gt(ann),
        lambda r: load_image(images / str(r.file_name)),
        config=PointEvalConfig(short_side=short, max_size=longest),
    )

    result = train_promptable(config, ann, images, tmp_path / "run")
    rows = read_loss_csv(tmp_path / "run" / "loss.csv")
    first, last = (sum(r["loss"] for r in part) / 20 for part in (rows[:20], rows[-20:]))
    assert last < 0.6 * first, (first, last)

    out = tmp_path / "points.json"
    args = ["eval-points", "--gt", str(ann), "--images", str(images), "--model"]
    assert main([*args, str(result.run_dir), "--json", str(out), "--no-progress"]) == 0
    trained = json.loads(out.read_text())
    assert trained["num_segments"] == untrained["num_segments"] == 31
    print(
        f"Point(Oracle) {untrained['point_oracle_miou']:.3f} -> "
        f"{trained['point_oracle_miou']:.3f}; Point(Max) {untrained['point_max_miou']:.3f} -> "
        f"{trained['point_max_miou']:.3f}"
    )
    assert trained["point_oracle_miou"] > max(20 * untrained["point_oracle_miou"], 0.25), (
        untrained,
        trained,
    )
    assert trained["point_max_miou"] > max(20 * untrained["point_max_miou"], 0.2), (
        untrained,
        trained,
    )
