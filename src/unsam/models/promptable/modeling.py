"""The promptable model: Swin backbone, deformable pixel decoder, interactive decoder, heads.

This module assembles them (:class:`PromptableModel`) and holds the per-image state and the
decoder outputs; the parts live in ``backbone``, ``pixel_decoder``, ``decoder`` and ``layers``.

Semantic-SAM's interactive model as UnSAM uses it (spec PROMPTABLE.md §2). Module names under
``sem_seg_head`` are the official ones, so the official checkpoint loads by identity there; the
backbone is transformers' ``SwinBackbone`` (mapping in :mod:`unsam.models.promptable.convert`).

The forward pass is split in two:

- :meth:`PromptableModel.encode_image` runs everything that depends only on the image (backbone,
  pixel decoder, mask features, and each decoder layer's value projection of the memory) and
  returns an :class:`ImageState`.
- :meth:`PromptableModel.decode_clicks` turns N clicks into ``6 N`` queries, runs the decoder and
  the heads, and returns mask logits ``(N, 6, h, w)`` and predicted IoU ``(N, 6)``. It is cheap and
  differentiable, so training and interactive use share it.

Two documented quirks of the original are kept for parity (spec §8.5): the decoder output is
normalised twice before the heads, and the output box uses the doubly normalised state while the
next layer's reference uses the raw state.

Reduced precision (:meth:`PromptableModel.cast`): weights and activations of the backbone, the
pixel decoder, the decoder and the heads in bfloat16 (not autocast). These stay float32, each named
where it happens: the pixel normalisation (``normalize_and_pad``), the deformable attention's
sampling (value maps, locations, softmax; ``msda``), reference points and boxes (box decoding:
``initial_queries``, ``decode_boxes``, the box head), and the heads' outputs (mask logits,
predicted IoU: ``InteractiveDecoder.heads``), so the upsampling, the mask threshold, the
stability score and the records are float32.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from unsam.models.promptable.backbone import _swin_backbone
from unsam.models.promptable.config import CONFIG_FILE, PromptableConfig
from unsam.models.promptable.decoder import InteractiveDecoder
from unsam.models.promptable.layers import (
    DEMO_BOX_FRACTION,
    box_sine_embedding,
    click_boxes,
    inverse_sigmoid,
    onednn_packing_supported,
    pack_weight,
)
from unsam.models.promptable.pixel_decoder import PixelDecoder

__all__ = [
    "WEIGHTS_FILE",
    "ClickDecoderOutput",
    "ImageState",
    "PromptableModel",
    "build_model",
]

#: Weights file inside a ``save_pretrained`` folder.
WEIGHTS_FILE = "model.safetensors"


@dataclass
class ImageState:
    """Everything of the forward pass that depends only on the image (spec §2.2).

    Attributes:
        mask_features: ``(B, C, Hp/4, Wp/4)`` in the model's dtype, the 1/4-resolution per-pixel
            embeddings.
        values: one entry per decoder layer; each is 4 tensors ``(B * M, C / M, H_l, W_l)`` float32
            (the layer's ``cross_attn.value_proj`` of the memory, split per head; levels in decoder
            order s64, s32, s16, s8; float32 whatever the model's dtype: the sampling's dtype).
        image_hw: (H, W) of the unpadded model input, pixels.
        padded_hw: (Hp, Wp) of the padded model input (multiples of 32).
        packed_mask_features: on the CPU in bfloat16 outside autograd, ``mask_features`` of the
            one image as an ``(Hp/4 · Wp/4, C)`` linear weight packed by oneDNN (the clicks' mask
            product reads it; :func:`~unsam.models.promptable.decoder.mask_product`); else None.
    """

    mask_features: torch.Tensor
    values: tuple[tuple[torch.Tensor, ...], ...]
    image_hw: tuple[int, int]
    padded_hw: tuple[int, int]
    packed_mask_features: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.mask_features.shape[0])

    def select(self, index: int) -> ImageState:
        """The state of image ``index`` of the batch (batch size 1)."""
        b = self.batch_size
        if not 0 <= index < b:
            raise IndexError(f"image index {index} is outside the batch of {b}")
        m = self.values[0][0].shape[0] // b if self.values else 1
        values = tuple(
            tuple(v[index * m : (index + 1) * m] for v in layer) for layer in self.values
        )
        packed = self.packed_mask_features if b == 1 else None
        return ImageState(
            self.mask_features[index : index + 1], values, self.image_hw, self.padded_hw, packed
        )


@dataclass
class ClickDecoderOutput:
    """Decoder outputs for N clicks (T = 6 granularity tokens each).

    Attributes:
        mask_logits: ``(N, T, Hp/4, Wp/4)`` float, last layer, at 1/4 of the padded input.
        iou: ``(N, T)`` float, last layer's raw predicted IoU (no sigmoid).
        boxes: ``(N, T, 4)`` float, last layer's (cx, cy, w, h) normalised to the padded input.
        mask_embeddings: ``(N, T, C)`` float, last layer's per-query mask embedding; mask logits
            = ``mask_product(mask_embeddings, state.mask_features)``.
        aux: ``(mask_logits, iou, boxes)`` of layers 0 .. L-2 (deep supervision), shapes as above;
            empty unless requested.
    """

    mask_logits: torch.Tensor
    iou: torch.Tensor
    boxes: torch.Tensor
    mask_embeddings: torch.Tensor
    aux: tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], ...] = ()


class _SemSegHead(nn.Module):
    def __init__(self, config: PromptableConfig) -> None:
        super().__init__()
        self.pixel_decoder = PixelDecoder(config)
        self.predictor = InteractiveDecoder(config, PixelDecoder.n_levels)


class PromptableModel(nn.Module):
    """UnSAM's promptable model: one click -> 6 masks of increasing granularity + predicted IoU.

    Submodules: ``backbone`` (transformers ``SwinBackbone``), ``sem_seg_head.pixel_decoder``
    (:class:`PixelDecoder`), ``sem_seg_head.predictor`` (:class:`InteractiveDecoder`).
    ``pixel_mean`` / ``pixel_std`` are non-persistent buffers (0-255 RGB units).
    """

    def __init__(self, config: PromptableConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = _swin_backbone(config)
        self.sem_seg_head = _SemSegHead(config)
        self.register_buffer(
            "pixel_mean", torch.tensor(config.pixel_mean).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(config.pixel_std).view(1, 3, 1, 1), persistent=False
        )

    # ---------------------------------------------------------------------------- precision
    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype of the weights and activations (float32 or bfloat16; see :meth:`cast`)."""
        return self.sem_seg_head.predictor.mask_tokens.weight.dtype

    def cast(self, dtype: torch.dtype) -> PromptableModel:
        """Weights and activations in ``dtype`` (in place; not autocast). The pixel mean / std stay
        float32 (the normalisation of 0-255 pixels; 123.675 is 123.5 in bfloat16), and the steps
        named in the module docstring keep float32 inside the forward."""
        mean, std = self.pixel_mean.float(), self.pixel_std.float()
        self.to(dtype)
        self.pixel_mean, self.pixel_std = mean, std
        return self

    # ---------------------------------------------------------------------------- per image
    def normalize_and_pad(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` RGB in 0-255 (any float/uint8) -> normalised, zero-padded bottom/right
        to multiples of ``size_divisibility``: ``(B, 3, Hp, Wp)`` float32 (spec §1.1), whatever the
        model's dtype (:meth:`encode_image` casts it)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W) RGB, got shape {tuple(images.shape)}")
        x = (images.float() - self.pixel_mean.float()) / self.pixel_std.float()
        d = self.config.size_divisibility
        h, w = x.shape[-2:]
        return F.pad(x, (0, (-w) % d, 0, (-h) % d))

    def encode_image(
        self, pixel_values: torch.Tensor, image_hw: tuple[int, int] | None = None
    ) -> ImageState:
        """Backbone + pixel decoder + per-layer value projections (spec §2.2).

        Args:
            pixel_values: ``(B, 3, Hp, Wp)`` float32, normalised and padded
                (:meth:`normalize_and_pad`); Hp and Wp multiples of ``config.size_divisibility``;
                cast to :attr:`compute_dtype` here.
            image_hw: (H, W) of the unpadded image inside ``pixel_values``; default (Hp, Wp).

        Returns:
            An :class:`ImageState` (differentiable w.r.t. the parameters when grad is enabled).
        """
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            raise ValueError(
                f"pixel_values must be (B, 3, Hp, Wp), got {tuple(pixel_values.shape)}"
            )
        hp, wp = (int(v) for v in pixel_values.shape[-2:])
        d = self.config.size_divisibility
        if hp % d or wp % d:
            raise ValueError(
                f"pixel_values is {hp}x{wp}; both sides must be multiples of {d} "
                "(pad with PromptableModel.normalize_and_pad)"
            )
        feats = self.backbone(pixel_values.to(self.compute_dtype)).feature_maps
        mask_features, outs = self.sem_seg_head.pixel_decoder(feats)
        memory_levels = outs[::-1]  # decoder order: s64, s32, s16, s8 (spec §2.2)
        shapes = [(int(o.shape[-2]), int(o.shape[-1])) for o in memory_levels]
        memory = torch.cat([o.flatten(2).transpose(1, 2) for o in memory_levels], 1)
        values = tuple(
            tuple(layer.cross_attn.project_value(memory, shapes))
            for layer in self.sem_seg_head.predictor.decoder.layers
        )
        hw = (hp, wp) if image_hw is None else (int(image_hw[0]), int(image_hw[1]))
        packed = None
        if not torch.is_grad_enabled():  # clicks read it pixel by pixel (mask_product)
            mask_features = mask_features.contiguous(memory_format=torch.channels_last)
            b, c, h4, w4 = mask_features.shape
            if (
                b == 1
                and mask_features.device.type == "cpu"
                and mask_features.dtype == torch.bfloat16
                and onednn_packing_supported(mask_features.dtype)
            ):
                pixels = mask_features[0].permute(1, 2, 0).reshape(h4 * w4, c)  # a view
                packed = pack_weight(pixels, 8)
        return ImageState(mask_features, values, hw, (hp, wp), packed)

    # ---------------------------------------------------------------------------- per click
    def decode_boxes(
        self,
        state: ImageState,
        boxes: torch.Tensor,
        *,
        pb: int | torch.Tensor = 0,
        independent: bool = True,
        return_aux: bool = False,
        compute_masks: bool = True,
    ) -> ClickDecoderOutput:
        """Decoder + heads for N click boxes (spec §2.4-§2.6).

        Args:
            state: :meth:`encode_image` output of one image (batch size 1; see
                :meth:`ImageState.select`).
            boxes: ``(N, 4)`` float click boxes (cx, cy, w, h) normalised to the padded input
                (:func:`click_boxes`); training may add its box noise here.
            pb: row of ``pb_embedding``: an int for all clicks or ``(N,)`` int64. The original uses
                0 at inference and 1 in training (spec §2.4).
            independent: True (training / evaluation): clicks do not see each other. False
                (original demo and AMG): all 6N queries attend to each other.
            return_aux: also return the predictions of layers 0 .. L-2.
            compute_masks: False skips the mask einsum (``mask_logits`` is then ``(N, 6, 0, 0)``);
                callers that need masks of a few queries use ``mask_embeddings``.

        Returns:
            :class:`ClickDecoderOutput` with mask logits ``(N, 6, Hp/4, Wp/4)``, IoU ``(N, 6)``,
            boxes ``(N, 6, 4)``.
        """
        if state.batch_size != 1:
            raise ValueError(
                f"decode needs the state of one image, got a batch of {state.batch_size}; "
                "use state.select(i)"
            )
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"boxes must be (N, 4) (cx, cy, w, h), got shape {tuple(boxes.shape)}")
        n = boxes.shape[0]
        pred = self.sem_seg_head.predictor
        device = state.mask_features.device
        boxes = boxes.to(device=device, dtype=torch.float32)  # box decoding stays float32
        if isinstance(pb, int):  # a fill on the device, no host-to-device copy
            pb_t = torch.full((n,), pb, dtype=torch.long, device=device)
        else:
            pb_t = torch.as_tensor(pb, dtype=torch.long).to(device, non_blocking=True)
            pb_t = pb_t.expand(n) if pb_t.ndim == 0 else pb_t
        if pb_t.shape != (n,):
            raise ValueError(f"pb must be an int or ({n},), got shape {tuple(pb_t.shape)}")
        x, ref = pred.initial_queries(boxes, pb_t)
        ref_for_head = ref
        num_feats = self.config.hidden_dim // 2
        layers = pred.decoder.layers
        outputs = []
        for lid, layer in enumerate(layers):
            # the sine embedding of the float32 reference box, then the network's dtype
            query_pos = pred.decoder.ref_point_head(
                box_sine_embedding(ref, num_feats).to(x.dtype)
            )
            x = layer(x, query_pos, ref, state.values[lid], independent)
            # box decoding (the next layer's reference) in float32
            new_ref = (pred._bbox_embed(x).float() + inverse_sigmoid(ref)).sigmoid()
            hs = pred.decoder_norm(x)
            if return_aux or lid == len(layers) - 1:
                features = state.mask_features if compute_masks else None
                packed = state.packed_mask_features if compute_masks else None
                outputs.append(pred.heads(hs, ref_for_head, features, packed))
            ref_for_head = new_ref
            ref = new_ref.detach()
        masks, iou, out_boxes, embed = outputs[-1]
        return ClickDecoderOutput(masks, iou, out_boxes, embed, tuple(o[:3] for o in outputs[:-1]))

    def decode_clicks(
        self,
        state: ImageState,
        points: torch.Tensor,
        *,
        box_wh: tuple[float, float] | None = None,
        pb: int | torch.Tensor = 0,
        independent: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """N clicks -> 6 mask logits and 6 predicted IoUs each (differentiable).

        Args:
            state: :meth:`encode_image` output of one image (batch size 1).
            points: ``(N, 2)`` float, click (x, y) in pixels of the unpadded model input (pixel
                index convention: the centre of pixel (col, row) is (col, row)).
            box_wh: click box (w, h) in pixels; default 0.005 × (W, H) (demo / predictor / AMG);
                training and the interactive evaluation use (6, 6).
            pb: ``pb_embedding`` row, int or ``(N,)`` (0 at inference, 1 in training).
            independent: block-diagonal attention between clicks (True) or the demo's joint mode.

        Returns:
            mask_logits ``(N, 6, Hp/4, Wp/4)`` float32 (1/4 of the padded input; upsample with
            :meth:`upsample_masks`), iou ``(N, 6)`` float32 (raw, unbounded).
        """
        h, w = state.image_hw
        if box_wh is None:
            box_wh = (DEMO_BOX_FRACTION * w, DEMO_BOX_FRACTION * h)
        boxes = click_boxes(points, state.padded_hw, box_wh)
        out = self.decode_boxes(state, boxes, pb=pb, independent=independent)
        return out.mask_logits, out.iou

    @staticmethod
    def upsample_masks(mask_logits: torch.Tensor, state: ImageState) -> torch.Tensor:
        """``(…, Hp/4, Wp/4)`` logits -> ``(…, H, W)`` float32: bilinear to the padded size, then
        cropped to the unpadded image (spec §2.7). Binarise with ``> 0``. Always float32 (the
        resize decides which pixels cross the threshold)."""
        lead = mask_logits.shape[:-2]
        x = mask_logits.float().reshape(-1, 1, *mask_logits.shape[-2:])
        x = F.interpolate(x, size=state.padded_hw, mode="bilinear", align_corners=False)
        h, w = state.image_hw
        return x[:, 0, :h, :w].reshape(*lead, h, w)

    def forward(
        self,
        pixel_values: torch.Tensor,
        boxes: torch.Tensor,
        *,
        pb: int | torch.Tensor = 0,
        independent: bool = True,
    ) -> ClickDecoderOutput:
        """The original's recompute-everything path: encode one image, decode its click boxes.

        Args:
            pixel_values: ``(1, 3, Hp, Wp)`` normalised, padded.
            boxes: ``(N, 4)`` click boxes normalised to the padded input.
        """
        return self.decode_boxes(
            self.encode_image(pixel_values), boxes, pb=pb, independent=independent
        )

    # ---------------------------------------------------------------------------- persistence
    def save_pretrained(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``folder``; returns the folder."""
        from safetensors.torch import save_file

        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        tmp = out / (WEIGHTS_FILE + ".tmp")
        save_file(state, str(tmp), metadata={"format": "pt", "model_type": "unsam-promptable"})
        os.replace(tmp, out / WEIGHTS_FILE)
        self.config.save(out)
        return out

    @classmethod
    def from_pretrained(
        cls, folder: str | os.PathLike[str], device: str | torch.device = "cpu"
    ) -> PromptableModel:
        """Load a :meth:`save_pretrained` folder strictly (missing or unexpected keys are errors).

        Raises:
            MissingWeightsError: the folder or its ``model.safetensors`` does not exist.
            ValueError: the weights do not match ``config.json``.
        """
        from unsam.io.checkpoints import load_safetensors, missing_weights

        path = Path(folder)
        weights = path / WEIGHTS_FILE
        if not (path / CONFIG_FILE).is_file() or not weights.is_file():
            problem = f"{path} has no {CONFIG_FILE} + {WEIGHTS_FILE}"
            raise missing_weights("promptable", path, problem if path.exists() else None)
        model = cls(PromptableConfig.load(path))
        state = load_safetensors(weights)  # a truncated file is named, not a safetensors error
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(
                f"{weights}: {len(result.missing_keys)} missing keys "
                f"(e.g. {result.missing_keys[:3]}), "
                f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:3]})"
            )
        return model.to(device).eval()


def build_model(config: PromptableConfig | str = "swin_t") -> PromptableModel:
    """A randomly initialised :class:`PromptableModel` of a config or a named size."""
    if isinstance(config, str):
        config = PromptableConfig.named(config)  # type: ignore[arg-type]
    return PromptableModel(config)
