"""``--engine ray`` (unsam.engines.ray_engine) on a local 2-CPU Ray started by this module.

The weight-free felzenszwalb baseline runs over tests/data/images plus one broken file; every Ray
run must write the bytes the single-process runner writes, resume from the shard work files a
stopped run left, retry a failing image and record it as skipped when it keeps failing.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

# a private Ray on the loopback interface only (read when ray is first imported; Linux default: the
# node IP); the workers inherit it
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
ray = pytest.importorskip("ray", reason='needs Ray: pip install "unsam[ray]"')
pytest.importorskip("ray.data", reason='needs Ray Data: pip install "unsam[ray]"')

from unsam.baselines import BaselineConfig, BaselineProducer  # noqa: E402
from unsam.engines.ray_engine import RayEngine  # noqa: E402
from unsam.runner import run_images, shard_dir_for, work_file_for  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")

IMAGES = Path(__file__).resolve().parents[1] / "data" / "images"


class LoggingProducer(BaselineProducer):
    """The felzenszwalb baseline, appending each image id it is called on to ``log`` (one line
    per call, from any process), and failing on the ids of ``fail`` (id -> failures before a
    success: 0 raises every time, n raises n times in a process; -1 kills the process every
    time)."""

    def __init__(self, log: Path, fail: dict[int, int] | None = None) -> None:
        super().__init__(BaselineConfig(method="felzenszwalb"))
        self.log = str(log)
        self.fail = dict(fail or {})
        self.calls: dict[int, int] = {}

    def __call__(self, image, *, image_id):  # type: ignore[no-untyped-def]
        with open(self.log, "a", encoding="utf-8") as fh:
            fh.write(f"{image_id}\n")
        self.calls[image_id] = self.calls.get(image_id, 0) + 1
        budget = self.fail.get(image_id)
        if budget == -1:
            os._exit(3)  # a crash: the actor's process dies
        if budget is not None and (budget == 0 or self.calls[image_id] <= budget):
            raise RuntimeError(f"injected failure on image {image_id}")
        return super().__call__(image, image_id=image_id)


@pytest.fixture(scope="module")
def local_ray():
    """A private 2-CPU local Ray; the test module's producers travel to the workers by value."""
    ray.init(num_cpus=2, include_dashboard=False, address="local", logging_level="warning")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    ray.shutdown()


class SlowProducer(BaselineProducer):
    """The felzenszwalb baseline, writing ``start ID`` to ``log``, sleeping ``seconds`` (image 1:
    ``first_seconds``, so that the two actors never end their images together), then writing
    ``end ID`` when it returns its masks."""

    def __init__(self, log: Path, seconds: float, first_seconds: float | None = None) -> None:
        super().__init__(BaselineConfig(method="felzenszwalb"))
        self.log = str(log)
        self.seconds = seconds
        self.first_seconds = seconds if first_seconds is None else first_seconds

    def __call__(self, image, *, image_id):  # type: ignore[no-untyped-def]
        import time

        with open(self.log, "a", encoding="utf-8") as fh:
            fh.write(f"start {image_id}\n")
        time.sleep(self.first_seconds if image_id == 1 else self.seconds)
        masks = super().__call__(image, image_id=image_id)
        with open(self.log, "a", encoding="utf-8") as fh:
            fh.write(f"end {image_id}\n")
        return masks


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/data/images plus one file that is not an image (ids from listing order: 1..4)."""
    root = tmp_path_factory.mktemp("images")
    for p in sorted(IMAGES.iterdir()):
        shutil.copy(p, root / p.name)
    (root / "broken.jpg").write_bytes(b"this is not a JPEG")
    return root


@pytest.fixture(scope="module")
def reference(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The single-process run's output bytes."""
    out = tmp_path_factory.mktemp("reference") / "local.json"
    run_images(
        BaselineProducer(BaselineConfig(method="felzenszwalb")), _images(folder), folder, out
    )
    return out.read_bytes()


def _images(folder: Path) -> list[Path]:
    return sorted(folder.iterdir(), key=lambda p: p.name)


def _logged(log: Path) -> list[int]:
    return sorted(int(x) for x in log.read_text().split()) if log.exists() else []


