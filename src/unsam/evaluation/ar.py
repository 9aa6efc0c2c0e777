"""Class-agnostic COCO mask metrics (AR@1/10/100/1000, AP at 1000 detections), spec §8.1.

Protocol: COCOeval ``iouType="segm"``, ``useCats=0``, IoU 0.50:0.05:0.95, maxDets 1/10/100/1000,
areas all/small/medium/large. Unlike the original (spec §10 bug 24), *every* ground-truth image is
evaluated, including images with no prediction. AP is computed from the precision array at the
largest maxDets (pycocotools' own ``stats[0]`` is -1 with custom maxDets).

Backends: faster-coco-eval (default, C++) and pycocotools (reference); both are fed the same
ground-truth dict and the same results list, so their numbers agree to float precision.

Length: ground-truth and prediction preparation, the two backends and the parallel evaluation
implement one protocol with shared error messages; splitting them would separate the checks from the
code that relies on them.
"""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import math
import multiprocessing
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from unsam.io.coco import MaskFileError, int_field, load_json, load_sa1b_folder
from unsam.records import ImageRecord, MaskRecord, normalize_rle

__all__ = [
    "METRIC_KEYS",
    "evaluate",
    "format_metrics",
    "prepare_ground_truth",
    "prepare_predictions",
]

logger = logging.getLogger(__name__)

#: Keys of the metrics dict, in table order (``images`` = number of GT images evaluated).
METRIC_KEYS = (
    "AR@1",
    "AR@10",
    "AR@100",
    "AR@1000",
    "AP",
    "AP50",
    "AP75",
    "ARs@1000",
    "ARm@1000",
    "ARl@1000",
    "images",
)

MaskSource = str | os.PathLike[str] | dict[str, Any] | list[Any]


def _records_to_gt(images: Sequence[ImageRecord]) -> dict[str, Any]:
    anns = []
    for img in images:
        for k, m in enumerate(img.masks):
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": img.id,
                    "category_id": 1,
                    "iscrowd": 0,
                    "segmentation": m.rle,
                    "area": float(m.area),
                    "bbox": m.bbox,
                }
            )
    return {
        "images": [img.info() for img in images],
        "annotations": anns,
        "categories": [{"id": 1, "name": "object"}],
    }


def prepare_ground_truth(gt: MaskSource | Sequence[ImageRecord]) -> dict[str, Any]:
    """Normalise ground truth into a class-agnostic COCO dataset dict (category 1, crowd kept).

    Args:
        gt: path to a COCO-style instances JSON (COCO, LVIS, EntitySeg, PACO, PartImageNet, unsam
            pseudo-labels), a folder of SA-1B per-image JSONs, a loaded dataset dict, or image
            records.

    Raises:
        MaskFileError: a malformed file, naming the file, position and field.
    """
    where = "ground truth"
    if isinstance(gt, (str, os.PathLike)):
        path = Path(gt)
        where = str(path)
        if path.is_dir():
            return _records_to_gt(load_sa1b_folder(path))
        data = load_json(path)
        if isinstance(data, dict) and "image" in data and "images" not in data:
            from unsam.io.coco import load_sam_json

            return _records_to_gt([load_sam_json(path)])
    elif isinstance(gt, dict):
        data = gt
    else:
        return _records_to_gt(list(gt))  # type: ignore[arg-type]
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise MaskFileError(
            f'{where}: ground truth needs a COCO dataset object with an "images" list'
        )
    if not isinstance(data.get("annotations", []), list):
        raise MaskFileError(f'{where}: field "annotations" must be a list')
    images = []
    sizes: dict[int, tuple[int, int]] = {}
    for i, img in enumerate(data["images"]):
        w = f"{where}: images[{i}]"
        if not isinstance(img, dict):
            raise MaskFileError(f"{w}: expected an object")
        image_id = int_field(img, "id", w)
        if image_id in sizes:
            raise MaskFileError(f"{w}: duplicate image id {image_id}")
        sizes[image_id] = (int_field(img, "height", w), int_field(img, "width", w))
        entry = {"id": image_id, "height": sizes[image_id][0], "width": sizes[image_id][1]}
        if "file_name" in img:
            entry["file_name"] = img["file_name"]
        images.append(entry)
    anns = []
    for i, ann in enumerate(data.get("annotations", [])):
        w = f"{where}: annotations[{i}]"
        if not isinstance(ann, dict):
            raise MaskFileError(f"{w}: expected an object")
        image_id = int_field(ann, "image_id", w)
        if image_id not in sizes:
            raise MaskFileError(f'{w}: image_id {image_id} is not in "images"')
        seg = ann.get("segmentation")
        if seg is None:
            raise MaskFileError(f'{w}: missing field "segmentation"')
        if isinstance(seg, dict) and isinstance(seg.get("counts"), str):
            rle = seg
            if tuple(int(v) for v in seg.get("size", ())) != sizes[image_id]:
                raise MaskFileError(
                    f'{w}: field "segmentation.size" is {seg.get("size")} but the image is '
                    f"{list(sizes[image_id])}"
                )
        else:
            try:
                rle = normalize_rle(seg, sizes[image_id])
            except (ValueError, TypeError) as exc:
                raise MaskFileError(f'{w}: field "segmentation": {exc}') from None
        area = ann.get("area")
        if area is None:
            area = float(MaskRecord(rle=rle).area)
        elif isinstance(area, bool) or not isinstance(area, (int, float)):
            raise MaskFileError(f'{w}: field "area" must be a number, found {area!r}')
        anns.append(
            {
                "id": i + 1,
                "image_id": image_id,
                "category_id": 1,
                "iscrowd": int(bool(ann.get("iscrowd", 0))),
                "segmentation": rle,
                "area": float(area),
                "bbox": ann.get("bbox") or MaskRecord(rle=rle).bbox,
            }
        )
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "object"}]}


