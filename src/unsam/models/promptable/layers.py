"""Building blocks of the promptable model (spec PROMPTABLE.md §2.2, §2.4): sine position and box
embeddings, click boxes, the inverse sigmoid, and the small MLP and conv + norm modules.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DEMO_BOX_FRACTION",
    "MLP",
    "Conv2dNorm",
    "PackedLinear",
    "onednn_packing_supported",
    "pack_linears",
    "box_sine_embedding",
    "click_boxes",
    "inverse_sigmoid",
    "jitter_click_boxes",
    "sine_position_encoding",
]


#: Box side of a click as a fraction of the image side (demo, predictor API and AMG; spec §2.4).
DEMO_BOX_FRACTION = 0.005


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """log(x / (1 - x)) after clamping x to [0, 1] and both terms to >= eps (spec §2.4)."""
    x = x.clamp(0.0, 1.0)
    return torch.log(x.clamp(min=eps) / (1.0 - x).clamp(min=eps))


def sine_position_encoding(
    hw: tuple[int, int],
    num_feats: int,
    device: torch.device | None = None,
    temperature: float = 10000.0,
) -> torch.Tensor:
    """Normalised 2-d sine position encoding of an h×w grid (DETR style, spec §2.2 step 3).

    Row r and column c become y = (r+1)/(h+1e-6)·2π, x = (c+1)/(w+1e-6)·2π; feature i of each
    axis is sin(v / f_i) for even i and cos(v / f_i) for odd i, f_i = T^(2⌊i/2⌋/num_feats).

    Returns:
        ``(1, 2 * num_feats, h, w)`` float32: channels [0, num_feats) encode y, the rest x.
    """
    h, w = int(hw[0]), int(hw[1])
    scale = 2.0 * math.pi
    eps = 1e-6
    y = torch.arange(1, h + 1, dtype=torch.float32, device=device) / (h + eps) * scale
    x = torch.arange(1, w + 1, dtype=torch.float32, device=device) / (w + eps) * scale
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    py = _interleave_sin_cos(y[:, None] / dim_t)  # (h, F)
    px = _interleave_sin_cos(x[:, None] / dim_t)  # (w, F)
    pos_y = py[:, None, :].expand(h, w, num_feats)
    pos_x = px[None, :, :].expand(h, w, num_feats)
    return torch.cat([pos_y, pos_x], -1).permute(2, 0, 1)[None].contiguous()


def _interleave_sin_cos(v: torch.Tensor) -> torch.Tensor:
    """(…, F) angles -> (…, F): sin at even feature indices, cos at odd ones."""
    return torch.stack([v[..., 0::2].sin(), v[..., 1::2].cos()], -1).flatten(-2)


def box_sine_embedding(boxes: torch.Tensor, num_feats: int) -> torch.Tensor:
    """Sine embedding of (cx, cy, w, h) boxes (``gen_sineembed_for_position``, spec §2.5 step 1).

    Args:
        boxes: ``(…, 4)`` float, normalised (cx, cy, w, h).
        num_feats: features per coordinate (128 in the original).

    Returns:
        ``(…, 4 * num_feats)`` float32 (computed in float32 from float32 boxes; callers cast it to
        the network's dtype), blocks in the order (cy, cx, w, h).
    """
    scale = 2.0 * math.pi
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=boxes.device)
    dim_t = 10000.0 ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    # the four coordinates at once (the same element-wise arithmetic as one per coordinate), then
    # the blocks reordered to (cy, cx, w, h): a few operations per decoder layer instead of ~25
    angles = boxes.float()[..., [1, 0, 2, 3], None] * scale / dim_t  # (…, 4, F)
    return _interleave_sin_cos(angles).flatten(-2)


def click_boxes(
    points: torch.Tensor,
    padded_hw: tuple[int, int],
    box_wh: tuple[float, float],
) -> torch.Tensor:
    """Click points -> reference boxes normalised to the padded input (spec §2.4).

    The centre is the pixel coordinate divided by the padded size (the original's x/W followed by
    the padding correction W/Wp; pixel *index* convention, no +0.5).

    Args:
        points: ``(N, 2)`` float, (x, y) in pixels of the (unpadded) model input.
        padded_hw: (Hp, Wp) of the padded model input.
        box_wh: box (width, height) in pixels of the model input (training and evaluation: 6 px;
            demo / AMG: 0.005 of the image side).

    Returns:
        ``(N, 4)`` float32 (cx, cy, w, h) in [0, 1].
    """
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"points must be (N, 2) (x, y) pixels, got shape {tuple(points.shape)}")
    hp, wp = padded_hw
    pts = points.to(torch.float32)
    # Python scalars only (no host tensor copied to the device: no stream synchronisation on CUDA)
    x, y = pts[:, 0] / wp, pts[:, 1] / hp
    w = torch.full_like(x, box_wh[0] / wp)
    h = torch.full_like(y, box_wh[1] / hp)
    return torch.stack([x, y, w, h], 1)


def jitter_click_boxes(
    boxes: torch.Tensor, generator: torch.Generator | None = None, scale: float = 0.4 * 0.01
) -> torch.Tensor:
    """Training-time click-box noise (spec §2.4): box += U(-1, 1) · (w/2, h/2, w, h) · scale, then
    clamped to [0, 1]. The original's scale is DN_NOISE_SCALE 0.4 × 0.01.

    Args:
        boxes: ``(N, 4)`` float (cx, cy, w, h), normalised.
        generator: torch RNG for reproducible noise.

    Returns:
        ``(N, 4)`` float, a new tensor.
    """
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be (N, 4) (cx, cy, w, h), got shape {tuple(boxes.shape)}")
    diff = torch.cat([boxes[:, 2:] / 2, boxes[:, 2:]], 1)
    noise = torch.rand(boxes.shape, generator=generator, dtype=boxes.dtype) * 2.0 - 1.0
    return (boxes + noise.to(boxes.device) * diff * scale).clamp(0.0, 1.0)


class MLP(nn.Module):
    """``num_layers`` Linear layers with ReLU between them (official ``MLP``: ``layers.{i}``)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims_in, dims_out, strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class Conv2dNorm(nn.Conv2d):
    """detectron2-style ``Conv2d`` with its norm stored as ``.norm`` and an optional ReLU."""

    def __init__(
        self, *args: int, norm: nn.Module, relu: bool = False, bias: bool = False, padding: int = 0
    ) -> None:
        super().__init__(*args, bias=bias, padding=padding)
        self.norm = norm
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(super().forward(x))
        return F.relu(x) if self.relu else x


@functools.lru_cache(maxsize=4)
def onednn_packing_supported(dtype: torch.dtype) -> bool:
    """Whether oneDNN's linear with a pre-packed weight runs on this CPU for ``dtype`` and equals
    ``F.linear`` (checked once on a small product)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        ops = torch.ops.mkldnn
        w = (torch.arange(24, dtype=torch.float32).reshape(6, 4) / 8).to(dtype)
        x = torch.ones(3, 4, dtype=dtype)
        b = torch.ones(6, dtype=dtype)
        got = ops._linear_pointwise(x, ops._reorder_linear_weight(w, 3), b, "none", [], "")
        return bool(torch.equal(got, F.linear(x, w, b)))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def pack_weight(weight: torch.Tensor, batch_hint: int) -> torch.Tensor:
    """``weight`` (out, in) in oneDNN's blocked layout for products with about ``batch_hint``
    rows (an opaque mkldnn tensor for :func:`packed_linear`)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), batch_hint)


