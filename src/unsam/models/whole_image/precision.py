"""The steps of the whole-image Mask2Former that stay in float32 when its weights and activations
are bfloat16 (``WholeImageSegmenter(dtype=torch.bfloat16)``, ``unsam segment --dtype bfloat16``).

:func:`install_float32_steps` swaps the class of four kinds of submodule of one model instance
for a subclass defined here (same parameters, same state-dict keys; ``save_pretrained`` and
``from_pretrained`` are unaffected). Each subclass runs its float32 step and casts the result back
to the activations' dtype. In a float32 model every cast is a no-op, so the outputs are bit for bit
those of transformers' own classes (the reference path stays equal to the official code,
tests/models/test_whole_image_bf16.py checks it).

Steps kept in float32, and why:

- **Sine position embeddings** (pixel decoder and transformer decoder,
  :class:`Float32SinePositionEmbedding`): transformers builds them in the features' dtype from
  ``arange(1, H + 1)``; bfloat16 has an 8-bit significand, so positions above 256 are rounded and
  ``10000 ** (2i / d)`` and the sine arguments lose ~2 decimal digits (errors ~1e-2). Built in
  float32, then cast (error <= 2**-9 of each value).
- **Deformable-attention sampling** (pixel decoder, :class:`Float32DeformableAttention`):
  reference points, sampling locations, the attention weights' softmax, the bilinear sampling and
  the weighted sum of the 12 samples a head takes. A sampling location is a fraction of a feature
  map up to ~256 cells wide: in bfloat16 it would move by up to half a cell. This is also what
  the original does under mixed precision (its ``MSDeformAttnFunction`` runs in float32). On the
  CPU float32 ``grid_sample`` is also ~2x faster than bfloat16's. Its offset normaliser is built
  on the device (no host-to-device copy per layer). The fast path on the CPU samples with
  :func:`gather_sampling` (the same sums as one weighted gather, 4-6x faster;
  ``unsam_gather = True`` on the module); the reference path and CUDA use transformers'
  ``grid_sample`` code.
- **Valid ratios** (:class:`Float32PixelDecoder`): float32, so that the reference points above are
  float32 from the start.
- **Class logits** (:class:`Float32Linear`, the class head): a 256 x 2 product, computed in
  float32 so that the foreground probability (softmax over object / no-object) and the scores it
  multiplies are not rounded to bfloat16's 3 significant digits.

Under ``torch.autocast`` (training with ``--dtype bfloat16``) the same modules run; autocast then
decides the dtype of each matrix product, and the sampling stays float32 (as in the original).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# Float32SinePositionEmbedding, Float32PixelDecoder and Float32DeformableAttention (subclasses of
# transformers' classes) are made on first use, so importing this module does not import
# transformers; ``precision.Float32DeformableAttention`` etc. work (module ``__getattr__``).
__all__ = [
    "Float32Linear",
    "gather_sampling",
    "install_float32_steps",
    "model_dtype",
]


def _mask2former_classes() -> dict[str, type]:
    from transformers.models.mask2former import modeling_mask2former as m2f

    return {
        "position": m2f.Mask2FormerSinePositionEmbedding,
        "pixel_decoder": m2f.Mask2FormerPixelDecoder,
        "deformable": m2f.Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention,
    }


_SUBCLASSES: dict[type, type] = {}


def _subclass(base: type, name: str, body: dict[str, Any]) -> type:
    """One subclass of ``base`` per process (so ``isinstance`` and pickling work)."""
    if base not in _SUBCLASSES:
        cls = type(name, (base,), {"__module__": __name__, **body})
        _SUBCLASSES[base] = cls
        globals()[name] = cls
    return _SUBCLASSES[base]


# ---------------------------------------------------------------------------------------------
# The float32 steps, as plain functions (the subclasses' methods)
# ---------------------------------------------------------------------------------------------
def _position_forward(
    self: nn.Module,
    shape: torch.Size,
    device: torch.device | str,
    dtype: torch.dtype,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """float32: positions above 256 and the sine arguments are not representable in bfloat16."""
    base = type(self).__mro__[1]
    return base.forward(self, shape, device, torch.float32, mask).to(dtype)  # type: ignore[no-any-return]


def _valid_ratio(
    self: nn.Module, mask: torch.Tensor, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """float32 valid ratios, whatever the features' dtype: the reference points built from them
    are pixel-centre fractions that need more than bfloat16's 8 significant bits."""
    base = type(self).__mro__[1]
    return base.get_valid_ratio(self, mask, dtype=torch.float32)  # type: ignore[no-any-return]