class _Where:
    """``"<file>: annotations[<i>]"``, formatted only when an error message needs it."""

    __slots__ = ("index", "label")

    def __init__(self, label: str, index: int) -> None:
        self.label, self.index = label, index

    def __str__(self) -> str:
        return f"{self.label}[{self.index}]"

    __format__ = lambda self, spec: str(self)  # noqa: E731 - f-strings call __format__


def prepare_predictions(
    pred: MaskSource | Sequence[ImageRecord] | Sequence[MaskRecord],
    gt: dict[str, Any],
    *,
    iou_type: Literal["segm", "bbox"] = "segm",
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Normalise predictions into a COCO results list with the ground truth's image ids.

    Images are matched by ``file_name`` when both sides carry file names (exact relative path
    first, then base name), else by image id. Predictions whose image is not in the ground truth
    are dropped and counted. Annotations without a score get score 1.0 (pseudo-labels). Polygon
    segmentations are rasterised at the ground-truth image's size. With ``iou_type="bbox"``,
    results that carry only a ``bbox`` (XYWH) are accepted.

    Returns:
        (results, counts) where counts has ``kept``, ``dropped``, ``matched_by_file_name``, and
        ``where``: a function of a result's index giving its position in the input, for errors.
    """
    where = "predictions"
    if isinstance(pred, (str, os.PathLike)):
        where = str(pred)
        path = Path(pred)
        data: Any = load_sa1b_folder(path) if path.is_dir() else load_json(path)
    else:
        data = pred
    gt_ids = {img["id"] for img in gt["images"]}
    by_name = {img["file_name"]: img["id"] for img in gt["images"] if "file_name" in img}
    by_base = {Path(name).name: i for name, i in by_name.items()}
    entries: list[Any] = []
    label = where
    id_map: dict[int, int] | None = None
    sizes: dict[int, tuple[int, int]] = {}
    if isinstance(data, list) and data and isinstance(data[0], ImageRecord):
        data = {
            "images": [r.info() for r in data],
            "annotations": [m.to_coco() | {"image_id": r.id} for r in data for m in r.masks],
        }
    elif isinstance(data, list) and data and isinstance(data[0], MaskRecord):
        data = [m.to_result() for m in data]
    if isinstance(data, dict) and "image" in data and "images" not in data:
        img = data["image"]
        data = {
            "images": [{"id": img.get("image_id", img.get("id")), **img}],
            "annotations": [
                {**a, "image_id": img.get("image_id", img.get("id"))}
                for a in data.get("annotations", [])
            ],
        }
    if isinstance(data, dict):
        if not isinstance(data.get("images"), list) or not isinstance(
            data.get("annotations", []), list
        ):
            raise MaskFileError(f'{where}: a dataset needs "images" and "annotations" lists')
        id_map = {}
        for i, img in enumerate(data["images"]):
            w = f"{where}: images[{i}]"
            if not isinstance(img, dict):
                raise MaskFileError(f"{w}: expected an object")
            pid = int_field(img, "id", w)
            if "height" in img and "width" in img:
                sizes[pid] = (int_field(img, "height", w), int_field(img, "width", w))
            name = img.get("file_name")
            if by_name and name is not None:
                gid = by_name.get(name, by_base.get(Path(name).name))
                if gid is not None:
                    id_map[pid] = gid
            elif pid in gt_ids:
                id_map[pid] = pid
        entries = data.get("annotations", [])
        label = f"{where}: annotations"
    elif isinstance(data, list):
        entries = data
        label = f"{where}: "
    else:
        raise MaskFileError(
            f"{where}: predictions must be a COCO results list or a COCO dataset object"
        )
    gt_sizes = {img["id"]: [img["height"], img["width"]] for img in gt["images"]}
    results: list[dict[str, Any]] = []
    index: list[int] = []  # position in the input of each result, for error messages
    dropped = 0
    for i, ann in enumerate(entries):
        # hot loop (up to 1000 masks x images): plain checks, no helper calls on the common path;
        # the position text for errors is only built when one is raised
        w = _Where(label, i)
        try:
            pid = ann["image_id"]
            seg = ann["segmentation"]
        except (KeyError, TypeError):
            if not isinstance(ann, dict):
                raise MaskFileError(
                    f"{w}: expected an object, found {type(ann).__name__}"
                ) from None
            if iou_type == "bbox" and "image_id" in ann and "bbox" in ann:
                seg = None
                pid = ann["image_id"]
            else:
                missing = "image_id" if "image_id" not in ann else "segmentation"
                hint = (
                    "; it has only a bbox: score bboxes with --iou-type bbox"
                    if "bbox" in ann
                    else ""
                )
                raise MaskFileError(f'{w}: missing field "{missing}"{hint}') from None
        if type(pid) is not int:
            pid = int_field(ann, "image_id", w)
        gid = pid if id_map is None else id_map.get(pid)
        if gid is None or gid not in gt_sizes:
            dropped += 1
            continue
        score = ann.get("score", 1.0)
        if type(score) is not float:
            if isinstance(score, bool) or not isinstance(score, (int, float)):
                raise MaskFileError(f'{w}: field "score" must be a finite number, found {score!r}')
            score = float(score)
        if not math.isfinite(score):
            raise MaskFileError(f'{w}: field "score" must be a finite number, found {score!r}')
        if seg is None:  # a bbox-only result (iou_type="bbox")
            box = ann["bbox"]
            if not (
                isinstance(box, list)
                and len(box) == 4
                and all(isinstance(v, (int, float)) and math.isfinite(v) for v in box)
            ):
                raise MaskFileError(
                    f'{w}: field "bbox" must be [x, y, w, h] numbers, found {box!r}'
                )
            results.append(
                {"image_id": gid, "category_id": 1, "bbox": [float(v) for v in box], "score": score}
            )
            index.append(i)
            continue
        if not (type(seg) is dict and type(seg.get("counts")) is str):
            try:
                seg = normalize_rle(seg, sizes.get(pid) or tuple(gt_sizes[gid]))
            except (ValueError, TypeError) as exc:
                raise MaskFileError(f'{w}: field "segmentation": {exc}') from None
        size = seg.get("size")
        if size != gt_sizes[gid] and [int(v) for v in size or ()] != gt_sizes[gid]:
            raise MaskFileError(
                f'{w}: field "segmentation.size" is {size} but ground-truth image {gid} is '
                f"{gt_sizes[gid]} (H, W)"
            )
        results.append({"image_id": gid, "category_id": 1, "segmentation": seg, "score": score})
        index.append(i)
    if dropped:
        logger.warning(
            "%s: %d prediction(s) belong to images not in the ground truth; ignored", where, dropped
        )
    return results, {
        "kept": len(results),
        "dropped": dropped,
        "matched_by_file_name": int(bool(by_name) and id_map is not None),
        "where": lambda k: str(_Where(label, index[k])),
    }


def _summarize(E: Any, max_dets: Sequence[int]) -> dict[str, float | None]:
    precision = np.asarray(E.eval["precision"])  # [T, R, K, A, M]
    recall = np.asarray(E.eval["recall"])  # [T, K, A, M]
    iou_thrs = np.asarray(E.params.iouThrs)
    m_last = len(max_dets) - 1

    def mean(x: np.ndarray) -> float | None:
        valid = x[x > -1]
        return float(np.mean(valid)) if valid.size else None

    out: dict[str, float | None] = {}
    for m, k in enumerate(max_dets):
        out[f"AR@{k}"] = mean(recall[:, :, 0, m])
    k_last = max_dets[-1]
    out["AP"] = mean(precision[:, :, :, 0, m_last])
    out["AP50"] = mean(precision[np.isclose(iou_thrs, 0.5)][:, :, :, 0, m_last])
    out["AP75"] = mean(precision[np.isclose(iou_thrs, 0.75)][:, :, :, 0, m_last])
    for a, label in ((1, "s"), (2, "m"), (3, "l")):
        out[f"AR{label}@{k_last}"] = mean(recall[:, :, a, m_last])
    return out


def evaluate(
    gt: MaskSource | Sequence[ImageRecord],
    pred: MaskSource | Sequence[ImageRecord] | Sequence[MaskRecord],
    *,
    max_dets: Sequence[int] = (1, 10, 100, 1000),
    iou_type: Literal["segm", "bbox"] = "segm",
    backend: Literal["faster-coco-eval", "pycocotools"] = "faster-coco-eval",
    workers: int | None = None,
) -> dict[str, Any]:
    """Class-agnostic COCO metrics of predicted masks against ground truth.

    Args:
        gt: COCO-style JSON path, SA-1B per-image JSON folder, dataset dict, or image records.
        pred: COCO results list / dataset JSON (e.g. pseudo-labels) path or object, image records
            or mask records. Dataset annotations without a score count as score 1.0.
        max_dets: detection limits per image, ascending; AP and the per-area AR use the last.
        iou_type: "segm" (masks, the protocol) or "bbox".
        backend: "faster-coco-eval" (fast) or "pycocotools" (reference).
        workers: processes for the evaluation (faster-coco-eval backend). With N > 1 the IoU
            matrices of some images are computed in N - 1 forked processes while this one decodes
            every annotation; the numbers are exactly the one-process ones. Default 1: on two
            cores that are shared, or when decoding dominates (a few GT masks per image), the
            fork and the workers' own decoding cost as much as they save (see
            benchmarks/eval_speed.py --workers).

    Returns:
        dict with ``AR@k`` for each k, ``AP``, ``AP50``, ``AP75``, ``ARs@K``, ``ARm@K``, ``ARl@K``
        (K = last max_dets) as fractions in [0, 1] (None where undefined, e.g. no small GT mask),
        plus ``images`` (GT images evaluated), ``gt_masks``, ``pred_masks``, ``seconds``.

    Example:
        >>> m = unsam.evaluate("instances.json", "pred.json")  # doctest: +SKIP
        >>> m["AR@1000"]  # doctest: +SKIP
    """
    max_dets = [int(k) for k in max_dets]
    if not max_dets or sorted(max_dets) != max_dets or max_dets[0] < 1:
        raise ValueError(f"max_dets must be ascending positive integers, got {max_dets}")
    t0 = time.perf_counter()
    with _cyclic_gc_paused():
        gt_dict = prepare_ground_truth(gt)
        results, counts = prepare_predictions(pred, gt_dict, iou_type=iou_type)
        try:
            return _evaluate(gt_dict, results, counts, max_dets, iou_type, backend, t0, workers)
        except (RuntimeError, ValueError):
            # faster-coco-eval validates RLE strings but names no file: find the culprit
            _raise_malformed_rle(gt, gt_dict["annotations"], lambda k: f"{gt}: annotations[{k}]")
            _raise_malformed_rle(pred, results, counts["where"])
            raise


@contextlib.contextmanager
def _cyclic_gc_paused() -> Any:
    """Python's cyclic garbage collector paused for the block (as it was, after).

    Evaluation builds about ten small objects per mask (parsed JSON, results, indexes), none of
    them in a reference cycle: reference counting frees them all. Left on, the collector's full
    passes walk every one of them and every object the caller holds: a third of the time on
    130k masks when the caller holds as many (benchmarks/eval_speed.py). Cycles made meanwhile
    are collected once it is back on.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _raise_malformed_rle(source: Any, entries: list[dict[str, Any]], where: Any) -> None:
    from unsam.records import rle_counts_errors

    segs = [e["segmentation"] for e in entries if isinstance(e.get("segmentation"), dict)]
    if len(segs) != len(entries):
        return
    errors = rle_counts_errors(segs)
    if errors:
        k, reason = errors[0]
        raise MaskFileError(f'{where(k)}: field "segmentation": {reason}')


