"""What training says while it runs and when it is stopped (issue 16 §4), for ``unsam train`` and
``unsam train-promptable``.

Regressions: Ctrl-C told the user to "rerun the same command", which is refused without
``--resume``; and a run whose output went to a file printed nothing for tens of minutes (the
progress bar only draws on a terminal).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.training.coco_subset import write_coco_subset
from tests.training.synthetic import make_shapes_dataset
from unsam.cli.common import TrainingLog
from unsam.cli.main import interrupted_message, main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "coco"

WHOLE_IMAGE = [
    "--config",
    "tiny",
    "--batch-size",
    "2",
    "--crop-size",
    "64",
    "--no-scale-jitter",
    "--no-progress",
]
PROMPTABLE = [
    "--config",
    "tiny",
    "--batch-size",
    "1",
    "--image-size",
    "64",
    "--num-clicks",
    "4",
    "--num-points",
    "32",
    "--no-progress",
]


def _argv(command: str, root: Path, steps: int) -> list[str]:
    if command == "train":
        ann, images = make_shapes_dataset(root / "data", num_images=3)
        flags = WHOLE_IMAGE
    else:
        ann, images = write_coco_subset(
            EXAMPLES / "instances.json",
            EXAMPLES / "images",
            root / "data",
            num_images=2,
            max_side=64,
            min_masks=1,
            max_masks=20,
            min_area=8,
        )
        flags = PROMPTABLE
    return [
        command,
        "--annotations",
        str(ann),
        "--images",
        str(images),
        "-o",
        str(root / "run"),
        "--max-steps",
        str(steps),
        "--checkpoint-every",
        "1",
        *flags,
    ]


def _interrupt_after_new_checkpoint(run: Path, done: set[str] = frozenset()) -> threading.Thread:
    """Ctrl-C (SIGINT to this process) once the run has a complete checkpoint not in ``done``
    (renamed into place: model and training state written) and its loss plot."""

    def watch() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            ckpts = run / "checkpoints"
            new = [
                p
                for p in (ckpts.iterdir() if ckpts.is_dir() else [])
                if not p.name.startswith(".")
                and p.name not in done
                and (p / "training_state.pt").is_file()
                and (p / "model" / "config.json").is_file()
            ]
            if new and (run / "loss.png").is_file():
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def default_sigint() -> Iterator[None]:
    """SIGINT as a fresh ``unsam`` process has it (Python's handler, which raises
    KeyboardInterrupt), set at the OS level too: a library used by an earlier test of the suite may
    have replaced the process's disposition underneath Python's (the interrupt was then lost and the
    run went on). Restored afterwards."""
    before = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


@pytest.mark.timeout(300)  # a lost interrupt fails here instead of training 100,000 steps
@pytest.mark.parametrize("command", ["train", "train-promptable"])
def test_ctrl_c_prints_the_command_that_resumes(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], default_sigint: None
) -> None:
    import matplotlib.figure  # noqa: F401 - imported before the interrupt: a clean module

    # far more steps than run before the interrupt: on a fast machine 40 steps could all finish
    # before the watcher saw a checkpoint (seen on a quiet CPU), and the run then ended normally
    argv = _argv(command, tmp_path, steps=100_000)
    watcher = _interrupt_after_new_checkpoint(tmp_path / "run")
    assert main(argv) == 130
    watcher.join()
    err = capsys.readouterr().err
    m = re.search(r"continue from the newest with: (unsam .*)$", err, flags=re.M)
    assert m, err
    again = shlex.split(m.group(1))
    assert again == ["unsam", *argv, "--resume"]
    # the printed command is accepted (without --resume the same command is refused) and resumes;
    # stopped again so the test stays short
    assert main(argv) == 2 and "--resume" in capsys.readouterr().err
    done = {p.name for p in (tmp_path / "run" / "checkpoints").iterdir()}
    watcher = _interrupt_after_new_checkpoint(tmp_path / "run", done)
    assert main(again[1:]) == 130
    watcher.join()
    err = capsys.readouterr().err
    assert "continue from the newest with:" in err and "refus" not in err
    assert "--resume --resume" not in err  # already there: not added twice


def test_an_interrupt_inside_a_library_call_is_still_an_interrupt(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C during torch.save surfaces as torch's RuntimeError raised while the interrupt
    unwinds: it gets the interrupt message, not a traceback."""
    import unsam.cli.eval as eval_cli

    def run(args: object) -> int:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos") from None

    monkeypatch.setattr(eval_cli, "run", run)
    assert main(["eval", "--gt", "g.json", "--pred", "p.json"]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_interrupted_message_for_folder_commands() -> None:
    assert interrupted_message("pseudo-label", ["pseudo-label", "imgs", "-o", "o.json"]).endswith(
        "rerun the same command to resume: unsam pseudo-label imgs -o o.json"
    )
    msg = interrupted_message("train", ["train", "-o", "my run", "--resume"])
    assert msg.endswith("unsam train -o 'my run' --resume")  # quoted for the shell


@pytest.mark.parametrize("command", ["train", "train-promptable"])
def test_progress_lines_when_stdout_is_not_a_terminal(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_argv(command, tmp_path, steps=3)) == 0
    out = capsys.readouterr().out
    lines = re.findall(
        rf"^{command}: step (\d+)/3, loss [0-9.]+, [0-9.]+ s/step, ETA \w+$", out, flags=re.M
    )
    assert lines[0] == "1" and lines[-1] == "3", out


@dataclass
class _Step:
    step: int
    max_steps: int
    loss: float
    seconds: float
    lr: float = 1e-4


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_training_log_interval_and_eta() -> None:
    """A line after the first step, then every 50 steps or 30 s, and after the last one; s/step is
    the mean since the last line, the ETA the mean since the start times the steps left."""
    import io

    stream, clock = io.StringIO(), _Clock()
    log = TrainingLog("train", stream, clock=clock)
    for step in range(1, 201):
        clock.now += 0.5  # 0.5 s per step: 50 steps take 25 s, the step rule fires first
        if step == 120:
            clock.now += 40  # one slow step: the 30-s rule fires at once
        log(_Step(step, 200, 1.0 / step, 0.5))
    got = stream.getvalue().splitlines()
    steps = [int(re.search(r"step (\d+)/", ln).group(1)) for ln in got]
    assert steps == [1, 51, 101, 120, 170, 200]
    assert got[0] == "train: step 1/200, loss 1.0000, 0.50 s/step, ETA 1m40s"
    assert got[3].startswith("train: step 120/200, loss 0.0083, 2.61 s/step, ETA ")
    assert got[-1].endswith("ETA 0s")
