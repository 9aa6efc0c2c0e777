"""The pipeline with a CutLER divide in bfloat16: the dtype reaches every network; helpers shared
with tests/test_pipeline_cuda.py. (Mask agreement with float32 on real photos is measured by
benchmarks/released_pipeline_speed.py: random ViT weights make the conquer merge brittle, so a
small test image would measure ties, not the arithmetic.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.divide.test_cutler_bf16 import spread_model
from tests.divide.test_cutler_model import official_state_dict
from tests.features.test_dino import _tiny_vit
from unsam.pipeline import DivideAndConquer, PipelineConfig
from unsam.records import MaskRecord

IMAGES = Path(__file__).resolve().parent / "data" / "images"
REGIONS = 30  # divide masks kept (the released run keeps up to 100)


@pytest.fixture(scope="session")
def released_weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A CutLER checkpoint in the official layout (spread scores: the same boxes rank first in
    every precision) and a tiny transformers ViT folder (patch 8), both random."""
    root = tmp_path_factory.mktemp("released_weights")
    ckpt = root / "cutler_cascade_final.pth"
    torch.save({"model": official_state_dict(spread_model(0))}, ckpt)
    vit = root / "vit"
    _tiny_vit().save_pretrained(vit)
    return {"cutler": str(ckpt), "vit": str(vit)}


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    from unsam.io.images import load_image
    from unsam.masks import resize_image

    image = load_image(IMAGES / "coffee.jpg")
    return resize_image(image, (300, 400))


def make_dico(weights: dict[str, str], *, device: str, dtype: str) -> DivideAndConquer:
    """CutLER divide (up to REGIONS masks) and conquer on patch keys; the spec's conquer settings
    (half-max mask rule: more conquer masks on a small photo than the released tiny-crop rule)."""
    config = PipelineConfig(
        preset="spec",
        divide=f"cutler:{weights['cutler']}",
        features=weights["vit"],
        divide_max_masks=REGIONS,
        device=device,
        dtype=dtype,
    )
    return DivideAndConquer(config=config)


def run_dico(
    weights: dict[str, str],
    image: np.ndarray,
    *,
    device: str,
    dtype: str,
    divided: list | None = None,
) -> tuple[list[MaskRecord], list]:
    """Records, and the divide output used (``divided`` replaces the divide when given)."""
    dico = make_dico(weights, device=device, dtype=dtype)
    if divided is None:
        divided = dico.divide(image)
    dico.divide = lambda img: divided
    return dico(image, image_id=1), divided


def mask_agreement(a: list[MaskRecord], b: list[MaskRecord]) -> dict[str, float]:
    """Divide masks identical; of a's conquer masks, the share b has exactly and the mean best IoU
    in b's conquer set (the released benchmark's measure)."""
    from pycocotools import mask as mask_utils

    def rles(records: list[MaskRecord], divide: bool) -> list[dict]:
        out = []
        for r in records:
            if (r.level == 0) == divide:
                counts = r.rle["counts"]
                out.append(
                    {**r.rle, "counts": counts.encode() if isinstance(counts, str) else counts}
                )
        return out

    ca, cb = rles(a, False), rles(b, False)
    da, db = rles(a, True), rles(b, True)
    exact = len({r["counts"] for r in ca} & {r["counts"] for r in cb})
    iou = mask_utils.iou(ca, cb, [0] * len(cb)) if ca and cb else np.zeros((len(ca), 0))
    best = iou.max(axis=1) if iou.size else np.zeros(len(ca))
    div_iou = mask_utils.iou(da, db, [0] * len(db)) if da and db else np.zeros((len(da), 0))
    return {
        "divide_a": len(da),
        "divide_b": len(db),
        "divide_best_iou_mean": float(div_iou.max(axis=1).mean()) if div_iou.size else 0.0,
        "conquer_a": len(ca),
        "conquer_b": len(cb),
        "exact_share": exact / max(1, len(ca)),
        "mean_best_iou": float(best.mean()) if len(best) else 0.0,
    }


@pytest.mark.slow
def test_pipeline_dtype_reaches_every_network(
    released_weights: dict[str, str], photo: np.ndarray
) -> None:
    dico = make_dico(released_weights, device="cpu", dtype="bfloat16")
    assert dico.dtype == torch.bfloat16 and dico.device == "cpu"
    assert dico.extractor.dtype == torch.bfloat16
    assert dico.cutler is not None and dico.cutler.dtype == torch.bfloat16
    assert next(dico.cutler.model.fpn.parameters()).dtype == torch.bfloat16
    records = dico(photo, image_id=1)
    assert sum(r.level == 0 for r in records) == REGIONS
    assert any(r.level > 0 for r in records)
    plain = make_dico(released_weights, device="cpu", dtype="float32")
    assert plain.extractor.dtype == plain.cutler.dtype == torch.float32


def test_pipeline_dtype_reaches_cascadepsp(tmp_path: Path) -> None:
    from unsam.refine.cascadepsp import RefinementModule

    weights = tmp_path / "model"
    torch.save(RefinementModule().state_dict(), weights)
    dico = DivideAndConquer(
        features="classic", refine=f"cascadepsp:{weights}", dtype="bfloat16", device="cpu"
    )
    assert dico.refiner is not None and dico.refiner.dtype == torch.bfloat16
    assert dico.refiner.min_side == dico.config.refine.min_side
    plain = DivideAndConquer(features="classic", refine=f"cascadepsp:{weights}", device="cpu")
    assert plain.refiner.dtype == torch.float32
