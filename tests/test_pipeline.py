"""Divide-and-conquer pipeline: record structure, the classic preset, ranking, real COCO quality."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from unsam.conquer.region import ConquerConfig
from unsam.divide.maskcut import MaskCutConfig
from unsam.features import ClassicFeatureExtractor
from unsam.pipeline import (
    CLASSIC_PRESET,
    DivideAndConquer,
    PipelineConfig,
    conquer_score,
    resolve_preset,
)
from unsam.records import annotation_id


def shapes_image() -> np.ndarray:
    """A 96x128 scene: textured green ground, a red disc, a blue box with a yellow stripe."""
    rng = np.random.default_rng(0)
    image = np.zeros((96, 128, 3), dtype=np.float64)
    image[:] = (70, 140, 60)
    image += rng.normal(0, 6, size=image.shape)
    yy, xx = np.mgrid[:96, :128]
    image[(yy - 40) ** 2 + (xx - 35) ** 2 < 22**2] = (220, 40, 30)
    image[30:80, 70:118] = (40, 60, 200)
    image[50:58, 70:118] = (230, 220, 40)
    return np.clip(image, 0, 255).astype(np.uint8)


def check_structure(records, image_id: int, whole_image: int) -> None:
    """``whole_image``: how many whole-image divide regions there must be (0 or 1)."""
    assert [r.id for r in records] == [annotation_id(image_id, k) for k in range(len(records))]
    by_id = {r.id: r for r in records}
    levels = [r.level for r in records]
    assert levels == sorted(levels, key=lambda lv: lv > 0)  # divide masks first
    for r in records:
        assert r.image_id == image_id and r.area > 0 and 0.0 < r.score <= 1.0
        if r.level == 0:
            assert r.parent_id is None and r.theta is None and r.source in ("maskcut", "image")
        else:
            assert r.source == "conquer" and r.theta is not None and by_id[r.parent_id].level == 0
    whole = [r for r in records if r.source == "image"]
    assert len(whole) == whole_image
    assert all(r.area == r.image_hw[0] * r.image_hw[1] and r.score == 1.0 for r in whole)


def test_classic_pipeline_records_on_a_synthetic_image() -> None:
    dico = DivideAndConquer(features="classic")
    assert dico.config.conquer.units == "superpixels" and dico.config.whole_image_region
    image = shapes_image()
    records = dico(image, image_id=7)
    check_structure(records, 7, whole_image=1)
    assert any(r.source == "maskcut" for r in records), "MaskCut found no object"
    assert (
        records[0].source == "maskcut"
        and [r.source for r in records if r.level == 0][-1] == "image"
    )
    parent_sources = {r.id: r.source for r in records if r.level == 0}
    parts = [r for r in records if r.level > 0]
    assert {parent_sources[r.parent_id] for r in parts} == {"maskcut", "image"}
    assert set(dico.last_timings) == {"divide", "conquer", "refine", "encode", "total"}
    # superpixel masks follow the drawn shapes: the red disc is found to the pixel
    yy, xx = np.mgrid[:96, :128]
    disc = (yy - 40) ** 2 + (xx - 35) ** 2 < 22**2
    best = max((r.decode() & disc).sum() / (r.decode() | disc).sum() for r in records)
    assert best > 0.98


def test_spec_preset_keeps_the_original_pipeline_with_classic_features() -> None:
    dico = DivideAndConquer(features="classic", preset="spec")
    assert dico.config.conquer == ConquerConfig() and dico.config.maskcut == MaskCutConfig()
    assert not dico.config.whole_image_region
    records = dico(shapes_image(), image_id=3)
    check_structure(records, 3, whole_image=0)
    parts = [r for r in records if r.level > 0]
    assert parts and max(r.level for r in parts) <= 6
    assert all(r.source != "image" for r in records)


def test_whole_image_region_alone() -> None:
    """No MaskCut mask: the whole image is the only divide region; every part points at it."""
    dico = DivideAndConquer(features="classic", refine="crf")
    dico.divide = lambda image: []
    records = dico(shapes_image(), image_id=1)
    check_structure(records, 1, whole_image=1)
    assert (
        records[0].source == "image" and records[0].refined == "none"
    )  # never refined (it is > 90% of the image)
    assert len(records) > 5 and all(
        r.level > 0 and r.parent_id == records[0].id for r in records[1:]
    )
    assert all(r.refined == "crf" for r in records[1:])


def test_preset_resolution() -> None:
    dino = PipelineConfig()
    assert resolve_preset(dino) is dino  # DINO: every default is the spec's
    classic = resolve_preset(PipelineConfig(features="classic"))
    assert classic.whole_image_region and classic.preset == "auto"
    assert classic.maskcut == MaskCutConfig(crf=False)
    assert classic.conquer == dataclasses.replace(ConquerConfig(), **CLASSIC_PRESET["conquer"])
    assert classic.refine == dino.refine
    # settings given explicitly win over the preset
    mine = PipelineConfig(
        features="classic", conquer=ConquerConfig(thetas=(0.5, 0.2), crop_size=128)
    )
    got = resolve_preset(mine).conquer
    assert got.thetas == (0.5, 0.2) and got.crop_size == 128 and got.units == "superpixels"
    # forced either way
    assert (
        resolve_preset(PipelineConfig(features="classic", preset="spec")).conquer == ConquerConfig()
    )
    assert resolve_preset(PipelineConfig(preset="classic")).conquer.units == "superpixels"
    # a ready classic extractor selects the preset too
    assert resolve_preset(dino, extractor_name="classic").conquer.units == "superpixels"
    assert DivideAndConquer(ClassicFeatureExtractor()).config.whole_image_region
    with pytest.raises(ValueError, match="preset"):
        PipelineConfig(preset="fast")


def test_conquer_score_order() -> None:
    # one scale: the original formula, coarser levels first, scaled by the parent's score
    assert conquer_score(1.0, 6, 6) == pytest.approx(0.95)
    assert conquer_score(1.0, 1, 6) == pytest.approx(0.45 + 0.5 / 6)
    assert conquer_score(0.5, 6, 6) == pytest.approx(0.475)
    # several superpixel scales: every mask of a coarser scale ranks above a finer scale's
    scores = [[conquer_score(1.0, lv, 16, sc, 4) for lv in range(1, 17)] for sc in range(4)]
    flat = [s for row in scores for s in row]
    assert flat == sorted(flat) and len(set(flat)) == len(flat)
    assert scores[3][-1] == pytest.approx(0.95) and scores[0][0] > 0.45


@pytest.mark.data
def test_classic_pipeline_beats_felzenszwalb_on_coco(coco_gt, coco_images) -> None:
    """First 3 COCO images (sorted by file name): AR@1000 well above the felzenszwalb baseline.

    Measured on these 3 images: classic DiCo 0.326, ``unsam baseline felzenszwalb`` 0.261 (on all
    144 images: 0.201 vs 0.153; benchmarks/classic_quality.py)."""
    import unsam
    from unsam.baselines import BaselineConfig, baseline_masks
    from unsam.io.coco import coco_dataset_dict
    from unsam.records import ImageRecord

    gt = json.loads(coco_gt.read_text())
    images = sorted(gt["images"], key=lambda i: i["file_name"])[:3]
    ids = {i["id"] for i in images}
    dico = DivideAndConquer(features="classic")
    preds, baseline = [], []
    for info in images:
        image = unsam.load_image(coco_images / info["file_name"])
        records = dico(image, image_id=info["id"])
        preds.append(
            ImageRecord(
                info["id"], info["file_name"], info["height"], info["width"], tuple(records)
            )
        )
        baseline += [
            m.replace(image_id=info["id"]) for m in baseline_masks(image, BaselineConfig())
        ]
    sub = {
        "images": images,
        "annotations": [a for a in gt["annotations"] if a["image_id"] in ids],
        "categories": gt["categories"],
    }
    metrics = unsam.evaluate(sub, coco_dataset_dict(preds))
    felzenszwalb = unsam.evaluate(sub, baseline)
    print(
        f"AR@1000 classic DiCo {metrics['AR@1000']:.3f}, felzenszwalb {felzenszwalb['AR@1000']:.3f}"
    )
    assert metrics["AR@1000"] > 0.30
    assert metrics["AR@1000"] > felzenszwalb["AR@1000"] + 0.03


def test_max_masks_keeps_the_best_scores_and_their_parents() -> None:
    image = shapes_image()
    full = DivideAndConquer(features="classic")(
        image, image_id=2
    )  # preset cap 1000: not reached here
    capped = DivideAndConquer(features="classic", max_masks=20)(image, image_id=2)
    assert len(full) > 20 == len(capped)
    check_structure(capped, 2, whole_image=1)  # every kept part's parent is kept (ids renumbered)
    cut = sorted((r.score for r in full), reverse=True)[19]
    kept = {(r.rle["counts"], r.score, r.level) for r in capped}
    assert kept <= {(r.rle["counts"], r.score, r.level) for r in full}
    assert {(r.rle["counts"], r.score, r.level) for r in full if r.score > cut} <= kept
    assert min(r.score for r in capped) == cut
    with pytest.raises(ValueError, match="max_masks"):
        PipelineConfig(max_masks=0)


def test_cli_flags_reach_the_config() -> None:
    import argparse

    from unsam.cli.pseudo_label import add_pipeline_arguments, pipeline_config_from_args

    parser = argparse.ArgumentParser()
    add_pipeline_arguments(parser)
    args = parser.parse_args(
        [
            "--features",
            "classic",
            "--preset",
            "spec",
            "--whole-image-region",
            "--max-masks",
            "500",
            "--conquer-units",
            "superpixels",
            "--conquer-superpixel-scales",
            "80,300",
            "--conquer-superpixel-colour-weight",
            "0",
        ]
    )
    cfg = pipeline_config_from_args(args)
    assert (cfg.preset, cfg.whole_image_region, cfg.max_masks) == ("spec", True, 500)
    assert cfg.conquer.units == "superpixels" and cfg.conquer.superpixel_scales == (80.0, 300.0)
    assert cfg.conquer.superpixel_colour_weight == 0.0
    assert resolve_preset(cfg) is cfg
    default = pipeline_config_from_args(parser.parse_args([]))
    assert (
        default == PipelineConfig()
        and default.conquer.units == "patches"
        and default.max_masks is None
    )


def test_producer_settings_record_the_resolved_preset() -> None:
    from unsam.pipeline import DicoProducer

    settings = DicoProducer(PipelineConfig(features="classic")).settings()
    assert settings["producer"] == "divide-and-conquer"
    assert settings["conquer"]["units"] == "superpixels" and settings["whole_image_region"] is True
    assert DicoProducer(PipelineConfig()).settings()["conquer"]["units"] == "patches"


def test_feature_options_reach_the_extractor_from_the_cli() -> None:
    """Issue 8: FeatureConfig carries the extractor's options through the pipeline and the CLI."""
    import argparse

    from unsam.cli.pseudo_label import add_pipeline_arguments, pipeline_config_from_args
    from unsam.pipeline import DivideAndConquer

    parser = argparse.ArgumentParser()
    add_pipeline_arguments(parser)
    args = parser.parse_args(["--features", "classic", "--feature-batch-size", "3"])
    config = pipeline_config_from_args(args)
    assert config.feature.batch_size == 3
    assert DivideAndConquer(config=config).extractor.batch_size == 3


