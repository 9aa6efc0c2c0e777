"""Pieces shared by the CLI subcommands: image listing, progress bars, run summaries."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from unsam.io.files import check_output_file, check_outputs
from unsam.io.images import ImageListing, list_image_inputs

__all__ = [
    "add_run_arguments",
    "list_inputs",
    "check_run_outputs",
    "run_outputs",
    "overlay_names",
    "tqdm_progress",
    "print_run_summary",
    "amg_notes",
    "write_overlays",
    "TrainingLog",
    "run_folder",
    "run_training",
    "add_training_arguments",
    "config_values",
    "prepare_folder_run",
]

logger = logging.getLogger(__name__)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of every folder-processing command (resumable runs, unsam.runner)."""
    g = parser.add_argument_group("run")
    g.add_argument(
        "--image-ids-from",
        metavar="GT.json",
        help="reuse image ids of this COCO JSON (matched by file name)",
    )
    g.add_argument(
        "--shard", metavar="I/N", help="process only images I, I+N, I+2N, ... of the sorted listing"
    )
    g.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes sharing the machine's cores (default: 1)",
    )
    g.add_argument("--recursive", action="store_true", help="also take images from sub-folders")
    g.add_argument("--overlay-dir", metavar="DIR", help="also write one overlay PNG per image here")
    add_overlay_arguments(g)
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument(
        "--format",
        dest="output_format",
        default="coco-dataset",
        choices=["coco-dataset", "coco-results", "sam-folder"],
        help="-o as a COCO dataset JSON (default; resumable from the file itself), a COCO "
        "results list (what COCO.loadRes reads) or a folder of SA-1B-style per-image JSONs",
    )
    g.add_argument(
        "--binary-masks",
        metavar="DIR",
        help="also write every mask as a 0/255 PNG under DIR/<image>/",
    )
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="start over when -o (or its unfinished work file) was written with other settings",
    )
    g.add_argument(
        "--drop-removed",
        action="store_true",
        help="on a rerun, leave out the finished images that are no longer in the input "
        "(default: keep their masks, with a warning naming them)",
    )
    from unsam.engines import add_engine_arguments

    add_engine_arguments(parser)


def add_overlay_arguments(group: Any, min_score: float = 0.0) -> None:
    """``--overlay-top-k`` / ``--overlay-min-score``: what overlays draw (the JSON keeps every
    mask). The help shows the parser's default, so a command's ``set_defaults`` shows too."""
    from unsam.io.overlay import OVERLAY_TOP_K

    group.add_argument(
        "--overlay-top-k",
        type=int,
        default=OVERLAY_TOP_K,
        metavar="K",
        help="overlays draw the K best-scoring masks (default: %(default)s; 0: none); "
        "the JSON keeps every mask",
    )
    group.add_argument(
        "--overlay-min-score",
        type=float,
        default=min_score,
        metavar="S",
        help="overlays draw only masks scoring at least S (default: %(default)s)",
    )


def list_inputs(paths: str | Sequence[str], *, recursive: bool = False) -> ImageListing:
    """List the images of folders, files, list files and/or glob patterns (one listing for every
    command, see :mod:`unsam.engines.inputs`); a clear error when there are none. Non-image files
    are reported once, on stderr."""
    from unsam.engines.inputs import expand_image_inputs

    inputs = [paths] if isinstance(paths, str) else list(paths)
    listing = list_image_inputs(expand_image_inputs(inputs), recursive=recursive)
    label = inputs[0] if len(inputs) == 1 else str(listing.root)
    if listing.skipped:
        print(
            f"{label}: skipping {len(listing.skipped)} non-image file(s): "
            + ", ".join(p.name for p in listing.skipped[:5])
            + (" ..." if len(listing.skipped) > 5 else ""),
            file=sys.stderr,
        )
    if not listing.images:
        raise FileNotFoundError(
            f"{label}: no image files found (extensions: .jpg .jpeg .png .bmp .tif .tiff .webp ...)"
        )
    return listing


