"""The demo's click / segment-everything / export logic, without a browser (gradio not needed)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from unsam.demo.backend import (
    ClickSequence,
    DemoBackend,
    click_overlay,
    everything_overlay,
    fit_image,
    highlight_mask,
    mask_caption,
    mask_panels,
    masks_at_point,
    masks_for_export,
    score_markdown,
    upload_error_message,
    write_masks_json,
)
from unsam.records import MaskRecord, annotation_id

H, W = 20, 30


def _box(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


@pytest.fixture()
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)


@pytest.fixture()
def records() -> list[MaskRecord]:
    """Hand-made hierarchy: whole image ⊃ block ⊃ small part; a near-duplicate of the block; a
    separate object on the right."""
    whole = np.ones((H, W), dtype=bool)
    block = _box(0, 10, 0, 10)  # 100 px
    part = _box(2, 5, 2, 5)  # 9 px
    near_dup = block.copy()
    near_dup[10, 0:5] = True  # 105 px, IoU with block = 100/105 > 0.9
    right = _box(5, 15, 20, 28)  # 80 px
    masks = [whole, near_dup, right, block, part]
    scores = [1.0, 0.4, 0.7, 0.8, 0.6]
    return [
        MaskRecord.from_mask(m, score=s, id=annotation_id(0, k), level=k)
        for k, (m, s) in enumerate(zip(masks, scores))
    ]


def test_masks_at_point_small_to_large_without_near_duplicates(records) -> None:
    got = masks_at_point(records, (3.5, 3.2))  # (x, y) inside the part
    assert [r.area for r in got] == [9, 100, H * W]
    assert got[1].score == 0.8  # the block itself, the 105-px near-duplicate was skipped
    assert [r.area for r in masks_at_point(records, (3.5, 3.2), dedup_iou=0.99)] == [
        9,
        100,
        105,
        H * W,
    ]
    assert [r.area for r in masks_at_point(records, (21, 6))] == [80, H * W]  # the right object
    assert [r.area for r in masks_at_point(records, (15, 18))] == [H * W]  # background only
    assert [r.area for r in masks_at_point(records, (3, 10))] == [
        105,
        H * W,
    ]  # the near-dup's extra row
    assert masks_at_point(records, (W + 1, 3)) == [] and masks_at_point(records, (-1, 3)) == []
    assert masks_at_point([], (1, 1)) == []


def test_masks_at_point_keeps_the_six_smallest() -> None:
    nested = [MaskRecord.from_mask(_box(0, 2 + 2 * k, 0, 2 + 2 * k), score=0.5) for k in range(9)]
    got = masks_at_point(nested[::-1], (0, 0))
    assert [r.area for r in got] == [(2 + 2 * k) ** 2 for k in range(6)]
    assert len(masks_at_point(nested, (0, 0), max_masks=2)) == 2


def test_everything_overlay_draws_the_top_k_readably(image, records) -> None:
    """The "Segment everything" panel draws like every overlay (unsam.io.overlay.draw_overlay):
    the ``top_k`` best masks, each pixel tinted once by the smallest drawn mask holding it."""
    from unsam.io.overlay import draw_overlay

    out = everything_overlay(image, records, top_k=2)  # whole (1.0), block (0.8)
    assert out.shape == image.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, draw_overlay(image, records, top_k=2))
    np.testing.assert_array_equal(out[6, 22], draw_overlay(image, [records[0]])[6, 22])  # right
    # object (score 0.7) is not among the top 2: only the whole image's tint there
    np.testing.assert_array_equal(everything_overlay(image, records, top_k=0), image)
    with pytest.raises(ValueError, match="does not fit"):
        everything_overlay(image[:10], records)


def test_everything_overlay_keeps_the_photo_readable() -> None:
    """Regression: the panel stacked the 30 best masks at alpha with random colours (SAM's
    show_anns), and the photo was lost under them. Measured on the README's image and masks, with
    the thresholds of tests/io/test_overlay.py."""
    from pathlib import Path

    from tests.io.test_overlay import MIN_EDGES_KEPT, MIN_SSIM, edges_kept, photo_ssim
    from unsam.io.images import load_image

    repo = Path(__file__).resolve().parents[2]
    photo = load_image(repo / "examples/coco/images/000000229358.jpg")
    anns = json.loads((repo / "tests/data/overlay_000000229358_top30.json").read_text())
    masks = [MaskRecord.from_coco(a) for a in anns]
    out = everything_overlay(photo, masks, top_k=30)
    assert photo_ssim(photo, out) >= MIN_SSIM and edges_kept(photo, out) >= MIN_EDGES_KEPT


def test_click_overlay_and_panels(image, records) -> None:
    clicked = masks_at_point(records, (3.5, 3.2))
    out = click_overlay(image, clicked, (25.0, 17.0))
    assert out.shape == image.shape
    assert tuple(out[17, 25]) == (230, 30, 30)  # the click dot
    assert not np.array_equal(out[3, 3], image[3, 3])
    panels = mask_panels(image, clicked, (25.0, 17.0), panel_side=15)
    assert [c for _, c in panels] == [
        "granularity 1 · score 0.60",
        "granularity 2 · score 0.80",
        "granularity 3 · score 1.00",
    ]
    assert all(p.shape == (10, 15, 3) for p, _ in panels)  # shrunk to fit 15 px
    hl = highlight_mask(image, records[4].decode(), dim=0.5, alpha=0.0)
    assert np.all(hl[12, 12] == (image[12, 12] * 0.5).astype(np.uint8))  # outside: dimmed
    np.testing.assert_array_equal(hl[3, 3], image[3, 3])  # inside, not on the outline, alpha 0


def test_captions_and_score_table() -> None:
    rec = MaskRecord.from_mask(
        _box(0, 4, 0, 4), score=0.9, predicted_iou=0.93, level=5, source="promptable"
    )
    assert mask_caption(rec, 1) == "granularity 5 · IoU 0.93"
    assert (
        mask_caption(rec.replace(source="conquer", predicted_iou=None), 2)
        == "granularity 2 · score 0.90"
    )
    text = score_markdown([rec], (1.0, 2.0), "by the model")
    assert "**1 masks** at (1, 2)" in text and "| 5 | 0.930 | 0.900 | 16 |" in text
    assert "No mask contains" in score_markdown([], (1.0, 2.0), "x")


def test_fit_image() -> None:
    img = np.zeros((200, 300, 3), dtype=np.uint8)
    assert fit_image(img, 150).shape == (100, 150, 3)
    assert fit_image(img, 300) is img and fit_image(img, None) is img


def test_export_is_a_coco_dataset(tmp_path, records) -> None:
    click = MaskRecord.from_mask(
        _box(0, 3, 0, 3), score=0.7, predicted_iou=0.7, level=2, source="promptable"
    )
    merged = masks_for_export(
        records, [records[4], click, click]
    )  # a repeat of an everything mask, a new one
    assert len(merged) == len(records) + 1
    twin = records[3].replace(id=None)  # equal masks inside the everything set are all kept
    assert len(masks_for_export([*records, twin], [])) == len(records) + 1
    assert len({r.id for r in merged}) == len(merged) and merged[-1].id == annotation_id(
        0, len(records)
    )
    path = write_masks_json(tmp_path / "m.json", merged, file_name="pic.jpg", hw=(H, W), image_id=3)
    data = json.loads(path.read_text())
    assert data["images"] == [{"id": 3, "width": W, "height": H, "file_name": "pic.jpg"}]
    assert [a["area"] for a in data["annotations"]] == [r.area for r in merged]
    assert {a["image_id"] for a in data["annotations"]} == {3}
    from unsam.io.coco import load_coco_dataset

    back = load_coco_dataset(path)[0]
    np.testing.assert_array_equal(back.masks[-1].decode(), click.decode())


def test_backend_caches_everything_per_image(image, records) -> None:
    calls = []

    def generate(img: np.ndarray) -> list[MaskRecord]:
        calls.append(img.shape)
        return records

    backend = DemoBackend(everything=generate, max_side=None)
    work, digest = backend.prepare(image)
    assert [r.area for r in backend.click(work, (3.5, 3.2), digest)] == [9, 100, H * W]
    assert [r.area for r in backend.click(work, (21, 6), digest)] == [80, H * W]
    assert backend.everything(work) == records
    assert len(calls) == 1  # one "segment everything" per image, clicks only look up
    backend.everything(255 - work)
    assert len(calls) == 2
    assert "segment-everything" in backend.click_source


def test_backend_shrinks_to_max_side(image) -> None:
    big = np.repeat(np.repeat(image, 4, axis=0), 4, axis=1)  # 80 x 120
    backend = DemoBackend(everything=lambda img: [], max_side=60)
    work, _ = backend.prepare(big)
    assert work.shape == (40, 60, 3)
    with pytest.raises(ValueError, match="uint8"):
        backend.prepare(big.astype(np.float32))


def test_bad_model_paths_fail_with_the_flag(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"--model: .* not found: .*missing does not exist"):
        DemoBackend(model=tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match=r"--whole-image: .*nope does not exist"):
        DemoBackend(whole_image=tmp_path / "nope")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"--model .*junk.pth: cannot load the model"):
        DemoBackend(model=junk)
    with pytest.raises(ValueError, match=r"--whole-image .*junk.pth: cannot load the model"):
        DemoBackend(whole_image=junk)


@pytest.fixture(scope="module")
def promptable_dir(tmp_path_factory):
    import torch

    from unsam.models.promptable import PromptableConfig, build_model

    torch.manual_seed(0)
    model = build_model(PromptableConfig.tiny()).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    folder = tmp_path_factory.mktemp("promptable")
    model.save_pretrained(folder)
    return folder


def test_backend_with_promptable_model_encodes_once(promptable_dir, monkeypatch) -> None:
    from unsam.models.promptable.amg import AMGConfig

    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, size=(40, 50, 3), dtype=np.uint8)
    backend = DemoBackend(
        model=promptable_dir,
        short_side=32,
        max_side=None,
        amg=AMGConfig(points_per_side=2, short_side=48),
    )
    encodes = []
    original = backend.predictor.model.encode_image
    monkeypatch.setattr(
        backend.predictor.model,
        "encode_image",
        lambda *a, **k: encodes.append(1) or original(*a, **k),
    )
    work, digest = backend.prepare(img)
    backend.set_image(work, digest)
    first = backend.click(work, (10.0, 12.0), digest)
    second = backend.click(work, (30.0, 25.0), digest)
    assert len(encodes) == 1  # a click only decodes
    levels = [r.level for r in first]  # the 6 tokens in order (their numbering is the predictor's)
    assert len(first) == 6 and levels == list(range(levels[0], levels[0] + 6))
    assert all(r.source == "promptable" for r in first)
    assert [c for _, c in mask_panels(work, first, (10.0, 12.0))][2].startswith(
        f"granularity {levels[2]} · IoU "
    )
    assert all(r.predicted_iou is not None and r.rle["size"] == [40, 50] for r in first)
    assert second[0].point_coords == ((30.0, 25.0),)
    assert "promptable model" in backend.click_source
    assert "automatic mask generator" in backend.everything_source
    backend.everything(work, digest)  # the generator encodes with its own predictor ...
    again = backend.click(work, (10.0, 12.0), digest)  # ... so the click cache is still this image
    assert backend.predictor.input_hw == (32, 40)  # at the click size, not the generator's 48
    assert [r.rle for r in again] == [r.rle for r in first]
    assert (
        len(encodes) == 2
    )  # the click predictor did not re-encode: only the AMG's encode was added


def test_cli_demo_errors(monkeypatch, capsys, tmp_path) -> None:
    from unsam.cli.main import main

    monkeypatch.setitem(sys.modules, "gradio", None)  # as if gradio were not installed
    assert main(["demo"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and 'pip install "unsam[demo]"' in err
    monkeypatch.delitem(sys.modules, "gradio")
    pytest.importorskip("gradio", reason="the [demo] extra (gradio) is not installed")
    assert main(["demo", "--model", str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("unsam demo: error: --model") and "absent" in err


def test_build_demo_makes_blocks(records) -> None:
    gr = pytest.importorskip("gradio", reason="the [demo] extra (gradio) is not installed")
    from unsam.demo.app import build_demo

    demo = build_demo(DemoBackend(everything=lambda img: records), examples=[])
    assert isinstance(demo, gr.Blocks)
    ids = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    assert {
        "unsam-input",
        "unsam-gallery",
        "unsam-overlay",
        "unsam-everything",
        "unsam-download",
    } <= ids


def test_click_sequence_keeps_only_the_newest_click_per_session() -> None:
    """After a burst of clicks the display must end on the last one: an answer that a newer click
    of the same session overtook is dropped."""
    seq = ClickSequence()
    first = seq.start("a")
    other = seq.start("b")  # another browser session does not overtake "a"
    assert seq.is_current("a", first) and seq.is_current("b", other)
    second = seq.start("a")
    assert not seq.is_current("a", first) and seq.is_current("a", second)
    assert second == first + 1 and not seq.is_current("c", 1)

    import threading

    tickets: list[int] = []
    threads = [threading.Thread(target=lambda: tickets.append(seq.start("t"))) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(tickets) == list(range(1, 51))  # no ticket twice
    assert [t for t in tickets if seq.is_current("t", t)] == [50]


def test_upload_error_message_names_the_file_and_the_fix(tmp_path) -> None:
    notes = tmp_path / "notes.png"
    notes.write_text("not a picture")
    msg = upload_error_message(notes, ValueError("UnidentifiedImageError: cannot identify"))
    assert msg.startswith("notes.png is not an image the demo can read (")
    assert msg.endswith("upload a photo (JPEG, PNG, WebP, TIFF or BMP)") and "\n" not in msg
    assert "Pillow" in msg or "image" in msg
    assert upload_error_message(None, OSError("gone")).startswith("the upload is not an image")


def test_the_page_answers_a_non_image_upload_and_every_click(tmp_path, records) -> None:
    """Without a browser: the input image's preprocessing raises gradio's Error with one sentence
    (not "Could not preprocess input component ..."), and clicks are submitted in "multiple"
    mode (gradio's default "once" dropped the clicks made while one was answered)."""
    gr = pytest.importorskip("gradio", reason="the [demo] extra (gradio) is not installed")
    from gradio.data_classes import ImageData

    from unsam.demo.app import build_demo

    demo = build_demo(DemoBackend(everything=lambda img: records), examples=[])
    (image,) = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "unsam-input"]
    notes = tmp_path / "notes.png"
    notes.write_text("not a picture")
    with pytest.raises(gr.Error) as info:
        image.preprocess(ImageData(path=str(notes)))
    assert str(info.value.message).startswith("notes.png is not an image the demo can read")
    selects = [d for d in demo.config["dependencies"] if d["targets"] == [(image._id, "select")]]
    assert len(selects) == 1 and selects[0]["trigger_mode"] == "multiple"
