"""``docs/benchmarks.md`` and its plots from ``benchmarks/results/<name>.json``.

One table per benchmark: what was measured, the unit, the project's figure, the reference figure
measured in the same run (and what the reference is), and the speed ratio (reference time over
the project's time, so > 1 means the project is faster). Each table's heading line says at which
commit, when and under which load average the run was made; an overview table at the top repeats
that per benchmark. ``docs/benchmark_ratios.png`` shows every speed ratio as a bar, and
``docs/benchmarks.png`` the scaling curves (s/image against image size, throughput with 1 and 2
worker processes).

A benchmark's table is built by its function in :data:`TABLES` from its JSON; a figure missing from
the JSON is shown as "—".
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
#: benchmarks/results, or $UNSAM_BENCH_RESULTS (as benchmarks/common.py)
RESULTS = Path(os.environ.get("UNSAM_BENCH_RESULTS") or HERE / "results")
DOCS = REPO / "docs"


@dataclass(frozen=True)
class Row:
    """One measured figure, with its reference when the run measured one.

    ``ratio`` is set for speed comparisons (reference time / project time, or project throughput /
    reference throughput); it is computed from the two figures when not given.
    """

    what: str
    unit: str
    value: float | None
    reference: float | None = None
    reference_is: str = ""
    ratio: float | None = None
    compare: bool = True  # a speed comparison: draw it in the ratio plot

    def speed_ratio(self) -> float | None:
        if self.ratio is not None:
            return self.ratio
        if not self.compare or self.value in (None, 0) or self.reference is None:
            return None
        if self.unit in ("images/s",):
            return self.value / self.reference  # type: ignore[operator]
        times = ("s", "ms", "s/image", "s/mask", "s/step", "ms/click", "ms/region", "s/crop")
        if self.unit in times:
            return self.reference / self.value  # type: ignore[operator]
        return None


@dataclass(frozen=True)
class Table:
    title: str
    description: str
    rows: list[Row]
    note: str = ""


def _get(data: Any, *path: str | int) -> Any:
    for key in path:
        if isinstance(data, dict) and key in data:
            data = data[key]
        elif isinstance(data, list) and isinstance(key, int) and -len(data) <= key < len(data):
            data = data[key]
        else:
            return None
    return data


def _hw(value: Any) -> str:
    return f"{value[1]}×{value[0]} px" if isinstance(value, list) and len(value) == 2 else "?"


# ---------------------------------------------------------------------------------------------
# One function per benchmark: its JSON -> its table
# ---------------------------------------------------------------------------------------------
def _conquer(d: dict[str, Any]) -> Table:
    rows = []
    for name, what in (("planted", "planted hierarchy"), ("random", "random features")):
        r = _get(d, "results", name) or {}
        same = r.get("identical")
        rows.append(
            Row(
                f"merge of one 32×32×768 region, {what}"
                + ("" if same is None else f" (outputs identical: {same})"),
                "ms",
                _ms(r.get("fast_median_s")),
                _ms(r.get("naive_median_s")),
                "naive O(E²) merge",
            )
        )
    drv = _get(d, "results", "driver") or {}
    rows.append(
        Row(
            f"conquer() on {drv.get('regions', '?')} regions of a 480×640 image "
            "(precomputed features)",
            "ms/region",
            drv.get("per_region_ms"),
            compare=False,
        )
    )
    return Table(
        "conquer_speed", "Conquer merge: heap + union-find against the naive reference.", rows
    )


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else 1000.0 * seconds


def _eval(d: dict[str, Any]) -> Table:
    ar = d.get("ar1000_unsam")
    ar_ref = d.get("ar1000_pycocotools")
    return Table(
        "eval_speed",
        f"Class-agnostic COCO evaluation of {d.get('predictions', '?')} masks on "
        f"{d.get('images', '?')} images: `unsam eval` (faster-coco-eval) against pycocotools.",
        [
            Row("evaluation time", "s", d.get("unsam_s"), d.get("pycocotools_s"), "pycocotools"),
            Row(
                "AR@1000",
                "%",
                None if ar is None else 100 * ar,
                None if ar_ref is None else 100 * ar_ref,
                "pycocotools",
                compare=False,
            ),
        ],
    )


def _pseudo_label(d: dict[str, Any]) -> Table:
    targets = {"vits8": 10.0, "vitb8": 30.0}
    rows = []
    for arch, r in (d.get("results") or {}).items():
        rows.append(
            Row(
                f"{arch}: divide-and-conquer, {_hw(r.get('image_hw'))} image",
                "s/image",
                r.get("total"),
                targets.get(arch),
                "target" if arch in targets else "",
                compare=False,
            )
        )
        rows.append(Row(f"{arch}: of which feature forwards", "s/image", r.get("features")))
        rows.append(
            Row(f"{arch}: peak resident memory", "GiB", r.get("peak_rss_gib"), 4.0, "target")
        )
    return Table(
        "pseudo_label_speed",
        f"Divide-and-conquer pseudo-labelling per 1024-px image (refine: {d.get('refine', '?')}).",
        rows,
    )


def _cutler(d: dict[str, Any]) -> Table:
    """float32 and bf16 in one run (``results``), with bf16's agreement on photos; older result
    files (one run, no dtype) keep their single row."""
    if "results" not in d:  # before dtypes
        steps = d.get("seconds_per_step") or {}
        rows = [Row(f"CutLER detector, input {_hw(d.get('network_input_hw'))}", "s/image",
                    d.get("seconds_per_image"))]  # fmt: skip
        rows += [Row(f"of which {k.replace('_', ' ')}", "s/image", v) for k, v in steps.items()]
        return Table("cutler_speed", "CutLER Cascade Mask R-CNN divide on CPU.", rows)
    res = d["results"]
    f32, b16 = res.get("float32") or {}, res.get("bfloat16") or {}
    size = _hw(d.get("network_input_hw"))
    rows = []
    if b16:
        rows.append(
            Row(
                f"CutLER detector in bf16, {b16.get('detections', '?')} detections, input {size}",
                "s/image",
                b16.get("seconds_per_image"),
                f32.get("seconds_per_image"),
                "the same detector in float32",
            )
        )
    if f32:
        rows.append(
            Row(f"CutLER detector in float32, input {size}", "s/image",
                f32.get("seconds_per_image"), compare=False)  # fmt: skip
        )
    for name, r in (("bf16", b16), ("float32", f32)):
        for k, v in (r.get("seconds_per_step") or {}).items():
            rows.append(Row(f"{name}: of which {k.replace('_', ' ')}", "s/image", v, compare=False))
    for name, r in (("bf16", b16), ("float32", f32)):
        if r.get("peak_memory_gib") is not None:
            rows.append(Row(f"{name}: peak resident memory", "GiB", r["peak_memory_gib"],
                            compare=False))  # fmt: skip
    for a in b16.get("agreement") or []:
        photo = str(a.get("photo", "?")).rsplit("/", 1)[-1]
        rows += [
            Row(f"bf16 vs float32 on {photo}: detections matched", "of 100", a.get("matched"),
                compare=False),
            Row(f"bf16 vs float32 on {photo}: score difference, median / max", "",
                a.get("score_diff_median"), a.get("score_diff_max"), "max", compare=False),
            Row(f"bf16 vs float32 on {photo}: box difference, median / max", "px",
                a.get("box_diff_median_px"), a.get("box_diff_max_px"), "max", compare=False),
            Row(f"bf16 vs float32 on {photo}: mask IoU, mean / min", "",
                a.get("mask_iou_mean"), a.get("mask_iou_min"), "min", compare=False),
            Row(f"bf16 vs float32 on {photo}: identical masks", "%",
                100 * a["masks_identical"] if a.get("masks_identical") is not None else None,
                compare=False),
        ]  # fmt: skip
    kernel = (d.get("kernel") or {}).get("bf16_kernel")
    return Table(
        "cutler_speed",
        "CutLER Cascade Mask R-CNN divide (random weights, conditioned to the worst case), float32 "
        "and bf16 (weights and activations; BN folded, predictors, anchors, box decoding, ROIAlign "
        "sampling and pasting in float32) in the same run, and bf16's agreement with float32 on "
        "real photos (detections matched one to one by box IoU).",
        rows,
        note=f"bf16 kernel: {kernel}." if kernel else "",
    )


def _dino(d: dict[str, Any]) -> Table:
    """ViT-B/8 region crops: the fused encoder and transformers' forward, each in float32 and
    bf16, against transformers' float32 forward (the reference) in the same run."""
    res = d.get("results") or {}
    ref = res.get("fp32-hf") or {}
    peak = d.get("matmul_peak_gflops") or {}
    names = {
        "bf16": "fused encoder, bf16 (weights and activations)",
        "fp32": "fused encoder, float32",
        "bf16-hf": "transformers forward, bf16 weights",
        "fp32-hf": "transformers forward, float32",
    }
    rows = []
    for key, label in names.items():
        r = res.get(key)
        if not r:
            continue
        rows.append(
            Row(f"ViT-B/8 crop, {label} ({r.get('kernel')})", "s/crop", r.get("wall_s_per_crop"),
                ref.get("wall_s_per_crop") if key != "fp32-hf" else None,
                "transformers forward, float32" if key != "fp32-hf" else "")  # fmt: skip
        )
    for key in ("bf16", "fp32"):
        r = res.get(key) or {}
        dtype = "bfloat16" if key == "bf16" else "float32"
        if r.get("gflops") is not None:
            rows.append(Row(f"fused encoder {key}: achieved rate", "GFLOP/s", r["gflops"],
                            peak.get(dtype), f"a 2048² {dtype} matmul", compare=False))  # fmt: skip
    b16 = res.get("bf16") or {}
    if b16.get("cos_min") is not None:
        rows.append(Row("bf16 keys vs float32: 1 - smallest cosine", "", 1 - b16["cos_min"],
                        compare=False))  # fmt: skip
        rows.append(Row("bf16 vs float32: largest change of an adjacent-patch similarity", "",
                        b16.get("adjacent_cos_diff_max"), compare=False))  # fmt: skip
    gflop = d.get("gflop_per_crop")
    note = ""
    if gflop and peak.get("bfloat16"):
        note = (
            f"{gflop:g} GFLOP per crop: 100 region crops need "
            f"{100 * gflop / peak['bfloat16']:.0f} s at this machine's bf16 matmul peak, the floor "
            "of the released pipeline's conquer step."
        )
    return Table(
        "dino_speed",
        f"DINO ViT-B/8 keys of region crops (batch {d.get('batch')}, CPU time per crop), the "
        "project's fused encoder (one q/k/v product, SDPA, oneDNN pre-packed linears) and "
        "transformers' forward, float32 and bf16, with bf16's agreement on real photos.",
        rows,
        note=note,
    )