def run_outputs(args: argparse.Namespace) -> list[tuple[str, str | None]]:
    """The ``(flag, path)`` outputs of a folder command (``-o`` first)."""
    return [
        ("-o", args.output),
        ("--overlay-dir", args.overlay_dir),
        ("--binary-masks", args.binary_masks),
    ]


def check_run_outputs(
    inputs: str | Sequence[str],
    listing: ImageListing,
    outputs: Sequence[tuple[str, str | None]],
    extra_inputs: Sequence[str | Path] = (),
) -> None:
    """Before any work: refuse outputs that are folders, or that would overwrite an input file or
    lie inside an input image folder (``outputs`` = ``(flag, path)``; the first is the -o file)."""
    if outputs and outputs[0][1] is not None and not Path(outputs[0][1]).is_dir():
        check_output_file(
            outputs[0][1], outputs[0][0]
        )  # a folder -o is judged by the runner (--format)
    given = [inputs] if isinstance(inputs, str) else list(inputs)
    check_outputs(
        outputs,
        input_files=[*listing.images, *extra_inputs],
        input_dirs=[p for p in given if Path(p).is_dir()],
    )


def overlay_names(file_names: Sequence[str]) -> dict[str, str]:
    """Overlay PNG name of each image: its path with "/" as "__" and ".png" for its extension, or
    with the extension kept (``a.jpg.png``) where two images would share a name."""
    from unsam.io.export import distinct_stems

    return {n: stem + ".png" for n, stem in distinct_stems(file_names).items()}


def tqdm_progress(
    desc: str, disable: bool = False
) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """A ``progress(done, total)`` callback drawing a tqdm bar, and a ``close()``."""
    from tqdm import tqdm

    bar: dict[str, Any] = {}

    def progress(done: int, total: int) -> None:
        if "bar" not in bar:
            bar["bar"] = tqdm(
                total=total,
                initial=done,
                desc=desc,
                unit="img",
                disable=disable or None,
                dynamic_ncols=True,
            )
        else:
            bar["bar"].update(done - bar["bar"].n)

    def close() -> None:
        if "bar" in bar:
            bar["bar"].close()

    return progress, close


def print_run_summary(result: Any) -> None:
    import statistics

    secs = result.seconds_per_image
    timing = f", {statistics.median(secs):.2f} s/image (median)" if secs else ""
    print(
        f"wrote {result.output}: {result.images_total - len(result.skipped)} images, "
        f"{result.masks} masks ({result.images_done_now} processed now, {result.images_resumed} "
        f"resumed){timing}"
    )
    for s in result.skipped:
        print(f"skipped {s['file_name']}: {s['reason']}", file=sys.stderr)
    gone = getattr(result, "removed", [])
    if gone:
        names = ", ".join(gone[:5]) + (f" (+{len(gone) - 5} more)" if len(gone) > 5 else "")
        if result.removed_policy == "keep":
            print(
                f"warning: {len(gone)} finished image(s) are no longer in the input: {names}; "
                "their masks are kept in the output (rerun with --drop-removed to leave them out)",
                file=sys.stderr,
            )
        else:
            print(
                f"note: dropped the masks of {len(gone)} image(s) no longer in the input: {names}",
                file=sys.stderr,
            )
    stats = result.stats
    notes = []
    if stats.get("refine_rejected"):
        notes.append(
            f"refinement rejected {stats['refine_rejected']} mask(s) (area > refine max, or IoU "
            "with the raw mask below the threshold)"
        )
    if stats.get("orphans_dropped"):
        notes.append(f"{stats['orphans_dropped']} part(s) dropped with their rejected object mask")
    if stats.get("capped"):
        notes.append(
            f"masks capped at --max-masks on {stats['capped']} image(s) (the best-scoring kept)"
        )
    settings = (result.dataset or {}).get("info", {}).get("settings", {})
    for warning in settings.get("warnings", []):
        notes.append(f"warning: {warning}")
    if stats.get("amg_candidates"):
        notes.extend(amg_notes(stats, settings.get("amg") or {}, result.masks))
    for note in notes:
        print(f"note: {note}" if not note.startswith("warning:") else note, file=sys.stderr)
    if result.exit_code:
        print(
            f"error: none of the {result.images_total} image(s) could be read (listed above)",
            file=sys.stderr,
        )


