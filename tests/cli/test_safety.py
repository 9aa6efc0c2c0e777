"""Issue 8 at the command line: outputs never overwrite inputs, errors come first and name the file,
a folder of bad images fails, -v works after the command. In-process (unsam.cli.main.main)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unsam.cli.main import main


@pytest.fixture()
def images(tmp_path: Path) -> Path:
    root = tmp_path / "imgs"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.jpg", "a.png", "b.png"):
        arr = (rng.random((24, 32, 3)) * 255).astype(np.uint8)
        arr[:, :16] //= 4  # two halves: felzenszwalb finds regions
        Image.fromarray(arr).save(root / name)
    return root


def _baseline(images: Path, *extra: str) -> list[str]:
    return ["baseline", "felzenszwalb", str(images), "--no-progress", *extra]


def _err(capsys: pytest.CaptureFixture[str]) -> str:
    return capsys.readouterr().err


@pytest.mark.parametrize(
    "flag_case", ["o-is-image", "overlay-is-folder", "overlay-inside", "o-inside"]
)
def test_outputs_that_would_overwrite_inputs_are_refused(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], flag_case: str
) -> None:
    before = {p.name: p.read_bytes() for p in images.iterdir()}
    args = {
        "o-is-image": ["-o", str(images / "a.png")],
        "overlay-is-folder": ["-o", str(tmp_path / "o.json"), "--overlay-dir", str(images)],
        "overlay-inside": ["-o", str(tmp_path / "o.json"), "--overlay-dir", str(images / "ov")],
        "o-inside": ["-o", str(images / "out.json")],
    }[flag_case]
    assert main(_baseline(images, *args)) == 2
    err = _err(capsys)
    assert "error:" in err and ("input file" in err or "inside the input image folder" in err)
    assert {p.name: p.read_bytes() for p in images.iterdir()} == before  # nothing touched
    assert not (tmp_path / "o.json").exists()


def test_dico_json_equal_to_the_photo_is_refused(
    images: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photo = images / "b.png"
    before = photo.read_bytes()
    assert main(["dico", str(photo), "--json", str(photo), "--features", "classic"]) == 2
    assert "is an input file" in _err(capsys)
    assert photo.read_bytes() == before


def test_eval_json_equal_to_gt_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gt = tmp_path / "gt.json"
    gt.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "height": 2, "width": 2}],
                "annotations": [],
                "categories": [{"id": 1, "name": "object"}],
            }
        )
    )
    before = gt.read_bytes()
    assert main(["eval", "--gt", str(gt), "--pred", str(gt), "--json", str(gt)]) == 2
    assert "is an input file" in _err(capsys)
    assert gt.read_bytes() == before


def test_same_stem_images_get_distinct_overlays(images: Path, tmp_path: Path) -> None:
    ov = tmp_path / "ov"
    assert main(_baseline(images, "-o", str(tmp_path / "o.json"), "--overlay-dir", str(ov))) == 0
    assert sorted(p.name for p in ov.iterdir()) == ["a.jpg.png", "a.png.png", "b.png"]


def test_output_folder_fails_before_any_work(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "outdir"
    out_dir.mkdir()
    assert main(_baseline(images, "-o", str(out_dir))) == 2
    err = _err(capsys)
    assert f"-o {out_dir}: is a folder" in err and ".tmp" not in err
    assert list(out_dir.iterdir()) == []


def test_folder_of_only_bad_images_exits_non_zero_and_lists_them_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.jpg").write_bytes(b"junk")
    (bad / "y.png").write_bytes(b"")
    assert main(_baseline(bad, "-o", str(tmp_path / "o.json"))) == 1
    err = _err(capsys)
    assert err.count("x.jpg") == 1 and err.count("y.png") == 1  # printed once each
    assert "none of the 2 image(s) could be read" in err


def test_work_file_is_removed_after_success(images: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.json"
    assert main(_baseline(images, "-o", str(out))) == 0
    assert (
        out.exists()
        and not (tmp_path / "o.json.work.jsonl").exists()
        and not (tmp_path / "o.json.lock").exists()
    )


def test_symlink_pointing_outside_the_folder_is_listed_like_a_file(
    images: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.move(str(images / "b.png"), outside / "b.png")
    (images / "b.png").symlink_to(outside / "b.png")
    from unsam.cli.common import list_inputs

    listing = list_inputs([str(images)])
    assert [listing.relative(p) for p in listing.images] == ["a.jpg", "a.png", "b.png"]
    two = list_inputs([str(images / "a.jpg"), str(images)])  # a file and its folder: no duplicate
    assert [two.relative(p) for p in two.images] == ["a.jpg", "a.png", "b.png"]


def test_verbose_flag_after_the_command(images: Path, tmp_path: Path) -> None:
    assert main([*_baseline(images, "-o", str(tmp_path / "o.json")), "-v"]) == 0


def test_convert_checkpoint_of_a_folder_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["convert-checkpoint", str(tmp_path), "-o", str(tmp_path / "hf")]) == 2
    err = _err(capsys)
    assert "is a folder" in err and "does not exist" not in err


def test_a_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    import unsam.cli.eval as ev

    def broken(args: object) -> int:
        raise TypeError("a real bug")

    monkeypatch.setattr(ev, "run", broken)
    with pytest.raises(TypeError, match="a real bug"):
        main(["eval", "--gt", "x", "--pred", "y"])


def test_truncated_weights_name_the_file(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from unsam.io.checkpoints import CheckpointFileError, load_safetensors, load_torch_file

    st = tmp_path / "model.safetensors"
    save_file({"w": torch.arange(1000, dtype=torch.float32)}, str(st))
    st.write_bytes(st.read_bytes()[:-100])
    with pytest.raises(CheckpointFileError, match=f"{st}: truncated safetensors file"):
        load_safetensors(st)
    pt = tmp_path / "training_state.pt"
    torch.save({"step": 3, "w": torch.zeros(1000)}, pt)
    pt.write_bytes(pt.read_bytes()[: len(pt.read_bytes()) // 2])
    with pytest.raises(CheckpointFileError, match=f"{pt}: cannot read the training state"):
        load_torch_file(pt, "training state")


def test_malformed_rle_names_file_and_index(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gt = tmp_path / "gt.json"
    from unsam.records import encode_mask, rle_counts_errors

    mask = np.zeros((4, 4), bool)
    mask[1:3, 1:3] = True
    good = encode_mask(mask)
    assert rle_counts_errors([good]) == []
    gt.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "height": 4, "width": 4}],
                "annotations": [{"id": 1, "image_id": 1, "segmentation": good, "area": 16}],
                "categories": [{"id": 1, "name": "object"}],
            }
        )
    )
    pred = tmp_path / "pred.json"
    pred.write_text(
        json.dumps(
            [
                {"image_id": 1, "segmentation": good, "score": 0.9},
                {"image_id": 1, "segmentation": {"size": [4, 4], "counts": "0T"}, "score": 0.5},
            ]
        )
    )
    assert main(["eval", "--gt", str(gt), "--pred", str(pred)]) == 2
    err = _err(capsys)
    assert f"{pred}: [1]" in err and "truncated" in err


def test_formats_other_tools_read(images: Path, tmp_path: Path) -> None:
    """Issue 11.4: --format coco-results loads with COCO.loadRes; sam-folder has one JSON per image;
    --binary-masks writes PNGs equal to the masks."""
    from pycocotools.coco import COCO

    ds = tmp_path / "ds.json"
    assert main(_baseline(images, "-o", str(ds), "--binary-masks", str(tmp_path / "bin"))) == 0
    data = json.loads(ds.read_text())
    res = tmp_path / "res.json"
    assert main(_baseline(images, "-o", str(res), "--format", "coco-results")) == 0
    gt = COCO()
    gt.dataset = {k: data[k] for k in ("images", "annotations", "categories")}
    gt.createIndex()
    loaded = gt.loadRes(str(res))
    assert len(loaded.anns) == len(data["annotations"])
    sam = tmp_path / "sam"
    assert main(_baseline(images, "-o", str(sam), "--format", "sam-folder")) == 0
    files = sorted(p.name for p in sam.iterdir())
    assert files == ["a.jpg.json", "a.png.json", "b.json"]
    one = json.loads((sam / "b.json").read_text())
    assert one["image"]["file_name"] == "b.png"
    n_b = sum(1 for a in data["annotations"] if a["image_id"] == one["image"]["image_id"])
    assert len(one["annotations"]) == n_b
    # binary masks: the best-scoring mask of b.png equals its RLE
    from unsam.records import MaskRecord

    b_img = next(i for i in data["images"] if i["file_name"] == "b.png")
    anns = sorted(
        (a for a in data["annotations"] if a["image_id"] == b_img["id"]), key=lambda a: -a["score"]
    )
    png = np.asarray(Image.open(tmp_path / "bin" / "b" / "0000.png")) > 0
    assert np.array_equal(
        png, MaskRecord.from_coco(anns[0], (b_img["height"], b_img["width"])).decode()
    )
    # a rerun of the results format resumes from its kept work file: nothing is done again
    assert (tmp_path / "res.json.work.jsonl").exists()
    assert main(_baseline(images, "-o", str(res), "--format", "coco-results")) == 0
