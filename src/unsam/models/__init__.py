"""Trained models: the whole-image Mask2Former (:mod:`unsam.models.whole_image`)."""

from __future__ import annotations
