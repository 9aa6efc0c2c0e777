"""Interactive gradio demo (``unsam demo``): click -> 6 masks, segment everything, COCO JSON
download.

gradio is imported only by :func:`unsam.demo.app.build_demo`; the click and "segment everything"
logic in :mod:`unsam.demo.app` runs without it.
"""

from __future__ import annotations

from unsam.demo.app import (
    DemoBackend,
    build_demo,
    click_overlay,
    everything_overlay,
    launch_demo,
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
