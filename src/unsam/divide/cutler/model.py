"""CutLER's class-agnostic Cascade Mask R-CNN (ResNet-50 + FPN) as plain ``nn.Module``s.

Architecture and inference follow spec ``CUTLER_DETECTOR.md`` §1.2 and §2.2-§2.9 (detectron2
``GeneralizedRCNN`` with CutLER's ``CustomCascadeROIHeads``, the config UnSAM runs). The
architecture constants below are fixed by the released checkpoint; the tunable test-time
settings (resize, top-k, thresholds) are in :class:`unsam.divide.cutler.CutlerConfig`.

Module names are shorter than detectron2's; :data:`unsam.divide.cutler.checkpoint.KEY_RULES`
maps one onto the other. Every norm layer is a frozen BatchNorm (running statistics, eps 1e-5):
the checkpoint's SyncBN layers compute exactly that in eval mode.

bfloat16 (:func:`cast_for_inference`): the frozen BatchNorms are folded into their convolutions in
float32, then every convolution and fc layer runs in bf16 (weights and activations), except the
prediction layers (:data:`FLOAT32_LAYERS`): RPN objectness and deltas, the three box predictors
and the mask predictor. They are tiny (≤ 2.6 MFLOP per ROI) and their outputs are ranked (top-k,
NMS, the score threshold) or decoded into pixel coordinates, where bf16's 8-bit mantissa would
tie scores and move box corners by pixels. Anchors, box decoding, ROIAlign sampling, softmax and
sigmoid stay float32 too (named where they happen).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from unsam.divide.cutler.ops import (
    batched_nms,
    clip_boxes,
    decode_boxes,
    multilevel_roi_align,
    nonempty_boxes,
)

__all__ = [
    "FLOAT32_LAYERS",
    "ANCHOR_ASPECT_RATIOS",
    "ANCHOR_SIZES",
    "CASCADE_BOX_WEIGHTS",
    "FPN_STRIDES",
    "CascadeMaskRCNN",
    "FrozenBatchNorm2d",
    "cast_for_inference",
    "cell_anchors",
    "fold_frozen_batchnorm",
    "grid_anchors",
]

#: Strides of p2..p6; the RPN sees all five levels, the ROI heads p2..p5.
FPN_STRIDES = (4, 8, 16, 32, 64)
ROI_STRIDES = FPN_STRIDES[:4]
#: One anchor size per level p2..p6 and three aspect ratios (h / w) everywhere; offset 0.
ANCHOR_SIZES = (32.0, 64.0, 128.0, 256.0, 512.0)
ANCHOR_ASPECT_RATIOS = (0.5, 1.0, 2.0)
RPN_BOX_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
#: Box-regression weights of the three cascade stages.
CASCADE_BOX_WEIGHTS = ((10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0))
BOX_POOL = 7
MASK_POOL = 14
RESNET_BLOCKS = (3, 4, 6, 3)
FPN_CHANNELS = 256


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics: ``(x − running_mean) / sqrt(running_var + eps) · weight +
    bias``.

    All four tensors are buffers (same state-dict names as ``nn.BatchNorm2d``).
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )


class ConvNorm(nn.Conv2d):
    """Bias-free conv followed by a :class:`FrozenBatchNorm2d` named ``norm`` (detectron2
    layout)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0) -> None:
        super().__init__(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.norm = FrozenBatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(super().forward(x))


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck: stride on the 3×3 conv; projection shortcut iff channels change."""

    def __init__(self, cin: int, cmid: int, cout: int, stride: int) -> None:
        super().__init__()
        self.shortcut = ConvNorm(cin, cout, 1, stride=stride) if cin != cout else None
        self.conv1 = ConvNorm(cin, cmid, 1)
        self.conv2 = ConvNorm(cmid, cmid, 3, stride=stride, padding=1)
        self.conv3 = ConvNorm(cmid, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        out = self.conv3(out)
        out += x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out)


class Stem(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = ConvNorm(3, 64, 7, stride=2, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.relu_(self.conv1(x)), kernel_size=3, stride=2, padding=1)


class ResNet50(nn.Module):
    """Bottom-up ResNet-50: stem + res2..res5 (strides 4, 8, 16, 32; 256..2048 channels)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = Stem()
        cin = 64
        for k, blocks in enumerate(RESNET_BLOCKS):
            cmid, cout = 64 * 2**k, 256 * 2**k
            stage = [
                Bottleneck(cin if i == 0 else cout, cmid, cout, 2 if i == 0 and k else 1)
                for i in range(blocks)
            ]
            self.add_module(f"res{k + 2}", nn.Sequential(*stage))
            cin = cout

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outs = []
        for k in range(2, 6):
            x = getattr(self, f"res{k}")(x)
            outs.append(x)
        return outs


class FPN(nn.Module):
    """Top-down FPN with BN after each (bias-free) conv; P6 = P5[..., ::2, ::2]."""

    def __init__(self) -> None:
        super().__init__()
        ins = {str(k): 256 * 2 ** (k - 2) for k in range(2, 6)}
        self.lateral = nn.ModuleDict({k: ConvNorm(c, FPN_CHANNELS, 1) for k, c in ins.items()})
        self.output = nn.ModuleDict(
            {k: ConvNorm(FPN_CHANNELS, FPN_CHANNELS, 3, padding=1) for k in ins}
        )

    def forward(self, res: list[torch.Tensor]) -> list[torch.Tensor]:
        prev = self.lateral["5"](res[3])
        outs = [self.output["5"](prev)]
        for k in (4, 3, 2):
            prev = self.lateral[str(k)](res[k - 2]) + F.interpolate(
                prev, scale_factor=2.0, mode="nearest"
            )
            outs.insert(0, self.output[str(k)](prev))
        outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2, padding=0))
        return outs  # p2, p3, p4, p5, p6


