"""The demo's backend: click on an image and see its 6 masks; segment everything; download COCO
JSON.

The click and "segment everything" logic lives in plain functions, in :class:`DemoBackend` and in
the per-session :class:`DemoState`, so it is tested without a browser and without gradio;
:func:`unsam.demo.app.build_demo` only wires them to gradio components.

Backends, chosen by which models are given:

- click: the promptable model (:class:`unsam.PromptablePredictor`; the image is encoded once per
  image, a click only runs the decoder). Without one, a click is answered from the "segment
  everything" masks: those containing the clicked pixel, from small to large
  (:func:`masks_at_point`).
- segment everything: the whole-image model, else the promptable model's automatic mask generator,
  else divide-and-conquer on the weight-free ``classic`` features.

Every image is first shrunk so its longest side is at most ``max_side`` pixels; masks, overlays and
the COCO JSON are at that size.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import numpy.typing as npt

from unsam.records import ImageRecord, MaskRecord, annotation_id, rle_iou_matrix

__all__ = [
    "ClickSequence",
    "DemoBackend",
    "DemoState",
    "click_overlay",
    "everything_overlay",
    "example_images",
    "fit_image",
    "highlight_mask",
    "mask_caption",
    "mask_panels",
    "masks_at_point",
    "masks_for_export",
    "score_markdown",
    "upload_error_message",
    "write_masks_json",
]

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[3]
#: Bundled images offered as examples (present in a source checkout).
EXAMPLE_GLOBS = ("examples/coco/images/*.jpg", "tests/data/images/*")
CLICKS_PER_IMAGE = 6


def example_images(root: str | os.PathLike[str] | None = None) -> list[Path]:
    """The bundled example images under ``root`` (default: the source checkout), sorted; may be
    empty."""
    base = Path(root) if root is not None else REPO
    found: list[Path] = []
    for pattern in EXAMPLE_GLOBS:
        found.extend(
            sorted(
                p
                for p in base.glob(pattern)
                if p.suffix.lower() in {".jpg", ".jpeg", ".png"} and p.is_file()
            )
        )
    return found


# ---------------------------------------------------------------------------------------------
# Pure functions
# ---------------------------------------------------------------------------------------------
def fit_image(image: npt.NDArray[np.uint8], max_side: int | None) -> npt.NDArray[np.uint8]:
    """Shrink an (H, W, 3) uint8 image so its longest side is <= ``max_side`` (area resampling).

    Smaller images and ``max_side=None`` are returned unchanged (the same array).
    """
    if max_side is None or max(image.shape[:2]) <= max_side:
        return image
    h, w = image.shape[:2]
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))  # cv2 wants (W, H)
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def masks_at_point(
    records: Sequence[MaskRecord],
    point: tuple[float, float],
    *,
    max_masks: int = CLICKS_PER_IMAGE,
    dedup_iou: float = 0.9,
) -> list[MaskRecord]:
    """The masks containing a clicked pixel, from small to large: a click answered without a
    promptable model.

    Args:
        records: masks of one image (e.g. the "segment everything" masks).
        point: (x, y) in pixels; rounded down to the pixel it falls in.
        max_masks: at most this many masks.
        dedup_iou: a mask whose IoU with an already kept (smaller) one is above this is skipped, so
            the answer shows distinct granularities; in [0, 1].

    Returns:
        Up to ``max_masks`` records, by ascending area (ties: higher score first).
    """
    if not records:
        return []
    col, row = int(np.floor(point[0])), int(np.floor(point[1]))
    h, w = records[0].image_hw
    if not (0 <= row < h and 0 <= col < w):
        return []
    hits: list[MaskRecord] = []
    for rec in records:
        x0, y0, bw, bh = rec.bbox  # cheap box test first: only candidates are decoded
        if not (x0 <= col < x0 + bw and y0 <= row < y0 + bh):
            continue
        if rec.decode()[row, col]:
            hits.append(rec)
    hits.sort(key=lambda r: (r.area, -r.score))
    kept: list[MaskRecord] = []
    for rec in hits:
        if kept and float(rle_iou_matrix([rec.rle], [k.rle for k in kept]).max()) > dedup_iou:
            continue
        kept.append(rec)
        if len(kept) == max_masks:
            break
    return kept


def everything_overlay(
    image: npt.NDArray[np.uint8],
    records: Sequence[MaskRecord],
    *,
    top_k: int = 30,
    alpha: float = 0.45,
) -> npt.NDArray[np.uint8]:
    """The "segment everything" picture: the ``top_k`` best masks drawn as every overlay is
    (:func:`unsam.io.overlay.draw_overlay`: each pixel tinted once by the smallest drawn mask that
    holds it, in hue only, with thin outlines), so the photo stays readable.

    Args:
        image: (H, W, 3) uint8 RGB.
        records: masks of the image.
        top_k: draw the ``top_k`` highest-scoring masks.
        alpha: tint strength in [0, 1].

    Returns:
        (H, W, 3) uint8 RGB; the input is not changed.

    Raises:
        ValueError: a mask does not fit the image.
    """
    from unsam.io.overlay import draw_overlay

    for rec in records:
        if tuple(rec.image_hw) != image.shape[:2]:
            raise ValueError(
                f"mask of shape {tuple(rec.image_hw)} does not fit the image {image.shape[:2]}"
            )
    return draw_overlay(image, list(records), top_k=top_k, alpha=alpha)


def _draw_point(image: npt.NDArray[np.uint8], point: tuple[float, float], radius: int) -> None:
    center = (round(float(point[0])), round(float(point[1])))
    cv2.circle(image, center, radius + 2, (255, 255, 255), -1, cv2.LINE_AA)
    cv2.circle(image, center, radius, (230, 30, 30), -1, cv2.LINE_AA)


def click_overlay(
    image: npt.NDArray[np.uint8],
    records: Sequence[MaskRecord],
    point: tuple[float, float] | None,
    *,
    alpha: float = 0.35,
) -> npt.NDArray[np.uint8]:
    """The masks of one click over the image (largest first, outlined) with the click as a red
    dot."""
    from unsam.io.overlay import draw_overlay

    out = draw_overlay(image, list(records), alpha=alpha) if records else image.copy()
    if point is not None:
        _draw_point(out, point, max(3, round(max(image.shape[:2]) / 120)))
    return out


def mask_caption(record: MaskRecord, rank: int) -> str:
    """Panel title: granularity (the promptable model's token level, else the rank from fine to
    coarse) and the predicted IoU (or the record's score when the mask has none)."""
    granularity = record.level if record.source == "promptable" else rank
    if record.predicted_iou is not None:
        return f"granularity {granularity} · IoU {record.predicted_iou:.2f}"
    return f"granularity {granularity} · score {record.score:.2f}"


def highlight_mask(
    image: npt.NDArray[np.uint8],
    mask: npt.NDArray[np.bool_],
    *,
    color: tuple[int, int, int] = (30, 144, 255),
    alpha: float = 0.45,
    dim: float = 0.45,
) -> npt.NDArray[np.uint8]:
    """One mask made easy to see: the rest of the image dimmed to ``dim`` of its brightness, the
    mask tinted with ``color`` at ``alpha`` and outlined. Returns a new (H, W, 3) uint8 array."""
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask of shape {mask.shape} does not fit the image {image.shape[:2]}")
    out = image.astype(np.float32)
    tint = np.asarray(color, dtype=np.float32)
    out[~mask] *= dim
    out[mask] = (1.0 - alpha) * out[mask] + alpha * tint
    out = np.clip(out, 0, 255).astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, (255, 255, 255), 1)
    return out