def test_cli_ray_run_is_byte_identical_to_local(local_ray, folder, reference, tmp_path, capsys):
    """``unsam baseline felzenszwalb LIST.txt --engine ray --workers 2`` (the Ray this module
    started is used as it is), the images named by a list file."""
    from unsam.cli.main import main

    listing = tmp_path / "images.txt"
    listing.write_text("# the test images\n" + "".join(f"{p}\n" for p in _images(folder)))
    out = tmp_path / "ray.json"
    code = main(
        [
            "baseline",
            "felzenszwalb",
            str(listing),
            "-o",
            str(out),
            "--engine",
            "ray",
            "--workers",
            "2",
            "--no-progress",
        ]
    )
    assert code == 0
    assert out.read_bytes() == reference
    assert "3 images" in capsys.readouterr().out
    assert not work_file_for(out).exists() and not shard_dir_for(out).exists()
    assert ray.is_initialized()  # a Ray the engine did not start is left running


def test_resume_from_a_shard_work_file(local_ray, folder, reference, tmp_path):
    """A stopped cluster left a shard work file with two finished rows: only the rest is done."""
    out = tmp_path / "ray.json"
    ref = json.loads(reference)
    header = {
        "unsam_work_file": 2,
        **{k: ref["info"][k] for k in ("settings", "shard", "image_ids")},
    }
    astronaut = next(i for i in ref["images"] if i["file_name"] == "astronaut.jpg")
    masks = [a for a in ref["annotations"] if a["image_id"] == astronaut["id"]]
    rows = [
        {"image": astronaut, "annotations": masks},
        {"skipped": "broken.jpg", "reason": ref["info"]["skipped"][0]["reason"]},
    ]
    shard = shard_dir_for(out) / "node-1-deadbeef.jsonl"
    shard.parent.mkdir(parents=True)
    shard.write_text(
        "\n".join(json.dumps(r) for r in [header, *rows]) + "\n" + '{"image": {"id"'
    )  # cut line
    log = tmp_path / "calls.log"
    result = run_images(
        LoggingProducer(log), _images(folder), folder, out, engine=RayEngine(num_workers=2)
    )
    assert (result.images_resumed, result.images_done_now) == (2, 2)
    assert _logged(log) == [3, 4]  # chelsea and coffee only
    assert out.read_bytes() == reference


def _run_stopped_after_first_row(producer: BaselineProducer, folder: Path, out: Path) -> None:
    """A 2-actor Ray run whose driver is interrupted (KeyboardInterrupt) after its first row."""

    def stop_after_first_row(done: int, total: int) -> None:
        if done >= 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_images(
            producer,
            _images(folder),
            folder,
            out,
            engine=RayEngine(num_workers=2),
            progress=stop_after_first_row,
        )


def test_resume_after_the_driver_stops(local_ray, folder, reference, tmp_path):
    """The driver dies after its first row: the rows the actors stored are not done again."""
    out = tmp_path / "ray.json"
    log = tmp_path / "calls.log"
    _run_stopped_after_first_row(LoggingProducer(log), folder, out)
    stored = {
        json.loads(line).get("skipped") or json.loads(line)["image"]["file_name"]
        for shard in shard_dir_for(out).glob("*.jsonl")
        for line in shard.read_text().splitlines()[1:]
    }
    assert 1 <= len(stored) <= 4
    log.unlink(missing_ok=True)
    result = run_images(
        LoggingProducer(log), _images(folder), folder, out, engine=RayEngine(num_workers=2)
    )
    assert result.images_resumed == len(stored) and result.images_done_now == 4 - len(stored)
    ids = {"astronaut.jpg": 1, "chelsea.png": 3, "coffee.jpg": 4}  # broken.jpg (2) never decodes
    assert _logged(log) == sorted(i for name, i in ids.items() if name not in stored)
    assert out.read_bytes() == reference


