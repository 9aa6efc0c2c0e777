"""Safe file writing: atomic writes with normal permissions, durable appends, run locks, and the
check that no output overwrites an input.

Every result unsam writes goes through :func:`atomic_write` (temp file + fsync + rename), so a
crash leaves the previous file (or none), never a truncated one. Errors name the file.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_write",
    "atomic_write_text",
    "atomic_write_json",
    "append_line_durable",
    "truncate_partial_line",
    "RunLockedError",
    "run_lock",
    "check_outputs",
    "check_output_file",
]


def _umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:  # pragma: no cover - non-Linux
        pass
    old = os.umask(0o022)  # pragma: no cover - non-Linux
    os.umask(old)  # pragma: no cover
    return old  # pragma: no cover


def _target_mode(path: Path) -> int:
    """Mode a rewritten ``path`` gets: its current mode, else ``0o666 & ~umask`` (as ``open``)."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _named(exc: OSError, path: Path, action: str) -> OSError:
    """``exc`` again, with a one-line message that names ``path`` (ENOSPC says "disk full")."""
    reason = (
        "no space left on the disk" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
    )
    out = OSError(exc.errno, f"{path}: cannot {action} ({reason})")
    out.filename = str(path)
    return out


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    """Write a file through ``write(fh)`` into a temp file beside ``path``, then rename it.

    A crash mid-write leaves the previous file (or none) in place, never a truncated one. The file
    gets the mode an ordinary ``open`` would give it (``0o666 & ~umask``), and a file that is
    overwritten keeps its mode.

    Raises:
        OSError: the message names ``path`` (e.g. "no space left on the disk", a directory).
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, f"{path}: is a folder; give a file name to write")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _named(exc, path, "write") from None
    try:
        os.fchmod(fd, _target_mode(path))
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            raise _named(exc, path, "write") from None
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Atomically write UTF-8 text."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda fh: fh.write(data))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = None) -> Path:
    """Atomically write ``obj`` as JSON (compact unless ``indent`` is given)."""
    separators = (",", ":") if indent is None else None
    return atomic_write_text(path, json.dumps(obj, indent=indent, separators=separators) + "\n")


def append_line_durable(path: str | os.PathLike[str], line: str) -> None:
    """Append one line and fsync, for append-only work files of resumable runs.

    A crash can at worst leave a partial last line; readers of such files must ignore a final
    line that is not valid JSON (see :func:`unsam.io.coco.read_jsonl`).
    """
    if "\n" in line:
        raise ValueError("a work-file line must not contain a newline")
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise _named(exc, Path(path), "append to") from None


def truncate_partial_line(path: str | os.PathLike[str]) -> bool:
    """Cut an append-only work file back to its last complete line (after a crash mid-append).

    Returns True when something was cut. Call before appending to a file a killed run left behind.
    """
    path = Path(path)
    if not path.exists():
        return False
    with open(path, "rb+") as fh:
        data = fh.read()
        if not data or data.endswith(b"\n"):
            return False
        keep = data.rfind(b"\n") + 1
        fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())
    return True


class RunLockedError(RuntimeError):
    """Another process holds the lock of an output (``str`` names the output and the holder)."""

    user_error = True


@contextmanager
def run_lock(output: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold an exclusive lock on ``output`` for the duration of a run.

    The lock is ``OUT.lock`` beside the output, locked with ``flock`` (released by the kernel when
    the process dies, so a killed run never leaves a stale lock) and holding the owner's pid, host
    and start time, which a second run names in its error.

    Raises:
        RunLockedError: another live process holds the lock.
    """
    import fcntl

    output = Path(output)
    lock = output.with_name(output.name + ".lock")
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise _named(exc, lock, "create the lock file") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "another process"
            raise RunLockedError(
                f"{output}: another unsam run is writing this output ({holder}); wait for it to "
                "finish or choose another -o"
            ) from None
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, started {stamp}".encode(), 0)
        try:
            yield lock
        finally:
            try:
                os.unlink(lock)  # still ours: we hold the flock
            except FileNotFoundError:
                pass
    finally:
        os.close(fd)


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output_file(path: str | os.PathLike[str], flag: str) -> Path:
    """Refuse, before any work, an output file that cannot be written: an existing folder, or a
    parent that is a file. Returns the path."""
    p = Path(path)
    if p.is_dir():
        raise IsADirectoryError(
            errno.EISDIR, f"{flag} {p}: is a folder; give a file name, e.g. {p / 'out.json'}"
        )
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(
                    errno.ENOTDIR, f"{flag} {p}: {parent} is a file, not a folder"
                )
            if not os.access(parent, os.W_OK):
                raise PermissionError(
                    errno.EACCES, f"{flag} {p}: cannot write in {parent} (permission denied)"
                )
            break
    return p


def check_outputs(
    outputs: Iterable[tuple[str, str | os.PathLike[str] | None]],
    input_files: Iterable[str | os.PathLike[str]] = (),
    input_dirs: Iterable[str | os.PathLike[str]] = (),
) -> None:
    """Refuse, before any work, outputs that would overwrite an input.

    Args:
        outputs: ``(flag, path)`` pairs (``path`` None = not given), files or folders.
        input_files: files the command reads.
        input_dirs: folders of input images: no output may lie inside one (nor be one).

    Raises:
        ValueError: naming the flag, the output and the input it would overwrite.
    """
    files = {Path(f).resolve(): Path(f) for f in input_files}
    dirs = [(Path(d).resolve(), Path(d)) for d in input_dirs]
    seen: dict[Path, str] = {}
    for flag, out in outputs:
        if out is None:
            continue
        resolved = Path(out).resolve()
        if resolved in files:
            raise ValueError(
                f"{flag} {out}: is an input file ({files[resolved]}); writing it would "
                "destroy the input; choose another path"
            )
        for real, given in dirs:
            if _inside(resolved, real):
                raise ValueError(
                    f"{flag} {out}: lies inside the input image folder {given}; outputs "
                    "there could overwrite images or be read as inputs; choose another path"
                )
        if resolved in seen:
            raise ValueError(
                f"{flag} {out}: is also given as {seen[resolved]}; choose two different paths"
            )
        seen[resolved] = flag