def mask_panels(
    image: npt.NDArray[np.uint8],
    records: Sequence[MaskRecord],
    point: tuple[float, float] | None,
    *,
    panel_side: int = 320,
) -> list[tuple[npt.NDArray[np.uint8], str]]:
    """One (panel, caption) per mask: the mask alone (:func:`highlight_mask`), shrunk to fit in
    ``panel_side`` pixels, captioned by :func:`mask_caption`."""
    panels = []
    for rank, rec in enumerate(records, start=1):
        panel = highlight_mask(image, rec.decode())
        if point is not None:
            _draw_point(panel, point, max(3, round(max(image.shape[:2]) / 120)))
        panels.append((fit_image(panel, panel_side), mask_caption(rec, rank)))
    return panels


def score_markdown(
    records: Sequence[MaskRecord], point: tuple[float, float] | None, answered_by: str
) -> str:
    """A Markdown table of the click's masks: granularity, predicted IoU / score, area."""
    if point is None:
        return "Click on the image to see the masks at that point."
    where = f"({point[0]:.0f}, {point[1]:.0f})"
    if not records:
        return f"No mask contains the click at {where} ({answered_by})."
    lines = [
        f"**{len(records)} masks** at {where}, {answered_by}:",
        "",
        "| granularity | predicted IoU | score | area (px) |",
        "|---|---|---|---|",
    ]
    for rank, rec in enumerate(records, start=1):
        iou = "–" if rec.predicted_iou is None else f"{rec.predicted_iou:.3f}"
        granularity = mask_caption(rec, rank).split(" · ")[0].removeprefix("granularity ")
        lines.append(f"| {granularity} | {iou} | {rec.score:.3f} | {rec.area} |")
    return "\n".join(lines)


