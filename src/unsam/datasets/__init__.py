"""Evaluation datasets: converters from the seven benchmarks' native formats to class-agnostic
COCO ground truth (spec §8.1; see :mod:`unsam.datasets.convert` for the rules)."""

from unsam.datasets.convert import (
    CONVERSION_RULES,
    CONVERTERS,
    DATASET_NAMES,
    convert_ade20k,
    convert_coco,
    convert_dataset,
    convert_entityseg,
    convert_lvis,
    convert_paco,
    convert_partimagenet,
    convert_sa1b,
)

__all__ = [
    "CONVERSION_RULES",
    "CONVERTERS",
    "DATASET_NAMES",
    "convert_ade20k",
    "convert_coco",
    "convert_dataset",
    "convert_entityseg",
    "convert_lvis",
    "convert_paco",
    "convert_partimagenet",
    "convert_sa1b",
]