def test_a_stopped_driver_leaves_no_work_running(local_ray, folder, reference, tmp_path):
    """The driver stops while an actor is inside an image (the Ray this module started lives on):
    the engine kills that work before it returns, so nothing is written after the call ends and
    the interrupted image is done by the rerun."""
    import time

    out = tmp_path / "ray.json"
    log = tmp_path / "calls.log"
    # Image 1 is quick and the others slow: when the driver takes its first row (image 1's, or
    # broken.jpg's skip), the other actor is still inside a slow image. With equal times both
    # actors could end together and leave nothing in flight (seen on CI).
    _run_stopped_after_first_row(SlowProducer(log, seconds=5.0, first_seconds=0.5), folder, out)
    at_return = log.read_text().split("\n")
    started = {line.split()[1] for line in at_return if line.startswith("start")}
    ended = {line.split()[1] for line in at_return if line.startswith("end")}
    assert started - ended, "no image was in flight when the driver stopped: nothing is tested"
    shards_at_return = {p.name: p.read_bytes() for p in shard_dir_for(out).glob("*.jsonl")}
    time.sleep(6.0)  # longer than one slow image: work left running would end by now
    assert log.read_text().split("\n") == at_return
    assert {p.name: p.read_bytes() for p in shard_dir_for(out).glob("*.jsonl")} == shards_at_return
    rerun = SlowProducer(log, seconds=0.0)
    result = run_images(rerun, _images(folder), folder, out, engine=RayEngine(num_workers=2))
    assert result.images_done_now >= len(started - ended)
    assert out.read_bytes() == reference


class _Ticker:
    """A Ray actor that registers itself like a worker, then appends a line to a file every ms."""

    def __init__(self, registry) -> None:  # type: ignore[no-untyped-def]
        from unsam.engines.ray_engine import _register

        _register(registry)

    def tick(self, path: str) -> None:
        import time

        while True:
            with open(path, "a", encoding="utf-8") as fh:
                fh.write("tick\n")
            time.sleep(0.001)


def test_stop_actors_returns_once_the_actors_are_dead(local_ray, tmp_path):
    """unsam.engines.ray_engine._stop_actors: when it returns, no registered actor runs any more
    (ray.kill alone only asks Ray to kill; the process may go on for a moment)."""
    import time

    from unsam.engines.ray_engine import _ActorRegistry, _stop_actors

    registry = ray.remote(num_cpus=0)(_ActorRegistry).remote()
    path = tmp_path / "ticks.txt"
    tickers = [ray.remote(num_cpus=0)(_Ticker).remote(registry) for _ in range(3)]
    ray.get([t.__ray_ready__.remote() for t in tickers])
    for t in tickers:
        t.tick.remote(str(path))
    while not path.exists() or path.stat().st_size < 3 * 5 * 100:  # each ticker is running
        time.sleep(0.05)
    _stop_actors(ray, registry)
    size = path.stat().st_size
    time.sleep(0.5)
    assert path.stat().st_size == size
    ray.kill(registry)


def test_failures_are_retried_then_skipped(local_ray, folder, reference, tmp_path):
    """chelsea (id 3) fails once then works; coffee (id 4) always fails; astronaut (id 1) kills
    its actor every time: the first is retried to the reference masks, the others are skipped."""
    out = tmp_path / "ray.json"
    log = tmp_path / "calls.log"
    producer = LoggingProducer(log, fail={3: 1, 4: 0, 1: -1})
    result = run_images(
        producer, _images(folder), folder, out, engine=RayEngine(num_workers=2, attempts=2)
    )
    data = json.loads(out.read_text())
    ref = json.loads(reference)
    assert [i["file_name"] for i in data["images"]] == ["chelsea.png"]
    chelsea = next(i["id"] for i in ref["images"] if i["file_name"] == "chelsea.png")
    assert data["annotations"] == [a for a in ref["annotations"] if a["image_id"] == chelsea]
    reasons = {s["file_name"]: s["reason"] for s in result.skipped}
    assert set(reasons) == {"astronaut.jpg", "broken.jpg", "coffee.jpg"}
    assert reasons["coffee.jpg"] == "failed 2 time(s): RuntimeError: injected failure on image 4"
    assert reasons["astronaut.jpg"].startswith("no result from Ray after 2 tries: its worker died")
    assert _logged(log) == [1, 1, 3, 3, 4, 4]  # two tries each
