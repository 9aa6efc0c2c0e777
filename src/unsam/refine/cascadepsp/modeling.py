"""The CascadePSP network (CASCADEPSP.md §3), pure PyTorch: :class:`RefinementModule`, a 6-channel
dilated ResNet-50 ``feats``, PSP module ``psp``, upsampling blocks ``up_1..3`` and heads
``final_28/56/11/21``. Attribute names are the official state-dict names. Its ``forward`` is the
three-pass cascade of ``fast=True`` and returns only ``pred_224`` (the other heads do not affect
it, §3.6).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "RefinementModule",
    "fold_batchnorm",
    "prepare_fast_inference",
]


class _Bottleneck(nn.Module):
    """ResNet bottleneck; the 3×3 conv carries stride and dilation (§3.2)."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(
            planes,
            planes,
            kernel_size=3,
            stride=stride,
            dilation=dilation,
            padding=dilation,
            bias=False,
        )
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + residual)


class _ResNet50Extractor(nn.Module):
    """CascadePSP's ``feats``: ResNet-50 with a 6-channel stem, output stride 8 (§3.2).

    ``forward(x)`` takes (B, 6, H, W) and returns ``(x, x_1, x_2)``: layer4 (B, 2048, H/8, W/8),
    the raw conv1 output before BN (B, 64, H/2, W/2) and layer1 (B, 256, H/4, W/4).
    """

    def __init__(self) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(6, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, 3)
        self.layer2 = self._make_layer(128, 4, stride=2)
        self.layer3 = self._make_layer(256, 6, stride=1, dilation=2)
        self.layer4 = self._make_layer(512, 3, stride=1, dilation=4)

    def _make_layer(
        self, planes: int, blocks: int, stride: int = 1, dilation: int = 1
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * 4, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * 4),
            )
        layers = [_Bottleneck(self.inplanes, planes, stride, downsample)]  # block 0: dilation 1
        self.inplanes = planes * 4
        layers += [_Bottleneck(self.inplanes, planes, dilation=dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x_1 = self.conv1(x)
        x = self.maxpool(self.relu(self.bn1(x_1)))
        x_2 = self.layer1(x)
        x = self.layer4(self.layer3(self.layer2(x_2)))
        return x, x_1, x_2


class _PSPModule(nn.Module):
    """Pyramid pooling (1, 2, 3, 6), concat [s1, s2, s3, s6, feats], 1×1 conv, ReLU (§3.3).

    With ``decomposed = True`` (set by :func:`prepare_fast_inference`) the same function is
    computed without the 10240-channel concatenation: the bottleneck's weight splits into five
    1024×2048 blocks, and since bilinear upsampling and a 1×1 convolution are both linear and act
    on different axes they commute, so each pooled branch is projected to 1024 channels at its
    pooled size (1², 2², 3², 6² pixels) and upsampled afterwards. The four upsamplings are one
    product with a (h·w, 50) matrix of bilinear weights (:func:`_pyramid_upsampling`), added into
    the output of the feature block's 1×1 convolution in place: 2048 instead of 10240 input
    channels per output pixel (−9 % of the network's multiply-adds at 904², and no 640 B/px
    concatenation). Equal to the concat form up to float rounding.
    """

    def __init__(
        self, features: int = 2048, out_features: int = 1024, sizes: Sequence[int] = (1, 2, 3, 6)
    ):
        super().__init__()
        self.sizes = tuple(int(s) for s in sizes)
        self.stages = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d((s, s)),
                nn.Conv2d(features, features, kernel_size=1, bias=False),
            )
            for s in sizes
        )
        self.bottleneck = nn.Conv2d(features * (len(sizes) + 1), out_features, kernel_size=1)
        self.relu = nn.ReLU()
        self.decomposed = False

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        if self.decomposed:
            return self._forward_decomposed(feats)
        h, w = feats.shape[-2:]
        priors = [
            F.interpolate(stage(feats), size=(h, w), mode="bilinear", align_corners=False)
            for stage in self.stages
        ]
        return self.relu(self.bottleneck(torch.cat([*priors, feats], 1)))

    def _forward_decomposed(self, feats: torch.Tensor) -> torch.Tensor:
        b, c, h, w = feats.shape
        blocks = self.bottleneck.weight.split(c, dim=1)  # 5 x (1024, 2048, 1, 1)
        out = F.conv2d(feats, blocks[-1], self.bottleneck.bias)  # (B, 1024, h, w)
        pooled = [  # each branch projected to the output channels at its pooled size
            F.conv2d(stage(feats), block).flatten(2)  # (B, 1024, s²)
            for stage, block in zip(self.stages, blocks[:-1], strict=True)
        ]
        coarse = torch.cat(pooled, 2)  # (B, 1024, 50)
        up = _pyramid_upsampling(self.sizes, (h, w), out.dtype, out.device)  # (h·w, 50)
        n = out.shape[1]
        if out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous():
            pixels = out.permute(0, 2, 3, 1).reshape(b, h * w, n)  # a view of out
            pixels.baddbmm_(up.expand(b, -1, -1), coarse.transpose(1, 2))
        else:
            pixels = out.view(b, n, h * w)
            pixels.baddbmm_(coarse, up.T.expand(b, -1, -1))
        return out.relu_()