def _cascadepsp(d: dict[str, Any]) -> Table:
    rows = []
    for key in ("L256", "L900"):
        block = d.get(key) or {}
        if not block:
            continue
        side = block.get("L", key[1:])
        f32, b16 = block.get("float32") or {}, block.get("bfloat16") or {}
        hw = block.get("network_input_hw")
        size = f"{hw[0]}²" if isinstance(hw, list) and hw[0] == hw[1] else _hw(hw)
        rows.append(
            Row(
                f"L = {side} ({size} network input), bf16 (weights and activations)",
                "s/mask",
                b16.get("seconds_per_crop"),
                f32.get("seconds_per_crop"),
                "fp32 (the original's numerics)",
            )
        )
        if b16.get("cpu_seconds_per_crop") is not None:
            rows.append(
                Row(
                    f"L = {side}, process CPU time per crop, bf16",
                    "s/mask",
                    b16.get("cpu_seconds_per_crop"),
                    f32.get("cpu_seconds_per_crop"),
                    "fp32",
                )
            )
        for name, v in (("bf16", b16), ("fp32", f32)):
            if v.get("achieved_gflops") is not None:
                rows.append(
                    Row(
                        f"L = {side}, {name}: {v.get('gflop_per_crop', 0):,.0f} GFLOP per crop, "
                        "achieved rate",
                        "GFLOP/s",
                        v.get("achieved_gflops"),
                        _get(d, "matmul_2048_gflops", "bfloat16" if name == "bf16" else "float32"),
                        f"2048² {name} matmul, same run",
                        compare=False,
                    )
                )
        rows.append(
            Row(
                f"L = {side}, peak memory, bf16",
                "MiB",
                b16.get("peak_memory_mib"),
                f32.get("peak_memory_mib"),
                "fp32",
                compare=False,
            )
        )
    agree = d.get("agreement") or {}
    if agree.get("masks"):
        rows.append(
            Row(
                f"bf16 vs fp32 on {agree['masks']} COCO object masks: refined-mask IoU, mean "
                f"(smallest {agree.get('refined_mask_iou_min', 0):.4f}; identical masks "
                f"{100 * agree.get('identical_masks_share', 0):.0f} %; largest probability "
                f"difference {agree.get('max_abs_prob_diff', 0):.2g}; accept decisions differing: "
                f"{agree.get('accept_decisions_differing', '?')})",
                "IoU",
                agree.get("refined_mask_iou_mean"),
                compare=False,
            )
        )
    note = ""
    if d.get("goal_s_per_904_crop") is not None:
        note = (
            f"Goal: <= {d['goal_s_per_904_crop']:g} s per 904² crop in bf16 on the 2-core CPUs: "
            f"{'met' if d.get('goal_met') else 'not met'} in this run (load average "
            f"{_get(d, 'L900', 'bfloat16', 'load_average_1min')}). At this run's 2048² bf16 "
            f"matmul rate the crop would take {d.get('seconds_per_904_crop_at_matmul_rate', 0):.1f}"
            " s. Kernels: "
            + ", ".join(f"{k} {v}" for k, v in (_get(d, "kernel", "onednn_kernels") or {}).items())
        )
    return Table(
        "cascadepsp_speed",
        "CascadePSP refinement of one mask (random weights), bf16 against fp32 in the same run.",
        rows,
        note,
    )


