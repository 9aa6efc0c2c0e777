"""unsam: Segment Anything without Supervision, in pure PyTorch + transformers, CPU first.

Public API (heavy parts are imported lazily, so ``import unsam`` stays fast):
    MaskRecord, ImageRecord   one class-agnostic mask / one image's masks (unsam.records)
    load_image, list_images   robust image reading (unsam.io)
    evaluate                  class-agnostic COCO AR/AP (unsam.evaluation)
"""

from __future__ import annotations

from typing import Any

from unsam.records import ImageRecord, MaskRecord

__version__ = "0.1.0"

_LAZY = {
    "evaluate": ("unsam.evaluation", "evaluate"),
    "load_image": ("unsam.io.images", "load_image"),
    "list_images": ("unsam.io.images", "list_images"),
    "DivideAndConquer": ("unsam.pipeline", "DivideAndConquer"),
    "WholeImageSegmenter": ("unsam.models.whole_image", "WholeImageSegmenter"),
    "PromptablePredictor": ("unsam.models.promptable.predictor", "PromptablePredictor"),
}

__all__ = ["ImageRecord", "MaskRecord", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'unsam' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public API, lazy names included (so ``dir(unsam)`` and tab completion show it)."""
    return sorted({*globals(), *__all__})
