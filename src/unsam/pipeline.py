"""Divide-and-conquer pseudo-labelling (spec §2-§5): the one place that chains the stages.

    divide  (MaskCut on DINO keys, or a trained unsam whole-image model's confident masks)
      → conquer (bottom-up merging inside each divide region, 6 levels)
      → refine (optional DenseCRF, spec §4.2, or CascadePSP, spec §4.1)
      → MaskRecords with level / parent_id / theta / source / refined.

Presets. With DINO features every default is the spec's. The weight-free ``classic`` features
behave differently (adjacent-patch cosines have a median near 0.9 instead of DINO keys' much lower
values, so the spec's thetas 0.6 … 0.1 merge everything at once, and colour/texture are far weaker
cues for objects), so ``preset="auto"`` (the default) switches to :data:`CLASSIC_PRESET` when the
features are ``classic``: the whole image is one more divide region; conquer merges Felzenszwalb
superpixels at 4 scales (pixel-accurate boundaries; each superpixel's feature is its pooled patch
features plus its own mean colour, see :mod:`unsam.conquer.superpixels`) over 16 dense thresholds,
ranking coarser superpixel scales first; at most the 1000 best-ranked masks are kept (AR@1000
keeps no more); MaskCut skips its CRF. On the 144 COCO val2017 images of the shared data this
gives AR@1000 0.201 against 0.153 for the multi-scale Felzenszwalb baseline (spec preset: 0.035).
A preset only sets defaults: settings given explicitly keep their value, even one equal to the
spec default (the CLI records the flags given in ``PipelineConfig.explicit``; in Python, keyword
overrides of :class:`DivideAndConquer` count as given, and a setting of a nested config counts
when it differs from the spec default or is named in ``explicit``). ``preset="spec"`` turns the
preset off, ``"classic"`` forces it. ``preset="released"``
applies :data:`RELEASED_PRESET`, the released UnSAM code's settings (CutLER divide, BGR input to
DINO and CascadePSP, its tiny-crop mask rule); the bugs of spec §10 stay fixed.

Example:
    >>> dico = unsam.DivideAndConquer(features="facebook/dino-vitb8")   # doctest: +SKIP
    >>> records = dico(unsam.load_image("photo.jpg"))                    # doctest: +SKIP

Length: the one place that chains the stages, with its config and presets; :class:`DivideAndConquer`
alone is about 290 lines of stage wiring, and the presets it applies are documented here beside it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from unsam.config import config_to_dict, param
from unsam.conquer.filter import paste_mask
from unsam.conquer.region import ConquerConfig, conquer
from unsam.divide.maskcut import MaskCutConfig, maskcut
from unsam.features.base import FeatureConfig
from unsam.records import MaskRecord, annotation_id, decode_rle, encode_mask, encode_masks
from unsam.refine.crf import RefineConfig, refine_masks
from unsam.runtime import resolve_device, resolve_dtype

__all__ = [
    "CLASSIC_PRESET",
    "RELEASED_PRESET",
    "config_with_overrides",
    "DicoProducer",
    "DivideAndConquer",
    "PipelineConfig",
    "conquer_score",
    "memory_bound_bytes",
    "resolve_preset",
    "runtime_warnings",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineConfig:
    """Settings of the whole divide-and-conquer pipeline; stage settings are nested configs."""

    features: str = param(
        "facebook/dino-vitb8",
        "patch features: a DINO hub id (facebook/dino-vits8|vits16|vitb8|vitb16), a local HF "
        "folder, an official "
        "DINO .pth, or 'classic' (weight-free, lower quality)",
    )
    divide: str = param(
        "maskcut",
        "divide stage: 'maskcut' (training-free, spec §2.2), 'model:RUN_DIR' (a trained unsam "
        "whole-image model), or 'cutler:PATH' (CutLER's Cascade Mask R-CNN with "
        "cutler_cascade_final.pth, as the released UnSAM code; 'cutler' alone reads PATH from "
        "$UNSAM_CUTLER_WEIGHTS)",
    )
    divide_score_thresh: float = param(
        0.1,
        "with divide=model:.../cutler, keep masks scoring above this (the original's detector "
        "threshold, spec §2.1)",
    )
    divide_max_masks: int = param(
        100, "with divide=model:.../cutler, at most this many divide masks per image (spec §2.1)"
    )
    device: str = param(
        "auto",
        "where the networks run (features, divide model / CutLER, CascadePSP; the CRF and the "
        "conquer merge stay on the CPU): auto (CUDA when PyTorch sees a GPU, else the CPU), cpu, "
        "cuda or cuda:N",
    )
    dtype: Literal["float32", "bfloat16"] = param(
        "float32",
        "weights and activations of every network of the pipeline (features, CutLER, CascadePSP): "
        "float32 (the official numerics) or bfloat16; features leave the network in float32",
    )
    channel_order: Literal["rgb", "bgr"] = param(
        "rgb",
        "channel order of the images the feature extractor sees (MaskCut and conquer crops): rgb "
        "(what DINO was trained on) or bgr (what the released UnSAM code fed it through "
        "cv2.imread, "
        "spec §10 bug 9); CascadePSP has its own --refine-cascadepsp-channel-order",
    )
    feature: FeatureConfig = field(
        default_factory=FeatureConfig, metadata={"help": "feature-extractor options"}
    )
    maskcut: MaskCutConfig = field(
        default_factory=MaskCutConfig, metadata={"help": "MaskCut settings"}
    )
    conquer: ConquerConfig = field(
        default_factory=ConquerConfig, metadata={"help": "conquer settings"}
    )
    refine: RefineConfig = field(
        default_factory=RefineConfig, metadata={"help": "refinement settings"}
    )
    preset: Literal["auto", "spec", "classic", "released"] = param(
        "auto",
        "default settings: 'spec' (the paper's), 'classic' (tuned for the weight-free classic "
        "features: whole-image region, superpixel conquer, dense thetas, 1000 masks) or 'released' "
        "(the released UnSAM code: CutLER divide, BGR input to DINO and CascadePSP, its tiny-crop "
        "mask rule; see RELEASED_PRESET); 'auto' = classic iff the features are classic. A preset "
        "only replaces settings left at their spec default",
    )
    whole_image_region: bool = param(
        False,
        "add the whole image as one more divide mask (level 0, source 'image') and conquer it "
        "(not in the original)",
    )
    max_masks: int | None = param(
        None,
        "keep at most this many masks per image, the highest-scoring ones (none: all, as the "
        "original)",
    )
    keep_orphans: bool = param(
        False,
        "keep a conquer mask whose divide mask refinement rejected (parent_id then null), as the "
        "released code, which refines and drops every mask on its own; default: drop it",
    )
    explicit: tuple[str, ...] = param(
        (),
        "settings the user gave explicitly, as field names ('channel_order', nested ones dotted: "
        "'refine.cascadepsp_channel_order'); a preset never changes them, even when they equal "
        "the spec default (the CLI fills it from the flags given)",
    )

    def __post_init__(self) -> None:
        if self.preset not in ("auto", "spec", "classic", "released"):
            raise ValueError(
                f"preset must be 'auto', 'spec', 'classic' or 'released', got {self.preset!r}"
            )
        if self.channel_order not in ("rgb", "bgr"):
            raise ValueError(f"channel_order must be 'rgb' or 'bgr', got {self.channel_order!r}")
        if self.max_masks is not None and self.max_masks < 1:
            raise ValueError(f"max_masks must be >= 1 or None (keep all), got {self.max_masks}")
        if self.divide not in ("maskcut", "cutler") and not self.divide.startswith(
            ("model:", "cutler:")
        ):
            raise ValueError(
                "divide must be 'maskcut', 'model:RUN_DIR', 'cutler' or 'cutler:PATH', got "
                f"{self.divide!r}"
            )
        if self.divide in ("model:", "cutler:"):
            raise ValueError(f"divide {self.divide!r} needs a path: model:RUN_DIR or cutler:PATH")
        if not 0.0 <= self.divide_score_thresh <= 1.0 or self.divide_max_masks < 1:
            raise ValueError("divide_score_thresh must be in [0, 1] and divide_max_masks >= 1")


#: Classic-feature settings (measured on COCO val2017 images, see the module docstring): field →
#: value for PipelineConfig, and for its nested configs a dict of field → value.
CLASSIC_PRESET: dict[str, Any] = {
    "whole_image_region": True,
    "max_masks": 1000,
    "maskcut": {"crf": False},
    "conquer": {
        "units": "superpixels",  # scales (50, 100, 200, 400), colour weight 0.7: their defaults
        "thetas": (
            0.97,
            0.95,
            0.92,
            0.9,
            0.85,
            0.8,
            0.75,
            0.7,
            0.6,
            0.5,
            0.4,
            0.3,
            0.2,
            0.1,
            0.0,
            -0.1,
        ),
        "full_nms": True,
    },
}


#: The released UnSAM pseudo-label code (``divide_and_conquer/divide_conquer.py``, spec §2.1, §3,
#: §4.1; CUTLER_DETECTOR.md §1.2, CASCADEPSP.md §1), for ``preset="released"``. Most values equal
#: the spec defaults and are listed so the preset states the whole released configuration. Not
#: switched on: CascadePSP itself (``--refine cascadepsp:PATH``; minutes per mask on a CPU, and an
#: explicit ``--refine none`` cannot be told apart from the default). Kept fixed (spec §10): the
#: crop's dropped last row/column (bug 13), the ids (bugs 1-2), unsorted/skipped images (3-4),
#: hook growth (14), GPU-only fp16 DINO (8; float32 here, as the original's CPU path).
RELEASED_PRESET: dict[str, Any] = {
    "features": "facebook/dino-vitb8",  # DINO ViT-B/8 last-layer keys (spec §3.1)
    "divide": "cutler",  # CutLER Cascade Mask R-CNN; PATH from $UNSAM_CUTLER_WEIGHTS unless given
    "divide_score_thresh": 0.1,  # --confidence-threshold
    "divide_max_masks": 100,  # TEST.DETECTIONS_PER_IMAGE
    "channel_order": "bgr",  # cv2.imread arrays fed to DINO (spec §10 bug 9)
    "whole_image_region": False,
    "max_masks": None,
    "keep_orphans": True,  # each mask is refined and dropped on its own (cascadepsp.py)
    "conquer": {
        "crop_size": 256,  # --local-size
        "thetas": (0.6, 0.5, 0.4, 0.3, 0.2, 0.1),
        "min_size": 4,
        "coverage_thresh": 0.9,  # --kept-thresh
        "nms_iou_thresh": 0.9,  # --NMS-iou
        "nms_window": 5,  # --NMS-step
        "full_nms": False,
        "units": "patches",
        "mask_resize": "unsam",  # resize_mask then > 127.5: tiny crops lose small clusters
    },
    "refine": {  # used when --refine cascadepsp:PATH is given
        "cascadepsp_channel_order": "bgr",  # cv2.imread arrays fed to CascadePSP (spec §10 bug 10)
        "min_side": 100,  # --refine-min-L
        "max_side": 900,  # --refine-max-L
        "context_ratio": 2.0,  # hard-coded factor 2
        "max_area_frac": 0.9,  # --max-area-thresh
        "min_iou": 0.5,  # --iou-thresh
    },
}


def _is_classic(config: PipelineConfig, extractor_name: str | None) -> bool:
    if config.preset != "auto":
        return config.preset == "classic"
    return config.features == "classic" or extractor_name == "classic"


def _apply_defaults(
    obj: Any, values: dict[str, Any], explicit: frozenset[str] = frozenset(), prefix: str = ""
) -> Any:
    """``obj`` (a config dataclass) with ``values`` applied to the fields still at their class
    default and not named (``prefix`` + name) in ``explicit``."""
    defaults = type(obj)()
    changes: dict[str, Any] = {}
    for name, value in values.items():
        current = getattr(obj, name)
        if isinstance(value, dict):
            changes[name] = _apply_defaults(current, value, explicit, f"{prefix}{name}.")
        elif prefix + name not in explicit and current == getattr(defaults, name):
            changes[name] = value
    return dataclasses.replace(obj, **changes) if changes else obj


def resolve_preset(config: PipelineConfig, extractor_name: str | None = None) -> PipelineConfig:
    """The settings a :class:`DivideAndConquer` runs with: ``config`` with :data:`CLASSIC_PRESET`
    applied to the fields still at their spec default when the preset is (or resolves to) classic,
    or :data:`RELEASED_PRESET` when it is ``"released"``.

    Args:
        config: as given by the user.
        extractor_name: ``FeatureExtractor.name`` when a ready extractor is passed (``"classic"``
            selects the classic preset under ``preset="auto"``).

    Returns:
        ``config`` itself when no preset applies, else a copy.
    """
    explicit = frozenset(config.explicit)
    if config.preset == "released":
        return _apply_defaults(config, RELEASED_PRESET, explicit)
    if not _is_classic(config, extractor_name):
        return config
    return _apply_defaults(config, CLASSIC_PRESET, explicit)


def conquer_score(
    parent_score: float, level: int, num_levels: int, scale: int = 0, num_scales: int = 1
) -> float:
    """Ranking score of a conquer mask: coarser levels rank higher (they are more often whole
    objects), scaled by the divide mask's score. Level ``num_levels`` (coarsest) gets 0.95 × parent,
    level 1 (finest) 0.45 × parent; divide masks keep their own score (1.0 for MaskCut).

    With several superpixel scales (``ConquerConfig.units="superpixels"``) every mask of a coarser
    superpixel scale ranks above those of a finer one (``scale`` = coarseness rank, 0 = finest):
    the finest scale contributes the most candidates and the fewest whole objects, so it is the one
    cut when an image has more masks than AR@k keeps.

    Only the order matters (AR@k keeps the k best); the original gave every pseudo-mask score 1.
    """
    frac = (scale * num_levels + level) / max(1, num_scales * num_levels)
    return float(parent_score * (0.45 + 0.5 * frac))


def config_with_overrides(config: PipelineConfig, **overrides: Any) -> PipelineConfig:
    """``config`` with keyword overrides applied, each recorded in ``explicit`` so that a preset
    keeps it (a nested config's fields count when they differ from the spec default).

    ``refine`` may be a string: ``"none" | "crf" | "cascadepsp" | "cascadepsp:PATH"``.
    """
    given = [k for k in overrides if k != "explicit" and not dataclasses.is_dataclass(overrides[k])]
    if isinstance(overrides.get("refine"), str):
        method, _, weights = overrides["refine"].partition(":")
        extra = {"cascadepsp_weights": weights} if weights else {}
        overrides["refine"] = dataclasses.replace(config.refine, method=method, **extra)
        given.remove("refine")
        given += ["refine.method", *(["refine.cascadepsp_weights"] if weights else [])]
    if not overrides:
        return config
    named = [*config.explicit, *overrides.get("explicit", ()), *given]
    return dataclasses.replace(config, **{**overrides, "explicit": tuple(dict.fromkeys(named))})


class DivideAndConquer:
    """Training-free multi-granular masks for one image, in the style of SAM's automatic mask
    generator.

    Args:
        features: feature extractor spec (see :class:`PipelineConfig`) or a ready
            :class:`unsam.features.FeatureExtractor`.
        config: pipeline settings; keyword overrides (``divide=``, ``device=``, ``maskcut=``,
            ``conquer=``, ``refine=`` ...) are applied on top.

    Attributes:
        last_timings: seconds per stage of the last call (divide, conquer, refine, encode, total).
    """

    def __init__(
        self, features: Any = None, *, config: PipelineConfig | None = None, **overrides: Any
    ) -> None:
        from unsam.features import FeatureExtractor, load_feature_extractor

        config = config or PipelineConfig()
        if isinstance(features, str):
            overrides["features"] = features
        config = config_with_overrides(config, **overrides)
        # the preset first: it sets the refiner's and the divide's settings (it depends on the
        # features only through their name, known before loading them)
        ready = features if isinstance(features, FeatureExtractor) else None
        resolved = resolve_preset(config, getattr(ready, "name", None))
        if resolved is not config:
            logger.info(
                "%s preset applied to the settings left at default",
                "released" if resolved.preset == "released" else "classic",
            )
        if resolved.refine.method == "crf":
            from unsam.refine.crf import require_crf

            require_crf()  # fail now, with the install command, not after the first image
        self.refiner = (
            None  # CascadePSP, loaded once, before any other work (missing weights fail fast)
        )
        # one device and one dtype for every network (the CRF and the merge stay on the CPU)
        device = str(resolve_device(resolved.device))
        dtype = resolve_dtype(resolved.dtype)
        self.device, self.dtype = device, dtype
        if resolved.refine.method == "cascadepsp":
            self.refiner = _load_cascadepsp(resolved.refine, device, dtype)
        if ready is not None:
            self.extractor = ready
        else:
            self.extractor = load_feature_extractor(
                resolved.features,
                device=device,
                dtype=dtype,
                **dataclasses.asdict(resolved.feature),
            )
        self.config = resolved
        self.divide_model = None
        if self.config.divide.startswith("model:"):
            from unsam.models.whole_image import WholeImageSegmenter

            self.divide_model = WholeImageSegmenter.from_pretrained(
                self.config.divide[len("model:") :], device=device, dtype=dtype
            )
        self.cutler = None
        if self.config.divide == "cutler" or self.config.divide.startswith("cutler:"):
            from unsam.divide.cutler import CutlerDetector, resolve_cutler_weights

            self.cutler = CutlerDetector.from_checkpoint(
                resolve_cutler_weights(self.config.divide), device=device, dtype=dtype
            )
        self.last_timings: dict[str, float] = {}

    def feature_input(self) -> Any:
        """The extractor as the stages call it: :attr:`extractor` itself, or with
        ``channel_order="bgr"`` a wrapper that flips every batch to BGR first (what the released
        code fed DINO). Built on each call, so a replaced :attr:`extractor` is honoured."""
        if self.config.channel_order == "bgr":
            return _BGRInput(self.extractor)
        return self.extractor

    def divide(self, image: npt.NDArray[np.uint8]) -> list[tuple[dict[str, Any], float]]:
        """Object-level masks as ``[(compressed RLE on the image grid, score)]``, by the divide
        stage
        the config names. Each mask is encoded as soon as it exists, so K divide masks cost K RLEs,
        not K full-resolution arrays (a detector divide has up to 100)."""
        if self.cutler is not None:  # the released UnSAM divide (spec §2.1)
            from unsam.divide.cutler import divide_cutler_rles

            return divide_cutler_rles(
                image, self.cutler, self.config.divide_score_thresh, self.config.divide_max_masks
            )
        if self.divide_model is None:
            return [
                (encode_mask(m), s)
                for m, s in maskcut(image, self.feature_input(), self.config.maskcut)
            ]
        records = [r for r in self.divide_model(image) if r.score > self.config.divide_score_thresh]
        records = sorted(records, key=lambda r: -r.score)[: self.config.divide_max_masks]
        return [(r.rle, float(r.score)) for r in records if r.area > 0]

    def __call__(self, image: npt.NDArray[np.uint8], *, image_id: int = 0) -> list[MaskRecord]:
        """Divide-and-conquer masks of one image.

        Args:
            image: (H, W, 3) uint8 RGB.
            image_id: stored in every record; annotation ids are ``annotation_id(image_id, k)`` and
                conquer masks point at their divide mask through ``parent_id``.

        Returns:
            Divide masks (level 0) first, then each region's conquer masks (levels 1..len(thetas)),
            each with ``score`` (see :func:`conquer_score`), ``theta``, ``source`` and ``refined``.
            With ``whole_image_region`` the last divide mask is the whole image (``source="image"``,
            score 1, never refined). With ``max_masks`` only the highest-scoring masks are kept
            (same order; a part always scores below its divide mask, so parents are kept).
            ``last_stats`` counts what was dropped and why.
        """
        return self.start(image, image_id=image_id)()

    def start(
        self, image: npt.NDArray[np.uint8], *, image_id: int = 0
    ) -> Callable[[], list[MaskRecord]]:
        """The device part of :meth:`__call__` (divide, then the conquer features and merge);
        the returned finisher does the rest (candidates, selection, CascadePSP, RLE encoding,
        ``last_timings`` / ``last_stats``) and returns the records. A runner may run one image's
        finisher on another thread while the next image's ``start`` runs (never two finishers at
        once: they share the refiner and ``last_stats``)."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
        cfg = self.config
        hw = image.shape[:2]
        t0 = time.perf_counter()
        divided, sources = self._divide_regions(image)
        t1 = time.perf_counter()
        regions = _LazyMasks([rle for rle, _ in divided])  # decoded one at a time by conquer
        parts = conquer(image, regions, self.feature_input(), cfg.conquer) if divided else []
        t2 = time.perf_counter()

        def finish() -> list[MaskRecord]:
            t_host = time.perf_counter()
            items = self._candidates(divided, sources, parts, hw)
            selected = self._select(items)
            records, timings, stats = self._emit(image, items, selected, image_id)
            t3 = time.perf_counter()
            total = (t2 - t0) + (t3 - t_host)  # not the time spent waiting for the runner
            self.last_timings = {"divide": t1 - t0, "conquer": t2 - t1, **timings, "total": total}
            self.last_stats = {**stats, "capped": int(selected is not None)}
            logger.debug(
                "%d divide + %d conquer masks -> %d records in %.2f s",
                len(divided),
                len(parts),
                len(records),
                total,
            )
            return records

        return finish

    def _divide_regions(
        self, image: npt.NDArray[np.uint8]
    ) -> tuple[list[tuple[dict[str, Any], float]], list[str]]:
        """Divide masks (RLE, score) and their sources, plus the whole image when configured."""
        divided = self.divide(image)
        source = (
            "cutler"
            if self.cutler is not None
            else "maskcut"
            if self.divide_model is None
            else "model"
        )
        sources = [source] * len(divided)
        if (
            self.config.whole_image_region
        ):  # the whole image as one more divide region (last, score 1)
            h, w = image.shape[:2]
            divided = [*divided, ({"size": [h, w], "counts": _full_counts(h, w)}, 1.0)]
            sources.append("image")
        return divided, sources

    def _candidates(
        self,
        divided: list[tuple[dict[str, Any], float]],
        sources: list[str],
        parts: list[Any],
        hw: tuple[int, int],
    ) -> list[tuple[Any, dict[str, Any]]]:
        """(lazy full-size mask, fields) of every candidate in output order: divide masks, then
        conquer masks region by region."""
        cfg = self.config
        num_levels = len(cfg.conquer.thetas)
        num_scales = len(cfg.conquer.superpixel_scales) if cfg.conquer.units == "superpixels" else 1
        items: list[tuple[Any, dict[str, Any]]] = []
        for k, (rle, score) in enumerate(divided):
            fields = {"score": score, "level": 0, "source": sources[k], "parent": None}
            items.append((lambda r=rle: decode_rle(r), fields))
        for part in parts:
            parent_score = divided[part.parent][1]
            items.append(
                (
                    lambda p=part: paste_mask(p.mask, p.box_xyxy, hw),
                    {
                        "score": conquer_score(
                            parent_score, part.level, num_levels, part.scale, num_scales
                        ),
                        "level": part.level,
                        "theta": part.theta,
                        "source": "conquer",
                        "parent": part.parent,
                    },
                )
            )
        return items

    def _select(self, items: list[tuple[Any, dict[str, Any]]]) -> set[int] | None:
        """Positions kept by ``max_masks`` (None: all). A part scores below its divide mask
        (:func:`conquer_score`), so no kept part loses its parent."""
        cap = self.config.max_masks
        if cap is None or len(items) <= cap:
            return None
        by_score = sorted(range(len(items)), key=lambda i: -items[i][1]["score"])
        return set(by_score[:cap])

    def _emit(
        self,
        image: npt.NDArray[np.uint8],
        items: list[tuple[Any, dict[str, Any]]],
        selected: set[int] | None,
        image_id: int,
    ) -> tuple[list[MaskRecord], dict[str, float], dict[str, int]]:
        """Refine (optionally), encode one full-size mask at a time and link parts to parents.

        Returns:
            (records, {"refine": s, "encode": s}, {"refine_rejected", "orphans_dropped",
            "empty_dropped"}).
        """
        cfg = self.config
        hw = image.shape[:2]
        records: list[MaskRecord] = []
        refine_s = encode_s = 0.0
        stats = {"refine_rejected": 0, "orphans_dropped": 0, "empty_dropped": 0}
        kept_index: dict[int, int] = {}  # divide index -> output position (for parent ids)
        psp_results = (
            None  # CascadePSP: refined crops in item order, computed lazily in bounded batches
        )
        if self.refiner is not None:
            to_refine = [
                i
                for i, (_, f) in enumerate(items)
                if (selected is None or i in selected) and f["source"] != "image"
            ]
            self.refiner.warn_cpu_time(hw, (items[i][0]() for i in to_refine))  # once, CPU only
            psp_results = self.refiner.iter_refined(image, (items[i][0]() for i in to_refine))
        for pos, (get_mask, fields) in enumerate(items):
            if selected is not None and pos not in selected:
                continue
            mask = (
                get_mask()
            )  # one full-size mask at a time: memory stays bounded (spec §10 bug 16)
            refined = "none"
            if cfg.refine.method != "none" and fields["source"] != "image":  # the image stays whole
                tr = time.perf_counter()
                if psp_results is not None:
                    out = next(psp_results).full_mask(hw)
                else:
                    out, _iou = refine_masks(image, [mask], cfg.refine)[0]
                refine_s += time.perf_counter() - tr
                if out is None:
                    stats["refine_rejected"] += 1
                    continue
                mask, refined = out, cfg.refine.method
            if not mask.any():
                stats["empty_dropped"] += 1
                continue
            te = time.perf_counter()
            rle = encode_masks(mask[None])[0]
            del mask
            encode_s += time.perf_counter() - te
            fields = dict(fields)
            parent = fields.pop("parent")
            if fields["level"] == 0:
                kept_index[pos] = len(records)
                parent_id = None
            else:
                if parent not in kept_index and not cfg.keep_orphans:
                    stats["orphans_dropped"] += 1
                    continue  # its divide mask was rejected by refinement: drop the orphan part
                parent_id = (
                    annotation_id(image_id, kept_index[parent]) if parent in kept_index else None
                )
            records.append(
                MaskRecord(
                    rle=rle,
                    image_id=image_id,
                    id=annotation_id(image_id, len(records)),
                    parent_id=parent_id,
                    refined=refined,
                    **fields,
                )
            )
        return records, {"refine": refine_s, "encode": encode_s}, stats