def masks_for_export(
    everything: Sequence[MaskRecord], clicks: Sequence[MaskRecord]
) -> list[MaskRecord]:
    """The masks of an image to export: all "segment everything" masks, then the click masks not
    among them (each once). Records keep their ids; a missing or repeated id gets a fresh one."""
    seen = {str(rec.rle["counts"]) for rec in everything}
    merged = list(everything)
    for rec in clicks:
        key = str(rec.rle["counts"])
        if key not in seen:
            seen.add(key)
            merged.append(rec)
    used = {r.id for r in merged if r.id is not None}
    next_index = 0
    out: list[MaskRecord] = []
    taken: set[int] = set()
    for rec in merged:
        if rec.id is None or rec.id in taken:
            while annotation_id(rec.image_id, next_index) in used | taken:
                next_index += 1
            rec = rec.replace(id=annotation_id(rec.image_id, next_index))
        taken.add(rec.id)  # type: ignore[arg-type]
        out.append(rec)
    return out


def write_masks_json(
    path: str | os.PathLike[str],
    records: Sequence[MaskRecord],
    *,
    file_name: str | None,
    hw: tuple[int, int],
    image_id: int = 0,
) -> Path:
    """Write one image's masks as a class-agnostic COCO dataset JSON (see
    :func:`unsam.io.coco.write_coco_dataset`)."""
    from unsam.io.coco import write_coco_dataset

    masks = tuple(r.replace(image_id=image_id) for r in records)
    image = ImageRecord(
        id=image_id, file_name=file_name, height=int(hw[0]), width=int(hw[1]), masks=masks
    )
    return write_coco_dataset(path, [image], info={"description": "unsam demo masks"})


def image_digest(image: npt.NDArray[np.uint8]) -> str:
    """Content hash of an image array (the key of the per-image caches)."""
    h = hashlib.sha1(str(image.shape).encode())
    h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Models and caches
# ---------------------------------------------------------------------------------------------
def _load_error(flag: str, path: str, exc: Exception) -> ValueError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ValueError(f"{flag} {path}: cannot load the model ({first})")


