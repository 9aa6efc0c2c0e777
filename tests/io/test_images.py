"""unsam.io.images: every image kind becomes RGB uint8; every bad file a one-line error naming
it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unsam.io.images import ImageReadError, list_images, load_image

RGB = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [10, 20, 30]]], dtype=np.uint8)


def _save(path: Path, img: Image.Image, **kw: object) -> Path:
    img.save(path, **kw)
    return path


def test_rgb_png(tmp_path: Path) -> None:
    out = load_image(_save(tmp_path / "a.png", Image.fromarray(RGB)))
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    np.testing.assert_array_equal(out, RGB)


def test_grayscale_and_one_bit_repeat_the_channel(tmp_path: Path) -> None:
    gray = np.array([[0, 128], [200, 255]], np.uint8)
    out = load_image(_save(tmp_path / "g.png", Image.fromarray(gray, "L")))
    np.testing.assert_array_equal(out, np.repeat(gray[..., None], 3, axis=2))
    bits = load_image(_save(tmp_path / "b.png", Image.fromarray(gray > 100).convert("1")))
    np.testing.assert_array_equal(bits[..., 0], np.where(gray > 100, 255, 0))


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((1, 2, 4), np.uint8)
    rgba[0, 0] = [255, 0, 0, 255]  # opaque red
    rgba[0, 1] = [0, 0, 0, 0]  # fully transparent black -> white
    out = load_image(_save(tmp_path / "t.png", Image.fromarray(rgba, "RGBA")))
    np.testing.assert_array_equal(out[0], [[255, 0, 0], [255, 255, 255]])
    la = Image.fromarray(np.array([[[50, 255]]], np.uint8), "LA")
    np.testing.assert_array_equal(load_image(_save(tmp_path / "la.png", la))[0, 0], [50, 50, 50])


def test_palette_image(tmp_path: Path) -> None:
    img = Image.fromarray(RGB).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    out = load_image(_save(tmp_path / "p.png", img))
    np.testing.assert_array_equal(out, np.asarray(img.convert("RGB")))


def test_sixteen_bit_is_scaled_to_eight_bit(tmp_path: Path) -> None:
    arr16 = np.array([[0, 257 * 100], [65535, 257 * 7]], np.uint16)
    out = load_image(_save(tmp_path / "d.png", Image.fromarray(arr16)))
    np.testing.assert_array_equal(out[..., 0], [[0, 100], [255, 7]])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_float_tiff(tmp_path: Path) -> None:
    arr = np.array([[0.0, 0.5], [1.0, 0.25]], np.float32)
    out = load_image(_save(tmp_path / "f.tif", Image.fromarray(arr, "F")))
    np.testing.assert_array_equal(out[..., 1], [[0, 128], [255, 64]])


def test_cmyk_jpeg(tmp_path: Path) -> None:
    img = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    out = load_image(_save(tmp_path / "c.jpg", img, quality=100))
    assert out.shape == (8, 8, 3)
    assert out[..., 0].mean() > 200 and out[..., 1].mean() < 60 and out[..., 2].mean() < 60


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    arr = np.zeros((2, 4, 3), np.uint8)
    arr[0, 0] = 255  # white top-left pixel of a 2x4 (H x W) image
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    out = load_image(_save(tmp_path / "r.png", img, exif=exif))
    assert out.shape == (4, 2, 3)
    assert out[0, 1].tolist() == [255, 255, 255]  # top-left went to top-right


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("notes.jpg", b"this is text, not a JPEG", "not an image file"),
        ("empty.png", b"", "empty"),
        ("garbage.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, ""),
    ],
)
def test_bad_files_raise_one_line_error_naming_the_file(
    tmp_path: Path, name: str, content: bytes, reason: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageReadError) as info:
        load_image(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message and reason in message


def test_truncated_jpeg_is_an_error(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    full = _save(
        tmp_path / "full.jpg", Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    )
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(ImageReadError, match="cut.jpg: cannot read image: .*truncated"):
        load_image(cut)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="no such file"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageReadError, match="is a directory"):
        load_image(tmp_path)


def test_list_images_sorted_and_reports_others(tmp_path: Path) -> None:
    for name in ["b.JPG", "a.png", "c.jpeg", "notes.txt", ".hidden.jpg", "z.tif"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.png").write_bytes(b"x")
    listing = list_images(tmp_path)
    assert [p.name for p in listing.images] == ["a.png", "b.JPG", "c.jpeg", "z.tif"]
    assert [p.name for p in listing.skipped] == ["notes.txt"]
    deep = list_images(tmp_path, recursive=True)
    assert [listing.relative(p) for p in deep.images] == [
        "a.png",
        "b.JPG",
        "c.jpeg",
        "sub/d.png",
        "z.tif",
    ]
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        list_images(tmp_path / "missing")


@pytest.mark.data
def test_real_coco_images_decode_at_their_annotated_size(coco_images: Path, coco_gt: Path) -> None:
    import json

    sizes = {
        i["file_name"]: (i["height"], i["width"]) for i in json.loads(coco_gt.read_text())["images"]
    }
    for path in sorted(coco_images.iterdir())[:10]:
        img = load_image(path)
        assert img.shape == (*sizes[path.name], 3)