def amg_notes(stats: dict[str, int], amg: dict[str, Any], masks: int) -> list[str]:
    """Run-summary lines of the promptable AMG (``segment --model promptable:PATH``): candidates,
    what each filter dropped (with its flag), and a warning naming the flags to loosen when no mask
    survived. ``amg`` holds the run's AMGConfig values."""

    def value(key: str) -> str:
        return f" {amg[key]}" if key in amg else ""

    n = stats.get("amg_candidates", 0)
    iou = stats.get("amg_pred_iou_dropped", 0)
    stab = stats.get("amg_stability_dropped", 0)
    nms = stats.get("amg_nms_dropped", 0)
    clean = stats.get("amg_cleanup_nms_dropped", 0)
    lines = [
        f"promptable AMG: {n} candidate masks (grid points x tokens): {iou} dropped by predicted "
        f"IoU <={value('pred_iou_thresh')} (--amg-pred-iou-thresh), {stab} by stability "
        f"<{value('stability_score_thresh')} (--amg-stability-score-thresh), {nms} by box NMS "
        f"(--amg-box-nms-thresh), {clean} by the NMS after small-region cleanup "
        f"(--amg-min-mask-region-area); {masks} kept"
    ]
    if masks == 0:
        if iou >= n:
            why = (
                f"every candidate's predicted IoU was <={value('pred_iou_thresh')}: lower "
                "--amg-pred-iou-thresh (the original automatic demo uses 0.7; a briefly trained "
                "model predicts low IoUs, so try 0 or a negative value)"
            )
        else:
            why = (
                f"{iou} of {n} failed --amg-pred-iou-thresh{value('pred_iou_thresh')} and {stab} "
                f"--amg-stability-score-thresh{value('stability_score_thresh')}: lower them (the "
                "original automatic demo uses 0.7 and 0.7)"
            )
        lines.append(f"warning: the promptable AMG kept no mask: {why}")
    return lines


def write_overlays(
    dataset: dict[str, Any],
    root: Path,
    overlay_dir: str,
    min_score: float = 0.0,
    top_k: int | None = None,
) -> int:
    """Write one overlay PNG per image of a finished run (its COCO dataset dict), drawing its
    ``top_k`` best masks among those scoring >= ``min_score``."""
    from unsam.io.coco import parse_coco_dataset
    from unsam.io.images import load_image
    from unsam.io.overlay import write_overlay

    out = Path(overlay_dir)
    n = 0
    records = parse_coco_dataset(dataset, "run output")
    names = overlay_names([rec.file_name or str(rec.id) for rec in records])
    for rec in records:
        target = out / names[rec.file_name or str(rec.id)]
        write_overlay(
            target,
            load_image(root / (rec.file_name or "")),
            rec.masks,
            top_k=top_k,
            min_score=min_score,
        )
        n += 1
    return n