def _segment(d: dict[str, Any]) -> Table:
    """segment_speed.json: unsam r50 and SAM ViT-B AMG, each in float32 and bfloat16 (one run)."""
    if "r50_inference" in d:  # written before the dtype / device benchmark
        return _segment_float32_only(d)
    unsam = d.get("unsam") or {}
    sam = d.get("sam_amg") or {}
    ratios = d.get("ratios") or {}
    where = "GPU" if d.get("device") == "cuda" else "CPU"
    names = {"float32": "float32", "bfloat16": "bf16"}

    def u(dtype: str, key: str) -> Any:
        return _get(unsam, dtype, key)

    def sm(dtype: str, key: str) -> Any:
        return _get(sam, dtype, key)

    first = next(iter(unsam.values()), {})
    rows = []
    for ud in ("bfloat16", "float32"):
        for sd in ("float32", "bfloat16"):
            if u(ud, "total_s_per_image") is None or sm(sd, "total_s_per_image") is None:
                continue
            rows.append(
                Row(
                    f"r50 whole-image model in {names[ud]}, {_hw(d.get('image_hw'))} image, top "
                    f"{first.get('max_masks', '?')} of {first.get('num_queries', '?')} queries",
                    "s/image",
                    u(ud, "total_s_per_image"),
                    sm(sd, "total_s_per_image"),
                    f"SAM ViT-B automatic masks (32×32 points) in {names[sd]}",
                    ratio=ratios.get(f"sam_{sd}_over_unsam_{ud}"),
                )
            )
    rows.append(
        Row(
            "r50 in bf16",
            "s/image",
            u("bfloat16", "total_s_per_image"),
            u("float32", "total_s_per_image"),
            "r50 in float32",
        )
    )
    if u("bfloat16", "pipelined_s_per_image") is not None:
        rows.append(
            Row(
                "r50 in bf16, pipelined (the next image's GPU part queued before this one's RLE)",
                "s/image",
                u("bfloat16", "pipelined_s_per_image"),
                u("bfloat16", "total_s_per_image"),
                "r50 in bf16, one image at a time",
            )
        )
    rows.append(
        Row(
            "r50 in float32, fast path",
            "s/image",
            u("float32", "total_s_per_image"),
            u("float32", "reference_total_s_per_image"),
            "r50 in float32, reference path (transformers' decoder)",
        )
    )
    for dtype in ("bfloat16", "float32"):
        if dtype not in unsam:
            continue
        part = "network + GPU post-processing" if where == "GPU" else "network"
        rows.append(
            Row(f"r50 {names[dtype]}, of which {part}", "s/image", u(dtype, "device_part_s"),
                compare=False)
        )  # fmt: skip
        host = "copy + RLE on the CPU" if where == "GPU" else "upsampling, scores, RLE"
        rows.append(
            Row(f"r50 {names[dtype]}, of which {host}", "s/image", u(dtype, "host_part_s"),
                compare=False)
        )  # fmt: skip
    kind = first.get("peak_memory_kind", "peak memory")
    rows.append(
        Row(
            f"r50 peak memory ({kind}), bf16",
            "MiB",
            u("bfloat16", "peak_memory_mib"),
            u("float32", "peak_memory_mib"),
            "float32",
            compare=False,
        )
    )
    for dtype in ("bfloat16", "float32"):
        if dtype in sam:
            rows.append(
                Row(f"SAM ViT-B {names[dtype]}, image encoder", "s/image", sm(dtype, "encoder_s"),
                    compare=False)
            )  # fmt: skip
            rows.append(
                Row(
                    f"SAM ViT-B {names[dtype]}, mask decoder + AMG post-processing over the grid",
                    "s/image",
                    (sm(dtype, "decoder_s") or 0.0) + (sm(dtype, "postprocess_s") or 0.0),
                    compare=False,
                )
            )
    agree = d.get("agreement") or {}
    if agree:
        n = f"{agree.get('photos', '?')} real photos, {agree.get('masks_matched', '?')} masks"
        share = agree.get("identical_share")
        at_least = agree.get("share_iou_at_least_0.9")
        rows += [
            Row(f"bf16 vs float32 masks ({n}): mean IoU of masks matched one to one", "IoU",
                agree.get("matched_mean_iou"), compare=False),
            Row("bf16 vs float32: masks identical", "%", None if share is None else 100 * share,
                compare=False),
            Row("bf16 vs float32: masks with IoU >= 0.9", "%",
                None if at_least is None else 100 * at_least, compare=False),
            Row("bf16 vs float32: mean best IoU of each float32 mask", "IoU",
                agree.get("mean_best_iou"), compare=False),
            Row("bf16 vs float32: score difference, mean / max", "score",
                agree.get("score_diff_mean"), agree.get("score_diff_max"), "max", compare=False),
        ]  # fmt: skip
    mem = d.get("memory_4000x3000")
    if mem:
        rows.append(
            Row("r50 on a 4000×3000 photo, peak resident memory", "GiB", mem.get("peak_rss_gib"))
        )
    kernel = d.get("kernel") or {}
    note = ""
    if kernel:
        note = (
            f"CPU bf16 kernel: {kernel.get('bf16_kernel', '?')} (oneDNN ran "
            f"{kernel.get('onednn_kernels') or '?'})."
        )
    if d.get("quick"):
        note = (note + " " if note else "") + "A --quick dry run: small inputs, not the goals'."
    return Table(
        "segment_speed",
        f"Whole-image model against SAM's automatic mask generator on the {where}, each in float32 "
        "and bfloat16, and the agreement of bf16 with float32 (random weights). Goal: r50 bf16 "
        f">= {10 if where == 'CPU' else 5}× SAM ViT-B AMG.",
        rows,
        note,
    )


