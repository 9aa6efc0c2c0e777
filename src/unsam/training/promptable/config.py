"""Training settings of the promptable model (PROMPTABLE.md §1.6-1.7, §3); defaults are the
original's.

One flat frozen dataclass, so that ``unsam train-promptable`` generates one flag per field. The
loss and matcher parts are handed to the plain functions as :class:`LossConfig` /
:class:`MatcherConfig` (:meth:`PromptableTrainConfig.loss_config`, :meth:`matcher_config`).

The schedule is the yaml's (400k iterations, LR drops at 355,552 and 385,184, stored as fractions
so shorter runs keep its shape); the released checkpoints were taken at 100k iterations (spec §7.4).
``batch_size`` is the global batch (the original: 1 image on each of 4 GPUs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from unsam.config import param
from unsam.training.promptable.losses import LossConfig
from unsam.training.promptable.matching import MatcherConfig

__all__ = ["CONFIG_DEFAULTS", "DEFAULT_IMAGE_SIZE", "LR_STEP_FRACTIONS", "PromptableTrainConfig"]

#: LR milestones 355,552 and 385,184 of 400,000 iterations (``cfg:289-308``).
LR_STEP_FRACTIONS: tuple[float, ...] = (355_552 / 400_000, 385_184 / 400_000)

#: Training image side when ``image_size`` is None: the paper's 1024 for swin_t, CPU-sized for tiny.
DEFAULT_IMAGE_SIZE = {"swin_t": 1024, "tiny": 128}

#: Training defaults of each model config, applied by :meth:`PromptableTrainConfig.for_model` to
#: the fields the user did not set. swin_t: the paper's schedule (a GPU job; 30-80 s a step on 2
#: CPU cores). tiny: a CPU recipe (README, ``benchmarks/promptable_recipe.py``): 1500 steps of one
#: 128-px image, 20 clicks and 256 loss points, lr 1e-3, the IoU head trained on every token, one
#: torch thread. Measured on the bundled examples/coco images (issue 16).
CONFIG_DEFAULTS: dict[str, dict[str, object]] = {
    "swin_t": {},
    "tiny": {
        "max_steps": 1500,
        "batch_size": 1,
        "lr": 1e-3,
        "num_clicks": 20,
        "num_points": 256,
        "iou_unmatched": True,
        "checkpoint_every": 500,
        "num_threads": 1,
    },
}


@dataclass(frozen=True)
class PromptableTrainConfig:
    """Promptable-model training (spec §1.7 optimiser, §3 prompts and losses)."""

    config: Literal["swin_t", "tiny"] = param(
        "swin_t", "model size: swin_t (the paper's) or tiny (tests / CPU)"
    )
    backbone_init: str | None = param(
        None,
        "local Swin-T / MoBY checkpoint (.pth) for the backbone (the paper: MoBY Swin-T 300 ep); "
        "None = random",
    )
    max_steps: int = param(
        400_000, "optimizer steps (the yaml: 400,000; released checkpoints: 100,000)"
    )
    batch_size: int = param(
        4, "global images per step, split over torchrun processes (the original: 4 GPUs x 1)"
    )
    lr: float = param(1e-4, "base AdamW learning rate")
    backbone_lr_mult: float = param(0.1, "learning-rate multiplier of the Swin backbone")
    weight_decay: float = param(
        0.05, "AdamW weight decay (biases included; norms, embeddings, Swin tables: none)"
    )
    weight_decay_norm: float = param(0.0, "weight decay of normalisation layers")
    weight_decay_embed: float = param(0.0, "weight decay of nn.Embedding and Swin position tables")
    grad_clip: float = param(0.01, "max L2 norm of the full-model gradient; 0 disables clipping")
    lr_steps: tuple[float, ...] = param(
        LR_STEP_FRACTIONS, "LR drops at these fractions of max_steps"
    )
    lr_gamma: float = param(0.1, "LR factor applied at each lr_steps milestone")
    warmup_steps: int = param(
        10, "linear warmup steps (the original: 10 with factor 1.0, i.e. none)"
    )
    warmup_factor: float = param(1.0, "LR factor at step 0 of the warmup (1.0 = no warmup)")
    image_size: int | None = param(
        None,
        "square training image side, pixels, multiple of 32 (the image is fitted into it); None = "
        "1024 for swin_t, 128 for tiny",
    )
    min_scale: float = param(
        0.99, "ResizeScale lower bound (the image is fitted into image_size * scale)"
    )
    max_scale: float = param(1.01, "ResizeScale upper bound")
    hflip: bool = param(True, "random horizontal flip (probability 0.5)")
    max_masks_per_image: int = param(
        500, "masks sampled per image load, uniformly without replacement"
    )
    num_clicks: int = param(60, "clicks per image (MAX_NUM_INSTANCE)")
    click_box_px: float = param(6.0, "side of a click's reference box, pixels (x - 3 .. x + 3)")
    box_noise_scale: float = param(
        0.4, "click-box noise scale (DN_NOISE_SCALE; times 0.01 for point prompts)"
    )
    num_points: int = param(12544, "points per mask for the matcher and the mask losses")
    oversample_ratio: float = param(3.0, "PointRend oversampling of loss points")
    importance_sample_ratio: float = param(0.75, "fraction of loss points chosen by uncertainty")
    weight_mask: float = param(5.0, "mask BCE weight (also the matcher's CE cost)")
    weight_dice: float = param(5.0, "dice weight (also the matcher's dice cost)")
    weight_box: float = param(5.0, "box L1 weight (also the matcher's L1 cost)")
    weight_giou: float = param(2.0, "box GIoU weight (also the matcher's GIoU cost)")
    weight_iou: float = param(1.0, "IoU-head MSE weight")
    deep_supervision: bool = param(
        True, "same losses on every auxiliary decoder layer (same matching)"
    )
    iou_unmatched: bool = param(
        False,
        "also train the IoU head on tokens without a target: it regresses the soft dice of their "
        "mask with their click's best target (detached). The original leaves them unsupervised "
        "(spec §3.7), so Point(Max) often picks a token whose predicted IoU means nothing",
    )
    dtype: Literal["float32", "bfloat16"] = param(
        "float32",
        "training precision: float32, or bfloat16 = autocast mixed precision (float32 master "
        "weights and AdamW state, matrix products in bfloat16; AdamW cannot train bfloat16 "
        "weights reliably). Replaces the bf16 flag of older runs, which still resume",
    )
    checkpoint_every: int = param(
        5000, "save a resumable checkpoint every N steps (and at the end)"
    )
    keep_checkpoints: int = param(3, "keep only the newest N step checkpoints; 0 keeps all")
    seed: int = param(0, "seed of data order, augmentation, clicks, point sampling and init")
    num_workers: int = param(0, "data-loading worker processes per training process")
    num_threads: int = param(
        0,
        "torch intra-op threads of each training process while it trains; 0 = torch's default "
        "(one per core). Small models train faster on 1 on a busy machine: there the tiny "
        "recipe's step cost 3.1 s of CPU with 2 threads on 2 shared cores, 0.17 s with 1",
    )
    device: str = param(
        "cpu",
        'where training runs: "auto" (CUDA when present), "cpu", "cuda" or "cuda:N"; each '
        "torchrun process on CUDA uses cuda:LOCAL_RANK (the CLI's --device, default auto)",
    )

    @classmethod
    def for_model(cls, config: str = "swin_t", **values: object) -> PromptableTrainConfig:
        """A PromptableTrainConfig for model config ``config`` with :data:`CONFIG_DEFAULTS` under
        ``values`` (what the user set wins)."""
        if config not in CONFIG_DEFAULTS:
            raise ValueError(
                f"PromptableTrainConfig.config={config!r}: expected one of "
                f"{sorted(CONFIG_DEFAULTS)}"
            )
        return cls(config=config, **{**CONFIG_DEFAULTS[config], **values})  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        from unsam.runtime import dtype_name, resolve_dtype

        # "bf16" / torch.bfloat16 -> "bfloat16", so that stored settings compare equal
        object.__setattr__(self, "dtype", dtype_name(resolve_dtype(self.dtype)))
        for name in (
            "max_steps",
            "batch_size",
            "lr",
            "checkpoint_every",
            "max_masks_per_image",
            "num_clicks",
            "num_points",
            "click_box_px",
            "lr_gamma",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"PromptableTrainConfig.{name}={getattr(self, name)} must be > 0")
        for name in (
            "backbone_lr_mult",
            "weight_decay",
            "weight_decay_norm",
            "weight_decay_embed",
            "grad_clip",
            "box_noise_scale",
            "weight_mask",
            "weight_dice",
            "weight_box",
            "weight_giou",
            "weight_iou",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"PromptableTrainConfig.{name}={getattr(self, name)} must be >= 0")
        if any(not 0.0 < f <= 1.0 for f in self.lr_steps) or list(self.lr_steps) != sorted(
            self.lr_steps
        ):
            raise ValueError(
                f"PromptableTrainConfig.lr_steps={self.lr_steps} must be ascending fractions "
                "in (0, 1]"
            )
        if self.warmup_steps < 0 or not 0.0 < self.warmup_factor <= 1.0:
            raise ValueError(
                "PromptableTrainConfig: warmup_steps must be >= 0 and warmup_factor in (0, 1]"
            )
        if self.image_size is not None and (self.image_size < 32 or self.image_size % 32):
            raise ValueError(
                f"PromptableTrainConfig.image_size={self.image_size} must be a positive "
                "multiple of 32"
            )
        if not 0.0 < self.min_scale <= self.max_scale:
            raise ValueError(
                f"PromptableTrainConfig: need 0 < min_scale <= max_scale, got {self.min_scale}, "
                f"{self.max_scale}"
            )
        if self.keep_checkpoints < 0 or self.num_workers < 0 or self.num_threads < 0:
            raise ValueError(
                "PromptableTrainConfig.keep_checkpoints, num_workers and num_threads must be >= 0"
            )
        if self.config not in DEFAULT_IMAGE_SIZE:
            raise ValueError(
                f"PromptableTrainConfig.config={self.config!r}: expected one of "
                f"{sorted(DEFAULT_IMAGE_SIZE)}"
            )
        self.loss_config()  # validates the point-sampling fields

    @property
    def resolved_image_size(self) -> int:
        """Training image side in pixels."""
        return self.image_size if self.image_size is not None else DEFAULT_IMAGE_SIZE[self.config]

    def lr_milestones(self) -> tuple[int, ...]:
        """Steps at which the LR is multiplied by ``lr_gamma``."""
        return tuple(round(f * self.max_steps) for f in self.lr_steps)

    def loss_config(self) -> LossConfig:
        return LossConfig(
            weight_mask=self.weight_mask,
            weight_dice=self.weight_dice,
            weight_box=self.weight_box,
            weight_giou=self.weight_giou,
            weight_iou=self.weight_iou,
            num_points=self.num_points,
            oversample_ratio=self.oversample_ratio,
            importance_sample_ratio=self.importance_sample_ratio,
            deep_supervision=self.deep_supervision,
            iou_unmatched=self.iou_unmatched,
        )

    def matcher_config(self) -> MatcherConfig:
        return MatcherConfig(
            cost_mask=self.weight_mask,
            cost_dice=self.weight_dice,
            cost_box=self.weight_box,
            cost_giou=self.weight_giou,
            num_points=self.num_points,
        )
