"""Evaluation: class-agnostic COCO AR/AP (spec §8.1)."""

from unsam.evaluation.ar import METRIC_KEYS, evaluate, format_metrics

__all__ = ["METRIC_KEYS", "evaluate", "format_metrics"]