def _segment_float32_only(d: dict[str, Any]) -> Table:
    inf = d.get("r50_inference") or {}
    sam = d.get("sam_amg") or {}
    rows = [
        Row(
            f"r50 whole-image model, {_hw(inf.get('image_hw'))} image, top "
            f"{inf.get('max_masks', '?')} of {inf.get('num_queries', '?')} queries",
            "s/image",
            inf.get("total_s_per_image"),
            sam.get("total_s_per_image"),
            "SAM ViT-B automatic masks (32×32 points)",
            ratio=d.get("ratio_sam_amg_over_unsam_r50"),
        ),
        Row(
            "r50, fast path",
            "s/image",
            inf.get("total_s_per_image"),
            inf.get("reference_total_s_per_image"),
            "r50, reference path (transformers' decoder)",
        ),
        Row("r50, of which forward pass", "s/image", inf.get("forward_s"), compare=False),
        Row("r50, of which post-processing", "s/image", inf.get("postprocess_s"), compare=False),
        Row("r50, peak resident memory", "MiB", inf.get("peak_rss_mib")),
        Row("SAM ViT-B, image encoder", "s/image", sam.get("encoder_s"), compare=False),
        Row(
            "SAM ViT-B, mask decoder over the grid", "s/image", sam.get("decoder_s"), compare=False
        ),
    ]
    for key, label in (("train_tiny", "tiny"), ("train_r50", "r50")):
        t = d.get(key)
        if t:
            rows.append(
                Row(
                    f"training step, {label} at {_hw(t.get('input_hw'))}, batch {t.get('batch')}",
                    "s/step",
                    t.get("s_per_step"),
                )
            )
    mem = d.get("memory_4000x3000")
    if mem:
        rows.append(
            Row("r50 on a 4000×3000 photo, peak resident memory", "GiB", mem.get("peak_rss_gib"))
        )
    note = ""
    if sam and sam.get("total_s_per_image") is None:
        note = (
            "SAM's post-processing time and total were not stored for this run, so the first "
            "row has no reference; rerun `python -m benchmarks --only segment_speed`."
        )
    return Table(
        "segment_speed",
        "Whole-image model inference against SAM's automatic mask generator, and training steps "
        "(random weights).",
        rows,
        note,
    )


