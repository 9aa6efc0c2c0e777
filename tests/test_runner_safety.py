"""unsam.runner data safety: fixed ids across reruns, validation, locks, modes, worker errors."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from unsam.io.coco import validate_dataset
from unsam.io.files import RunLockedError, atomic_write_text, run_lock
from unsam.io.images import list_images
from unsam.records import MaskRecord
from unsam.runner import id_rule, run_images, work_file_for


class Halves:
    """Left / right half masks; picklable, counts its calls."""

    def __init__(self, fail_setup: bool = False) -> None:
        self.fail_setup = fail_setup
        self.calls = 0

    def settings(self) -> dict[str, Any]:
        return {"producer": "halves"}

    def setup(self) -> None:
        if self.fail_setup:
            raise FileNotFoundError("model.safetensors: no such file; download it into runs/x")

    def __call__(self, image: np.ndarray, *, image_id: int) -> list[MaskRecord]:
        self.calls += 1
        left = np.zeros(image.shape[:2], bool)
        left[:, : image.shape[1] // 2] = True
        return MaskRecord.from_masks(np.stack([left, ~left]), scores=[0.9, 0.8], source="test")


def _run(folder: Path, out: Path, producer: Any, ids_from: Path | None = None, **kw: Any) -> Any:
    from unsam.runner import assign_image_ids

    listing = list_images(folder)
    names = [listing.relative(p) for p in listing.images]
    return run_images(
        producer,
        listing.images,
        listing.root,
        out,
        image_ids=assign_image_ids(names, ids_from),
        ids_rule=id_rule(ids_from),
        **kw,
    )


@pytest.fixture()
def folder(tmp_path: Path, test_data: Path) -> Path:
    root = tmp_path / "imgs"
    root.mkdir()
    shutil.copy(test_data / "images" / "chelsea.png", root / "b.png")
    shutil.copy(test_data / "images" / "coffee.jpg", root / "d.jpg")
    return root


def _ids(path: Path) -> tuple[dict[str, int], list[int]]:
    data = json.loads(path.read_text())
    return {i["file_name"]: i["id"] for i in data["images"]}, [a["id"] for a in data["annotations"]]


def test_rerun_after_new_image_keeps_ids_and_does_only_the_new_one(
    folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "o.json"
    _run(folder, out, Halves())
    first, _ = _ids(out)
    assert first == {"b.png": 1, "d.jpg": 2}
    assert not work_file_for(out).exists()  # removed after success
    shutil.copy(folder / "b.png", folder / "a.png")  # sorts first: would take id 1 from scratch
    again = Halves()
    result = _run(folder, out, again)
    ids, ann_ids = _ids(out)
    assert again.calls == 1 and result.images_resumed == 2
    # a.png would be 1 from scratch; it gets the first id above every old and listed one
    assert ids["b.png"] == 1 and ids["d.jpg"] == 2 and ids["a.png"] == 4
    assert len(ann_ids) == len(set(ann_ids)) == 6


def test_adding_ids_from_to_a_finished_run_is_refused(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.json"
    _run(folder, out, Halves())
    gt = tmp_path / "gt.json"
    gt.write_text(
        json.dumps({"images": [{"id": 2, "file_name": "b.png"}, {"id": 1, "file_name": "d.jpg"}]})
    )
    with pytest.raises(ValueError, match=r"finished run with other settings \(image_ids"):
        _run(folder, out, Halves(), ids_from=gt)
    _run(folder, out, Halves(), ids_from=gt, overwrite=True)
    assert _ids(out)[0] == {"b.png": 2, "d.jpg": 1}


def test_finished_run_with_new_settings_is_not_called_unfinished(
    folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "o.json"
    _run(folder, out, Halves())

    class Other(Halves):
        def settings(self) -> dict[str, Any]:
            return {"producer": "other"}

    with pytest.raises(ValueError, match="a finished run with other settings") as err:
        _run(folder, out, Other())
    assert "unfinished" not in str(err.value)


def test_foreign_output_file_is_not_overwritten(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.json"
    out.write_text('{"precious": true}')
    with pytest.raises(ValueError, match="not written by this command"):
        _run(folder, out, Halves())
    assert out.read_text() == '{"precious": true}'


def test_validator_catches_each_defect() -> None:
    good = {
        "images": [{"id": 1, "file_name": "a.png", "height": 2, "width": 3}],
        "annotations": [
            {"id": 10, "image_id": 1, "segmentation": {"size": [2, 3], "counts": "06"}}
        ],
    }
    validate_dataset(good, where="x")
    dup_img = {**good, "images": good["images"] * 2}
    with pytest.raises(ValueError, match="image id 1 is given to both"):
        validate_dataset(dup_img, where="x")
    dup_ann = {**good, "annotations": good["annotations"] * 2}
    with pytest.raises(ValueError, match="annotation id 10 is used twice"):
        validate_dataset(dup_ann, where="x")
    orphan = {**good, "annotations": [{**good["annotations"][0], "image_id": 7}]}
    with pytest.raises(ValueError, match="image id 7, which is not in the file"):
        validate_dataset(orphan, where="x")
    size = {
        **good,
        "annotations": [
            {**good["annotations"][0], "segmentation": {"size": [3, 2], "counts": "06"}}
        ],
    }
    with pytest.raises(ValueError, match=r"RLE of size \[3, 2\]"):
        validate_dataset(size, where="x")


def test_run_validates_before_the_rename(folder: Path, tmp_path: Path) -> None:
    class Wrong(Halves):
        def __call__(self, image: np.ndarray, *, image_id: int) -> list[MaskRecord]:
            return MaskRecord.from_masks(np.zeros((1, 3, 3), bool), scores=[1.0], source="test")

    out = tmp_path / "o.json"
    with pytest.raises(ValueError, match=r"b.png.*size.* is \[3, 3\]"):
        _run(folder, out, Wrong())
    assert not out.exists()


def test_output_that_is_a_folder_fails_before_any_work(folder: Path, tmp_path: Path) -> None:
    p = Halves()
    with pytest.raises(IsADirectoryError, match="is a folder"):
        _run(folder, tmp_path, p)
    assert p.calls == 0


def test_second_run_on_one_output_is_refused_and_named(tmp_path: Path) -> None:
    out = tmp_path / "o.json"
    with run_lock(out):
        code = (
            "import sys; from unsam.io.files import run_lock\n"
            f"try:\n    run_lock({str(out)!r}).__enter__()\n"
            "except Exception as e:\n    print(e); sys.exit(3)"
        )
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert proc.returncode == 3
        assert f"pid {os.getpid()}" in proc.stdout and "another unsam run" in proc.stdout
        with pytest.raises(
            RunLockedError
        ):  # a second lock in this process too (flock is per open file)
            with run_lock(out):
                pass
    with run_lock(out):  # released
        pass


def test_atomic_writes_get_normal_mode_and_keep_an_existing_one(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        new = atomic_write_text(tmp_path / "new.txt", "x")
        assert stat.S_IMODE(new.stat().st_mode) == 0o644
        kept = tmp_path / "kept.txt"
        kept.write_text("a")
        kept.chmod(0o640)
        atomic_write_text(kept, "b")
        assert stat.S_IMODE(kept.stat().st_mode) == 0o640 and kept.read_text() == "b"
    finally:
        os.umask(old)


def test_write_errors_name_the_file(tmp_path: Path) -> None:
    target = tmp_path / "sub"
    target.write_text("a file where a folder should be")
    with pytest.raises(OSError, match=f"{target / 'x.json'}: cannot write"):
        atomic_write_text(target / "x.json", "{}")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_full_disk_names_the_file() -> None:
    from unsam.io.files import append_line_durable

    with pytest.raises(OSError, match="/dev/full: cannot append to .*no space left"):
        append_line_durable("/dev/full", "x")


def test_worker_setup_failure_ends_the_run_once(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        _run(folder, tmp_path / "o.json", Halves(fail_setup=True), workers=2)


def test_worker_setup_failure_in_a_worker_only(folder: Path, tmp_path: Path) -> None:
    """setup passes in the parent but fails in the spawned workers: one error, no endless
    respawn."""
    with pytest.raises(RuntimeError, match="only in workers"):
        _run(folder, tmp_path / "o.json", FailsInWorkers(), workers=2)


class FailsInWorkers(Halves):
    def setup(self) -> None:
        import multiprocessing

        if multiprocessing.parent_process() is not None:
            raise RuntimeError("setup fails only in workers")


def test_all_images_unreadable_gives_exit_code_1(tmp_path: Path) -> None:
    root = tmp_path / "bad"
    root.mkdir()
    (root / "a.jpg").write_bytes(b"junk")
    (root / "b.png").write_bytes(b"")
    result = _run(root, tmp_path / "o.json", Halves())
    assert result.exit_code == 1 and len(result.skipped) == 2
