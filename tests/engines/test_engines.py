"""unsam.engines without Ray: list-file and glob inputs, the engine flags, the error without Ray,
and the runner reading shard work files (the local engine resumes what a Ray run stored)."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import pytest

from unsam.baselines import BaselineConfig, BaselineProducer
from unsam.cli.common import list_inputs
from unsam.engines import add_engine_arguments, engine_from_args, expand_image_inputs
from unsam.runner import run_images, shard_dir_for

IMAGES = Path(__file__).resolve().parents[1] / "data" / "images"


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    shutil.copy(IMAGES / "astronaut.jpg", root / "a.jpg")
    shutil.copy(IMAGES / "chelsea.png", root / "sub" / "b.png")
    shutil.copy(IMAGES / "coffee.jpg", root / "sub" / "c.jpg")
    return root


def test_list_file_lines_are_relative_to_it(folder: Path) -> None:
    listing = folder / "list.txt"
    listing.write_text(f"# comment\n\nsub/b.png\n  {folder / 'a.jpg'}  \nsub\n")
    assert expand_image_inputs(str(listing)) == [
        str(folder / "sub" / "b.png"),
        str(folder / "a.jpg"),
        str(folder / "sub"),
    ]
    got = list_inputs(str(listing))
    assert got.root == folder and [got.relative(p) for p in got.images] == [
        "a.jpg",
        "sub/b.png",
        "sub/c.jpg",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "a.jpg\nmissing.png\n",
            "list.txt line 2: missing.png: no such file or folder",
        ),  # names the line
        ("# only a comment\n\n", "list.txt: the list file names no image"),
    ],
)
def test_list_file_errors(folder: Path, text: str, message: str) -> None:
    (folder / "list.txt").write_text(text)
    with pytest.raises(FileNotFoundError, match=message):
        expand_image_inputs([str(folder / "list.txt")])


def test_glob_patterns(folder: Path) -> None:
    assert expand_image_inputs(str(folder / "sub" / "*.jpg")) == [str(folder / "sub" / "c.jpg")]
    got = list_inputs([str(folder / "**" / "*.*g")])
    assert [got.relative(p) for p in got.images] == ["a.jpg", "sub/b.png", "sub/c.jpg"]
    with pytest.raises(FileNotFoundError, match=r"\*\.gif: the pattern matches no file"):
        expand_image_inputs(str(folder / "*.gif"))
    # an existing path is taken as it is, even with glob characters in its name
    odd = folder / "[x].jpg"
    shutil.copy(IMAGES / "coffee.jpg", odd)
    assert expand_image_inputs([str(odd), "no/such/file.jpg"]) == [str(odd), "no/such/file.jpg"]


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=1)
    add_engine_arguments(parser)
    return parser.parse_args(list(argv))


def test_engine_flags() -> None:
    assert engine_from_args(_args()) is None
    with pytest.raises(
        ValueError, match="--address, --num-gpus-per-worker only apply to --engine ray"
    ):
        engine_from_args(_args("--address", "auto", "--num-gpus-per-worker", "1"))


def test_without_ray_one_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys
) -> None:
    from unsam.cli.main import main

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    monkeypatch.delitem(sys.modules, "unsam.engines.ray_engine", raising=False)
    code = main(
        ["baseline", "felzenszwalb", str(IMAGES), "-o", str(tmp_path / "o.json"), "--engine", "ray"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("unsam baseline: error: --engine ray needs Ray Data")
    assert err[0].endswith('pip install "unsam[ray]"')
    assert not (tmp_path / "o.json.work.jsonl").exists()  # nothing was started


def _producer() -> BaselineProducer:
    return BaselineProducer(BaselineConfig(method="felzenszwalb"))


def test_local_run_resumes_from_shard_work_files(folder: Path, tmp_path: Path) -> None:
    """Rows a (Ray) engine stored in OUT.work.d/ are not done again, whichever engine reruns."""
    images = sorted(p for p in folder.rglob("*.*g"))
    reference = tmp_path / "ref.json"
    run_images(_producer(), images, folder, reference)
    ref = json.loads(reference.read_text())
    header = {
        "unsam_work_file": 2,
        **{k: ref["info"][k] for k in ("settings", "shard", "image_ids")},
    }
    first = ref["images"][0]
    row = {
        "image": first,
        "annotations": [a for a in ref["annotations"] if a["image_id"] == first["id"]],
    }
    out = tmp_path / "out.json"
    shard = shard_dir_for(out) / "host-1-0.jsonl"
    shard.parent.mkdir()
    shard.write_text(json.dumps(header) + "\n" + json.dumps(row) + "\n")
    (shard.parent / "host-2-0.jsonl").write_text("")  # an actor killed before its header: ignored
    result = run_images(_producer(), images, folder, out)
    assert (result.images_resumed, result.images_done_now) == (1, 2)
    assert out.read_bytes() == reference.read_bytes()
    assert not shard_dir_for(out).exists()


def test_shard_work_file_with_other_settings_is_refused(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    shard = shard_dir_for(out) / "host-1-0.jsonl"
    shard.parent.mkdir()
    other = {
        "unsam_work_file": 2,
        "settings": {"method": "slic"},
        "shard": [0, 1],
        "image_ids": {"rule": "given"},
    }
    shard.write_text(json.dumps(other) + "\n")
    refused = r"host-1-0.jsonl: an unfinished run with other settings \(image_ids.rule, settings\."
    with pytest.raises(ValueError, match=refused):
        run_images(_producer(), sorted(folder.rglob("*.*g")), folder, out)
    result = run_images(_producer(), sorted(folder.rglob("*.*g")), folder, out, overwrite=True)
    assert result.images_done_now == 3 and not shard_dir_for(out).exists()


def test_driver_stores_rows_it_cannot_see_and_lost_images(tmp_path: Path) -> None:
    """Rows from an actor whose shard file is on another machine, and images whose actor died every
    time, go to the driver's shard file (header first); rows from a visible shard are not copied."""
    from unsam.engines.ray_engine import _collect, _DriverShard

    header = {"unsam_work_file": 2, "settings": {}, "shard": [0, 1], "image_ids": {"rule": "given"}}
    visible = tmp_path / "node-a.jsonl"
    visible.write_text(json.dumps(header) + "\n")
    row_a = {"image": {"id": 1, "file_name": "a.jpg", "height": 1, "width": 1}, "annotations": []}
    row_b = {"skipped": "b.jpg", "reason": "failed 3 time(s): RuntimeError: x"}
    outputs = [
        {"row": json.dumps(row_a), "shard": str(visible)},
        {"row": json.dumps(row_b), "shard": str(tmp_path / "elsewhere" / "node-b.jsonl")},
    ]
    todo = [("/i/a.jpg", "a.jpg", 1), ("/i/b.jpg", "b.jpg", 2), ("/i/c.jpg", "c.jpg", 3)]
    driver = _DriverShard(tmp_path, header)
    rows = list(_collect(outputs, todo, 3, driver))
    lost = {
        "skipped": "c.jpg",
        "reason": "no result from Ray after 3 tries: its worker died (a crash, "
        "or killed for memory) or failed outside the producer (see the Ray log)",
    }
    assert rows == [row_a, row_b, lost]
    assert [json.loads(x) for x in driver.path.read_text().splitlines()] == [header, row_b, lost]
    assert driver.path.name.startswith("driver-")