def test_producer_start_and_finisher_overlap_in_the_runner(tmp_path) -> None:
    """The runner's device/host split: on a GPU (forced here) the producer asks for the overlap,
    every image goes through ``start`` + finisher (the host part on the runner's thread while the
    next image starts), and the file equals a plain run's byte for byte."""
    from pathlib import Path

    from PIL import Image

    from unsam.io.images import list_images
    from unsam.pipeline import DicoProducer
    from unsam.runner import run_images

    folder = tmp_path / "images"
    folder.mkdir()
    for k, name in enumerate(["astronaut.jpg", "chelsea.png", "coffee.jpg"]):
        src = Path(__file__).parent / "data" / "images" / name
        Image.open(src).convert("RGB").resize((96, 72)).save(folder / f"{k}.png")
    listing = list_images(folder)
    config = PipelineConfig(features="classic", max_masks=30)
    producer = DicoProducer(config)
    producer.setup()
    assert not producer.overlaps  # on the CPU both parts would share the cores

    class WholeCalls:  # the producer without start(): the runner calls it image by image
        settings, setup, __call__ = producer.settings, producer.setup, producer.__call__
        last_stats = property(lambda self: producer.last_stats)

    run_images(WholeCalls(), listing.images, listing.root, tmp_path / "plain.json")
    split = DicoProducer(config)
    split.setup()
    split._dico.device = "cuda"  # what overlaps looks at; the networks stay on the CPU
    assert split.overlaps
    started, finished = [], []
    start = split.start

    def logged_start(image, *, image_id):  # type: ignore[no-untyped-def]
        started.append(image_id)
        finish = start(image, image_id=image_id)
        return lambda: (finished.append(image_id), finish())[1]

    split.start = logged_start  # type: ignore[method-assign]
    run_images(split, listing.images, listing.root, tmp_path / "split.json")
    assert started == finished and len(set(started)) == 3
    plain_doc = json.loads((tmp_path / "plain.json").read_text())
    assert len(plain_doc["annotations"]) > 3
    assert (tmp_path / "plain.json").read_bytes() == (tmp_path / "split.json").read_bytes()
