"""Converters of the seven evaluation datasets (unsam.datasets.convert), each on a tiny fixture
written here in that dataset's native format, and ``unsam datasets convert``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unsam.cli.main import main
from unsam.datasets import (
    CONVERTERS,
    DATASET_NAMES,
    convert_ade20k,
    convert_coco,
    convert_dataset,
    convert_entityseg,
    convert_lvis,
    convert_paco,
    convert_partimagenet,
    convert_sa1b,
)
from unsam.evaluation import evaluate
from unsam.io.coco import MaskFileError, load_coco_dataset
from unsam.records import decode_rle, encode_mask, normalize_rle

CATEGORIES = [{"id": 1, "name": "object", "supercategory": "object"}]

# pycocotools rasterises the polygon [1,1, 4,1, 4,3, 1,3] of an 6x8 image to rows 1-2, columns 1-3
# (frozen from: mask.decode(mask.merge(mask.frPyObjects([[1,1,4,1,4,3,1,3]], 6, 8))))
RECT_POLY = [1, 1, 4, 1, 4, 3, 1, 3]


def _rect(hw: tuple[int, int], rows: slice, cols: slice) -> np.ndarray:
    m = np.zeros(hw, dtype=bool)
    m[rows, cols] = True
    return m


RECT_MASK = _rect((6, 8), slice(1, 3), slice(1, 4))
CROWD_MASK = _rect((6, 8), slice(3, 6), slice(4, 8))
RLE_MASK = _rect((5, 5), slice(0, 2), slice(2, 5))


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """Pure-Python COCO uncompressed RLE: column-major run lengths starting with a 0-run."""
    flat = mask.T.reshape(-1).astype(int)
    counts, value, run = [], 0, 0
    for v in flat:
        if v == value:
            run += 1
        else:
            counts.append(run)
            value, run = v, 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def _write(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def _masks(dataset: dict) -> list[np.ndarray]:
    sizes = {im["id"]: (im["height"], im["width"]) for im in dataset["images"]}
    return [
        decode_rle(normalize_rle(a["segmentation"], sizes[a["image_id"]]))
        for a in dataset["annotations"]
    ]


def _coco_source(tmp_path: Path) -> Path:
    """COCO instances JSON: image 7 (6x8; a crowd region as uncompressed RLE, a polygon) listed
    before image 3 (5x5; a compressed RLE, an empty polygon list)."""
    rle = encode_mask(RLE_MASK)
    return _write(
        tmp_path / "instances_val2017.json",
        {
            "images": [
                {"id": 7, "file_name": "000000000007.jpg", "height": 6, "width": 8},
                {"id": 3, "file_name": "000000000003.jpg", "height": 5, "width": 5},
            ],
            "annotations": [
                {
                    "id": 20,
                    "image_id": 7,
                    "category_id": 18,
                    "iscrowd": 0,
                    "segmentation": [RECT_POLY],
                },
                {
                    "id": 10,
                    "image_id": 7,
                    "category_id": 1,
                    "iscrowd": 1,
                    "segmentation": _uncompressed_rle(CROWD_MASK),
                },
                {"id": 5, "image_id": 3, "category_id": 44, "iscrowd": 0, "segmentation": rle},
                {"id": 6, "image_id": 3, "category_id": 44, "iscrowd": 0, "segmentation": []},
            ],
            "categories": [
                {"id": 1, "name": "person"},
                {"id": 18, "name": "dog"},
                {"id": 44, "name": "bottle"},
            ],
        },
    )


def test_coco_exact_output(tmp_path: Path) -> None:
    out = convert_coco(_coco_source(tmp_path))
    assert out["categories"] == CATEGORIES
    assert out["images"] == [
        {"id": 3, "width": 5, "height": 5, "file_name": "000000000003.jpg"},
        {"id": 7, "width": 8, "height": 6, "file_name": "000000000007.jpg"},
    ]
    anns = out["annotations"]
    # images by id; within an image, by source annotation id (10 before 20); the empty mask dropped
    assert [a["id"] for a in anns] == [3_000_000, 7_000_000, 7_000_001]
    assert [a["image_id"] for a in anns] == [3, 7, 7]
    assert [a["category_id"] for a in anns] == [1, 1, 1]
    assert [a["iscrowd"] for a in anns] == [0, 1, 0]
    assert set(anns[0]) == {
        "id",
        "image_id",
        "category_id",
        "iscrowd",
        "segmentation",
        "area",
        "bbox",
    }
    # RLE stays RLE, uncompressed RLE becomes compressed, the polygon stays a polygon
    assert anns[0]["segmentation"] == encode_mask(RLE_MASK)
    assert isinstance(anns[1]["segmentation"]["counts"], str)
    assert anns[2]["segmentation"] == [RECT_POLY]
    for got, want in zip(_masks(out), [RLE_MASK, CROWD_MASK, RECT_MASK], strict=True):
        np.testing.assert_array_equal(got, want)
    assert [a["area"] for a in anns] == [6, 12, 6]
    assert anns[2]["bbox"] == [1.0, 1.0, 3.0, 2.0]
    assert out["info"]["dropped_empty_masks"] == 1
    assert out["info"]["dataset"] == "coco"


def test_coco_output_is_deterministic_loadable_and_scores_100_against_itself(
    tmp_path: Path,
) -> None:
    src = _coco_source(tmp_path)
    a, b = convert_coco(src), convert_coco(src)
    assert json.dumps(a) == json.dumps(b)
    gt = _write(tmp_path / "gt.json", a)
    records = load_coco_dataset(gt)
    assert [r.id for r in records] == [3, 7] and [len(r.masks) for r in records] == [1, 2]
    metrics = evaluate(gt, gt)
    assert metrics["AR@1000"] == pytest.approx(1.0)
    assert metrics["gt_masks"] == 2  # the crowd region is not a GT mask to recall


def test_images_dir_keeps_present_images_and_rewrites_file_names(tmp_path: Path) -> None:
    src = _coco_source(tmp_path)
    images = tmp_path / "images"
    (images / "val2017").mkdir(parents=True)
    (images / "val2017" / "000000000007.jpg").write_bytes(
        b"x"
    )  # found by base name below the folder
    out = convert_coco(src, images_dir=images)
    assert out["images"] == [
        {"id": 7, "width": 8, "height": 6, "file_name": "val2017/000000000007.jpg"}
    ]
    assert [a["image_id"] for a in out["annotations"]] == [7, 7]
    assert out["info"]["missing_images"] == 1
    (images / "000000000007.jpg").write_bytes(b"x")  # two files share the name: refuse to guess
    (images / "000000000003.jpg").write_bytes(b"x")
    out = convert_coco(src, images_dir=images)  # exact names win over base-name matches
    assert [im["file_name"] for im in out["images"]] == ["000000000003.jpg", "000000000007.jpg"]
    (images / "000000000007.jpg").unlink()
    (images / "more").mkdir()
    (images / "more" / "000000000007.jpg").write_bytes(b"x")
    with pytest.raises(ValueError, match="matches 2 files by name"):
        convert_coco(src, images_dir=images)


def test_images_dir_without_any_image_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="none of the 2 images is there"):
        convert_coco(_coco_source(tmp_path), images_dir=tmp_path / "empty")


def test_max_images_keeps_the_first_by_id(tmp_path: Path) -> None:
    out = convert_coco(_coco_source(tmp_path), max_images=1)
    assert [im["id"] for im in out["images"]] == [3]
    assert [a["id"] for a in out["annotations"]] == [3_000_000]
    with pytest.raises(ValueError, match="max_images must be >= 1"):
        convert_coco(_coco_source(tmp_path), max_images=0)


def test_lvis_file_names_from_coco_url(tmp_path: Path) -> None:
    src = _write(
        tmp_path / "lvis_v1_val.json",
        {
            "images": [
                {
                    "id": 2,
                    "coco_url": "http://images.cocodataset.org/train2017/000000000002.jpg",
                    "height": 6,
                    "width": 8,
                    "neg_category_ids": [],
                    "not_exhaustive_category_ids": [],
                },
                {
                    "id": 1,
                    "coco_url": "http://images.cocodataset.org/val2017/000000000001.jpg",
                    "height": 5,
                    "width": 5,
                    "neg_category_ids": [],
                    "not_exhaustive_category_ids": [],
                },
            ],
            "annotations": [
                {
                    "id": 1,
                    "image_id": 2,
                    "category_id": 900,
                    "segmentation": [RECT_POLY],
                    "area": 6,
                    "bbox": [1, 1, 3, 2],
                },
                {
                    "id": 2,
                    "image_id": 1,
                    "category_id": 3,
                    "segmentation": [[2, 0, 5, 0, 5, 2, 2, 2]],
                },
            ],
            "categories": [{"id": 3, "name": "x"}, {"id": 900, "name": "y"}],
        },
    )
    out = convert_lvis(src)
    assert [(im["id"], im["file_name"]) for im in out["images"]] == [
        (1, "val2017/000000000001.jpg"),
        (2, "train2017/000000000002.jpg"),
    ]
    assert [(a["id"], a["category_id"], a["iscrowd"]) for a in out["annotations"]] == [
        (1_000_000, 1, 0),
        (2_000_000, 1, 0),
    ]
    m1, m2 = _masks(out)
    np.testing.assert_array_equal(m1, RLE_MASK)
    np.testing.assert_array_equal(m2, RECT_MASK)
    with pytest.raises(MaskFileError, match=r'images\[0\]: needs "file_name" or "coco_url"'):
        convert_lvis(
            _write(tmp_path / "bad.json", {"images": [{"id": 1, "height": 2, "width": 2}]})
        )


def test_entityseg_rle_and_sub_folder_file_names(tmp_path: Path) -> None:
    a = _rect((4, 6), slice(0, 4), slice(0, 3))
    b = _rect((4, 6), slice(0, 4), slice(3, 6))
    c = _rect((3, 3), slice(1, 2), slice(0, 3))
    src = _write(
        tmp_path / "entityseg_val_lr.json",
        {
            "images": [
                {
                    "id": 11,
                    "file_name": "entity_01_11580/sa_1.jpg",
                    "height": 4,
                    "width": 6,
                    "img_source": "sa",
                },
                {
                    "id": 12,
                    "file_name": "entity_02_11598/x.jpg",
                    "height": 3,
                    "width": 3,
                    "img_source": "x",
                },
            ],
            "annotations": [
                {
                    "id": 3,
                    "image_id": 11,
                    "category_id": 1,
                    "category_id_ori": "sky",
                    "segmentation": encode_mask(b),
                },
                {
                    "id": 1,
                    "image_id": 11,
                    "category_id": 1,
                    "category_id_ori": "tree",
                    "segmentation": encode_mask(a),
                },
                {
                    "id": 2,
                    "image_id": 12,
                    "category_id": 1,
                    "category_id_ori": "road",
                    "segmentation": encode_mask(c),
                },
            ],
            "categories": [{"id": 1, "name": "entity"}],
        },
    )
    out = convert_entityseg(src)
    assert [im["file_name"] for im in out["images"]] == [
        "entity_01_11580/sa_1.jpg",
        "entity_02_11598/x.jpg",
    ]
    assert [a["id"] for a in out["annotations"]] == [11_000_000, 11_000_001, 12_000_000]
    for got, want in zip(_masks(out), [a, b, c], strict=True):
        np.testing.assert_array_equal(got, want)
    assert all(x["iscrowd"] == 0 and x["category_id"] == 1 for x in out["annotations"])


def test_partimagenet_parts_with_category_zero_and_empty_parts(tmp_path: Path) -> None:
    src = _write(
        tmp_path / "val.json",
        {
            "images": [
                {"id": 0, "file_name": "n01440764_1.JPEG", "height": 6, "width": 8},
                {"id": 1, "file_name": "n01440764_2.JPEG", "height": 5, "width": 5},
            ],
            "annotations": [
                {
                    "id": 0,
                    "image_id": 0,
                    "category_id": 0,
                    "iscrowd": 0,
                    "segmentation": [RECT_POLY],
                },
                {"id": 1, "image_id": 0, "category_id": 1, "iscrowd": 0, "segmentation": []},
                {
                    "id": 2,
                    "image_id": 1,
                    "category_id": 39,
                    "iscrowd": 0,
                    "segmentation": [[2, 0, 5, 0, 5, 2, 2, 2], [1, 1]],
                },
            ],
            "categories": [
                {"id": i, "name": f"part {i}", "supercategory": "Quadruped"} for i in range(40)
            ],
        },
    )
    out = convert_partimagenet(src)
    assert [a["id"] for a in out["annotations"]] == [0, 1_000_000]
    assert out["annotations"][1]["segmentation"] == [
        [2, 0, 5, 0, 5, 2, 2, 2]
    ]  # the degenerate ring removed
    m0, m1 = _masks(out)
    np.testing.assert_array_equal(m0, RECT_MASK)
    np.testing.assert_array_equal(m1, RLE_MASK)
    assert out["info"]["dropped_empty_masks"] == 1


def _paco_source(tmp_path: Path) -> Path:
    whole = _rect((6, 8), slice(0, 6), slice(0, 8))
    return _write(
        tmp_path / "paco_lvis_v1_val.json",
        {
            "images": [{"id": 5, "file_name": "val2017/000000000005.jpg", "height": 6, "width": 8}],
            "annotations": [
                {
                    "id": 100,
                    "obj_ann_id": 100,
                    "image_id": 5,
                    "category_id": 1,
                    "segmentation": encode_mask(whole),
                },
                {
                    "id": 101,
                    "obj_ann_id": 100,
                    "image_id": 5,
                    "category_id": 80,
                    "segmentation": [RECT_POLY],
                },
                {
                    "id": 102,
                    "obj_ann_id": 100,
                    "image_id": 5,
                    "category_id": 81,
                    "segmentation": _uncompressed_rle(CROWD_MASK),
                },
            ],
            "categories": [
                {"id": 1, "name": "bench"},
                {"id": 80, "name": "bench:arm"},
                {"id": 81, "name": "bench:leg"},
            ],
        },
    )


@pytest.mark.parametrize(
    ("which", "expected"),
    [
        ("parts", [RECT_MASK, CROWD_MASK]),  # default: id != obj_ann_id
        ("objects", [np.ones((6, 8), dtype=bool)]),
        ("all", [np.ones((6, 8), dtype=bool), RECT_MASK, CROWD_MASK]),
    ],
)
def test_paco_parts_objects_all(tmp_path: Path, which: str, expected: list[np.ndarray]) -> None:
    out = convert_paco(_paco_source(tmp_path), annotations=which)
    assert [a["id"] for a in out["annotations"]] == [5_000_000 + k for k in range(len(expected))]
    for got, want in zip(_masks(out), expected, strict=True):
        np.testing.assert_array_equal(got, want)
    assert f"annotations={which}" in out["info"]["rule"]


def test_paco_default_is_parts_and_a_non_paco_file_is_refused(tmp_path: Path) -> None:
    src = _paco_source(tmp_path)
    assert json.dumps(convert_paco(src)) == json.dumps(convert_paco(src, annotations="parts"))
    assert json.dumps(convert_dataset("paco", src)) == json.dumps(convert_paco(src))
    with pytest.raises(MaskFileError, match=r'annotations\[0\]: missing field "obj_ann_id"'):
        convert_paco(_coco_source(tmp_path))
    with pytest.raises(ValueError, match="annotations must be"):
        convert_paco(src, annotations="wheels")  # type: ignore[arg-type]


def _ade_png(path: Path, classes: np.ndarray, instances: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.stack([classes, instances, np.zeros_like(classes)], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(path)


def test_ade20k_instance_pngs(tmp_path: Path) -> None:
    root = tmp_path / "ADEChallengeData2016"
    folder = root / "annotations_instance" / "validation"
    cls = np.zeros((4, 5), dtype=np.uint8)
    ins = np.zeros((4, 5), dtype=np.uint8)
    cls[:, :] = 3  # class everywhere; G = 0 pixels are stuff, not instances
    ins[0:2, 0:2] = 7
    ins[2:4, 3:5] = 2
    _ade_png(folder / "ADE_val_00000002.png", cls, ins)
    cls1 = np.full((3, 3), 12, dtype=np.uint8)
    ins1 = np.zeros((3, 3), dtype=np.uint8)
    ins1[1, :] = 1
    _ade_png(folder / "ADE_val_00000001.png", cls1, ins1)
    out = convert_ade20k(root)
    assert out["images"] == [
        {"id": 1, "width": 3, "height": 3, "file_name": "ADE_val_00000001.jpg"},
        {"id": 2, "width": 5, "height": 4, "file_name": "ADE_val_00000002.jpg"},
    ]
    assert [a["id"] for a in out["annotations"]] == [1_000_000, 2_000_000, 2_000_001]
    assert all(isinstance(a["segmentation"]["counts"], str) for a in out["annotations"])
    # instance ids in increasing order: G = 2 before G = 7
    for got, want in zip(_masks(out), [ins1 == 1, ins == 2, ins == 7], strict=True):
        np.testing.assert_array_equal(got, want)
    assert convert_ade20k(folder) == out  # the PNG folder itself works too


def test_ade20k_refuses_a_grey_png(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((3, 3), dtype=np.uint8)).save(tmp_path / "ADE_val_00000001.png")
    with pytest.raises(
        MaskFileError, match=r"ADE_val_00000001.png: expected an RGB uint8 instance PNG"
    ):
        convert_ade20k(tmp_path)


def _sa1b_json(folder: Path, image_id: int, masks: list[np.ndarray]) -> None:
    h, w = masks[0].shape
    _write(
        folder / f"sa_{image_id}.json",
        {
            "image": {
                "image_id": image_id,
                "file_name": f"sa_{image_id}.jpg",
                "height": h,
                "width": w,
            },
            "annotations": [
                {
                    "id": 900 - k,
                    "segmentation": encode_mask(m),
                    "area": int(m.sum()),
                    "bbox": [0, 0, 1, 1],
                    "predicted_iou": 0.9,
                    "point_coords": [[0, 0]],
                    "stability_score": 0.95,
                    "crop_box": [0, 0, w, h],
                }
                for k, m in enumerate(masks)
            ],
        },
    )


def test_sa1b_first_images_by_numeric_id_and_only_those_are_read(tmp_path: Path) -> None:
    folder = tmp_path / "sa_000999"
    _sa1b_json(folder, 2, [RECT_MASK, CROWD_MASK])
    _sa1b_json(folder, 1, [RLE_MASK])
    (folder / "sa_10.json").write_text("{ not json")  # 10 > 2: never read with max_images=2
    out = convert_sa1b(folder, max_images=2)
    assert out["images"] == [
        {"id": 1, "width": 5, "height": 5, "file_name": "sa_1.jpg"},
        {"id": 2, "width": 8, "height": 6, "file_name": "sa_2.jpg"},
    ]
    assert [a["id"] for a in out["annotations"]] == [1_000_000, 2_000_000, 2_000_001]
    for got, want in zip(
        _masks(out), [RLE_MASK, RECT_MASK, CROWD_MASK], strict=True
    ):  # file order kept
        np.testing.assert_array_equal(got, want)
    assert all(a["iscrowd"] == 0 and a["category_id"] == 1 for a in out["annotations"])
    with pytest.raises(MaskFileError, match="sa_10.json: not valid JSON"):
        convert_sa1b(folder)
    (folder / "notes.json").write_text("{}")
    with pytest.raises(MaskFileError, match="notes.json: not an SA-1B per-image JSON name"):
        convert_sa1b(folder, max_images=1)


def test_registry_and_errors_name_the_file(tmp_path: Path) -> None:
    assert tuple(CONVERTERS) == DATASET_NAMES
    with pytest.raises(ValueError, match="unknown dataset 'voc'"):
        convert_dataset("voc", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"nope.json: no such file"):
        convert_coco(tmp_path / "nope.json")
    bad = _write(
        tmp_path / "bad.json",
        {
            "images": [{"id": 1, "file_name": "a.jpg", "height": 2, "width": 2}],
            "annotations": [{"id": 1, "image_id": 9, "segmentation": []}],
        },
    )
    with pytest.raises(
        MaskFileError, match=r'bad.json: annotations\[0\]: image_id 9 is not in "images"'
    ):
        convert_coco(bad)
    wrong = _write(
        tmp_path / "wrong.json",
        {
            "images": [{"id": 1, "file_name": "a.jpg", "height": 2, "width": 2}],
            "annotations": [
                {"id": 1, "image_id": 1, "segmentation": encode_mask(np.ones((3, 3), bool))}
            ],
        },
    )
    with pytest.raises(
        MaskFileError, match=r"wrong.json: image id 1, annotation 0.*\[3, 3\].*\[2, 2\]"
    ):
        convert_coco(wrong)


def test_cli_convert_writes_the_file_and_help_documents_the_rules(tmp_path: Path, capsys) -> None:
    src = _coco_source(tmp_path)
    out = tmp_path / "root" / "coco" / "gt.json"
    assert main(["datasets", "convert", "coco", str(src), "-o", str(out), "--no-progress"]) == 0
    assert json.loads(out.read_text()) == convert_coco(src)
    assert "2 images, 3 masks, 1 empty mask(s) dropped" in capsys.readouterr().out
    assert main(["datasets", "convert", "coco", str(src), "-o", str(src)]) == 2
    assert "is an input file" in capsys.readouterr().err
    assert (
        main(["datasets", "convert", "lvis", str(tmp_path / "missing.json"), "-o", str(out)]) == 2
    )
    assert "missing.json: no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["datasets", "convert", "--help"])
    text = capsys.readouterr().out
    for needle in (
        "id != obj_ann_id",
        "annotations_instance/validation",
        "first 1000 images by id",
        "ROOT/<name>/gt.json",
        "--paco-annotations",
    ):
        assert needle in text