class RPNHead(nn.Module):
    """Shared 3×3 conv + ReLU, then 1×1 objectness (A logits) and 1×1 deltas (4A) per location."""

    def __init__(self, num_anchors: int = len(ANCHOR_ASPECT_RATIOS)) -> None:
        super().__init__()
        self.conv = nn.Conv2d(FPN_CHANNELS, FPN_CHANNELS, 3, padding=1)
        self.objectness_logits = nn.Conv2d(FPN_CHANNELS, num_anchors, 1)
        self.anchor_deltas = nn.Conv2d(FPN_CHANNELS, 4 * num_anchors, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(1, 256, H, W)`` → logits ``(H·W·A,)`` and deltas ``(H·W·A, 4)``, location-major."""
        t = F.relu(self.conv(x))
        # the 1x1 prediction convs keep float32 weights (FLOAT32_LAYERS): logits are ranked
        t = t.to(self.objectness_logits.weight.dtype)
        logits = self.objectness_logits(t)
        n, a, h, w = logits.shape
        logits = logits.permute(0, 2, 3, 1).reshape(n, -1)[0]
        deltas = self.anchor_deltas(t).view(n, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(-1, 4)
        return logits, deltas


class BoxHead(nn.Module):
    """Two fc layers (12544 → 1024 → 1024) with ReLU on the flattened ``(C, 7, 7)`` features."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(FPN_CHANNELS * BOX_POOL * BOX_POOL, 1024)
        self.fc2 = nn.Linear(1024, 1024)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1).to(self.fc1.weight.dtype)  # float32 ROIAlign output → the layer dtype
        return F.relu(self.fc2(F.relu(self.fc1(x))))


