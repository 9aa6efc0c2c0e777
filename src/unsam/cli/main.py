"""The ``unsam`` command. Subcommands are imported only when run, so ``unsam eval`` never pays for
torch/transformers start-up.

Each subcommand module defines ``add_arguments(parser)`` and ``run(args) -> int``.
User errors (bad files, bad options, missing weights: ``ValueError``, ``OSError``, ``ImportError``
and exceptions marked ``user_error = True``) end with one line on stderr and exit code 2;
``--debug`` shows the traceback instead. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import shlex
import sys

__all__ = ["main", "SUBCOMMANDS", "interrupted_message"]

#: name -> (module, one-line help). The order is the pipeline's.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "baseline": (
        "unsam.cli.baseline",
        "weight-free classical masks (felzenszwalb / slic) for a folder of images",
    ),
    "dico": ("unsam.cli.dico", "divide-and-conquer masks for one image, with an overlay PNG"),
    "pseudo-label": (
        "unsam.cli.pseudo_label",
        "divide-and-conquer pseudo-labels for a folder (resumable)",
    ),
    "train": ("unsam.cli.train", "train the whole-image Mask2Former on pseudo-labels (resumable)"),
    "train-promptable": (
        "unsam.cli.train_promptable",
        "train the promptable (click) model on pseudo-labels (resumable)",
    ),
    "segment": ("unsam.cli.segment", "run a trained whole-image model on images"),
    "self-train": (
        "unsam.cli.self_train",
        "add a trained model's confident masks to the pseudo-labels",
    ),
    "merge-gt": (
        "unsam.cli.merge_gt",
        "UnSAM+: ground truth plus pseudo-masks that overlap no GT mask",
    ),
    "convert-checkpoint": (
        "unsam.cli.convert_checkpoint",
        "convert an official UnSAM .pth to a transformers folder",
    ),
    "prompt": ("unsam.cli.prompt", "promptable model: 6 granularity masks per click on one image"),
    "eval": ("unsam.cli.eval", "class-agnostic COCO AR/AP of predictions against ground truth"),
    "datasets": (
        "unsam.cli.datasets",
        "convert the paper's 7 evaluation datasets to class-agnostic COCO JSON",
    ),
    "eval-suite": (
        "unsam.cli.eval_suite",
        "AR@1000 on the paper's 7 datasets, in the paper's table layout",
    ),
    "eval-points": (
        "unsam.cli.eval_points",
        "1-click interactive mIoU / NoC of a promptable model",
    ),
    "demo": (
        "unsam.cli.demo",
        "interactive web demo: click -> 6 masks, segment everything (gradio)",
    ),
}

logger = logging.getLogger("unsam")


def _available() -> dict[str, tuple[str, str]]:
    out = {}
    for name, (module, help_text) in SUBCOMMANDS.items():
        if importlib.util.find_spec(module) is not None:
            out[name] = (module, help_text)
    return out


def build_parser(
    commands: dict[str, tuple[str, str]], selected: str | None
) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unsam",
        description="UnSAM: segment anything without supervision (pure PyTorch, CPU first).",
    )
    _add_global_flags(parser, default=True)
    parser.add_argument("--version", action="version", version=f"unsam {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in commands.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        _add_global_flags(p, default=False)  # -v / --debug also after the command name
        if name == selected:
            importlib.import_module(module).add_arguments(p)
    return parser


def _version() -> str:
    from unsam import __version__

    return __version__


def _add_global_flags(parser: argparse.ArgumentParser, *, default: bool) -> None:
    g = parser.add_argument_group("output") if not default else parser
    g.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0 if default else argparse.SUPPRESS,
        help="more log output (-vv: debug)",
    )
    g.add_argument(
        "--debug",
        action="store_true",
        default=False if default else argparse.SUPPRESS,
        help="show tracebacks instead of one-line errors",
    )


def is_user_error(exc: BaseException) -> bool:
    """Errors the user can fix (bad input, missing weights, a busy output): one line, exit 2."""
    return isinstance(exc, (ValueError, OSError, ImportError)) or bool(
        getattr(exc, "user_error", False)
    )


def _configure_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if verbose < 2:
        for noisy in ("transformers", "huggingface_hub", "urllib3", "PIL"):
            logging.getLogger(noisy).setLevel(logging.ERROR)


#: Commands whose rerun must say ``--resume`` (a folder run resumes by itself).
TRAINING_COMMANDS = ("train", "train-promptable")


def interrupted_message(command: str, argv: list[str]) -> str:
    """What Ctrl-C prints: how to continue. A training run continues only with ``--resume``, so
    the exact command is spelled out (``argv`` with ``--resume`` added); a folder run continues
    when the same command is run again."""
    if command in TRAINING_COMMANDS:
        again = argv if "--resume" in argv else [*argv, "--resume"]
        return (
            f"unsam {command}: interrupted; the checkpoints written so far are kept; continue "
            f"from the newest with: {shlex.join(['unsam', *again])}"
        )
    return (
        f"unsam {command}: interrupted; finished work is kept, rerun the same command to resume: "
        f"{shlex.join(['unsam', *argv])}"
    )


def _interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` was raised while handling a Ctrl-C (its cause / context chain holds a
    KeyboardInterrupt), e.g. torch's writer failing as the interrupt unwound it."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, KeyboardInterrupt):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = _available()
    selected = next((a for a in argv if a in commands), None)
    parser = build_parser(commands, selected)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    _configure_logging(args.verbose)
    module = importlib.import_module(commands[args.command][0])
    debug = args.debug or os.environ.get("UNSAM_DEBUG") == "1"
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print(interrupted_message(args.command, argv), file=sys.stderr)
        return 130
    except Exception as exc:
        if _interrupted(exc) and not debug:  # Ctrl-C inside e.g. torch.save, re-raised as another
            print(interrupted_message(args.command, argv), file=sys.stderr)
            return 130
        if debug or not is_user_error(exc):
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"unsam {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