def _evaluate(
    gt_dict: dict[str, Any],
    results: list[dict[str, Any]],
    counts: dict[str, Any],
    max_dets: list[int],
    iou_type: str,
    backend: str,
    t0: float,
    workers: int | None = None,
) -> dict[str, Any]:
    if backend == "faster-coco-eval":
        from faster_coco_eval.core import mask as fmask

        # what loadRes does, minus its per-annotation Python calls: faster-coco-eval computes
        # the areas of RLE results itself while it decodes them (checked against pycocotools in
        # tests/evaluation); boxes are only needed for iouType="bbox"
        need_boxes = iou_type == "bbox" and any("bbox" not in r for r in results)
        boxes = fmask.toBbox([r["segmentation"] for r in results]).tolist() if need_boxes else None
        for k, r in enumerate(results):
            r["id"] = k + 1
            r["iscrowd"] = 0
            if iou_type == "bbox":
                box = r["bbox"] if "bbox" in r else boxes[k]  # type: ignore[index]
                r["bbox"] = box
                r["area"] = box[2] * box[3]
        n_workers = 1 if workers is None else int(workers)
        if n_workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        img_ids = sorted(img["id"] for img in gt_dict["images"])
        n_workers = min(n_workers, len(img_ids))
        if n_workers > 1 and "fork" in multiprocessing.get_all_start_methods():
            E = _evaluate_parallel(gt_dict, results, img_ids, max_dets, iou_type, n_workers)
        else:
            E = _faster_cocoeval(gt_dict, results, img_ids, max_dets, iou_type, separate=False)
            with contextlib.redirect_stdout(io.StringIO()):
                E.evaluate()
                E.accumulate()
        return _metrics(E, gt_dict, counts, max_dets, t0)
    elif backend == "pycocotools":
        from pycocotools.coco import COCO as PyCOCO
        from pycocotools.cocoeval import COCOeval

        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt = PyCOCO()
            coco_gt.dataset = gt_dict
            coco_gt.createIndex()
            if results:
                coco_dt = coco_gt.loadRes(results)
            else:
                coco_dt = PyCOCO()
                coco_dt.dataset = {
                    "images": gt_dict["images"],
                    "annotations": [],
                    "categories": gt_dict["categories"],
                }
                coco_dt.createIndex()
        E = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        run = E
    else:
        raise ValueError(f'backend must be "faster-coco-eval" or "pycocotools", got {backend!r}')
    E.params.useCats = 0
    E.params.maxDets = max_dets
    E.params.imgIds = sorted(img["id"] for img in gt_dict["images"])
    with contextlib.redirect_stdout(io.StringIO()):
        run.evaluate()
        run.accumulate()
    return _metrics(E, gt_dict, counts, max_dets, t0)