@functools.lru_cache(maxsize=8)
def _pyramid_upsampling(
    sizes: tuple[int, ...], hw: tuple[int, int], dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """The bilinear (``align_corners=False``) upsampling of the pooled maps to ``hw`` as one
    matrix: ``(h·w, Σ s²)``, column block k = the weights of pyramid level ``sizes[k]`` (made by
    sending the identity through the same ``F.interpolate``). Computed in float64, then cast;
    cached for the last few crop sizes (read only)."""
    cols = []
    for s in sizes:
        eye = torch.eye(s * s, dtype=torch.float64, device=device).view(s * s, 1, s, s)
        up = F.interpolate(eye, size=hw, mode="bilinear", align_corners=False)  # (s², 1, h, w)
        cols.append(up.flatten(1).T)
    return torch.cat(cols, 1).to(dtype).contiguous()


def _preact_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.BatchNorm2d(cin),
        nn.ReLU(inplace=True),
        nn.Conv2d(cin, cout, kernel_size=3, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, kernel_size=3, padding=1),
    )


class _PSPUpsample(nn.Module):
    """×2 bilinear, pre-activation residual convs on [x, skip], 1×1 shortcut of x (§3.4)."""

    def __init__(self, x_channels: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = _preact_block(in_channels, out_channels)
        self.conv2 = _preact_block(out_channels, out_channels)
        self.shortcut = nn.Conv2d(x_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        p = self.conv(torch.cat([x, up], 1)) + self.shortcut(x)
        return p + self.conv2(p)


class RefinementModule(nn.Module):
    """CascadePSP's ``RefinementModule`` (segmentation-refinement 0.6), inference of ``fast=True``.

    ``state_dict()`` has the 426 official names (``cascadepsp_keys.tsv``, column ``key``).
    """

    def __init__(self) -> None:
        super().__init__()
        self.feats = _ResNet50Extractor()
        self.psp = _PSPModule(2048, 1024, (1, 2, 3, 6))
        self.up_1 = _PSPUpsample(1024, 1024 + 256, 512)
        self.up_2 = _PSPUpsample(512, 512 + 64, 256)
        self.up_3 = _PSPUpsample(256, 256 + 3, 32)
        self.final_28 = nn.Sequential(
            nn.Conv2d(1024, 32, kernel_size=1), nn.ReLU(inplace=True), nn.Conv2d(32, 1, 1)
        )
        self.final_56 = nn.Sequential(
            nn.Conv2d(512, 32, kernel_size=1), nn.ReLU(inplace=True), nn.Conv2d(32, 1, 1)
        )
        self.final_11 = nn.Conv2d(32 + 3, 32, kernel_size=1)
        self.final_21 = nn.Conv2d(32, 1, kernel_size=1)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        """Three-pass cascade (§3.6); only the full-resolution output is computed in pass 3.

        Args:
            x: (B, 3, H, W) float, ImageNet-normalised image; H and W multiples of 8.
            seg: (B, 1, H, W) float in [−1, 1], the coarse mask (−1 background, +1 foreground).

        Returns:
            (B, 1, H, W) ``pred_224``: foreground probability in [0, 1], same dtype as ``x``.
        """

        def up(t: torch.Tensor, factor: int) -> torch.Tensor:
            return torch.tanh(
                F.interpolate(t, scale_factor=factor, mode="bilinear", align_corners=False)
            )

        # pass 1: A = B = seg
        f, _, _ = self.feats(torch.cat([x, seg, seg, seg], 1))
        t8 = up(self.final_28(self.psp(f)), 8)
        # pass 2: A = B = T8
        f, _, f_2 = self.feats(torch.cat([x, seg, t8, t8], 1))
        p = self.psp(f)
        t8b = up(self.final_28(p), 8)
        t4 = up(self.final_56(self.up_1(p, f_2)), 4)
        # pass 3: A = T8b, B = T4
        f, f_1, f_2 = self.feats(torch.cat([x, seg, t8b, t4], 1))
        p = self.up_3(self.up_2(self.up_1(self.psp(f), f_2), f_1), x)
        p = F.relu(self.final_11(torch.cat([p, x], 1)))
        return torch.sigmoid(self.final_21(p))


@torch.no_grad()
def _fold_into_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """``bn(conv(x))`` (eval mode) -> ``conv'(x)``, computed in float64, in place (the weights keep
    their dtype)."""
    dtype = conv.weight.dtype
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    conv.weight = nn.Parameter(
        (conv.weight.double() * scale[:, None, None, None]).to(dtype), requires_grad=False
    )
    conv.bias = nn.Parameter(
        ((bias - bn.running_mean.double()) * scale + bn.bias.double()).to(dtype),
        requires_grad=False,
    )


def fold_batchnorm(model: RefinementModule) -> RefinementModule:
    """Fold every BatchNorm that directly follows a convolution into it (eval mode, in place).

    Folded: the bottlenecks' bn1-3 and downsample BNs, and the second BN of each pre-activation
    block (it follows that block's first conv). Kept: the stem's bn1 (the raw conv1 output is
    also the skip input of ``up_2``) and the first BN of each pre-activation block (it follows a
    concatenation / residual sum). Folding is done in float64 on the float32 weights, before any
    cast, so a bfloat16 model gets one rounding of ``w·γ/σ`` instead of a rounded conv output and a
    rounded BN.
    """
    for module in model.modules():
        if isinstance(module, _Bottleneck):
            for conv, bn in (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")):
                if isinstance(getattr(module, bn), nn.BatchNorm2d):
                    _fold_into_conv(getattr(module, conv), getattr(module, bn))
                    setattr(module, bn, nn.Identity())
            ds = module.downsample
            if isinstance(ds, nn.Sequential) and isinstance(ds[1], nn.BatchNorm2d):
                _fold_into_conv(ds[0], ds[1])
                ds[1] = nn.Identity()
        elif isinstance(module, _PSPUpsample):
            for block in (module.conv, module.conv2):
                if isinstance(block[3], nn.BatchNorm2d):
                    _fold_into_conv(block[2], block[3])
                    block[3] = nn.Identity()
    return model


def prepare_fast_inference(model: RefinementModule) -> RefinementModule:
    """The reduced-precision form of the network (in place, eval mode): BatchNorms folded into
    their convolutions before any cast (:func:`fold_batchnorm`) and the PSP module without its
    10240-channel concatenation (:class:`_PSPModule`). Same function up to float rounding;
    :class:`~unsam.refine.cascadepsp.CascadePSPRefiner` applies it before casting to bfloat16.
    Float32 refinement keeps the original's arithmetic (the golden outputs)."""
    model.eval()
    fold_batchnorm(model)
    model.psp.decomposed = True
    return model
