"""torchvision ResNet (bottleneck) keys and where transformers' ResNetBackbone keeps them (no unsam
code).

:func:`hf_backbone_name` renames one torchvision key by reading it part by part (written
independently of ``unsam.models.whole_image.config.torchvision_resnet_key_map``, which builds a
table with loops); :func:`torchvision_resnet_state_dict` builds a synthetic checkpoint in which
every tensor holds distinct random values, so that a tensor landing in the wrong place shows.

transformers' bottleneck layer ``encoder.stages.S.layers.J`` holds ``layer.0`` (1x1 reduce),
``layer.1`` (3x3) and ``layer.2`` (1x1 expand), each a ``convolution`` + ``normalization``, and
``shortcut`` (``convolution`` + ``normalization``) in the first block of a stage; the stem is
``embedder.embedder``. torchvision calls them conv1/bn1, conv2/bn2, conv3/bn3, downsample.0/.1,
and its stages layer1..layer4.
"""

from __future__ import annotations

import torch


def hf_backbone_name(key: str) -> str:
    """torchvision key (without ``module.`` / ``backbone.``) -> transformers ResNetBackbone key."""
    parts = key.split(".")
    if parts[0] == "conv1":
        assert parts[1:] == ["weight"], key
        return "embedder.embedder.convolution.weight"
    if parts[0] == "bn1":
        return "embedder.embedder.normalization." + parts[1]
    assert parts[0].startswith("layer"), key
    stage = int(parts[0][len("layer") :]) - 1
    block = int(parts[1])
    prefix = f"encoder.stages.{stage}.layers.{block}."
    module = parts[2]
    if module == "downsample":
        assert block == 0, key
        kind = {"0": "convolution", "1": "normalization"}[parts[3]]
        return prefix + f"shortcut.{kind}." + parts[4]
    index = {"conv1": 0, "bn1": 0, "conv2": 1, "bn2": 1, "conv3": 2, "bn3": 2}[module]
    kind = "convolution" if module.startswith("conv") else "normalization"
    return prefix + f"layer.{index}.{kind}." + parts[3]


def torchvision_resnet_state_dict(
    depths: tuple[int, ...], hidden: tuple[int, ...], stem: int, seed: int = 3
) -> dict[str, torch.Tensor]:
    """A torchvision-style bottleneck ResNet state dict with a 10-way ``fc`` head.

    Every float tensor is drawn independently (so all values are distinct); BN scales and running
    variances are positive; each ``num_batches_tracked`` is a different integer.
    """
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    counter = iter(range(100, 10_000))

    def bn(prefix: str, c: int) -> None:
        sd[prefix + ".weight"] = torch.rand(c, generator=g) + 0.5
        sd[prefix + ".bias"] = torch.randn(c, generator=g)
        sd[prefix + ".running_mean"] = torch.randn(c, generator=g)
        sd[prefix + ".running_var"] = torch.rand(c, generator=g) + 0.5
        sd[prefix + ".num_batches_tracked"] = torch.tensor(next(counter))

    sd["conv1.weight"] = torch.randn(stem, 3, 7, 7, generator=g)
    bn("bn1", stem)
    cin = stem
    for s, (depth, c) in enumerate(zip(depths, hidden), start=1):
        w = c // 4
        for j in range(depth):
            src_c = cin if j == 0 else c
            sd[f"layer{s}.{j}.conv1.weight"] = torch.randn(w, src_c, 1, 1, generator=g)
            bn(f"layer{s}.{j}.bn1", w)
            sd[f"layer{s}.{j}.conv2.weight"] = torch.randn(w, w, 3, 3, generator=g)
            bn(f"layer{s}.{j}.bn2", w)
            sd[f"layer{s}.{j}.conv3.weight"] = torch.randn(c, w, 1, 1, generator=g)
            bn(f"layer{s}.{j}.bn3", c)
            if j == 0:
                sd[f"layer{s}.0.downsample.0.weight"] = torch.randn(c, src_c, 1, 1, generator=g)
                bn(f"layer{s}.0.downsample.1", c)
        cin = c
    sd["fc.weight"] = torch.randn(10, cin, generator=g)
    sd["fc.bias"] = torch.randn(10, generator=g)
    return sd