def packed_linear(
    x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``F.linear(x, W, bias)`` with ``W`` packed by :func:`pack_weight` (CPU)."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


class PackedLinear(nn.Linear):
    """An ``nn.Linear`` that also keeps its weight packed by oneDNN, for small-batch CPU inference
    in bfloat16 (the decoder's 6 queries per click).

    A bfloat16 ``F.linear`` re-packs the weight into oneDNN's blocked layout on every call; for a
    6-row product that is most of its time (256→2048: 108 µs unpacked vs 67 µs packed on an
    AVX-512 BF16 core). The packed copy is used only while it matches the weight (same storage and
    version, so an in-place update or a move falls back to ``F.linear``), on the CPU, without
    autograd; results equal ``F.linear``'s (both are oneDNN's bf16 product). Parameters and
    state-dict keys are the ``nn.Linear`` ones. Made with :func:`pack_linears`.
    """

    _packed: torch.Tensor | None = None
    _packed_key: tuple[object, ...] = ()

    def repack(self, batch_hint: int = 8) -> None:
        w = self.weight
        self._packed = pack_weight(w, batch_hint)
        self._packed_key = (w.data_ptr(), w._version, w.dtype, w.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if (
            self._packed is not None
            and x.device.type == "cpu"
            and x.dtype == w.dtype
            and not (torch.is_grad_enabled() and w.requires_grad)
            and self._packed_key == (w.data_ptr(), w._version, w.dtype, w.device)
        ):
            return packed_linear(x, self._packed, self.bias)
        return F.linear(x, w, self.bias)


def pack_linears(
    module: nn.Module, batch_hint: int = 8, skip: tuple[str, ...] = ()
) -> list[str]:
    """Turn every ``nn.Linear`` under ``module`` (in place, except names ending in one of
    ``skip``) into a :class:`PackedLinear` packed for about ``batch_hint`` rows; returns the names.
    Does nothing unless the weights are bfloat16 on the CPU and oneDNN packing works here."""
    done = []
    for name, child in module.named_modules():
        if type(child) not in (nn.Linear, PackedLinear) or name.endswith(skip):
            continue
        w = child.weight
        if w.device.type != "cpu" or w.dtype != torch.bfloat16:
            continue
        if not onednn_packing_supported(w.dtype):
            return done
        child.__class__ = PackedLinear
        child.repack(batch_hint)  # type: ignore[attr-defined]
        done.append(name)
    return done