def _train(d: dict[str, Any]) -> Table:
    """train_speed.json: images/s of the real trainer steps, bf16 autocast against float32."""
    where = "GPU" if d.get("device") == "cuda" else "CPU"
    crop = d.get("crop", "?")
    rows = []
    for name, label in (("r50", "whole-image r50"), ("swin_t", "promptable swin_t")):
        per = _get(d, "models", name) or {}
        bf16, fp32 = per.get("bfloat16") or {}, per.get("float32") or {}
        if not (bf16 or fp32):
            continue
        batch = bf16.get("batch", fp32.get("batch", "?"))
        rows.append(
            Row(
                f"{label} training step in bf16 autocast, {crop}² crops, batch {batch}, "
                f"{d.get('masks_per_image', '?')} masks/image",
                "images/s",
                bf16.get("images_per_s"),
                fp32.get("images_per_s"),
                "float32",
            )
        )
        if name == "r50" and where == "GPU" and bf16:
            rows.append(
                Row("r50 bf16 against the goal on one H200", "images/s",
                    bf16.get("images_per_s"), 16.0, "goal", compare=False)
            )  # fmt: skip
        rows.append(
            Row(f"{label}, s/step in bf16", "s/step", bf16.get("s_per_step"),
                fp32.get("s_per_step"), "float32", compare=False)
        )  # fmt: skip
        kind = bf16.get("peak_memory_kind", fp32.get("peak_memory_kind", "peak memory"))
        rows.append(
            Row(f"{label}, peak memory ({kind}) in bf16", "MiB", bf16.get("peak_memory_mib"),
                fp32.get("peak_memory_mib"), "float32", compare=False)
        )  # fmt: skip
    note = "A --quick dry run: small crops, not the goals'." if d.get("quick") else ""
    return Table(
        "train_speed",
        f"Training throughput on the {where} through the real trainers' steps (forward, matcher, "
        "losses, backward, AdamW; random weights), bf16 autocast against float32.",
        rows,
        note,
    )


