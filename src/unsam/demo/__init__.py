"""Interactive gradio demo (``unsam demo``): click -> 6 masks, segment everything, COCO JSON
download.

Two modules: :mod:`unsam.demo.backend` holds the click and "segment everything" logic and the
per-session state, and runs without gradio; :mod:`unsam.demo.app` holds the page layout
(:func:`build_demo`, the only place gradio is imported) and :func:`launch_demo`.
"""

from __future__ import annotations

from unsam.demo.app import build_demo, launch_demo
from unsam.demo.backend import (
    DemoBackend,
    click_overlay,
    everything_overlay,
    masks_at_point,
)

__all__ = [
    "DemoBackend",
    "build_demo",
    "click_overlay",
    "everything_overlay",
    "launch_demo",
    "masks_at_point",
]