def _deformable_forward(
    self: Any,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    encoder_hidden_states: torch.Tensor | None = None,
    encoder_attention_mask: torch.Tensor | None = None,
    position_embeddings: torch.Tensor | None = None,
    reference_points: torch.Tensor | None = None,
    spatial_shapes_list: list[tuple[int, int]] | None = None,
    level_start_index: torch.Tensor | None = None,
    output_attentions: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' multi-scale deformable attention with its sampling in float32 (see the module
    docstring); in a float32 model the same operations in the same order (bit-exact)."""
    from transformers.models.mask2former.modeling_mask2former import (
        multi_scale_deformable_attention,
    )

    assert encoder_hidden_states is not None and reference_points is not None
    assert spatial_shapes_list is not None
    if position_embeddings is not None:
        hidden_states = hidden_states + position_embeddings
    batch_size, num_queries, _ = hidden_states.shape
    _, sequence_length, _ = encoder_hidden_states.shape
    if sum(h * w for h, w in spatial_shapes_list) != sequence_length:
        raise ValueError(
            "Make sure to align the spatial shapes with the sequence length of the encoder hidden "
            "states"
        )
    if reference_points.shape[-1] != 2:
        raise ValueError(
            f"unsam's deformable attention takes 2-d reference points, got "
            f"{reference_points.shape[-1]}"
        )
    value = self.value_proj(encoder_hidden_states)
    if attention_mask is not None:
        value = value.masked_fill(attention_mask[..., None], float(0))
    value = value.view(batch_size, sequence_length, self.n_heads, self.d_model // self.n_heads)
    sampling_offsets = self.sampling_offsets(hidden_states).view(
        batch_size, num_queries, self.n_heads, self.n_levels, self.n_points, 2
    )
    attention_weights = self.attention_weights(hidden_states).view(
        batch_size, num_queries, self.n_heads, self.n_levels * self.n_points
    )
    # float32: the softmax over the 12 samples and their weighted sum below
    attention_weights = F.softmax(attention_weights.float(), -1).view(
        batch_size, num_queries, self.n_heads, self.n_levels, self.n_points
    )
    # float32 sampling locations (fractions of feature maps up to ~256 cells wide); the (w, h)
    # normaliser is filled on the device, so no host-to-device copy (a sync on CUDA) per layer
    normalizer = torch.empty(
        (len(spatial_shapes_list), 2), dtype=torch.float32, device=reference_points.device
    )
    for level, (height, width) in enumerate(spatial_shapes_list):
        normalizer[level, 0] = width
        normalizer[level, 1] = height
    sampling_locations = (
        reference_points.float()[:, :, None, :, None, :]
        + sampling_offsets.float() / normalizer[None, None, None, :, None, :]
    )
    # float32 bilinear sampling and weighted sum (the original's MSDeformAttn runs in float32)
    sample = (
        gather_sampling
        if getattr(self, "unsam_gather", False)
        else (multi_scale_deformable_attention)
    )
    output = sample(value.float(), spatial_shapes_list, sampling_locations, attention_weights)
    output = self.output_proj(output.to(hidden_states.dtype))
    return output, attention_weights


def gather_sampling(
    value: torch.Tensor,
    spatial_shapes_list: list[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """transformers' ``multi_scale_deformable_attention`` as one weighted gather: equal up to float
    rounding (~1e-5), 4-6x faster on the CPU (the fast path's sampling there).

    ``grid_sample`` (``align_corners=False``, zero padding) takes, for each sampling point, the 4
    neighbouring cells of its level with bilinear weights (0 outside the map). Here each level's
    value map gets a border of zero cells, so the 4 neighbours of every point whose top-left
    neighbour lies in [-1, w - 1] x [-1, h - 1] are cells of the bordered map (those outside the
    map read 0) and points further out get weight 0. The neighbours' rows of the value table and
    their bilinear weights times the point's attention weight go to ``F.embedding_bag(mode=
    "sum")``, which sums the levels x points x 4 rows of each (batch, query, head) in one pass
    over contiguous d-float rows (grid_sample reads each channel separately, then the samples are
    stacked, weighted and summed).

    Args:
        value: (B, S, heads, d); S is the sum of ``h * w`` over the levels.
        spatial_shapes_list: (h, w) of each level.
        sampling_locations: (B, Q, heads, levels, points, 2) float32, (x, y) in [0, 1].
        attention_weights: (B, Q, heads, levels, points) float32.

    Returns:
        (B, Q, heads * d) in ``value``'s dtype.
    """
    b, _, heads, d = value.shape
    _, q, _, levels, points, _ = sampling_locations.shape
    dev = value.device
    tables, starts, start = [], [], 0
    for level_value, (h, w) in zip(
        value.split([h * w for h, w in spatial_shapes_list], dim=1), spatial_shapes_list
    ):
        bordered = F.pad(level_value.reshape(b, h, w, heads, d), (0, 0, 0, 0, 1, 1, 1, 1))
        tables.append(bordered.reshape(b, (h + 2) * (w + 2), heads, d))
        starts.append(start)
        start += (h + 2) * (w + 2)
    table = torch.cat(tables, 1).reshape(-1, d)  # row (b * S' + cell) * heads + head
    row0 = torch.arange(b, device=dev).view(b, 1, 1, 1) * (start * heads) + torch.arange(
        heads, device=dev
    ).view(1, 1, heads, 1)
    corner = torch.arange(4, device=dev, dtype=torch.int32)  # (dx, dy): (0,0) (1,0) (0,1) (1,1)
    idx = torch.empty((b, q, heads, levels, points, 4), dtype=torch.int32, device=dev)
    wts = torch.empty((b, q, heads, levels, points, 4), dtype=table.dtype, device=dev)
    for level, (h, w) in enumerate(spatial_shapes_list):
        # pixel coordinates of grid_sample with align_corners=False: location * size - 0.5
        x = sampling_locations[:, :, :, level, :, 0] * w - 0.5  # (B, Q, heads, P)
        y = sampling_locations[:, :, :, level, :, 1] * h - 0.5
        x0, y0 = x.floor(), y.floor()
        fx, fy = x - x0, y - y0
        near = (x0 >= -1) & (x0 <= w - 1) & (y0 >= -1) & (y0 <= h - 1)
        x0, y0 = x0.clamp_(-1, w - 1), y0.clamp_(-1, h - 1)
        a = attention_weights[:, :, :, level] * near
        ay1 = a * fy
        ay0 = a - ay1
        gx0 = 1.0 - fx
        wts[:, :, :, level] = torch.stack([ay0 * gx0, ay0 * fx, ay1 * gx0, ay1 * fx], -1)
        cell = ((y0 + 1) * (w + 2) + (x0 + 1) + starts[level]).to(torch.int64) * heads + row0
        offsets = (corner % 2 + (corner // 2) * (w + 2)) * heads
        idx[:, :, :, level] = cell[..., None] + offsets
    out = F.embedding_bag(
        idx.view(b * q * heads, -1), table, per_sample_weights=wts.view(b * q * heads, -1),
        mode="sum",
    )  # fmt: skip
    return out.view(b, q, heads * d)


class Float32Linear(nn.Linear):
    """A linear layer whose output is float32 whatever its weights' dtype (the class head)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - nn.Module signature
        # float32: class logits feed the softmax and the score products (module docstring)
        return F.linear(input.float(), self.weight.float(), self.bias.float())