def _prompt(d: dict[str, Any]) -> Table:
    f32 = d.get("float32") or {
        "set_image_s": d.get("unsam_set_image_s"),
        "click_predict_records_ms": d.get("unsam_click_predict_records_ms"),
        "click_decode_ms": d.get("unsam_click_decode_ms"),
    }
    b16 = d.get("bfloat16") or {}
    full = d.get("original_full_forward_per_click_s")
    rows = []
    if b16:
        rows += [
            Row(
                "set_image (encode the image once), bf16",
                "s",
                b16.get("set_image_s"),
                f32.get("set_image_s"),
                "fp32",
            ),
            Row(
                "one click, 6 mask records, bf16",
                "ms/click",
                b16.get("click_predict_records_ms"),
                f32.get("click_predict_records_ms"),
                "fp32",
            ),
            Row(
                "one click, 6 mask records, bf16, CPU time",
                "ms/click",
                b16.get("click_predict_records_cpu_ms"),
                f32.get("click_predict_records_cpu_ms"),
                "fp32",
            ),
            Row(
                "one click, decoder and heads only, bf16",
                "ms/click",
                b16.get("click_decode_ms"),
                f32.get("click_decode_ms"),
                "fp32",
            ),
        ]
    rows += [
        Row(
            "set_image (encode the image once), fp32",
            "s",
            f32.get("set_image_s"),
            d.get("sam_vitb_image_embeddings_s"),
            "SAM ViT-B image embeddings",
        ),
        Row(
            "one click, 6 mask records, fp32 (the encoded image is reused)",
            "ms/click",
            f32.get("click_predict_records_ms"),
            d.get("sam_vitb_click_ms"),
            "SAM ViT-B click (image embeddings reused)",
        ),
        Row(
            "one click, 6 mask records, fp32",
            "ms/click",
            f32.get("click_predict_records_ms"),
            None if full is None else 1000 * full,
            "the original: full forward per click",
        ),
    ]
    if not b16:
        rows.append(
            Row("one click, decoder and heads only", "ms/click", f32.get("click_decode_ms"),
                compare=False)
        )
    agree = d.get("agreement") or {}
    if agree.get("clicks"):
        mins = agree.get("mask_iou_min_per_level") or []
        rows.append(
            Row(
                f"bf16 vs fp32, {agree['clicks']} clicks on COCO photos: click-mask IoU, mean "
                "over levels (smallest per level "
                + ", ".join(f"{v:.3f}" for v in mins)
                + "; predicted-IoU difference up to "
                + f"{agree.get('predicted_iou_abs_diff_max', 0):.2g})",
                "IoU",
                float(sum(agree.get("mask_iou_mean_per_level") or [0]) / 6),
                compare=False,
            )
        )
    note = ""
    if d.get("goal_click_ms") is not None:
        note = (
            f"Goal: one click with its records <= {d['goal_click_ms']:g} ms "
            f"({'bf16' if b16 else 'fp32'}): {'met' if d.get('goal_click_met') else 'not met'} "
            f"in this run. Random weights give salt-and-pepper masks "
            f"({(b16 or f32).get('rle_runs_per_mask') or 0:,.0f} RLE runs per mask), so the RLE "
            "part costs more than with trained weights."
        )
    return Table(
        "prompt_speed",
        f"Promptable model (Swin-T) at {d.get('image_side', '?')} px: encode once, then cheap "
        "clicks; bf16 against fp32, the original's per-click recompute and SAM ViT-B.",
        rows,
        note,
    )


def _promptable_recipe(d: dict[str, Any]) -> Table:
    before, after = d.get("untrained") or {}, d.get("trained") or {}
    return Table(
        "promptable_recipe",
        f"`train-promptable --config tiny` from scratch ({d.get('steps', '?')} steps at "
        f"{d.get('image_size', '?')} px), 1-click mIoU on the images it trained on "
        f"({d.get('annotations', '?')}, {after.get('num_segments', '?')} masks); the reference "
        "is the untrained model of the same seed.",
        [
            Row(
                "Point(Oracle) mIoU",
                "mIoU",
                after.get("point_oracle_miou"),
                before.get("point_oracle_miou"),
                "untrained",
                compare=False,
            ),
            Row(
                "Point(Max) mIoU",
                "mIoU",
                after.get("point_max_miou"),
                before.get("point_max_miou"),
                "untrained",
                compare=False,
            ),
            Row("training wall time", "min", d.get("train_wall_min"), compare=False),
            Row("training CPU time (1 thread)", "s", d.get("train_cpu_s"), compare=False),
            Row("one training step (median)", "s/step", d.get("s_per_step_median"), compare=False),
        ],
        note="goal (issue 16): Point(Oracle) >= 0.5 and Point(Max) >= 0.4 in <= 10 min on 2 cores",
    )


