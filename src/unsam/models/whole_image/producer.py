"""Folder runs of the whole-image segmenter: :class:`SegmenterProducer`, the adapter that
:func:`unsam.runner.run_images` calls (one model load per worker process).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from unsam.config import config_to_dict
from unsam.models.whole_image.loading import resolve_model_folder
from unsam.models.whole_image.segment_config import SegmentConfig
from unsam.models.whole_image.segmenter import WholeImageSegmenter
from unsam.records import MaskRecord

__all__ = [
    "SegmenterProducer",
]


class SegmenterProducer:
    """Adapter for :func:`unsam.runner.run_images`: loads the model once per worker process."""

    def __init__(self, model: str | os.PathLike[str], config: SegmentConfig | None = None) -> None:
        self.model = os.fspath(model)
        self.config = config or SegmentConfig()
        self._segmenter: WholeImageSegmenter | None = None

    def settings(self) -> dict[str, Any]:
        model = self.model
        path = Path(model)
        if path.is_dir():
            try:
                model = str(resolve_model_folder(path).resolve())
            except FileNotFoundError:
                pass
        elif path.is_file():
            model = str(path.resolve())
        return {"producer": "whole-image", "model": model, "segment": config_to_dict(self.config)}

    def setup(self) -> None:
        if self._segmenter is None:
            self._segmenter = WholeImageSegmenter.from_pretrained(self.model, config=self.config)

    def __call__(self, image: npt.NDArray[np.uint8], *, image_id: int) -> list[MaskRecord]:
        self.setup()
        return self._segmenter(image, image_id=image_id)  # type: ignore[misc]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_segmenter"] = None  # workers load their own copy
        return state