def _load_cascadepsp(refine: RefineConfig, device: str, dtype: Any) -> Any:
    """The CascadePSP refiner of ``refine`` on ``device``, its weights and activations in
    ``dtype``."""
    from unsam.refine.cascadepsp import CascadePSPRefiner

    return CascadePSPRefiner.from_config(refine, device=device, dtype=dtype)


class _BGRInput:
    """A feature extractor seen through ``cv2.imread`` eyes: (B, S, S', 3) RGB batches are flipped
    to BGR before the wrapped extractor normalises them (with its RGB statistics, as the released
    code did, spec §10 bug 9). Every other attribute is the wrapped extractor's."""

    def __init__(self, extractor: Any) -> None:
        self._extractor = extractor

    def __getattr__(self, name: str) -> Any:
        return getattr(self._extractor, name)

    def __call__(self, images: Any) -> Any:
        batch = np.asarray(images) if isinstance(images, np.ndarray) else np.stack(list(images))
        return self._extractor(np.ascontiguousarray(batch[..., ::-1]))


class _LazyMasks(Sequence[npt.NDArray[np.bool_]]):
    """Full-size masks decoded from RLE on each access (conquer reads one at a time)."""

    def __init__(self, rles: list[dict[str, Any]]) -> None:
        self._rles = rles

    def __len__(self) -> int:
        return len(self._rles)

    def __getitem__(self, index: int) -> npt.NDArray[np.bool_]:  # type: ignore[override]
        return decode_rle(self._rles[index])


