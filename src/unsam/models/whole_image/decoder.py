"""The decoder paths of the whole-image segmenter (inference only), each a context manager that
patches one model instance:

- _lean_mask_predictions (the reference path, reference=True): transformers' decoder with
  bounded memory, only the last decoder layer's mask logits kept and boolean attention masks;
- _fast_decoder (the default): attention masks computed at their own resolution from resized
  pixel embeddings, one additive mask shared by the heads, fused attention, and only the top-k
  queries' final masks projected at 1/4 resolution. Same masks and scores up to float rounding
  (tests/models/test_segment_fast_path.py).
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
        attention_mask = attention_mask.sigmoid().flatten(2) < 0.5  # (B, Q, hw) bool
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
    - the attention mask is one (Q, hw) additive float mask shared by all heads (not a
      (B * heads, Q, hw) bool mask that the decoder sums, multiplies and MultiheadAttention turns
      into floats again), and cross-attention runs with ``need_weights=False``, so torch's fused
      scaled-dot-product attention is used instead of materialising per-head softmax weights;
    - self-attention uses the same fused kernel (transformers' ``Mask2FormerAttention`` always
      materialises its (B * heads, Q, Q) weights);
    - the key ``features + position embedding`` of each level is built once, not once per layer.
    """
    from transformers.models.mask2former.modeling_mask2former import (
        Mask2FormerMaskedAttentionDecoderOutput,
    )

    decoder = model.model.transformer_module.decoder
    predictor = decoder.mask_predictor
    stash: dict[str, torch.Tensor] = {}

    def attention_mask(hidden: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Additive (Q, hw) mask (B = 1) or (B * heads, Q, hw): -inf where sigmoid(logit) < 0.5."""
        emb = predictor.mask_embedder(hidden.transpose(0, 1))  # (B, Q, C)
        blocked = torch.bmm(emb, features).sigmoid_() < 0.5  # (B, Q, hw)
        blocked &= ~blocked.all(-1, keepdim=True)  # a query that sees nothing attends everywhere
        mask = torch.zeros(blocked.shape, dtype=hidden.dtype, device=hidden.device)
        mask.masked_fill_(blocked, float("-inf"))
        if mask.shape[0] == 1:
            return mask[0]  # broadcast over the heads by MultiheadAttention
        heads = predictor.num_heads
        return mask[:, None].expand(-1, heads, -1, -1).flatten(0, 1)

    def self_attention(attn: Any, hidden: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
        """``Mask2FormerAttention`` (no mask) with fused attention: (Q, B, E) -> (Q, B, E)."""
        h = hidden.transpose(0, 1)  # (B, Q, E)
        qk = h if pos is None else h + pos.transpose(0, 1)
        b, q, e = h.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, q, attn.num_heads, attn.head_dim).transpose(1, 2)

        out = torch.nn.functional.scaled_dot_product_attention(
            heads(attn.q_proj(qk)),
            heads(attn.k_proj(qk)),
            heads(attn.v_proj(h)),
            scale=attn.scaling,
        )
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
            out, _ = layer.cross_attn(
                query=hidden + query_position_embeddings,
                key=keys[level],
                value=encoder_hidden_states[level],
                attn_mask=mask,
                key_padding_mask=None,
                need_weights=False,
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
        yield stash
    finally:
        del decoder.forward  # back to the class's forward
