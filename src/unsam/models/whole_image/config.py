"""Whole-image Mask2Former: model sizes, backbone initialisation, frozen BatchNorm, preprocessing.

This is the only module that knows model sizes (spec §6.1, §6.2, §11.2, Appendix C):

- ``"r50"``: the paper's model. ResNet-50 (torchvision geometry: stride in the 3x3 conv),
  MSDeformAttn pixel decoder with 6 encoder layers, a 10-layer masked-attention decoder, 2000
  queries, one foreground class (+ no-object), loss weights class 2 / mask 5 / dice 5, no-object
  0.1, 12544 sampled points (oversample 3, importance 0.75). ~44 M parameters.
- ``"tiny"``: the same architecture with one small bottleneck block per stage and narrow
  transformer layers, for tests and CPU experiments (well under 1 s per training step at 256²).

Models are plain :class:`transformers.Mask2FormerForUniversalSegmentation` instances, so
``save_pretrained`` / ``from_pretrained`` round-trip config and weights (safetensors).

Class index convention (transformers and the original agree): logit 0 = object, last logit =
no-object.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from unsam.masks import resize_image

if TYPE_CHECKING:
    from transformers import Mask2FormerForUniversalSegmentation

__all__ = [
    "IMAGE_MEAN",
    "IMAGE_STD",
    "MODEL_NAMES",
    "FrozenBatchNorm2d",
    "build_model",
    "model_config",
    "freeze_batchnorm",
    "backbone_module",
    "load_backbone_checkpoint",
    "torchvision_resnet_key_map",
    "resized_hw",
    "preprocess",
]

logger = logging.getLogger(__name__)

#: Pixel mean / std in 0-255 RGB units (ImageNet statistics x 255; spec §6.1, original Base yaml).
IMAGE_MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)
IMAGE_STD: tuple[float, float, float] = (58.395, 57.12, 57.375)

MODEL_NAMES: tuple[str, ...] = ("r50", "tiny")

_OUT_FEATURES = ["stage1", "stage2", "stage3", "stage4"]


#: ResNet backbone of each model size (transformers ``ResNetConfig`` arguments).
_BACKBONES: dict[str, dict[str, Any]] = {
    "r50": dict(
        depths=[3, 4, 6, 3],
        hidden_sizes=[256, 512, 1024, 2048],
        embedding_size=64,
        layer_type="bottleneck",
        downsample_in_first_stage=False,
        downsample_in_bottleneck=False,  # stride in the 3x3 conv (STRIDE_IN_1X1: False)
    ),
    "tiny": dict(
        depths=[1, 1, 1, 1],
        hidden_sizes=[32, 64, 128, 256],
        embedding_size=16,  # < hidden_sizes[0], so stage 0 has a shortcut conv like ResNet-50
        layer_type="bottleneck",
        downsample_in_first_stage=False,
        downsample_in_bottleneck=False,
    ),
}

#: Pixel decoder / transformer decoder of each model size (``Mask2FormerConfig`` arguments).
_DECODERS: dict[str, dict[str, Any]] = {
    "r50": dict(
        num_queries=2000,
        feature_size=256,
        mask_feature_size=256,
        hidden_dim=256,
        encoder_feedforward_dim=1024,
        encoder_layers=6,
        decoder_layers=10,  # 9 layers + the prediction from the learnable queries
        num_attention_heads=8,
        dim_feedforward=2048,
        train_num_points=12544,
    ),
    "tiny": dict(
        num_queries=50,
        feature_size=64,
        mask_feature_size=64,
        hidden_dim=64,
        encoder_feedforward_dim=128,
        encoder_layers=1,
        decoder_layers=3,
        num_attention_heads=4,
        dim_feedforward=128,
        train_num_points=2048,
    ),
}


def model_config(name: Literal["r50", "tiny"] = "r50", *, num_queries: int | None = None) -> Any:
    """The :class:`transformers.Mask2FormerConfig` of a named model size.

    Args:
        name: ``"r50"`` (the paper's model, spec Appendix C) or ``"tiny"`` (tests, CPU experiments).
        num_queries: override the number of object queries (r50: 2000, tiny: 50).

    Returns:
        A ``Mask2FormerConfig`` with a ResNet backbone config, ``num_labels=1``.

    Raises:
        ValueError: unknown name or a non-positive ``num_queries``.
    """
    from transformers import Mask2FormerConfig, ResNetConfig

    if name not in MODEL_NAMES:
        raise ValueError(
            f"unknown whole-image model {name!r}; choose one of {', '.join(MODEL_NAMES)}"
        )
    if num_queries is not None and (isinstance(num_queries, bool) or int(num_queries) < 1):
        raise ValueError(f"num_queries must be a positive integer, got {num_queries!r}")
    backbone = ResNetConfig(**_BACKBONES[name], out_features=list(_OUT_FEATURES))
    kwargs: dict[str, Any] = dict(_DECODERS[name])
    if num_queries is not None:
        kwargs["num_queries"] = int(num_queries)
    # transformers warns "Backbone resnet is not a supported model" for any non-Swin backbone;
    # it builds and runs correctly (spec Appendix C note 9), so silence that one warning.
    tf_logger = logging.getLogger("transformers.models.mask2former.configuration_mask2former")
    previous = tf_logger.level
    tf_logger.setLevel(logging.ERROR)
    try:
        return Mask2FormerConfig(
            backbone_config=backbone,
            num_labels=1,
            dropout=0.0,
            pre_norm=False,
            enforce_input_projection=False,
            common_stride=4,
            no_object_weight=0.1,
            class_weight=2.0,
            mask_weight=5.0,
            dice_weight=5.0,
            oversample_ratio=3.0,
            importance_sample_ratio=0.75,
            use_auxiliary_loss=True,
            feature_strides=[4, 8, 16, 32],
            id2label={0: "object"},
            label2id={"object": 0},
            **kwargs,
        )
    finally:
        tf_logger.setLevel(previous)


def build_model(
    name: Literal["r50", "tiny"] = "r50",
    *,
    num_queries: int | None = None,
    backbone_checkpoint: str | os.PathLike[str] | None = None,
) -> Mask2FormerForUniversalSegmentation:
    """Build a randomly initialised whole-image Mask2Former (optionally with a local backbone).

    The model is returned in training mode with ordinary (trainable) BatchNorm; call
    :func:`freeze_batchnorm` to get the original's FrozenBN behaviour (spec Appendix C note 8).

    Args:
        name: ``"r50"`` or ``"tiny"`` (see :func:`model_config`).
        num_queries: override the number of object queries.
        backbone_checkpoint: a local ResNet checkpoint (e.g. DINO's ``dino_resnet50_pretrain.pth``)
            loaded with :func:`load_backbone_checkpoint`; None keeps the random initialisation.

    Returns:
        A ``transformers.Mask2FormerForUniversalSegmentation``.
    """
    from transformers import Mask2FormerForUniversalSegmentation

    config = model_config(name, num_queries=num_queries)
    model = Mask2FormerForUniversalSegmentation(config)
    if backbone_checkpoint is not None:
        load_backbone_checkpoint(model, backbone_checkpoint)
    return model


# --------------------------------------------------------------------------------------------
# Frozen BatchNorm
# --------------------------------------------------------------------------------------------


class FrozenBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that always normalises with its stored statistics (detectron2's FrozenBN).

    It stays in eval mode whatever ``train()`` is called with, never updates its running
    statistics, and its affine weight/bias do not require gradients. Parameter and buffer names
    are those of ``nn.BatchNorm2d`` (``weight, bias, running_mean, running_var,
    num_batches_tracked``), so state dicts and ``save_pretrained`` folders are unchanged.
    """

    @classmethod
    def from_batchnorm(cls, bn: nn.BatchNorm2d) -> FrozenBatchNorm2d:
        """A frozen copy of ``bn`` (same tensors, same device and dtype)."""
        frozen = cls(
            bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=True, track_running_stats=True
        )
        frozen = frozen.to(device=bn.running_mean.device if bn.running_mean is not None else "cpu")
        with torch.no_grad():
            if bn.affine:
                frozen.weight.copy_(bn.weight)
                frozen.bias.copy_(bn.bias)
            if bn.running_mean is not None:
                frozen.running_mean.copy_(bn.running_mean)
                frozen.running_var.copy_(bn.running_var)
                frozen.num_batches_tracked.copy_(bn.num_batches_tracked)
        frozen.weight.requires_grad_(False)
        frozen.bias.requires_grad_(False)
        frozen.training = False
        return frozen

    def train(self, mode: bool = True) -> FrozenBatchNorm2d:  # noqa: ARG002 - always eval
        self.training = False
        return self

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - nn.Module signature
        return F.batch_norm(
            input, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )


def backbone_module(model: nn.Module) -> nn.Module:
    """The ResNet backbone of a Mask2FormerForUniversalSegmentation
    (``model.pixel_level_module.encoder``)."""
    try:
        return model.get_submodule("model.pixel_level_module.encoder")
    except AttributeError:
        raise ValueError(
            f"{type(model).__name__} has no 'model.pixel_level_module.encoder'; expected a "
            "transformers Mask2FormerForUniversalSegmentation built by "
            "unsam.models.whole_image.build_model"
        ) from None


def freeze_batchnorm(model: nn.Module) -> int:
    """Freeze the backbone's BatchNorm layers in place, like detectron2's FrozenBN
    (spec App. C note 8).

    Every ``nn.BatchNorm2d`` of the backbone is *replaced* by a :class:`FrozenBatchNorm2d` holding
    the same tensors: it normalises with the running statistics in both train and eval mode, stays
    in eval mode after ``model.train()``, never updates its statistics, and its weight/bias have
    ``requires_grad=False``. Convolutions stay trainable (``FREEZE_AT: 0``). State-dict keys are
    unchanged. Idempotent. Call it after loading weights and before building the optimizer; a
    model reloaded with ``from_pretrained`` has plain BatchNorm again and needs another call.

    Args:
        model: a Mask2FormerForUniversalSegmentation (or any module; then all of its BN layers).

    Returns:
        The number of BatchNorm layers replaced.
    """
    try:
        root = backbone_module(model)
    except ValueError:
        root = model
    replaced = 0
    for name, module in list(root.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.BatchNorm2d) and not isinstance(child, FrozenBatchNorm2d):
                setattr(module, child_name, FrozenBatchNorm2d.from_batchnorm(child))
                replaced += 1
    return replaced


# --------------------------------------------------------------------------------------------
# Backbone initialisation from a local ResNet checkpoint
# --------------------------------------------------------------------------------------------

_BN_FIELDS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def torchvision_resnet_key_map(
    depths: tuple[int, ...] | list[int] = (3, 4, 6, 3),
) -> dict[str, str]:
    """torchvision-style ResNet key -> transformers ``ResNetBackbone`` key (without the model
    prefix).

    torchvision / DINO -> transformers ResNetBackbone:

    - ``conv1.weight`` -> ``embedder.embedder.convolution.weight``
    - ``bn1.{N}`` -> ``embedder.embedder.normalization.{N}``
    - ``layer{s}.{j}.conv{c}.weight`` ->
      ``encoder.stages.{s-1}.layers.{j}.layer.{c-1}.convolution.weight``
    - ``layer{s}.{j}.bn{c}.{N}`` ->
      ``encoder.stages.{s-1}.layers.{j}.layer.{c-1}.normalization.{N}``
    - ``layer{s}.0.downsample.0.weight`` ->
      ``encoder.stages.{s-1}.layers.0.shortcut.convolution.weight``
    - ``layer{s}.0.downsample.1.{N}`` ->
      ``encoder.stages.{s-1}.layers.0.shortcut.normalization.{N}``

    ``N`` is one of weight, bias, running_mean, running_var, num_batches_tracked.
    """
    table = {"conv1.weight": "embedder.embedder.convolution.weight"}
    for n in _BN_FIELDS:
        table[f"bn1.{n}"] = f"embedder.embedder.normalization.{n}"
    for s, depth in enumerate(depths, start=1):
        for j in range(depth):
            src = f"layer{s}.{j}"
            dst = f"encoder.stages.{s - 1}.layers.{j}"
            for c in (1, 2, 3):
                table[f"{src}.conv{c}.weight"] = f"{dst}.layer.{c - 1}.convolution.weight"
                for n in _BN_FIELDS:
                    table[f"{src}.bn{c}.{n}"] = f"{dst}.layer.{c - 1}.normalization.{n}"
            if j == 0:
                table[f"{src}.downsample.0.weight"] = f"{dst}.shortcut.convolution.weight"
                for n in _BN_FIELDS:
                    table[f"{src}.downsample.1.{n}"] = f"{dst}.shortcut.normalization.{n}"
    return table


_IGNORED_PREFIXES = ("fc.", "head.")


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensor dict inside a checkpoint (plain, or under state_dict / model / teacher)."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "teacher"):
            inner = obj.get(key)
            if isinstance(inner, dict) and any(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(
            f"{path}: no tensor dict found; expected a ResNet state_dict "
            "(e.g. dino_resnet50_pretrain.pth)"
        )
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            continue
        key = re.sub(r"^(module\.)?(backbone\.)?", "", str(key))
        out[key] = value
    return out


def load_backbone_checkpoint(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load a local torchvision-style ResNet checkpoint into the model's ResNet backbone, strictly.

    Accepts a plain state dict or one nested under ``state_dict`` / ``model`` / ``teacher``
    (DINO's full checkpoint); ``module.`` and ``backbone.`` prefixes are stripped; ``fc.*`` and
    ``head.*`` (classifier / DINO head) are ignored. Keys are mapped with
    :func:`torchvision_resnet_key_map`. ``num_batches_tracked`` may be absent.

    Args:
        model: a Mask2FormerForUniversalSegmentation with a ResNet backbone.
        path: the ``.pth`` file, read with ``torch.load(weights_only=True)``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unreadable file, missing or unexpected keys, or shape mismatches (named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors of every kind
        raise ValueError(
            f"{path}: cannot read it with torch.load(weights_only=True) "
            f"({type(exc).__name__}: {exc}); "
            "pass a torch .pth state_dict (detectron2 .pkl files are not supported)"
        ) from None
    source = _unwrap_state_dict(obj, path)
    backbone = backbone_module(model)
    target = backbone.state_dict()
    backbone_config = getattr(getattr(model, "config", None), "backbone_config", None)
    depths = tuple(getattr(backbone_config, "depths", None) or (3, 4, 6, 3))
    table = torchvision_resnet_key_map(depths)
    mapped: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for key, value in source.items():
        if key.startswith(_IGNORED_PREFIXES):
            continue
        dst = table.get(key)
        if dst is None or dst not in target:
            unexpected.append(key)
            continue
        if tuple(value.shape) != tuple(target[dst].shape):
            raise ValueError(
                f"{path}: {key} has shape {tuple(value.shape)} but the backbone's {dst} has "
                f"{tuple(target[dst].shape)}; is it a ResNet of the same depth/width as the model?"
            )
        mapped[dst] = value.to(target[dst].dtype)
    missing = [k for k in target if k not in mapped and not k.endswith("num_batches_tracked")]
    if unexpected or missing:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise ValueError(
            f"{path}: does not match the model's ResNet backbone: {'; '.join(parts)}; expected "
            "torchvision-style ResNet keys (conv1.weight, bn1.*, layer1.0.conv1.weight, ...)"
        )
    backbone.load_state_dict(mapped, strict=False)
    logger.info("loaded %d backbone tensors from %s", len(mapped), path)


# --------------------------------------------------------------------------------------------
# Preprocessing (shared by training and inference)
# --------------------------------------------------------------------------------------------


def resized_hw(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """Output (H, W) of detectron2's ``ResizeShortestEdge`` (test resize, spec §6.5).

    The shorter side becomes ``min_size`` unless the longer side would then exceed ``max_size``,
    in which case the longer side becomes ``max_size``; sides are rounded half up.
    """
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got (H, W) = ({height}, {width})")
    scale = min_size / min(height, width)
    new_h, new_w = height * scale, width * scale
    if max(new_h, new_w) > max_size:
        shrink = max_size / max(new_h, new_w)
        new_h, new_w = new_h * shrink, new_w * shrink
    return int(new_h + 0.5), int(new_w + 0.5)


def preprocess(
    image: npt.NDArray[np.uint8],
    *,
    min_size: int | None = None,
    max_size: int | None = None,
    size_divisibility: int = 32,
    mean: tuple[float, float, float] = IMAGE_MEAN,
    std: tuple[float, float, float] = IMAGE_STD,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """RGB uint8 image -> normalised, zero-padded model input, as the original does it.

    Steps: optional resize of the shorter side to ``min_size`` (longer side <= ``max_size``; PIL
    bilinear, like detectron2's ``ResizeShortestEdge``), then ``(x - mean) / std`` in 0-255 units,
    then zero padding at the bottom/right to a multiple of ``size_divisibility`` (detectron2's
    ``ImageList.from_tensors`` pads the normalised image with 0). Use :func:`resized_hw` to know
    the valid region ``[:h, :w]`` of the result.

    Args:
        image: (H, W, 3) uint8 RGB.
        min_size: target shorter side in pixels, or None for no resize.
        max_size: cap on the longer side in pixels (needed with ``min_size``).
        size_divisibility: pad height and width to a multiple of this (0 or 1: no padding).
        mean, std: per-channel statistics in 0-255 RGB units.
        device: where the tensor is created.

    Returns:
        (1, 3, H', W') float32 tensor.

    Raises:
        ValueError: wrong image shape or dtype, or ``min_size`` without ``max_size``.
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        raise ValueError(f"image must be an (H, W, 3) uint8 RGB array, got shape {shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 RGB (0-255), got dtype {image.dtype}")
    if min_size is not None:
        if max_size is None:
            raise ValueError("preprocess: min_size needs max_size as well")
        hw = resized_hw(image.shape[0], image.shape[1], int(min_size), int(max_size))
        image = resize_image(image, hw, Image.BILINEAR)
    pixels = torch.from_numpy(np.require(image, requirements=["C", "W"]))
    if torch.device(device).type == "cpu":
        x = pixels.permute(2, 0, 1).to(torch.float32)
        m = torch.tensor(mean, dtype=torch.float32)[:, None, None]
        s = torch.tensor(std, dtype=torch.float32)[:, None, None]
        x = (x - m) / s
    else:
        # uint8 from pinned memory, copied without waiting; the statistics as scalars (the same
        # float32 values), so nothing here synchronises with the device
        x = pixels.pin_memory().to(device, non_blocking=True).permute(2, 0, 1).to(torch.float32)
        x = torch.stack([(x[c] - float(mean[c])) / float(std[c]) for c in range(3)])
    if size_divisibility > 1:
        h, w = x.shape[1:]
        pad_h = (-h) % size_divisibility
        pad_w = (-w) % size_divisibility
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), value=0.0)
    return x[None]