def _full_counts(h: int, w: int) -> str:
    """Counts string of an all-True (h, w) mask, from its runs [0, h*w] (no (h, w) array built)."""
    from pycocotools import mask as mask_utils

    return mask_utils.frPyObjects({"size": [h, w], "counts": [0, h * w]}, h, w)["counts"].decode(
        "utf-8"
    )


class DicoProducer:
    """Picklable :class:`unsam.runner.MaskProducer` running :class:`DivideAndConquer` per image."""

    def __init__(self, config: PipelineConfig) -> None:
        self.config = config
        self._dico: DivideAndConquer | None = None

    def settings(self) -> dict[str, Any]:
        # the settings the images are processed with: the preset resolved (features given by name)
        resolved = resolve_preset(self.config)
        out = {"producer": "divide-and-conquer", **config_to_dict(resolved)}
        out.pop("explicit", None)  # its effect is in the resolved values
        warnings = runtime_warnings(resolved)
        if warnings:
            out["warnings"] = warnings  # recorded in the output's info and printed in the summary
        return out

    @property
    def last_stats(self) -> dict[str, int]:
        """Drop counts of the last image (see :attr:`DivideAndConquer.last_stats`)."""
        return getattr(self._dico, "last_stats", {})

    def setup(self) -> None:
        if self._dico is None:
            self._dico = DivideAndConquer(config=self.config)

    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config, "_dico": None}  # models are loaded again in each worker

    def __call__(self, image: npt.NDArray[np.uint8], *, image_id: int) -> list[MaskRecord]:
        self.setup()
        assert self._dico is not None
        return self._dico(image, image_id=image_id)

    @property
    def overlaps(self) -> bool:
        """Whether the runner should overlap :meth:`start`'s finishers with the next image: when
        the networks run on a GPU (the finisher's RLE encoding then uses the CPU the GPU work
        leaves idle), not on the CPU, where both parts would share the cores."""
        return self._dico is not None and str(self._dico.device).startswith("cuda")

    def start(
        self, image: npt.NDArray[np.uint8], *, image_id: int
    ) -> Callable[[], tuple[list[MaskRecord], dict[str, int]]]:
        """Launch one image's divide and conquer (:meth:`DivideAndConquer.start`); the returned
        finisher runs the rest and returns ``(records, stats)``
        (:class:`unsam.runner.MaskProducer`)."""
        self.setup()
        assert self._dico is not None
        dico = self._dico
        finish_image = dico.start(image, image_id=image_id)

        def finish() -> tuple[list[MaskRecord], dict[str, int]]:
            records = finish_image()
            return records, dict(dico.last_stats)

        return finish