class DemoBackend:
    """The demo's models and per-image caches, shared by every browser session.

    Models are loaded here, so a missing or invalid path fails before a server starts.

    Args:
        model: promptable model (folder or official ``.pth``) for clicks; None = answer clicks from
            the "segment everything" masks.
        whole_image: whole-image model (folder, run folder or ``.pth``) for "segment everything".
        device: where the models run: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``,
            ``"cuda:N"``.
        dtype: the models' weights and activations, float32 or bfloat16 (the promptable model
            and the whole-image model; the classic fallback has no network).
        max_side: longest image side in pixels; larger images are shrunk first (None: keep).
        short_side: shortest side of the promptable model's input for clicks (640: the original
            demo); None = the image as is; "auto" = the size the model was trained at when it
            records one (a train-promptable run), else 640.
        amg: settings of the promptable model's automatic mask generator, used for "segment
            everything" when only ``model`` is given (default: ``AMGConfig()``).
        cache_size: number of images whose "segment everything" masks are kept.
        everything: a ready ``image -> list[MaskRecord]`` callable for "segment everything",
            replacing the choice above (tests).

    Raises:
        FileNotFoundError: a model path does not exist.
        ValueError: a model cannot be loaded (the message names the flag and the path).
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        whole_image: str | os.PathLike[str] | None = None,
        *,
        device: str = "cpu",
        dtype: str = "float32",
        max_side: int | None = 640,
        short_side: int | Literal["auto"] | None = "auto",
        amg: Any = None,
        cache_size: int = 4,
        everything: Any = None,
    ) -> None:
        if max_side is not None and max_side < 16:
            raise ValueError(f"max_side={max_side} is below 16 pixels")
        from unsam.runtime import dtype_name, resolve_device, resolve_dtype

        self.device = str(resolve_device(device))
        self.dtype = dtype_name(resolve_dtype(dtype))
        self.max_side = max_side
        self.short_side = short_side
        self.amg_config = amg
        self.cache_size = int(cache_size)
        self.predictor = None
        self.whole_image = None
        if model is not None:
            self.predictor = self._load("--model", model, self._load_promptable)
        if whole_image is not None:
            self.whole_image = self._load("--whole-image", whole_image, self._load_whole_image)
        self._everything_fn = everything
        self._dico = None
        self._amg = None
        self._cache: OrderedDict[str, list[MaskRecord]] = OrderedDict()
        self._encoded: str | None = None  # digest of the image the predictor holds

    # --- loading ------------------------------------------------------------------------------
    @staticmethod
    def _load(flag: str, path: str | os.PathLike[str], loader: Any) -> Any:
        from unsam.io.checkpoints import MissingWeightsError, missing_weights

        text = os.fspath(path)
        if not Path(text).expanduser().exists():  # the same sentence as every weights option
            kind = "promptable" if flag == "--model" else "whole-image"
            raise MissingWeightsError(f"{flag}: {missing_weights(kind, text)}")
        try:
            return loader(Path(text).expanduser())
        except FileNotFoundError:
            raise
        except Exception as exc:  # any loader failure (bad pickle, wrong keys, ...) is one line
            raise _load_error(flag, text, exc) from exc

    def _load_promptable(self, path: Path) -> Any:
        from unsam.models.promptable.predictor import PromptablePredictor

        return PromptablePredictor.from_pretrained(
            path, device=self.device, dtype=self.dtype, short_side=self.short_side
        )

    def _load_whole_image(self, path: Path) -> Any:
        from unsam.models.whole_image import WholeImageSegmenter

        # the whole-image path runs where and in the precision the backend was asked for; the
        # segmenter keeps them (seg.device, seg.dtype)
        return WholeImageSegmenter.from_pretrained(
            path, device=self.device, dtype=getattr(self, "dtype", None)
        )

    # --- descriptions -------------------------------------------------------------------------
    @property
    def click_source(self) -> str:
        """How clicks are answered, in words."""
        if self.predictor is not None:
            return "answered by the promptable model"
        return "picked from the segment-everything masks (no promptable model)"

    @property
    def everything_source(self) -> str:
        """What "segment everything" runs, in words."""
        if self._everything_fn is not None:
            return "a custom mask generator"
        if self.whole_image is not None:
            return "the whole-image model"
        if self.predictor is not None:
            return "the promptable model's automatic mask generator"
        return "divide-and-conquer on classic features (no model given)"

    # --- work -----------------------------------------------------------------------------------
    def prepare(self, image: npt.NDArray[np.uint8]) -> tuple[npt.NDArray[np.uint8], str]:
        """(the image shrunk to ``max_side``, its digest)."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
        work = np.ascontiguousarray(fit_image(image, self.max_side))
        return work, image_digest(work)

    def _generate(self, image: npt.NDArray[np.uint8]) -> list[MaskRecord]:
        if self._everything_fn is not None:
            return list(self._everything_fn(image))
        if self.whole_image is not None:
            return self.whole_image(image)
        if self.predictor is not None:
            if self._amg is None:
                from unsam.models.promptable.amg import AMGConfig, PromptableMaskGenerator
                from unsam.models.promptable.predictor import PromptablePredictor

                # its own predictor (same weights): the generator re-encodes at its own size and
                # must not replace the click predictor's cached image
                own = PromptablePredictor(self.predictor.model, device=self.device)
                self._amg = PromptableMaskGenerator(own, self.amg_config or AMGConfig())
            return self._amg.generate(image)
        if self._dico is None:
            from unsam.pipeline import DivideAndConquer

            self._dico = DivideAndConquer(features="classic", device=self.device)
        return self._dico(image)

    def everything(
        self, image: npt.NDArray[np.uint8], digest: str | None = None
    ) -> list[MaskRecord]:
        """The "segment everything" masks of a prepared image, computed once per image (cached)."""
        digest = digest or image_digest(image)
        if digest in self._cache:
            self._cache.move_to_end(digest)
            return self._cache[digest]
        records = self._generate(image)
        logger.info("segment everything: %d masks (%s)", len(records), self.everything_source)
        self._cache[digest] = records
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return records

    def set_image(self, image: npt.NDArray[np.uint8], digest: str | None = None) -> None:
        """Encode a prepared image for clicks (promptable model only; once per image)."""
        digest = digest or image_digest(image)
        if self.predictor is not None and self._encoded != digest:
            self.predictor.set_image(image)
            self._encoded = digest

    def click(
        self, image: npt.NDArray[np.uint8], point: tuple[float, float], digest: str | None = None
    ) -> list[MaskRecord]:
        """The masks of one click (x, y) on a prepared image: the promptable model's 6, or
        :func:`masks_at_point` of the "segment everything" masks."""
        digest = digest or image_digest(image)
        if self.predictor is None:
            return masks_at_point(self.everything(image, digest), point)
        self.set_image(image, digest)
        return self.predictor.predict([point])[0]