def _faster_cocoeval(
    gt_dict: dict[str, Any],
    results: list[dict[str, Any]],
    img_ids: list[int],
    max_dets: list[int],
    iou_type: str,
    *,
    separate: bool,
) -> Any:
    """A faster-coco-eval COCOeval (useCats=0) over ``img_ids``; results carry id and iscrowd."""
    from faster_coco_eval import COCO, COCOeval_faster

    coco_gt = COCO(gt_dict)
    coco_dt = COCO(
        {"images": gt_dict["images"], "annotations": results, "categories": gt_dict["categories"]}
    )
    E = COCOeval_faster(coco_gt, coco_dt, iouType=iou_type, separate_eval=separate)
    E.params.useCats = 0
    E.params.maxDets = list(max_dets)
    E.params.imgIds = list(img_ids)
    return E


#: What forked evaluation workers read (set by the parent just before it forks them).
_FORK_STATE: dict[str, Any] = {}

# relative CPU cost of faster-coco-eval's work, measured on 130k felzenszwalb masks of 144 COCO
# images: decoding one annotation's RLE (_prepare) ~ 7.6 us, one dt x gt IoU pair ~ 0.55 us
_DECODE_COST, _IOU_COST = 7.6, 0.55


def _split_images(
    img_ids: list[int], gt_dict: dict[str, Any], results: list[dict[str, Any]], groups: int
) -> list[list[int]]:
    """Image ids for the parent (group 0) and ``groups - 1`` workers, with about equal work.

    The parent decodes every annotation anyway (the final evaluation needs them all) and computes
    the IoU matrices of its own images; a worker decodes and computes its images' IoU matrices.
    Images are assigned longest first to the group that would finish first. Groups are sorted.
    """
    n_dt: dict[int, int] = {}
    n_gt: dict[int, int] = {}
    for r in results:
        n_dt[r["image_id"]] = n_dt.get(r["image_id"], 0) + 1
    for a in gt_dict["annotations"]:
        n_gt[a["image_id"]] = n_gt.get(a["image_id"], 0) + 1
    iou = {i: _IOU_COST * n_dt.get(i, 0) * n_gt.get(i, 0) for i in img_ids}
    decode = {i: _DECODE_COST * (n_dt.get(i, 0) + n_gt.get(i, 0)) for i in img_ids}
    load = [sum(decode.values())] + [0.0] * (groups - 1)
    members: list[list[int]] = [[] for _ in range(groups)]
    for i in sorted(img_ids, key=lambda i: (-(iou[i] + decode[i]), i)):
        g = min(range(groups), key=lambda g: (load[g] + iou[i] + (decode[i] if g else 0.0), g))
        load[g] += iou[i] + (decode[i] if g else 0.0)
        members[g].append(i)
    return [sorted(members[0])] + [sorted(m) for m in members[1:] if m]