def memory_bound_bytes(image_hw: tuple[int, int], config: PipelineConfig) -> int:
    """Upper bound of the memory :class:`DivideAndConquer` needs for one image beyond the loaded
    models and the decoded image (documented formula; checked by tests/memory).

    ``peak <= H*W * (K + 1 + 6) + R * S * 12 * m^2 + R * 4 * c^2 * 4 + F + 256 MiB``

    * ``H*W * (K + 1)``: the K divide masks (K = ``maskcut.num_masks``, or ``divide_max_masks`` for
      a
      detector or model divide) plus the whole-image region, one byte a pixel;
    * ``6 * H*W``: one output mask at a time — the crop-grid mask, its upsampling buffers, the
      full-size canvas and the Fortran copy pycocotools encodes (masks leave as RLE at once);
    * ``R * S * 12 * m^2``: conquer's superpixel cell maps (int64) and cluster tables, for R
      regions,
      S superpixel scales and working side m = min(longer crop side, ``superpixel_max_side``);
      patch units keep only patch-grid labels instead (``(nms_window + 2)`` crop masks, in the
      6 * H*W term);
    * ``R * 4 * c^2 * 4``: the feature crops (c = ``conquer.crop_size``);
    * ``F``: the feature extractor's activations for one forward pass: at most
      ``FeatureConfig.memory_budget_mib`` (default 256 MiB on the CPU; batch = budget /
      ``DinoFeatureExtractor.bytes_per_image``) when ``feature.batch_size`` is None, else
      ``batch_size`` images of ``bytes_per_image``; counted in the 256 MiB slack for ``classic``.

    The number of candidate or output masks does not appear: candidates are built lazily and
    output masks are encoded one at a time.
    """
    h, w = int(image_hw[0]), int(image_hw[1])
    hw = h * w
    divide = config.maskcut.num_masks if config.divide == "maskcut" else config.divide_max_masks
    regions = divide + (1 if config.whole_image_region else 0)
    cfg = config.conquer
    scales = len(cfg.superpixel_scales) if cfg.units == "superpixels" else 0
    side = min(max(h, w), cfg.superpixel_max_side)
    conquer_bytes = regions * scales * 12 * side * side
    feature_bytes = regions * 4 * cfg.crop_size * cfg.crop_size * 4
    activations = 0
    if config.features != "classic":
        budget = config.feature.memory_budget_mib
        activations = (256 if budget is None else int(budget)) << 20
    return int(hw * (regions + 6) + conquer_bytes + feature_bytes + activations + (256 << 20))


def runtime_warnings(config: PipelineConfig) -> list[str]:
    """Settings that cannot take effect on this machine, as sentences (empty when all can).

    Today: a MaskCut CRF asked for (the spec default) while pydensecrf2 is not installed, so the
    divide masks stay at patch resolution. Recorded in the output's ``info`` and printed.
    """
    from unsam.crf import crf_available

    out = []
    if config.divide == "maskcut" and config.maskcut.crf and not crf_available():
        out.append(
            'MaskCut CRF is off: pydensecrf2 is not installed (pip install "unsam[crf]"), so '
            "the divide masks stay at patch resolution"
        )
    return out
