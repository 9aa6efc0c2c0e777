"""unsam.io.coco / files / overlay: formats round trip, atomic writes, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from unsam.io.coco import (
    MaskFileError,
    image_record_from_json,
    image_record_to_json,
    load_coco_dataset,
    load_coco_results,
    load_mask_sets,
    load_sam_json,
    read_jsonl,
    write_coco_dataset,
    write_coco_results,
    write_sam_json,
)
from unsam.io.files import (
    append_line_durable,
    atomic_write,
    atomic_write_json,
    truncate_partial_line,
)
from unsam.io.overlay import draw_overlay, write_overlay
from unsam.records import ImageRecord, MaskRecord


def _image(image_id: int = 7, n: int = 3) -> ImageRecord:
    masks = np.zeros((n, 12, 16), bool)
    for k in range(n):
        masks[k, k : k + 5, 2 * k : 2 * k + 6] = True
    recs = MaskRecord.from_masks(
        masks, scores=[0.9, 0.5, 0.1][:n], level=1, source="conquer", theta=0.4
    )
    return ImageRecord(
        id=image_id, file_name=f"img_{image_id}.jpg", height=12, width=16
    ).with_masks(recs, assign_ids=True)


def test_coco_dataset_round_trip(tmp_path: Path) -> None:
    images = [_image(7), _image(9, n=2)]
    path = write_coco_dataset(tmp_path / "d.json", images)
    data = json.loads(path.read_text())
    assert data["categories"] == [{"id": 1, "name": "object", "supercategory": "object"}]
    assert len({a["id"] for a in data["annotations"]}) == 5
    assert all(a["category_id"] == 1 and a["iscrowd"] == 0 for a in data["annotations"])
    assert load_coco_dataset(path) == images
    assert load_mask_sets(path) == images


def test_results_and_sam_round_trip(tmp_path: Path) -> None:
    image = _image()
    write_coco_results(tmp_path / "r.json", image.masks)
    back = load_coco_results(tmp_path / "r.json")
    assert [m.rle for m in back] == [m.rle for m in image.masks]
    assert [m.score for m in back] == [0.9, 0.5, 0.1]
    grouped = load_mask_sets(tmp_path / "r.json")
    assert len(grouped) == 1 and grouped[0].hw == (12, 16) and grouped[0].file_name is None
    write_sam_json(tmp_path / "s.json", image)
    sam = load_sam_json(tmp_path / "s.json")
    assert sam.id == 7 and sam.file_name == "img_7.jpg"
    assert [m.decode().sum() for m in sam.masks] == [m.area for m in image.masks]
    raw = json.loads((tmp_path / "s.json").read_text())
    assert set(raw["annotations"][0]) >= {
        "segmentation",
        "area",
        "bbox",
        "predicted_iou",
        "point_coords",
        "stability_score",
        "crop_box",
    }


def test_jsonl_line_round_trip_and_partial_last_line(tmp_path: Path) -> None:
    work = tmp_path / "w.jsonl"
    image = _image()
    append_line_durable(work, json.dumps(image_record_to_json(image)))
    with open(work, "a") as fh:
        fh.write('{"image": {"id": 8, "hei')  # a write cut by a crash
    rows = read_jsonl(work)
    assert len(rows) == 1 and image_record_from_json(rows[0]) == image
    assert truncate_partial_line(work) is True
    assert work.read_text().endswith("\n") and truncate_partial_line(work) is False


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        (
            '{"images": [{"id": 1, "width": 4}], "annotations": []}',
            'images\\[0\\]: missing field "height"',
        ),
        (
            (
                '{"images": [{"id": 1, "width": 4, "height": 4}], '
                '"annotations": [{"image_id": 2, "segmentation": []}]}'
            ),
            'annotations\\[0\\]: image_id 2 is not in "images"',
        ),
        (
            '{"images": [{"id": 1, "width": 4, "height": 4}], "annotations": [{"image_id": 1}]}',
            'annotations\\[0\\]: missing field "segmentation"',
        ),
        ('{"images": [{"id": "one", "width": 4, "height": 4}]}', 'field "id" must be an integer'),
    ],
)
def test_malformed_dataset_errors_name_file_and_field(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(MaskFileError, match=message) as info:
        load_coco_dataset(path)
    assert str(path) in str(info.value)


def test_atomic_write_keeps_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    atomic_write_json(target, {"v": 1})

    def boom(fh: object) -> None:
        fh.write(b'{"v": 2, "half')  # type: ignore[attr-defined]
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(target, boom)
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temp file left behind


def test_overlay_draws_every_mask_and_writes_png(tmp_path: Path) -> None:
    image = np.full((12, 16, 3), 100, np.uint8)
    rec = _image()
    out = draw_overlay(image, list(rec.masks), alpha=0.5)
    assert out.shape == image.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(image, 100)  # input untouched
    union = np.any([m.decode() for m in rec.masks], axis=0)
    assert (out[union] != 100).any(axis=1).all()  # every mask pixel is coloured
    assert (out[~union] == 100).all()  # nothing else is
    path = write_overlay(tmp_path / "o.png", image, list(rec.masks))
    from PIL import Image

    assert Image.open(path).size == (16, 12)