# ---------------------------------------------------------------------------------------------
# Requests: the last click wins, a bad upload gets a sentence
# ---------------------------------------------------------------------------------------------
class ClickSequence:
    """Numbers each session's clicks so that only the newest one's answer is shown.

    A click handler takes a ticket when it starts (:meth:`start`) and asks, when its answer is
    ready, whether a newer click of the same session has started since (:meth:`is_current`); if
    so its answer is stale and is dropped, so after a burst of clicks the display ends on the last
    one, whatever order the answers come back in. Thread-safe.
    """

    def __init__(self) -> None:
        import threading

        self._lock = threading.Lock()
        self._latest: dict[str, int] = {}

    def start(self, session: str) -> int:
        """A new click of ``session``: its ticket (1, 2, ... per session)."""
        with self._lock:
            ticket = self._latest.get(session, 0) + 1
            self._latest[session] = ticket
            return ticket

    def is_current(self, session: str, ticket: int) -> bool:
        """Whether ``ticket`` is still the newest click of ``session``."""
        with self._lock:
            return self._latest.get(session) == ticket


def upload_error_message(path: str | os.PathLike[str] | None, exc: BaseException) -> str:
    """One sentence for an upload the demo cannot use, instead of the web framework's raw error:
    the file's name, why it cannot be read (as :func:`unsam.io.images.load_image` says it) and
    what to upload instead."""
    from unsam.io.images import ImageReadError, load_image

    name = Path(os.fspath(path)).name if path else "the upload"
    reason = None
    if path:
        try:
            load_image(path)
        except ImageReadError as err:
            reason = err.reason
        except Exception as err:  # noqa: BLE001 - any other failure: its first line
            reason = str(err).strip().splitlines()[0] if str(err).strip() else None
    if reason is None:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (
        f"{name} is not an image the demo can read ({reason}); upload a photo "
        "(JPEG, PNG, WebP, TIFF or BMP)"
    )


# ---------------------------------------------------------------------------------------------
# One browser session
# ---------------------------------------------------------------------------------------------
@dataclass
class DemoState:
    """One browser session's view: the current image and what was computed for it."""

    path: str | None = None
    image: npt.NDArray[np.uint8] | None = None
    digest: str | None = None
    scale: float = 1.0  # prepared pixels per original pixel
    everything: list[MaskRecord] | None = None
    clicks: list[MaskRecord] = field(default_factory=list)


def _session(backend: DemoBackend, state: DemoState | None, path: str | None) -> DemoState:
    """The session state for the image at ``path`` (reloaded when the image changed)."""
    from unsam.io.images import load_image

    if path is None:
        raise ValueError("upload an image or pick an example first")
    if state is not None and state.path == path and state.image is not None:
        return state
    original = load_image(path)
    work, digest = backend.prepare(original)
    return DemoState(path=path, image=work, digest=digest, scale=work.shape[1] / original.shape[1])
