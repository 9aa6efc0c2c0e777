"""Names and shapes of the official UnSAM whole-image checkpoint, written out by hand (spec Appendix
C).

Naive, loop-by-loop listing of every tensor of the detectron2 Mask2Former R50 ``model`` dict with
the transformers name(s) it must land at, independent of the regex table in
``unsam.models.whole_image.convert``. Used to build synthetic official state dicts in tests.
"""

from __future__ import annotations

HB = "model.pixel_level_module.encoder."
HPD = "model.pixel_level_module.decoder."
HT = "model.transformer_module."
HD = "model.transformer_module.decoder."

#: (official name, shape, [(transformers name, row slice of the official tensor or None)])
Entry = tuple[str, tuple[int, ...], list[tuple[str, "slice | None"]]]

BN = ("weight", "bias", "running_mean", "running_var")


def official_entries(num_queries: int = 2000) -> list[Entry]:
    """Every tensor of the official R50 Mask2Former ``model`` dict (hidden 256, 6 enc, 9+1 dec
    layers)."""
    out: list[Entry] = []

    def add(name: str, shape: tuple[int, ...], hf: str) -> None:
        out.append((name, shape, [(hf, None)]))

    # backbone: stem
    add("backbone.stem.conv1.weight", (64, 3, 7, 7), HB + "embedder.embedder.convolution.weight")
    for n in BN:
        add(f"backbone.stem.conv1.norm.{n}", (64,), HB + f"embedder.embedder.normalization.{n}")
    # backbone: res2..res5 = stages 0..3
    blocks = (3, 4, 6, 3)
    widths = (64, 128, 256, 512)
    outs = (256, 512, 1024, 2048)
    ins = (64, 256, 512, 1024)
    for stage in range(4):
        res = stage + 2
        w, c = widths[stage], outs[stage]
        for j in range(blocks[stage]):
            cin = ins[stage] if j == 0 else c
            conv_shapes = {1: (w, cin, 1, 1), 2: (w, w, 3, 3), 3: (c, w, 1, 1)}
            for conv in (1, 2, 3):
                hf = HB + f"encoder.stages.{stage}.layers.{j}.layer.{conv - 1}"
                add(
                    f"backbone.res{res}.{j}.conv{conv}.weight",
                    conv_shapes[conv],
                    hf + ".convolution.weight",
                )
                for n in BN:
                    add(
                        f"backbone.res{res}.{j}.conv{conv}.norm.{n}",
                        (conv_shapes[conv][0],),
                        hf + f".normalization.{n}",
                    )
            if j == 0:
                hf = HB + f"encoder.stages.{stage}.layers.0.shortcut"
                add(
                    f"backbone.res{res}.0.shortcut.weight",
                    (c, cin, 1, 1),
                    hf + ".convolution.weight",
                )
                for n in BN:
                    add(f"backbone.res{res}.0.shortcut.norm.{n}", (c,), hf + f".normalization.{n}")
    # pixel decoder
    pd = "sem_seg_head.pixel_decoder."
    for k, cin in enumerate((2048, 1024, 512)):
        add(
            pd + f"input_proj.{k}.0.weight",
            (256, cin, 1, 1),
            HPD + f"input_projections.{k}.0.weight",
        )
        add(pd + f"input_proj.{k}.0.bias", (256,), HPD + f"input_projections.{k}.0.bias")
        add(pd + f"input_proj.{k}.1.weight", (256,), HPD + f"input_projections.{k}.1.weight")
        add(pd + f"input_proj.{k}.1.bias", (256,), HPD + f"input_projections.{k}.1.bias")
    add(pd + "transformer.level_embed", (3, 256), HPD + "level_embed")
    for layer in range(6):
        src = pd + f"transformer.encoder.layers.{layer}."
        dst = HPD + f"encoder.layers.{layer}."
        for sub, rows in (
            ("sampling_offsets", 192),
            ("attention_weights", 96),
            ("value_proj", 256),
            ("output_proj", 256),
        ):
            add(src + f"self_attn.{sub}.weight", (rows, 256), dst + f"self_attn.{sub}.weight")
            add(src + f"self_attn.{sub}.bias", (rows,), dst + f"self_attn.{sub}.bias")
        for wb in ("weight", "bias"):
            add(src + f"norm1.{wb}", (256,), dst + f"self_attn_layer_norm.{wb}")
            add(src + f"norm2.{wb}", (256,), dst + f"final_layer_norm.{wb}")
        add(src + "linear1.weight", (1024, 256), dst + "fc1.weight")
        add(src + "linear1.bias", (1024,), dst + "fc1.bias")
        add(src + "linear2.weight", (256, 1024), dst + "fc2.weight")
        add(src + "linear2.bias", (256,), dst + "fc2.bias")
    add(pd + "mask_features.weight", (256, 256, 1, 1), HPD + "mask_projection.weight")
    add(pd + "mask_features.bias", (256,), HPD + "mask_projection.bias")
    add(pd + "adapter_1.weight", (256, 256, 1, 1), HPD + "adapter_1.0.weight")
    add(pd + "adapter_1.norm.weight", (256,), HPD + "adapter_1.1.weight")
    add(pd + "adapter_1.norm.bias", (256,), HPD + "adapter_1.1.bias")
    add(pd + "layer_1.weight", (256, 256, 3, 3), HPD + "layer_1.0.weight")
    add(pd + "layer_1.norm.weight", (256,), HPD + "layer_1.1.weight")
    add(pd + "layer_1.norm.bias", (256,), HPD + "layer_1.1.bias")
    # transformer decoder
    p = "sem_seg_head.predictor."
    add(p + "query_feat.weight", (num_queries, 256), HT + "queries_features.weight")
    add(p + "query_embed.weight", (num_queries, 256), HT + "queries_embedder.weight")
    add(p + "level_embed.weight", (3, 256), HT + "level_embed.weight")
    for i in range(9):
        sa = p + f"transformer_self_attention_layers.{i}."
        ca = p + f"transformer_cross_attention_layers.{i}."
        ff = p + f"transformer_ffn_layers.{i}."
        dst = HD + f"layers.{i}."
        out.append(
            (
                sa + "self_attn.in_proj_weight",
                (768, 256),
                [
                    (dst + "self_attn.q_proj.weight", slice(0, 256)),
                    (dst + "self_attn.k_proj.weight", slice(256, 512)),
                    (dst + "self_attn.v_proj.weight", slice(512, 768)),
                ],
            )
        )
        out.append(
            (
                sa + "self_attn.in_proj_bias",
                (768,),
                [
                    (dst + "self_attn.q_proj.bias", slice(0, 256)),
                    (dst + "self_attn.k_proj.bias", slice(256, 512)),
                    (dst + "self_attn.v_proj.bias", slice(512, 768)),
                ],
            )
        )
        add(ca + "multihead_attn.in_proj_weight", (768, 256), dst + "cross_attn.in_proj_weight")
        add(ca + "multihead_attn.in_proj_bias", (768,), dst + "cross_attn.in_proj_bias")
        for wb, shape in (("weight", (256, 256)), ("bias", (256,))):
            add(sa + f"self_attn.out_proj.{wb}", shape, dst + f"self_attn.out_proj.{wb}")
            add(ca + f"multihead_attn.out_proj.{wb}", shape, dst + f"cross_attn.out_proj.{wb}")
        for wb in ("weight", "bias"):
            add(sa + f"norm.{wb}", (256,), dst + f"self_attn_layer_norm.{wb}")
            add(ca + f"norm.{wb}", (256,), dst + f"cross_attn_layer_norm.{wb}")
            add(ff + f"norm.{wb}", (256,), dst + f"final_layer_norm.{wb}")
        add(ff + "linear1.weight", (2048, 256), dst + "fc1.weight")
        add(ff + "linear1.bias", (2048,), dst + "fc1.bias")
        add(ff + "linear2.weight", (256, 2048), dst + "fc2.weight")
        add(ff + "linear2.bias", (256,), dst + "fc2.bias")
    add(p + "decoder_norm.weight", (256,), HD + "layernorm.weight")
    add(p + "decoder_norm.bias", (256,), HD + "layernorm.bias")
    for k in range(3):
        add(
            p + f"mask_embed.layers.{k}.weight",
            (256, 256),
            HD + f"mask_predictor.mask_embedder.{k}.0.weight",
        )
        add(
            p + f"mask_embed.layers.{k}.bias",
            (256,),
            HD + f"mask_predictor.mask_embedder.{k}.0.bias",
        )
    add(p + "class_embed.weight", (2, 256), "class_predictor.weight")
    add(p + "class_embed.bias", (2,), "class_predictor.bias")
    add("criterion.empty_weight", (2,), "criterion.empty_weight")
    return out


def synthetic_official_state_dict(num_queries: int = 6, seed: int = 0) -> dict:
    """Every official tensor with its shape, filled with distinct random values (a forward pass
    stays finite)."""
    import math

    import torch

    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, shape, _ in official_entries(num_queries):
        t = torch.randn(shape, generator=g)
        if len(shape) >= 2:  # fan-in scaling keeps a 50-layer forward pass finite
            t = t / math.sqrt(math.prod(shape[1:]))
        elif (
            name.endswith(("running_var", "norm.weight", "norm1.weight", "norm2.weight"))
            or ".1.weight" in name
        ):
            t = t.abs() * 0.5 + 0.5  # positive variances and norm scales
        sd[name] = t
    return sd