def install_float32_steps(model: nn.Module) -> nn.Module:
    """Swap the classes of ``model``'s position embeddings, pixel decoder, deformable attention
    layers and class head for the float32-step subclasses of this module (in place, idempotent).

    Works on any ``Mask2FormerForUniversalSegmentation``; the weights, their dtype and the
    state-dict keys do not change.

    Returns:
        ``model``.
    """
    classes = _mask2former_classes()
    swaps = {
        classes["position"]: _subclass(
            classes["position"], "Float32SinePositionEmbedding", {"forward": _position_forward}
        ),
        classes["pixel_decoder"]: _subclass(
            classes["pixel_decoder"], "Float32PixelDecoder", {"get_valid_ratio": _valid_ratio}
        ),
        classes["deformable"]: _subclass(
            classes["deformable"], "Float32DeformableAttention", {"forward": _deformable_forward}
        ),
    }
    for module in model.modules():
        new = swaps.get(type(module))
        if new is not None:
            module.__class__ = new
    head = getattr(model, "class_predictor", None)
    if type(head) is nn.Linear:
        head.__class__ = Float32Linear
    return model


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's floating-point weights (float32 for a model without any)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def __getattr__(name: str) -> type:
    """``Float32SinePositionEmbedding`` etc.: the subclasses, made on first use (they subclass
    transformers' classes, imported lazily)."""
    bases = {
        "Float32SinePositionEmbedding": ("position", {"forward": _position_forward}),
        "Float32PixelDecoder": ("pixel_decoder", {"get_valid_ratio": _valid_ratio}),
        "Float32DeformableAttention": ("deformable", {"forward": _deformable_forward}),
    }
    if name in bases:
        key, body = bases[name]
        return _subclass(_mask2former_classes()[key], name, body)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