class BoxPredictor(nn.Module):
    """Class logits (foreground, background) and one class-agnostic box delta per ROI."""

    def __init__(self) -> None:
        super().__init__()
        self.cls_score = nn.Linear(1024, 2)
        self.bbox_pred = nn.Linear(1024, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(self.cls_score.weight.dtype)  # float32 (FLOAT32_LAYERS): scores and deltas
        return self.cls_score(x), self.bbox_pred(x)


class MaskHead(nn.Module):
    """Four 3×3 conv+ReLU, 2×2 stride-2 deconv+ReLU, 1×1 predictor: ``(R,256,14,14)`` →
    ``(R,1,28,28)``."""

    def __init__(self) -> None:
        super().__init__()
        for k in range(1, 5):
            self.add_module(f"mask_fcn{k}", nn.Conv2d(FPN_CHANNELS, FPN_CHANNELS, 3, padding=1))
        self.deconv = nn.ConvTranspose2d(FPN_CHANNELS, FPN_CHANNELS, 2, stride=2)
        self.predictor = nn.Conv2d(FPN_CHANNELS, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.mask_fcn1.weight.dtype)  # float32 ROIAlign output → the layer dtype
        for k in range(1, 5):
            x = F.relu(getattr(self, f"mask_fcn{k}")(x))
        x = F.relu(self.deconv(x)).to(self.predictor.weight.dtype)  # float32 mask logits
        return self.predictor(x)


def cell_anchors(
    size: float, aspect_ratios: tuple[float, ...] = ANCHOR_ASPECT_RATIOS
) -> torch.Tensor:
    """``(A, 4)`` float32 anchors centred on 0: ``w = sqrt(size² / a)``, ``h = a·w`` (double →
    float32)."""
    anchors = []
    for a in aspect_ratios:
        w = math.sqrt(size**2 / a)
        h = a * w
        anchors.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return torch.tensor(anchors, dtype=torch.float64).float()


def grid_anchors(cells: torch.Tensor, grid_hw: tuple[int, int], stride: int) -> torch.Tensor:
    """All anchors of one level: ``(H·W·A, 4)`` float32, index ``(y·W + x)·A + a``, offset 0."""
    h, w = grid_hw
    shifts_x = torch.arange(0, w * stride, step=stride, dtype=torch.float32, device=cells.device)
    shifts_y = torch.arange(0, h * stride, step=stride, dtype=torch.float32, device=cells.device)
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
    shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
    shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
    return (shifts.view(-1, 1, 4) + cells.view(1, -1, 4)).reshape(-1, 4)


class CascadeMaskRCNN(nn.Module):
    """The detector's modules and its inference steps on one padded, normalised image.

    Submodules: ``resnet`` (bottom-up), ``fpn``, ``rpn`` (head), ``box_heads`` / ``box_predictors``
    (one per cascade stage), ``mask_head``. Weights are loaded with
    :func:`unsam.divide.cutler.checkpoint.load_cutler_state_dict`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.resnet = ResNet50()
        self.fpn = FPN()
        self.rpn = RPNHead()
        self.box_heads = nn.ModuleList([BoxHead() for _ in CASCADE_BOX_WEIGHTS])
        self.box_predictors = nn.ModuleList([BoxPredictor() for _ in CASCADE_BOX_WEIGHTS])
        self.mask_head = MaskHead()
        for size in ANCHOR_SIZES:  # recomputed, never loaded (not in the checkpoint)
            self.register_buffer(f"_cell_anchors_{int(size)}", cell_anchors(size), persistent=False)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(1, 3, Hp, Wp)`` normalised image (sides multiples of 32) → ``[p2, …, p6]``."""
        return self.fpn(self.resnet(x))

    def propose(
        self,
        feats: list[torch.Tensor],
        image_hw: tuple[int, int],
        pre_nms_topk: int,
        post_nms_topk: int,
        nms_thresh: float,
    ) -> torch.Tensor:
        """RPN proposals (spec §2.5): ``(R ≤ post_nms_topk, 4)`` float32 XYXY, clipped to
        ``image_hw``, by descending objectness."""
        boxes_all, logits_all, level_ids = [], [], []
        for level, (feat, stride, size) in enumerate(
            zip(feats, FPN_STRIDES, ANCHOR_SIZES, strict=True)
        ):
            logits, deltas = self.rpn(feat)
            anchors = grid_anchors(
                getattr(self, f"_cell_anchors_{int(size)}"), feat.shape[-2:], stride
            )
            k = min(logits.shape[0], pre_nms_topk)
            top_logits, top_idx = torch.topk(logits, k, sorted=True)
            boxes_all.append(decode_boxes(deltas[top_idx], anchors[top_idx], RPN_BOX_WEIGHTS))
            logits_all.append(top_logits)
            level_ids.append(torch.full((k,), level, dtype=torch.int64, device=logits.device))
        boxes = torch.cat(boxes_all)
        logits = torch.cat(logits_all)
        levels = torch.cat(level_ids)
        finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(logits)
        boxes, logits, levels = boxes[finite], logits[finite], levels[finite]
        boxes = clip_boxes(boxes, image_hw)
        keep = nonempty_boxes(boxes)
        boxes, logits, levels = boxes[keep], logits[keep], levels[keep]
        keep = batched_nms(boxes, logits, levels, nms_thresh)[:post_nms_topk]
        return boxes[keep]

    def detect_boxes(
        self, feats: list[torch.Tensor], proposals: torch.Tensor, image_hw: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Three cascade stages (spec §2.7).

        Returns:
            boxes ``(R, 4)`` float32 XYXY from the last stage (not clipped) and scores ``(R,)``,
            the mean of the three stages' softmax foreground probabilities, row-aligned with
            ``proposals``.
        """
        roi_feats = feats[: len(ROI_STRIDES)]
        probs = []
        boxes = proposals
        for k, weights in enumerate(CASCADE_BOX_WEIGHTS):
            if k > 0:
                boxes = clip_boxes(boxes, image_hw)
            x = multilevel_roi_align(roi_feats, boxes, BOX_POOL, ROI_STRIDES)
            logits, deltas = self.box_predictors[k](self.box_heads[k](x))
            boxes = decode_boxes(deltas, boxes, weights)  # float32 (decode_boxes casts)
            probs.append(F.softmax(logits.float(), dim=-1))  # float32: scores are thresholded
        scores = sum(probs) * (1.0 / len(probs))
        return boxes, scores[:, 0]

    def predict_masks(self, feats: list[torch.Tensor], boxes: torch.Tensor) -> torch.Tensor:
        """Mask probabilities ``(N, 28, 28)`` float32 for ``(N, 4)`` boxes in network-input
        pixels."""
        x = multilevel_roi_align(feats[: len(ROI_STRIDES)], boxes, MASK_POOL, ROI_STRIDES)
        if x.shape[0] == 0:
            return x.new_zeros(0, 2 * MASK_POOL, 2 * MASK_POOL)
        return torch.sigmoid(self.mask_head(x).float())[:, 0]


#: Layers that keep float32 weights when the detector runs in bf16 (see the module docstring).
FLOAT32_LAYERS = (
    "rpn.objectness_logits",
    "rpn.anchor_deltas",
    "box_predictors",
    "mask_head.predictor",
)


def fold_frozen_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every :class:`ConvNorm`'s frozen BatchNorm into its convolution, in float32, in place:
    ``W' = W * s``, ``b' = beta - mean * s`` with ``s = gamma / sqrt(var + eps)``; the norm becomes
    an identity. Same function up to float32 rounding, one pass fewer over each activation."""
    for mod in model.modules():
        if isinstance(mod, ConvNorm) and isinstance(mod.norm, FrozenBatchNorm2d):
            norm = mod.norm
            with torch.no_grad():
                scale = norm.weight.float() * torch.rsqrt(norm.running_var.float() + norm.eps)
                weight = mod.weight.float() * scale.view(-1, 1, 1, 1)
                bias = norm.bias.float() - norm.running_mean.float() * scale
            mod.weight = nn.Parameter(weight.to(mod.weight.dtype), requires_grad=False)
            mod.bias = nn.Parameter(bias.to(mod.weight.dtype), requires_grad=False)
            mod.norm = nn.Identity()
    return model


def cast_for_inference(model: CascadeMaskRCNN, dtype: torch.dtype) -> CascadeMaskRCNN:
    """The detector with bf16 weights (in place): BatchNorms folded in float32 first, then every
    layer cast to ``dtype`` except :data:`FLOAT32_LAYERS` and the anchor buffers (float32).
    ``dtype=torch.float32`` returns the model unchanged (the official numerics)."""
    if dtype == torch.float32:
        return model
    fold_frozen_batchnorm(model)
    keep = tuple(FLOAT32_LAYERS)
    for name, mod in model.named_modules():
        if not name or any(name == k or name.startswith(k + ".") for k in keep):
            continue
        for pname, param in list(mod.named_parameters(recurse=False)):
            param.data = param.data.to(dtype)
        for bname, buf in list(mod.named_buffers(recurse=False)):
            if buf is not None and buf.is_floating_point():
                setattr(mod, bname, buf.to(dtype))
    return model