def _group_ious(index: int) -> dict[tuple[int, int], Any]:
    """IoU matrices of one image group, exactly as COCOeval.computeIoU gives them (in a worker)."""
    gt_dict, results, groups, max_dets, iou_type = _FORK_STATE["args"]
    ids = groups[index]
    wanted = set(ids)
    sub_gt = {
        "images": [img for img in gt_dict["images"] if img["id"] in wanted],
        "annotations": [a for a in gt_dict["annotations"] if a["image_id"] in wanted],
        "categories": gt_dict["categories"],
    }
    sub_results = [r for r in results if r["image_id"] in wanted]
    E = _faster_cocoeval(sub_gt, sub_results, ids, max_dets, iou_type, separate=False)
    E.params.imgIds = list(np.unique(E.params.imgIds))
    E.params.maxDets = sorted(E.params.maxDets)
    with contextlib.redirect_stdout(io.StringIO()):
        E._prepare()
    pairs = E._nonempty_iou_pairs
    return {(int(i), -1): E.computeIoU(i, -1) for i in E.params.imgIds if (i, -1) in pairs}


def _evaluate_parallel(
    gt_dict: dict[str, Any],
    results: list[dict[str, Any]],
    img_ids: list[int],
    max_dets: list[int],
    iou_type: str,
    workers: int,
) -> Any:
    """faster-coco-eval's ``evaluate`` + ``accumulate`` with the IoU matrices of some images
    computed in forked worker processes (while the parent decodes every annotation).

    An image's IoU matrix depends on that image's ground truth and detections only (in their
    input order, sorted by score with a stable sort), so the workers' matrices are exactly the
    parent's, and the one C++ evaluate-accumulate over all images gives exactly the one-process
    numbers (tests/evaluation/test_ar_parallel.py). Mirrors ``COCOeval_faster.evaluate``
    (faster-coco-eval 1.8) for useCats=0.
    """
    import copy
    from concurrent.futures import ProcessPoolExecutor

    import faster_coco_eval.faster_eval_api_cpp as _C

    E = _faster_cocoeval(gt_dict, results, img_ids, max_dets, iou_type, separate=False)
    p = E.params
    p.imgIds = list(np.unique(p.imgIds))
    p.maxDets = sorted(p.maxDets)
    groups = _split_images([int(i) for i in p.imgIds], gt_dict, results, workers)
    _FORK_STATE["args"] = (gt_dict, results, groups, max_dets, iou_type)
    try:
        with ProcessPoolExecutor(
            max(1, len(groups) - 1), mp_context=multiprocessing.get_context("fork")
        ) as pool:
            futures = [pool.submit(_group_ious, g) for g in range(1, len(groups))]
            _FORK_STATE.clear()  # the workers are forked at submit; the parent needs it no more
            with contextlib.redirect_stdout(io.StringIO()):
                E._prepare()
            pairs = E._nonempty_iou_pairs
            ious: dict[tuple[int, int], Any] = {(int(i), -1): [] for i in p.imgIds}
            for i in groups[0]:
                if (i, -1) in pairs:
                    ious[(i, -1)] = E.computeIoU(i, -1)
            for f in futures:
                ious.update(f.result())
    finally:
        _FORK_STATE.clear()
    E.ious = ious
    E._paramsEval = copy.deepcopy(p)
    E.eval = _C.COCOevalEvaluateAccumulate(
        E._paramsEval,
        [[ious[int(i), -1]] for i in p.imgIds],
        E.gt_dataset,
        E.dt_dataset,
        p.imgIds,
        p.catIds,
        bool(p.useCats),
    )
    return E