def _released(d: dict[str, Any]) -> Table:
    fp32 = _get(d, "results", "fp32") or {}
    bf16 = _get(d, "results", "bf16") or {}
    agree = bf16.get("agreement") or {}
    rows = [
        Row(
            f"released pipeline in bf16, {_hw(fp32.get('image_hw'))} image",
            "s/image",
            bf16.get("total"),
            fp32.get("total"),
            "fp32",
        ),
        Row(
            "of which DINO ViT-B/8 features (conquer), bf16",
            "s/image",
            bf16.get("conquer_features"),
            fp32.get("conquer_features"),
            "fp32",
        ),
        Row("of which CutLER divide, fp32", "s/image", fp32.get("divide"), compare=False),
        Row(
            "peak resident memory, bf16 / fp32",
            "GiB",
            bf16.get("peak_rss_gib"),
            fp32.get("peak_rss_gib"),
            "fp32",
            compare=False,
        ),
    ]
    if agree:
        rows.append(
            Row(
                "bf16 masks: mean best IoU against fp32",
                "IoU",
                agree.get("mean_best_iou"),
                compare=False,
            )
        )
    return Table(
        "released_pipeline_speed",
        f"The released pseudo-label pipeline per 1024-px image, {d.get('max_regions', '?')} CutLER "
        "regions, ViT-B/8, CascadePSP off (random weights).",
        rows,
    )


def _ray(d: dict[str, Any]) -> Table:
    ips = d.get("images_per_s") or {}
    return Table(
        "ray_scaling",
        f"`--engine ray` throughput on {d.get('images', '?')} images ({d.get('producer', '?')} "
        "producer).",
        [
            Row(
                "Ray, 2 actors",
                "images/s",
                ips.get("ray_2"),
                ips.get("ray_1"),
                "Ray, 1 actor",
            ),
            Row(
                "Ray, 2 actors",
                "images/s",
                ips.get("ray_2"),
                ips.get("local"),
                "local runner, 1 process",
            ),
            Row("Ray start-up", "s", d.get("ray_init_s"), compare=False),
        ],
    )


#: benchmark name (``benchmarks/results/<name>.json``) -> its table.
TABLES: dict[str, Callable[[dict[str, Any]], Table]] = {
    "conquer_speed": _conquer,
    "eval_speed": _eval,
    "pseudo_label_speed": _pseudo_label,
    "dino_speed": _dino,
    "cutler_speed": _cutler,
    "cascadepsp_speed": _cascadepsp,
    "segment_speed": _segment,
    "train_speed": _train,
    "prompt_speed": _prompt,
    "promptable_recipe": _promptable_recipe,
    "released_pipeline_speed": _released,
    "ray_scaling": _ray,
}


# ---------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------
def _num(value: float | None) -> str:
    if value is None:
        return "—"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 0.01:
        return f"{value:.3g}"
    return f"{value:.2g}"


def _ratio(value: float | None) -> str:
    if value is None:
        return "—"
    return f"**{value:.3g}×**" if value >= 1 else f"{value:.3g}×"


def _when(data: dict[str, Any]) -> dict[str, str]:
    meta = data.get("meta") or {}
    commit = data.get("commit") or meta.get("git_commit") or ""
    load = data.get("load_average_1min")
    return {
        "device": str(data.get("gpu") or "CPU"),
        "commit": f"`{commit}`" if commit else "—",
        "time": str(data.get("measured_at") or "—"),
        "load": "—" if load is None else f"{load:.2f}",
    }


def _measured(when: dict[str, str]) -> str:
    if when["time"] == "—":
        return (
            f"Measured on {when['device']} at commit {when['commit']} (time and load were not "
            "recorded)."
        )
    return (
        f"Measured on {when['device']} at commit {when['commit']}, {when['time']}, load average "
        f"{when['load']}."
    )


def _markdown_table(table: Table, when: dict[str, str]) -> list[str]:
    lines = [
        f"## {table.title}",
        "",
        table.description,
        _measured(when),
        "",
        "| what | unit | unsam | reference | reference is | speed vs reference |",
        "|---|---|--:|--:|---|--:|",
    ]
    for row in table.rows:
        lines.append(
            f"| {row.what} | {row.unit} | {_num(row.value)} | {_num(row.reference)} "
            f"| {row.reference_is or '—'} | {_ratio(row.speed_ratio())} |"
        )
    if table.note:
        lines += ["", table.note]
    return lines + [""]


def load_results(names: Iterable[str] = TABLES) -> dict[str, dict[str, Any]]:
    """The stored results of ``names`` that exist."""
    out = {}
    for name in names:
        path = RESULTS / f"{name}.json"
        if path.exists():
            out[name] = json.loads(path.read_text(encoding="utf-8"))
    return out


