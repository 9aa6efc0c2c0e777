"""Run one ``unsam`` command in this process and print its peak memory as JSON (for the memory
tests).

Usage: python -m tests.memory.probe IMAGE_H IMAGE_W OUT_DIR -- unsam-args...
The image is synthetic (smooth colour regions + noise); ``{image}`` in the args is replaced by its
path. ``base`` is the RSS once the imports (torch, transformers, unsam) and the image are in
memory, ``peak`` the peak RSS of the command after that; the test compares ``peak - base`` with the
documented formula. Both come from /proc/self/status (``VmRSS``, ``VmHWM``), and the peak is reset
to the base (``/proc/self/clear_refs``) just before the command, so neither the RSS the parent had
when it started this process nor the making of the synthetic photo counts.
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import peak_rss_bytes


def _rss_bytes() -> int:
    """Current resident memory (VmRSS), bytes."""
    with open("/proc/self/status", encoding="ascii") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def _reset_peak() -> None:
    """Set the peak (VmHWM) to the current RSS (Linux >= 4.0; where it is refused, the peak keeps
    the making of the photo, which can only make the measured growth smaller)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError as exc:
        print(f"probe: could not reset the peak RSS: {exc}", file=sys.stderr)


def main() -> None:
    # a runaway allocation raises MemoryError here instead of taking the whole machine down
    limit = 8 << 30
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    h, w, out_dir = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    args = sys.argv[sys.argv.index("--") + 1 :]
    out_dir.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = (xx * 255 // max(w - 1, 1)).astype(np.uint8)
    img[..., 1] = np.where((yy // (h // 4 + 1) + xx // (w // 5 + 1)) % 2 == 0, 200, 40)
    img[..., 2] = ((xx + yy) % 97 + 80).astype(np.uint8)
    path = out_dir / "images" / "big.png"
    path.parent.mkdir(exist_ok=True)
    Image.fromarray(img).save(path, compress_level=1)
    del img, yy, xx
    import torch  # noqa: F401 - counted in the base
    import transformers  # noqa: F401

    import unsam.pipeline  # noqa: F401
    from unsam.cli.main import main as unsam_main
    from unsam.io.images import load_image

    load_image(path)  # the image itself: part of the base, as every command holds it
    _reset_peak()
    base = _rss_bytes()
    code = unsam_main(
        [a.replace("{image}", str(path)).replace("{dir}", str(path.parent)) for a in args]
    )
    print(json.dumps({"code": code, "base": base, "peak": peak_rss_bytes(), "h": h, "w": w}))


if __name__ == "__main__":
    main()
