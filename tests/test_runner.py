"""unsam.runner: resumable, shardable runs — a killed run resumes exactly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from unsam.io.images import list_images
from unsam.records import MaskRecord
from unsam.runner import assign_image_ids, parse_shard, run_images, work_file_for


class ThresholdProducer:
    """Two masks per image (bright / dark pixels); can crash after n images, like a killed run."""

    def __init__(self, crash_after: int | None = None) -> None:
        self.crash_after = crash_after
        self.calls = 0

    def settings(self) -> dict[str, Any]:
        return {"producer": "threshold"}

    def setup(self) -> None:
        return None

    def __call__(self, image: np.ndarray, *, image_id: int) -> list[MaskRecord]:
        if self.crash_after is not None and self.calls >= self.crash_after:
            raise KeyboardInterrupt("killed")
        self.calls += 1
        gray = image.mean(axis=2)
        bright = gray > gray.mean()
        return MaskRecord.from_masks(np.stack([bright, ~bright]), scores=[0.9, 0.4], source="test")


@pytest.fixture()
def folder(tmp_path: Path, test_data: Path) -> Path:
    root = tmp_path / "imgs"
    shutil.copytree(test_data / "images", root)
    (root / "broken.jpg").write_bytes(b"not an image")
    (root / "notes.txt").write_text("ignored")
    return root


def _run(folder: Path, out: Path, producer: Any, **kw: Any) -> Any:
    listing = list_images(folder)
    return run_images(producer, listing.images, listing.root, out, **kw)


def test_killed_run_resumes_to_the_identical_file(folder: Path, tmp_path: Path) -> None:
    full = tmp_path / "full.json"
    _run(folder, full, ThresholdProducer())
    out = tmp_path / "resumed.json"
    with pytest.raises(KeyboardInterrupt):
        _run(folder, out, ThresholdProducer(crash_after=2))
    assert not out.exists()
    lines = work_file_for(out).read_text().splitlines()
    assert len(lines) == 1 + 3  # header + astronaut, broken (skipped), chelsea: nothing lost
    with open(work_file_for(out), "a") as fh:
        fh.write('{"image": {"id": 3')  # and a line cut mid-write
    again = ThresholdProducer()
    result = _run(folder, out, again)
    assert result.images_resumed == 3 and result.images_done_now == 1  # only coffee.jpg is left
    assert again.calls == 1  # no image done twice
    assert out.read_bytes() == full.read_bytes()


def test_output_content_ids_and_skips(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.json"
    result = _run(folder, out, ThresholdProducer())
    data = json.loads(out.read_text())
    assert [i["file_name"] for i in data["images"]] == [
        "astronaut.jpg",
        "chelsea.png",
        "coffee.jpg",
    ]
    assert [i["id"] for i in data["images"]] == [
        1,
        3,
        4,
    ]  # ids follow the sorted listing incl. broken.jpg
    assert len(data["annotations"]) == 6 and len({a["id"] for a in data["annotations"]}) == 6
    assert data["info"]["skipped"] == [
        {"file_name": "broken.jpg", "reason": result.skipped[0]["reason"]}
    ]
    assert "not an image file" in result.skipped[0]["reason"]


def test_resume_with_other_settings_is_refused(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.json"
    with pytest.raises(KeyboardInterrupt):
        _run(folder, out, ThresholdProducer(crash_after=1))

    class Other(ThresholdProducer):
        def settings(self) -> dict[str, Any]:
            return {"producer": "other"}

    with pytest.raises(
        ValueError, match=r"unfinished run with other settings \(settings.producer\)"
    ):
        _run(folder, out, Other())
    _run(folder, out, Other(), overwrite=True)  # --overwrite starts over
    assert json.loads(out.read_text())["info"]["settings"] == {"producer": "other"}


def test_shards_partition_the_listing(folder: Path, tmp_path: Path) -> None:
    files = []
    for i in range(2):
        out = tmp_path / f"s{i}.json"
        _run(folder, out, ThresholdProducer(), shard=(i, 2))
        files.append(json.loads(out.read_text()))
    names = [img["file_name"] for f in files for img in f["images"]]
    skipped = [s["file_name"] for f in files for s in f["info"]["skipped"]]
    assert sorted(names + skipped) == ["astronaut.jpg", "broken.jpg", "chelsea.png", "coffee.jpg"]
    ann_ids = [a["id"] for f in files for a in f["annotations"]]
    assert len(ann_ids) == len(set(ann_ids))  # shards never collide (spec §10 bug 2)


def test_two_worker_processes_give_the_same_file(folder: Path, tmp_path: Path) -> None:
    one, two = tmp_path / "w1.json", tmp_path / "w2.json"
    _run(folder, one, ThresholdProducer())
    _run(folder, two, ThresholdProducer(), workers=2)
    assert one.read_bytes() == two.read_bytes()


def test_image_ids_from_names_or_reference(tmp_path: Path) -> None:
    assert assign_image_ids(["000000000139.jpg", "000000000802.jpg"]) == {
        "000000000139.jpg": 139,
        "000000000802.jpg": 802,
    }
    assert assign_image_ids(["sa_12.jpg", "sa_3.jpg"]) == {"sa_12.jpg": 12, "sa_3.jpg": 3}
    assert assign_image_ids(["b.png", "a.png"]) == {"b.png": 1, "a.png": 2}
    ref = tmp_path / "gt.json"
    ref.write_text(json.dumps({"images": [{"id": 77, "file_name": "x/a.png"}]}))
    assert assign_image_ids(["a.png", "new.png"], ref) == {"a.png": 77, "new.png": 78}
    with pytest.raises(ValueError, match="I/N"):
        parse_shard("3/3")
    assert parse_shard("1/4") == (1, 4)


class SplitProducer(ThresholdProducer):
    """ThresholdProducer with the device/host split of a GPU producer: ``start`` does the
    thresholding, the finisher builds the records. The finisher of an image waits (up to 10 s)
    until the next image has been started, so the run only finishes quickly when the runner
    really overlaps a finisher with the next ``start``."""

    overlaps = True

    def __init__(self) -> None:
        super().__init__()
        import threading

        self.started: list[threading.Event] = []
        self.log: list[str] = []
        self.waited: list[bool] = []

    def start(self, image: np.ndarray, *, image_id: int):
        import threading

        k = len(self.started)
        self.started.append(threading.Event())
        self.log.append(f"start {k}")
        if k > 0:
            self.started[k - 1].set()  # image k-1's finisher may now run
        gray = image.mean(axis=2)
        bright = gray > gray.mean()

        def finish() -> tuple[list[MaskRecord], dict[str, int]]:
            last = k == self.expected - 1
            self.waited.append(last or self.started[k].wait(timeout=10))
            self.log.append(f"finish {k}")
            masks = MaskRecord.from_masks(
                np.stack([bright, ~bright]), scores=[0.9, 0.4], source="test"
            )
            return masks, {"dropped_for_test": k + 1}

        return finish


def test_overlapped_host_work_gives_the_same_file(folder: Path, tmp_path: Path) -> None:
    """A producer with start()/finisher and overlaps=True: each image's host work runs while the
    next image starts (never more than one image behind), and the output equals the plain run's."""
    plain = tmp_path / "plain.json"
    _run(folder, plain, ThresholdProducer())
    producer = SplitProducer()
    producer.expected = 3  # astronaut, chelsea, coffee (broken.jpg is skipped before start)
    out = tmp_path / "overlapped.json"
    result = _run(folder, out, producer)
    assert producer.waited == [True, True, True]  # every finisher saw the next start
    assert producer.log == ["start 0", "start 1", "finish 0", "start 2", "finish 1", "finish 2"]
    assert result.stats == {"dropped_for_test": 1 + 2 + 3}
    a, b = json.loads(plain.read_text()), json.loads(out.read_text())
    assert a["annotations"] == b["annotations"] and a["images"] == b["images"]
    assert a["info"]["skipped"] == b["info"]["skipped"]
