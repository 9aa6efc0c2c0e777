"""The decoder paths of the whole-image segmenter (inference only), each a context manager that
patches one model instance:

- _lean_mask_predictions (the reference path, reference=True): transformers' decoder with
  bounded memory, only the last decoder layer's mask logits kept and boolean attention masks;
- _fast_decoder (the default): attention masks computed at their own resolution from resized
  pixel embeddings, one additive mask shared by the heads, fused attention, and only the top-k
  queries' final masks projected at 1/4 resolution. Same masks and scores up to float rounding
  (tests/models/test_segment_fast_path.py). It also runs the pixel decoder without its
  host-to-device copy (_fast_pixel_decoder), so the whole fast forward pass runs on a GPU with no
  synchronisation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F


@contextlib.contextmanager
def _lean_mask_predictions(model: Any) -> Iterator[None]:
    """Inside the block, the decoder's mask predictor works with bounded memory (inference only).

    transformers' ``Mask2FormerMaskPredictor.forward`` is replaced, for this model instance, by the
    same computation with three savings that leave the outputs unchanged:

    - only the last call's (Q, H/4, W/4) mask logits are returned; earlier calls (used by the
      decoder only for their attention masks) return empty tensors, so the decoder no longer keeps
      ``decoder_layers`` of them (~8 GB for 2000 queries at 1024x1536);
    - the attention mask is thresholded (``sigmoid < 0.5``) *before* being repeated over the heads,
      so the repeat copies booleans instead of floats (4x less memory, the same mask);
    - the last call skips the attention mask, which nothing reads after the last layer.
    """
    decoder = model.model.transformer_module.decoder
    predictor = decoder.mask_predictor
    total = len(decoder.layers) + 1
    calls = [0]

    def forward(
        outputs: torch.Tensor,
        pixel_embeddings: torch.Tensor,
        attention_mask_target_size: Any = None,
    ) -> Any:
        calls[0] += 1
        last = calls[0] % total == 0
        mask_embeddings = predictor.mask_embedder(outputs.transpose(0, 1))
        outputs_mask = torch.einsum("bqc, bchw -> bqhw", mask_embeddings, pixel_embeddings)
        if last:
            return outputs_mask, None
        attention_mask = F.interpolate(
            outputs_mask, size=attention_mask_target_size, mode="bilinear", align_corners=False
        )
        # float32 threshold (a no-op cast in a float32 model): in bfloat16 the sigmoid rounds every
        # value within 2**-9 of 0.5 to 0.5, so logits just below 0 would not be blocked
        attention_mask = attention_mask.float().sigmoid().flatten(2) < 0.5  # (B, Q, hw) bool
        attention_mask = (
            attention_mask.unsqueeze(1).expand(-1, predictor.num_heads, -1, -1).flatten(0, 1)
        )
        return outputs_mask.new_empty((*outputs_mask.shape[:2], 0, 0)), attention_mask.detach()

    predictor.forward = forward
    try:
        yield
    finally:
        del predictor.forward  # back to the class's forward


def _supports_fast_decoder(model: Any) -> bool:
    """The fast decoder re-implements transformers' post-norm masked-attention layer only."""
    decoder = model.model.transformer_module.decoder
    return not getattr(decoder.config, "pre_norm", False) and all(
        isinstance(layer.cross_attn, torch.nn.MultiheadAttention) for layer in decoder.layers
    )