def run_folder(
    producer: Any,
    images: Sequence[Path],
    root: Path,
    args: argparse.Namespace,
    *,
    desc: str,
    info: dict[str, Any] | None = None,
) -> int:
    """The body of every folder command: ids, shard, progress bar, resumable run, summary, overlays.

    ``args`` carries the flags of :func:`add_run_arguments` plus ``output``. Returns the exit code:
    1 when no image could be read, else 0.
    """
    from unsam.engines import engine_from_args
    from unsam.runner import assign_image_ids, id_rule, parse_shard, run_images

    engine = engine_from_args(args)  # a missing Ray or a bad engine flag fails before any work
    shard = parse_shard(args.shard)
    ids = assign_image_ids([p.relative_to(root).as_posix() for p in images], args.image_ids_from)
    progress, close = tqdm_progress(desc, disable=args.no_progress)
    try:
        result = run_images(
            producer,
            images,
            root,
            args.output,
            image_ids=ids,
            ids_rule=id_rule(args.image_ids_from),
            shard=shard,
            workers=args.workers,
            progress=progress,
            info=info,
            overwrite=args.overwrite,
            output_format=args.output_format,
            engine=engine,
            removed="drop" if getattr(args, "drop_removed", False) else "keep",
        )
    finally:
        close()
    print_run_summary(result)
    if args.binary_masks:
        from unsam.io.export import write_binary_masks

        n = write_binary_masks(result.dataset, args.binary_masks)
        print(f"wrote {n} mask PNG(s) to {args.binary_masks}")
    if args.overlay_dir:
        n = write_overlays(
            result.dataset, root, args.overlay_dir, args.overlay_min_score, args.overlay_top_k
        )
        extra = f", scoring >= {args.overlay_min_score}" if args.overlay_min_score > 0 else ""
        print(
            f"wrote {n} overlay PNG(s) to {args.overlay_dir} (the {args.overlay_top_k} best "
            f"masks{extra})"
        )
    return result.exit_code


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class TrainingLog:
    """Plain progress lines for a training run whose output goes to a file or a pipe (no
    progress bar can be seen there): ``"<desc>: step 120/300, loss 3.4512, 1.02 s/step, ETA
    3m04s"`` after the first step, then every ``every_steps`` steps or ``every_seconds`` seconds,
    whichever comes first, and after the last step. s/step is the mean since the previous line;
    the ETA uses the mean since the run (or the resume) started.

    Args:
        desc: the command, first word of each line.
        stream: where the lines go (flushed after each line).
        every_steps, every_seconds: the line interval.
        clock: seconds, monotonic (tests pass a fake one).
    """

    def __init__(
        self,
        desc: str,
        stream: Any,
        *,
        every_steps: int = 50,
        every_seconds: float = 30.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        import time

        self.desc = desc
        self.stream = stream
        self.every_steps = every_steps
        self.every_seconds = every_seconds
        self.clock = clock or time.monotonic
        self._start: tuple[int, float] | None = None  # (step before the first logged, time)
        self._last: tuple[int, float] | None = None  # (step, time) of the last line

    def __call__(self, log: Any) -> None:
        now = self.clock()
        if self._start is None:
            # the first step's own time counts from when it started
            self._start = (log.step - 1, now - float(log.seconds))
            self._last = self._start
        last_step, last_time = self._last  # type: ignore[misc]
        due = (
            log.step - last_step >= self.every_steps
            or now - last_time >= self.every_seconds
            or log.step >= log.max_steps
            or last_step == self._start[0]  # the first step: a line at once
        )
        if not due:
            return
        per_step = (now - last_time) / max(1, log.step - last_step)
        mean = (now - self._start[1]) / max(1, log.step - self._start[0])
        eta = _duration(mean * max(0, log.max_steps - log.step))
        print(
            f"{self.desc}: step {log.step}/{log.max_steps}, loss {log.loss:.4f}, "
            f"{per_step:.2f} s/step, ETA {eta}",
            file=self.stream,
            flush=True,
        )
        self._last = (log.step, now)


def run_training(
    train_fn: Callable[..., Any],
    desc: str,
    args: argparse.Namespace,
    config_cls: type,
    *,
    load: Callable[[Any], tuple[Any, dict[str, Any]]],
    new: Callable[[dict[str, Any]], Any],
) -> int:
    """The body of ``unsam train`` / ``train-promptable``: the run's settings and data
    (:func:`unsam.training.engine.resolve_training_run` with the trainer's ``load`` and ``new``),
    a per-step progress bar on rank 0 (on a terminal), plain progress lines on stdout when it is
    not a terminal (a log file, a pipe: see :class:`TrainingLog`), ``train_fn(config,
    annotations, images, output, resume=, skip_bad_images=, on_step=)``, then the one-line
    result."""
    import os

    from tqdm import tqdm

    from unsam.training.engine import resolve_training_run

    config, annotations, images = resolve_training_run(
        args.output,
        config_values(args, config_cls),
        args.annotations,
        args.images,
        resume=args.resume,
        load=load,
        new=new,
    )
    params = (config, annotations, images, args.output)

    is_main = int(os.environ.get("RANK", "0")) == 0
    bar: dict[str, Any] = {}
    lines = None if sys.stdout.isatty() else TrainingLog(desc, sys.stdout)

    def on_step(log: Any) -> None:
        if lines is not None:
            lines(log)
        if "bar" not in bar:
            bar["bar"] = tqdm(
                total=log.max_steps,
                initial=log.step - 1,
                desc=desc,
                unit="step",
                disable=True if args.no_progress else None,
                dynamic_ncols=True,
            )
        b = bar["bar"]
        b.set_postfix(
            loss=f"{log.loss:.3f}", lr=f"{log.lr:.2e}", s_step=f"{log.seconds:.2f}", refresh=False
        )
        b.update(1)

    try:
        result = train_fn(
            *params,
            resume=args.resume,
            skip_bad_images=args.skip_bad_images,
            on_step=on_step if is_main else None,
        )
    finally:
        if "bar" in bar:
            bar["bar"].close()
    if is_main:
        loss = f", last loss {result.final_loss:.4f}" if result.final_loss is not None else ""
        print(
            f"trained {result.steps} steps (from step {result.start_step}){loss}; model: "
            f"{result.model_dir}; loss curve: {Path(params[3]) / 'loss.png'}"
        )
    return 0


def add_training_arguments(
    parser: argparse.ArgumentParser,
    config_cls: type,
    config_defaults: dict[str, dict[str, Any]] | None = None,
) -> None:
    """Flags of ``unsam train`` / ``train-promptable``: data, run folder, resume, and one flag per
    field of the training config ``config_cls``; ``config_defaults`` (model config -> the training
    defaults it overrides) puts each model config's default in the help."""
    from unsam.cli.args import add_config_arguments

    g = parser.add_argument_group("data and run")
    g.add_argument(
        "--annotations", metavar="PSEUDO.json", help="COCO dataset JSON with the training masks"
    )
    g.add_argument(
        "--images", metavar="DIR", help="folder the JSON's file_name values are relative to"
    )
    g.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="RUN_DIR",
        help="run folder (checkpoints, loss curve, model)",
    )
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in RUN_DIR from its newest checkpoint",
    )
    g.add_argument(
        "--skip-bad-images",
        action="store_true",
        help=(
            "skip missing or mis-sized images (listed in RUN_DIR/skipped_images.txt) instead of "
            "stopping"
        ),
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    from unsam.runtime import add_device_arguments

    t = parser.add_argument_group("training settings (defaults per --config where they differ)")
    add_device_arguments(t, training=True)
    t.add_argument(  # the flag of runs before --dtype, kept for old command lines
        "--bf16",
        dest="dtype",
        action="store_const",
        const="bfloat16",
        default=argparse.SUPPRESS,
        help=argparse.SUPPRESS,
    )
    add_config_arguments(t, config_cls, skip=("device", "dtype"), config_defaults=config_defaults)


def config_values(args: argparse.Namespace, config_cls: type) -> dict[str, Any]:
    """The fields of ``config_cls`` the user set on the command line."""
    import dataclasses

    return {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(config_cls)
        if hasattr(args, f.name)
    }


def prepare_folder_run(args: argparse.Namespace) -> ImageListing:
    """What every folder command checks before loading a model: the shard flag, the image
    listing, and outputs that would overwrite an input (``-o``, ``--overlay-dir``,
    ``--binary-masks`` against the images and ``--image-ids-from``)."""
    from unsam.runner import parse_shard

    parse_shard(args.shard)
    listing = list_inputs(args.images, recursive=args.recursive)
    check_run_outputs(
        args.images,
        listing,
        run_outputs(args),
        extra_inputs=[args.image_ids_from] if args.image_ids_from else [],
    )
    return listing