def _metrics(
    E: Any, gt_dict: dict[str, Any], counts: dict[str, Any], max_dets: list[int], t0: float
) -> dict[str, Any]:
    metrics: dict[str, Any] = _summarize(E, max_dets)
    metrics["images"] = len(gt_dict["images"])
    metrics["gt_masks"] = sum(1 for a in gt_dict["annotations"] if not a["iscrowd"])
    metrics["pred_masks"] = counts["kept"]
    metrics["seconds"] = round(time.perf_counter() - t0, 3)
    logger.info(
        "evaluated %d images, %d predictions in %.2f s",
        metrics["images"],
        counts["kept"],
        metrics["seconds"],
    )
    return metrics


def format_metrics(metrics: dict[str, Any], title: str | None = None) -> str:
    """A small aligned table of the metrics (percentages with 1 decimal)."""
    keys = [k for k in metrics if k.startswith(("AR", "AP"))]
    cells = ["n/a" if metrics[k] is None else f"{100 * metrics[k]:.1f}" for k in keys]
    widths = [max(len(k), len(c)) for k, c in zip(keys, cells)]
    head = "  ".join(k.rjust(w) for k, w in zip(keys, widths))
    row = "  ".join(c.rjust(w) for c, w in zip(cells, widths))
    lines = [title] if title else []
    lines += [
        head,
        row,
        (
            f"({metrics.get('images', '?')} images, {metrics.get('gt_masks', '?')} GT masks, "
            f"{metrics.get('pred_masks', '?')} predicted masks; values in %)"
        ),
    ]
    return "\n".join(lines)