def _attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """Fused attention ``softmax(q k^T * scale + mask) v`` over (B, heads, L, d) tensors.

    torch's scaled-dot-product attention (its softmax accumulates in float32 whatever the inputs'
    dtype); on CUDA a memory-efficient kernel, never the (heads, Q, K) weights.
    """
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def _cross_attention(
    attn: torch.nn.MultiheadAttention,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
) -> torch.Tensor:
    """``nn.MultiheadAttention(query, key, value, attn_mask=mask, need_weights=False)`` (seq-first
    (L, B, E) tensors, no dropout) with :func:`_attend`: the same projections, one fused kernel.

    ``mask``: additive, (Q, K) or (B, 1, Q, K), shared by the heads.
    """
    e, heads = attn.embed_dim, attn.num_heads
    d = e // heads
    if attn.in_proj_weight is not None:
        w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
    else:
        w_q, w_k, w_v = attn.q_proj_weight, attn.k_proj_weight, attn.v_proj_weight
    b_q, b_k, b_v = (None, None, None) if attn.in_proj_bias is None else attn.in_proj_bias.chunk(3)

    def heads_first(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        length, batch = x.shape[:2]
        return F.linear(x, w, b).view(length, batch, heads, d).permute(1, 2, 0, 3)

    q = heads_first(query, w_q, b_q)
    out = _attend(q, heads_first(key, w_k, b_k), heads_first(value, w_v, b_v), mask, d**-0.5)
    length, batch = query.shape[:2]
    return attn.out_proj(out.permute(2, 0, 1, 3).reshape(length, batch, e))


@contextlib.contextmanager
def _fast_pixel_decoder(model: Any) -> Iterator[None]:
    """Inside the block, the pixel decoder runs transformers' forward without its host-to-device
    copy of the feature-map shapes (a synchronisation on CUDA; the tensor it made only fed the
    custom-kernel path, unused here). Same outputs, bit for bit."""
    from transformers.models.mask2former.modeling_mask2former import (
        Mask2FormerPixelDecoderOutput,
    )

    pixel_decoder = model.model.pixel_level_module.decoder

    def forward(
        features: list[torch.Tensor],
        encoder_outputs: Any = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> Any:
        self = pixel_decoder
        levels = self.num_feature_levels
        inputs_embeds, position_embeddings = [], []
        for level, x in enumerate(features[::-1][:levels]):
            inputs_embeds.append(self.input_projections[level](x))
            position_embeddings.append(self.position_embedding(x.shape, x.device, x.dtype))
        masks = [
            torch.zeros((x.size(0), x.size(2), x.size(3)), device=x.device, dtype=torch.bool)
            for x in inputs_embeds
        ]
        spatial_shapes_list = [(int(e.shape[2]), int(e.shape[3])) for e in inputs_embeds]
        input_embeds_flat = torch.cat([e.flatten(2).transpose(1, 2) for e in inputs_embeds], 1)
        masks_flat = torch.cat([m.flatten(1) for m in masks], 1)
        pos_flat = torch.cat(
            [
                e.flatten(2).transpose(1, 2) + self.level_embed[i].view(1, 1, -1)
                for i, e in enumerate(position_embeddings)
            ],
            1,
        )
        valid_ratios = torch.stack(
            [self.get_valid_ratio(m, dtype=input_embeds_flat.dtype) for m in masks], 1
        )
        encoder_outputs = self.encoder(
            inputs_embeds=input_embeds_flat,
            attention_mask=masks_flat,
            position_embeddings=pos_flat,
            spatial_shapes_list=spatial_shapes_list,
            level_start_index=None,  # read only by the custom CUDA kernel, which is not used
            valid_ratios=valid_ratios,
            output_attentions=False,
            output_hidden_states=False,
            return_dict=True,
        )
        last = encoder_outputs.last_hidden_state
        batch_size = last.shape[0]
        sizes = [h * w for h, w in spatial_shapes_list]
        outputs = [
            x.transpose(1, 2).view(batch_size, -1, h, w)
            for x, (h, w) in zip(torch.split(last, sizes, dim=1), spatial_shapes_list)
        ]
        for idx, feature in enumerate(features[: self.num_fpn_levels][::-1]):
            current = self.lateral_convolutions[idx](feature)
            out = current + F.interpolate(
                outputs[-1], size=current.shape[-2:], mode="bilinear", align_corners=False
            )
            outputs.append(self.output_convolutions[idx](out))
        return Mask2FormerPixelDecoderOutput(
            mask_features=self.mask_projection(outputs[-1]),
            multi_scale_features=tuple(outputs[:levels]),
            attentions=None,
        )

    pixel_decoder.forward = forward
    try:
        yield
    finally:
        del pixel_decoder.forward  # back to the class's forward


@contextlib.contextmanager
def _fast_decoder(model: Any, *, full_masks: bool) -> Iterator[dict[str, torch.Tensor]]:
    """Inside the block, the masked-attention decoder runs a faster, equivalent forward (inference).

    Yields a dict that, after the forward pass, holds ``mask_embeddings`` (B, Q, C) of the last
    layer and ``pixel_embeddings`` (B, C, H/4, W/4): the last layer's mask logits are
    ``einsum("bqc,bchw->bqhw")`` of the two, so a caller can compute them for the top-k queries.
    With ``full_masks`` the decoder also returns them for every query (``masks_queries_logits``).

    Differences from transformers' ``Mask2FormerMaskedAttentionDecoder.forward`` (same outputs up
    to float rounding; a logit within rounding of 0 may flip an attention-mask entry, counted in
    tests/models/test_segment_fast_path.py):

    - attention-mask logits are computed at the attention resolution (1/32, 1/16, 1/8): the 1/4
      pixel embeddings are resized bilinearly once per resolution and then projected on the mask
      embeddings. Bilinear resizing is linear, so this equals projecting at 1/4 then resizing, at
      1/16 to 1/64 of the cost; intermediate 1/4-resolution masks are never computed;
    - a position is blocked where its logit is < 0 (transformers: ``sigmoid < 0.5``, the same
      except within ~3e-8 of 0; in bfloat16 the sigmoid rounds every value within 2**-9 of 0.5 to
      0.5, the logit's sign is exact);
    - the attention mask is one additive float mask shared by all heads (not a
      (B * heads, Q, hw) bool mask that the decoder sums, multiplies and MultiheadAttention turns
      into floats again), and cross-attention is one fused scaled-dot-product attention with
      MultiheadAttention's own projections (:func:`_cross_attention`) instead of materialising
      per-head softmax weights;
    - self-attention uses the same fused kernel (transformers' ``Mask2FormerAttention`` always
      materialises its (B * heads, Q, Q) weights);
    - the key ``features + position embedding`` of each level is built once, not once per layer.

    Nothing in it copies between host and device (the CUDA test runs it under
    ``torch.cuda.set_sync_debug_mode("error")``).
    """
    from transformers.models.mask2former.modeling_mask2former import (
        Mask2FormerMaskedAttentionDecoderOutput,
    )

    decoder = model.model.transformer_module.decoder
    predictor = decoder.mask_predictor
    stash: dict[str, torch.Tensor] = {}

    def attention_mask(hidden: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Additive (B, 1, Q, hw) mask: -inf where the mask logit is < 0 (sigmoid < 0.5)."""
        emb = predictor.mask_embedder(hidden.transpose(0, 1))  # (B, Q, C)
        blocked = torch.bmm(emb, features) < 0  # (B, Q, hw)
        blocked &= ~blocked.all(-1, keepdim=True)  # a query that sees nothing attends everywhere
        mask = torch.zeros(blocked.shape, dtype=hidden.dtype, device=hidden.device)
        mask.masked_fill_(blocked, float("-inf"))
        return mask[:, None]  # broadcast over the heads

    def self_attention(attn: Any, hidden: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
        """``Mask2FormerAttention`` (no mask) with fused attention: (Q, B, E) -> (Q, B, E)."""
        h = hidden.transpose(0, 1)  # (B, Q, E)
        qk = h if pos is None else h + pos.transpose(0, 1)
        b, q, e = h.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, q, attn.num_heads, attn.head_dim).transpose(1, 2)

        out = _attend(
            heads(attn.q_proj(qk)), heads(attn.k_proj(qk)), heads(attn.v_proj(h)), None,
            attn.scaling,
        )  # fmt: skip
        return attn.out_proj(out.transpose(1, 2).reshape(b, q, e)).transpose(0, 1)

    def forward(
        inputs_embeds: torch.Tensor | None = None,
        multi_stage_positional_embeddings: list[torch.Tensor] | None = None,
        pixel_embeddings: torch.Tensor | None = None,
        encoder_hidden_states: list[torch.Tensor] | None = None,
        query_position_embeddings: torch.Tensor | None = None,
        feature_size_list: list[Any] | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> Any:
        assert inputs_embeds is not None and pixel_embeddings is not None
        assert encoder_hidden_states is not None and multi_stage_positional_embeddings is not None
        assert feature_size_list is not None
        levels = decoder.num_feature_levels
        # pixel embeddings at each attention resolution, flattened to (B, C, hw)
        features = [
            F.interpolate(
                pixel_embeddings,
                size=tuple(int(v) for v in feature_size_list[lv]),
                mode="bilinear",
                align_corners=False,
            ).flatten(2)
            for lv in range(levels)
        ]
        keys = [
            encoder_hidden_states[lv] + multi_stage_positional_embeddings[lv]
            for lv in range(levels)
        ]
        hidden = inputs_embeds
        all_hidden: tuple[torch.Tensor, ...] = ()
        normed = decoder.layernorm(hidden)
        intermediate = (normed,)
        mask = attention_mask(normed, features[0])
        for idx, layer in enumerate(decoder.layers):
            all_hidden += (hidden,)
            level = idx % levels
            # masked cross-attention, then self-attention, then FFN (post-norm, as forward_post)
            residual = hidden
            out = _cross_attention(
                layer.cross_attn,
                hidden + query_position_embeddings,
                keys[level],
                encoder_hidden_states[level],
                mask,
            )
            hidden = layer.cross_attn_layer_norm(residual + out)
            residual = hidden
            out = self_attention(layer.self_attn, hidden, query_position_embeddings)
            hidden = layer.self_attn_layer_norm(residual + out)
            residual = hidden
            out = layer.fc2(layer.activation_fn(layer.fc1(hidden)))
            hidden = layer.final_layer_norm(residual + out)
            normed = decoder.layernorm(hidden)
            intermediate += (normed,)
            if idx + 1 < len(decoder.layers):
                mask = attention_mask(normed, features[(idx + 1) % levels])
        all_hidden += (hidden,)
        mask_embeddings = predictor.mask_embedder(normed.transpose(0, 1))  # (B, Q, C)
        stash["mask_embeddings"] = mask_embeddings
        stash["pixel_embeddings"] = pixel_embeddings
        empty = mask_embeddings.new_empty((*mask_embeddings.shape[:2], 0, 0))
        last = (
            torch.einsum("bqc, bchw -> bqhw", mask_embeddings, pixel_embeddings)
            if full_masks
            else empty
        )
        return Mask2FormerMaskedAttentionDecoderOutput(
            last_hidden_state=hidden.transpose(1, 0),
            hidden_states=all_hidden if output_hidden_states else None,
            attentions=None,
            intermediate_hidden_states=intermediate,
            masks_queries_logits=(empty,) * (len(intermediate) - 1) + (last,),
        )

    decoder.forward = forward
    try:
        with _fast_pixel_decoder(model):
            yield stash
    finally:
        del decoder.forward  # back to the class's forward


@contextlib.contextmanager
def _gather_sampling(model: Any, enabled: bool = True) -> Iterator[None]:
    """Inside the block, the pixel decoder's deformable attention layers (installed by
    :func:`unsam.models.whole_image.precision.install_float32_steps`) sample with
    :func:`~unsam.models.whole_image.precision.gather_sampling` (the fast path on the CPU)."""
    layers = [m for m in model.modules() if hasattr(m, "sampling_offsets")]
    if not enabled:
        yield
        return
    for layer in layers:
        layer.unsam_gather = True
    try:
        yield
    finally:
        for layer in layers:
            layer.unsam_gather = False
