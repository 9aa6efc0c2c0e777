"""Training throughput of the whole-image model (r50) and the promptable model (swin_t): images/s
through the real trainers' steps, in bfloat16 autocast and float32, one run.

Each step is what ``unsam train`` / ``unsam train-promptable`` runs per batch
(:func:`unsam.training.engine.trainer._run_steps`): the trainer's ``loss_function`` (r50: the
Mask2Former forward at ``--crop``² with 2000 queries, its Hungarian matcher over 12544 sampled
points for every decoder layer, the class / mask / dice losses; swin_t: the image encoder, the
click decoder for ``num_clicks`` (60) clicks, its matcher and losses), then
:func:`unsam.training.engine.trainer._optimizer_step` (loss check, backward, gradient clipping,
AdamW, LR schedule), under ``torch.autocast(bfloat16)`` for ``--dtype bfloat16`` (float32 master
weights). Models are random-initialised (built by the trainers' own ``build_model``: r50 with
FrozenBN and the float32 steps, swin_t as ``train-promptable`` builds it).

Data: the batches come from the trainers' own ``collate_fn`` applied to crops of the bundled COCO
photos (resized to fill the crop) with ``--masks`` synthetic target masks per image (rectangles
and discs from 1/64 to 1/2 of the crop side, seeded), pinned like the trainers' loader pins them
on CUDA; the host-to-device copy is part of each step, as in training. Pseudo-labels of UnSAM
have ~50-500 masks per image; 100 is the default here (the loss cost grows with it).

Timing: ``--steps`` timed steps after one warm-up step (kernel selection, AdamW state), median
s/step, images/s = batch / s/step; on CUDA after ``torch.cuda.synchronize()``. Peak memory:
allocated GPU memory on CUDA, resident memory of the process on the CPU. A CUDA batch that does
not fit is halved and retried (recorded). Goal on one H200: r50 >= 16 images/s at 1024 in bf16.

``--quick`` (a dry run, e.g. ``bash benchmarks/gpu.sh --device cpu --quick``): crop 128, 8 masks,
batch 1, one step and no warm-up; the figures are not the goals'. On 2 CPU cores an r50 step costs
~10 s whatever the crop (the matcher and point losses of 2000 queries x 12544 points x 10
layers), so the dry run takes about 1-2 minutes there.

Writes ``train_speed.json`` (``benchmarks/results`` or ``$UNSAM_BENCH_RESULTS``): ``device``,
``quick``, ``crop``, ``masks_per_image``, ``models`` {name: {dtype: {...}, "speedup_bfloat16":
x}}, ``headline`` {``r50_bfloat16_images_per_s``, ``goal_images_per_s``}.

Usage: python benchmarks/train_speed.py [--device cpu|cuda] [--quick] [--models r50,swin_t]
       [--dtype float32|bfloat16|both] [--steps 5] [--crop 1024] [--batch N] [--masks 100]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch
from common import peak_rss_bytes, write_result

from unsam.runtime import cpu_matmul_kernel, resolve_device

DTYPES = ("float32", "bfloat16")
MODELS = ("r50", "swin_t")
GOAL_R50_BF16 = 16.0  # images/s at 1024 on one H200


def _log(text: str) -> None:
    print(text, flush=True)


def _samples(n: int, crop: int, masks: int, seed: int) -> list[Any]:
    """``n`` TrainSamples: bundled COCO photos resized to the crop, ``masks`` synthetic masks."""
    from unsam.io.images import load_image
    from unsam.masks import resize_image
    from unsam.training.data import TrainSample

    photos = sorted((REPO / "examples" / "coco" / "images").glob("*.jpg"))
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:crop, :crop]
    out = []
    for i in range(n):
        image = resize_image(load_image(photos[i % len(photos)]), (crop, crop))
        m = np.zeros((masks, crop, crop), dtype=bool)
        for k in range(masks):
            size = int(crop * rng.uniform(1 / 64, 1 / 2))
            y0, x0 = rng.integers(0, crop - size + 1, size=2)
            if k % 2:
                m[k, y0 : y0 + size, x0 : x0 + size] = True
            else:
                r = size / 2
                m[k] = (yy - y0 - r) ** 2 + (xx - x0 - r) ** 2 <= r * r
        out.append(TrainSample(image=image, masks=m, valid_hw=(crop, crop), image_id=i, position=i))
    return out


def _pin(batch: dict[str, Any]) -> dict[str, Any]:
    def pin(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return v.pin_memory()
        if isinstance(v, list):
            return [pin(x) for x in v]
        return v

    return {k: pin(v) for k, v in batch.items()}


def _trainer(name: str, dtype: str, device: torch.device, crop: int, batch: int, masks: int) -> Any:
    common = dict(
        batch_size=batch,
        dtype=dtype,
        device=str(device),
        max_masks_per_image=masks,
        max_steps=10_000,
    )
    if name == "r50":
        from unsam.training.whole_image.config import TrainConfig
        from unsam.training.whole_image.trainer import WholeImageTrainer

        return WholeImageTrainer(TrainConfig(config="r50", crop_size=crop, **common))
    from unsam.training.promptable.config import PromptableTrainConfig
    from unsam.training.promptable.trainer import PromptableTrainer

    return PromptableTrainer(PromptableTrainConfig(config="swin_t", image_size=crop, **common))


def bench_model(
    name: str,
    dtype: str,
    device: torch.device,
    *,
    crop: int,
    batch: int,
    masks: int,
    steps: int,
    warmup: bool = True,
) -> dict[str, Any]:
    """s/step of the real trainer step (module docstring)."""
    from unsam.training.engine.distributed import DistInfo
    from unsam.training.engine.optim import build_optimizer, build_scheduler
    from unsam.training.engine.trainer import _optimizer_step, mixed_precision

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    else:  # the process's resident high-water mark, from here (Linux)
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
                fh.write("5")
        except OSError:
            pass
    trainer = _trainer(name, dtype, device, crop, batch, masks)
    config = trainer.config
    torch.manual_seed(0)
    model = trainer.build_model(new_run=True).to(device)
    model.train()
    optimizer = build_optimizer(trainer.param_groups(model), config)
    scheduler = build_scheduler(optimizer, config)
    params = [p for p in model.parameters() if p.requires_grad]
    info = DistInfo()
    compute_loss = trainer.loss_function(model, info, device)
    collate = trainer.collate_fn()
    batches = [collate(_samples(batch, crop, masks, seed=s)) for s in range(2)]
    if cuda:
        batches = [_pin(b) for b in batches]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=mixed_precision(config))

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def step(i: int) -> float:
        b = batches[i % len(batches)]
        with autocast:
            loss = compute_loss(b)
        return _optimizer_step(loss, optimizer, scheduler, params, config, info, i, b)

    if warmup:
        step(0)  # kernels chosen, AdamW state made
        sync()
    times, loss = [], float("nan")
    for i in range(1, steps + 1):
        t0 = time.perf_counter()
        loss = step(i)  # reads the loss value: the step has finished on the device
        sync()
        times.append(time.perf_counter() - t0)
    secs = statistics.median(times)
    return {
        "model": name,
        "dtype": dtype,
        "crop": crop,
        "batch": batch,
        "masks_per_image": masks,
        "num_queries": int(getattr(model.config, "num_queries", 0)) or None,
        "s_per_step": secs,
        "images_per_s": batch / secs,
        "runs_s": times,
        "last_loss": loss,
        "peak_memory_mib": (
            torch.cuda.max_memory_allocated(device) / 2**20 if cuda else peak_rss_bytes() / 2**20
        ),
        "peak_memory_kind": "GPU memory allocated" if cuda else "process resident memory",
    }


def _with_smaller_batch(fn: Callable[[int], dict[str, Any]], batch: int) -> dict[str, Any]:
    """``fn(batch)``, halving the batch while CUDA runs out of memory."""
    tried = []
    while True:
        try:
            result = fn(batch)
            if tried:
                result["batches_that_did_not_fit"] = tried
            return result
        except torch.cuda.OutOfMemoryError:
            tried.append(batch)
            torch.cuda.empty_cache()
            if batch == 1:
                raise
            batch //= 2
            _log(f"  out of GPU memory; retrying with batch {batch}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument("--quick", action="store_true", help="a dry run: crop 128, 8 masks")
    parser.add_argument("--models", default="r50,swin_t", help="comma-separated: r50, swin_t")
    parser.add_argument("--dtype", default="both", choices=[*DTYPES, "both"])
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 5; 1)")
    parser.add_argument("--crop", type=int, default=None, help="crop side (default 1024; 128)")
    parser.add_argument(
        "--batch", type=int, default=None, help="images per step (default 4 on CUDA, else 1)"
    )
    parser.add_argument(
        "--masks", type=int, default=None, help="target masks per image (default 100; 8)"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    quick = args.quick
    crop = args.crop or (128 if quick else 1024)
    steps = args.steps or (1 if quick else 5)
    masks = args.masks or (8 if quick else 100)
    batch = args.batch or (4 if device.type == "cuda" and not quick else 1)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        parser.error(f"--models: unknown {unknown}; choose from {', '.join(MODELS)}")
    dtypes = list(DTYPES) if args.dtype == "both" else [args.dtype]
    t_start = time.perf_counter()
    _log(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, crop "
        f"{crop}, batch {batch}, {masks} masks/image, {steps} timed step(s)"
        f"{', quick' if quick else ''}"
    )
    result: dict[str, Any] = {
        "device": device.type,
        "quick": quick,
        "crop": crop,
        "masks_per_image": masks,
        "steps": steps,
        "models": {},
    }
    if device.type == "cpu":
        result["kernel"] = cpu_matmul_kernel()
        _log(f"CPU bf16 kernel: {result['kernel']['bf16_kernel']}")
    for name in models:
        per = {}
        for dtype in dtypes:
            r = _with_smaller_batch(
                lambda b, name=name, dtype=dtype: bench_model(
                    name,
                    dtype,
                    device,
                    crop=crop,
                    batch=b,
                    masks=masks,
                    steps=steps,
                    warmup=not quick,
                ),
                batch,
            )
            per[dtype] = r
            _log(
                f"{name} {dtype} at {crop}², batch {r['batch']}: {r['s_per_step']:.3f} s/step = "
                f"{r['images_per_s']:.2f} images/s (loss {r['last_loss']:.3f}); peak "
                f"{r['peak_memory_mib']:.0f} MiB ({r['peak_memory_kind']})"
            )
        if len(per) == 2:
            per["speedup_bfloat16"] = (
                per["bfloat16"]["images_per_s"] / per["float32"]["images_per_s"]
            )
            _log(f"{name}: bf16 {per['speedup_bfloat16']:.2f}x the images/s of float32")
        result["models"][name] = per
    r50_bf16 = result["models"].get("r50", {}).get("bfloat16")
    if r50_bf16:
        result["headline"] = {
            "r50_bfloat16_images_per_s": r50_bf16["images_per_s"],
            "crop": crop,
            "goal_images_per_s": GOAL_R50_BF16 if device.type == "cuda" else None,
        }
        if device.type == "cuda":
            _log(
                f"r50 bf16 at {crop}²: {r50_bf16['images_per_s']:.2f} images/s (goal on one H200: "
                f">= {GOAL_R50_BF16:g})"
            )
    result["wall_s"] = time.perf_counter() - t_start
    path = write_result("train_speed", result)
    _log(f"wrote {path} ({result['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