def write_report(
    runs: list[dict[str, object]], scaling: dict[str, object] | None, docs: Path = DOCS
) -> Path:
    """Write ``docs/benchmarks.md`` (and its plots) from the stored results; ``runs`` gives the
    status of benchmarks that were run now but left no result."""
    results = load_results()
    tables = {name: TABLES[name](data) for name, data in results.items()}
    lines = [
        "# Benchmarks",
        "",
        "Written by `python -m benchmarks` from `benchmarks/results/<name>.json` (rebuild the page "
        "from stored results with `--report-only`). Each benchmark measures its reference in the "
        "same run, on the same machine; numbers depend on the machine and on its load, which every "
        f"table records, with the GPU where one was used. Machine: {os.cpu_count()} CPU cores.",
        "",
        "**Speed vs reference** is the reference's time over unsam's (or unsam's throughput over "
        "the reference's): above 1 unsam is faster. Bold: unsam is faster.",
        "",
        "![speed ratios](benchmark_ratios.png)",
        "",
        "| benchmark | headline | speed vs reference | commit | measured at | load average |",
        "|---|---|--:|---|---|--:|",
    ]
    for name in TABLES:
        if name not in tables:
            status = next((str(r["status"]) for r in runs if r["name"] == name), "not run")
            lines.append(f"| {name} | {status} | — | — | — | — |")
            continue
        when = _when(results[name])
        head = tables[name].rows[0]
        lines.append(
            f"| [{name}](#{name}) | {head.what}: {_num(head.value)} {head.unit} "
            f"| {_ratio(head.speed_ratio())} | {when['commit']} | {when['time']} | {when['load']} |"
        )
    lines.append("")
    for name, table in tables.items():
        lines += _markdown_table(table, _when(results[name]))
    scaling_path = RESULTS / "scaling.json"
    if scaling is None and scaling_path.exists():
        scaling = json.loads(scaling_path.read_text(encoding="utf-8"))
    if scaling is not None:
        lines += _scaling_lines(scaling)
        plot_scaling(scaling, docs / "benchmarks.png")
    plot_ratios(tables, docs / "benchmark_ratios.png")
    out = docs / "benchmarks.md"
    out.write_text("\n".join(lines).rstrip("\n") + "\n", encoding="utf-8")
    return out


def _scaling_lines(scaling: dict[str, Any]) -> list[str]:
    lines = [
        "## scaling",
        "",
        "Seconds per image against image size (divide-and-conquer, `classic` features) and "
        "throughput of the felzenszwalb baseline with 1 and 2 worker processes, measured by "
        "`python -m benchmarks` itself.",
        "",
        "![scaling](benchmarks.png)",
        "",
        "| image | unit | seconds |",
        "|---|---|--:|",
    ]
    lines += [
        f"| {s['width']}×{s['height']} px | s/image | {_num(s['seconds'])} |"
        for s in scaling["image_size"]
    ]
    lines += ["", "| worker processes | seconds | images/s |", "|--:|--:|--:|"]
    lines += [
        f"| {w['workers']} | {_num(w['seconds'])} | {_num(w['images_per_s'])} |"
        for w in scaling["workers"]
    ]
    lines += ["", f"Throughput with 2 workers vs 1: **{scaling['speedup_2_workers']}×**.", ""]
    return lines


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------
def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_ratios(tables: dict[str, Table], path: Path) -> Path | None:
    """A horizontal bar per speed comparison, from 1 (parity) to its ratio, on a log scale."""
    bars = [
        (f"{name}: {_short(row.what)} vs {row.reference_is}", ratio)
        for name, table in tables.items()
        for row in table.rows
        if (ratio := row.speed_ratio()) is not None and row.compare
    ]
    if not bars:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(11, 0.45 * len(bars) + 1.4))
    ys = list(range(len(bars)))[::-1]  # first bar on top
    values = [value for _, value in bars]
    ax.barh(
        ys,
        [v - 1.0 for v in values],
        left=1.0,
        color=["#2a7ab9" if v >= 1 else "#c4553a" for v in values],
    )
    ax.set_yticks(ys, [label for label, _ in bars], fontsize=8)
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", lw=0.8)
    for y, v in zip(ys, values, strict=True):
        ax.text(
            v * (1.06 if v >= 1 else 0.94),
            y,
            f"{v:.3g}×",
            va="center",
            ha="left" if v >= 1 else "right",
            fontsize=8,
        )
    ax.set_xlim(min(0.3, min(values) / 2), max(3.0, max(values) * 3))
    ax.set_xlabel("reference time / unsam time (log scale; above 1: unsam is faster)")
    ax.set_title("unsam against the reference measured in the same run", fontsize=10)
    ax.grid(axis="x", alpha=0.3, which="both")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _short(label: str, width: int = 48) -> str:
    label = label.split(" (")[0]
    return label if len(label) <= width else label[: width - 1] + "…"


def plot_scaling(scaling: dict[str, Any], path: Path) -> Path:
    """s/image against image width, and images/s with 1 and 2 worker processes."""
    plt = _pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    sizes = scaling["image_size"]
    a.plot([s["width"] for s in sizes], [s["seconds"] for s in sizes], "o-")
    a.set_xlabel("image width, px")
    a.set_ylabel("seconds per image")
    a.set_title("divide-and-conquer (classic)")
    workers = scaling["workers"]
    b.bar([str(w["workers"]) for w in workers], [w["images_per_s"] for w in workers])
    b.set_xlabel("worker processes")
    b.set_ylabel("images / s")
    b.set_title("felzenszwalb baseline throughput")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
