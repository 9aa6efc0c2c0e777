"""Folder runs of the whole-image segmenter: :class:`SegmenterProducer`, the adapter that
:func:`unsam.runner.run_images` calls (one model load per worker process).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from unsam.config import config_to_dict
from unsam.models.whole_image.loading import resolve_model_folder
from unsam.models.whole_image.segment_config import SegmentConfig
from unsam.models.whole_image.segmenter import PendingMasks, WholeImageSegmenter
from unsam.records import MaskRecord

__all__ = [
    "SegmenterProducer",
]


class SegmenterProducer:
    """Adapter for :func:`unsam.runner.run_images`: loads the model once per worker process.

    On a GPU it also has the runner's device/host split: :meth:`start` queues one image's network
    and post-processing on the device and returns the finisher that copies and RLE-encodes its
    masks on the CPU; :attr:`overlaps` is then true, so the runner encodes each image on a
    background thread while the next image's device work runs.
    """

    def __init__(self, model: str | os.PathLike[str], config: SegmentConfig | None = None) -> None:
        self.model = os.fspath(model)
        self.config = config or SegmentConfig()
        self._segmenter: WholeImageSegmenter | None = None

    def settings(self) -> dict[str, Any]:
        """What the run's outputs depend on (a resume with other settings is refused): the model
        and the segment settings, ``dtype`` included; not ``device`` (where the model runs: a run
        started on the CPU may be resumed on a GPU)."""
        model = self.model
        path = Path(model)
        if path.is_dir():
            try:
                model = str(resolve_model_folder(path).resolve())
            except FileNotFoundError:
                pass
        elif path.is_file():
            model = str(path.resolve())
        segment = config_to_dict(self.config)
        segment.pop("device", None)
        return {"producer": "whole-image", "model": model, "segment": segment}

    def setup(self) -> None:
        if self._segmenter is None:
            self._segmenter = WholeImageSegmenter.from_pretrained(self.model, config=self.config)

    def __call__(self, image: npt.NDArray[np.uint8], *, image_id: int) -> list[MaskRecord]:
        return self.predict_masks(image, image_id=image_id).to_records()

    @property
    def overlaps(self) -> bool:
        """Whether the runner should overlap :meth:`start`'s finishers with the next image: on a
        GPU (device post-processing), not on the CPU, where both parts would share the cores."""
        return self._segmenter is not None and self._segmenter.device_postprocessing

    def start(
        self, image: npt.NDArray[np.uint8], *, image_id: int
    ) -> Callable[[], tuple[list[MaskRecord], dict[str, int]]]:
        """Launch one image's device part; the returned finisher runs the host part and returns
        ``(records, stats)`` (:class:`unsam.runner.MaskProducer`)."""
        pending = self.predict_masks(image, image_id=image_id)

        def finish() -> tuple[list[MaskRecord], dict[str, int]]:
            return pending.to_records(), {}

        return finish

    def predict_masks(self, image: npt.NDArray[np.uint8], *, image_id: int) -> PendingMasks:
        """The device part of one image (:meth:`WholeImageSegmenter.predict_masks`); its
        ``to_records()`` is the host part (RLE encoding), which a runner may overlap with the
        next image's device part."""
        self.setup()
        assert self._segmenter is not None
        return self._segmenter.predict_masks(image, image_id=image_id)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_segmenter"] = None  # workers load their own copy
        return state
