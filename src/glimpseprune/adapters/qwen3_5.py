"""Qwen3.5 on stock ``Qwen3_5ForConditionalGeneration`` (transformers 5.x): a hybrid decoder.

Same prompt layout, processor (``Qwen3VLProcessor``), 4-row positions ([text; t; h; w]) with interleaved mRoPE, and
raster 2×2 merge units as Qwen3-VL, so this subclasses that adapter. What differs:

- **Hybrid layers** (``text_config.layer_types``): Gated DeltaNet linear-attention layers, with a full-attention
  layer every ``full_attention_interval`` layers (released configs: every 4th, i.e. layers 3, 7, 11, ...). A cut
  at K shortens only the full-attention caches below K; the linear layers below K keep their conv/recurrent states
  as computed; every layer from K on (both kinds) runs on the short sequence. The engine and the layer loop do this
  from ``layer_types`` (src/glimpseprune/layer_loop.py); docs/method.md, "Hybrid linear-attention models", defines it.
- **Attention rows** are read at the last full-attention layer below K (``layer_loop.row_layer``): a linear layer
  has none. The default K puts a full-attention layer right below the cut, so the row is read at K-1 as published.
- **Gated attention**: ``q_proj`` outputs each head's query and an output gate side by side ([q | gate] per head);
  the recomputed attention row takes the query half (``row_query``). Only part of each head is rotated
  (``partial_rotary_factor``); the stock ``apply_rotary_pos_emb`` handles that.
- **No DeepStack**: the ViT feeds the LLM through its final merger only, so there are no layer additions.

Defaults: K = 1 + the full-attention layer nearest to the paper's 2L/3 rule (``default_prune_layer(L) - 1``, ties to
the earlier one): with full attention every 4th layer, L = 32 gives K = 20 and L = 64 gives K = 44. VIP ViT layers:
four blocks spread over the depth, deepest first (depth 27: [26, 20, 14, 8]), as Qwen2-VL's published [31, 23, 15, 7].
"""

from __future__ import annotations

import torch
from transformers.models.qwen3_5 import modeling_qwen3_5 as modeling

from ..config import GlimpsePruneConfig, default_prune_layer
from ..layer_loop import kv_layers, layer_types
from .base import register_adapter
from .qwen2_5_vl import merger_vision_dims
from .qwen3_vl import Qwen3VLAdapter


def hybrid_prune_layer(types: list[str]) -> int:
    """K with a full-attention layer right below it, nearest to the 2L/3 rule (ties: the earlier layer)."""
    target = default_prune_layer(len(types)) - 1
    full = [i for i in kv_layers(types) if i < len(types) - 1]
    if not full:
        raise ValueError(f"a Qwen3.5 text config with layer types {sorted(set(types))} has no full-attention layer "
                         "below its last layer: there is no attention row to read")
    return 1 + min(full, key=lambda i: (abs(i - target), i))


def spread_vit_layers(depth: int) -> list[int]:
    """Four ViT blocks spread over the depth, deepest first."""
    step = max(1, depth // 4)
    return [depth - 1 - j * step for j in range(4) if depth - 1 - j * step >= 0]


@register_adapter
class Qwen3_5Adapter(Qwen3VLAdapter):
    model_types = ("qwen3_5",)
    family = "qwen3_5"
    reference_model_type = None  # the published GlimpsePrune code has no Qwen3.5
    vision_rotary = staticmethod(modeling.apply_rotary_pos_emb_vision)

    def default_glimpse_config(self, **overrides) -> GlimpsePruneConfig:
        text, vision = self.model.config.text_config, self.model.config.vision_config
        return self.build_glimpse_config(
            overrides,
            prune_layer=hybrid_prune_layer(layer_types(text)),
            vision_hidden_size=vision.hidden_size,
            vip_visual_layers=spread_vit_layers(vision.depth),
            attention_logits=True,
        )

    @classmethod
    def flops_vision_dims(cls, config, lm_hidden: int) -> dict:
        # As Qwen3-VL's ViT (2-matrix GELU MLP, full attention in every block) with its one merger only.
        vc = config.vision_config
        return merger_vision_dims(vc, width=vc.hidden_size, mlp=vc.intermediate_size, gated=False,
                                  out_width=vc.out_hidden_size, window_patches=None, full_blocks=())

    def apply_rotary(self, q, cos, sin):
        return modeling.apply_rotary_pos_emb(q, q, cos, sin)[0]

    def row_query(self, attn, x: torch.Tensor) -> torch.Tensor:
        # The stock layer views q_proj's output as [.., H, 2·d] and takes the first half of each head as the query.
        query, _gate = attn.q_proj(x).view(x.shape[0], 1, -1, 2 * attn.head_dim).chunk(2, dim=-1)
        return query.transpose(1, 2)

    # ---- vision --------------------------------------------------------------------------------------------
    def image_features(self, pixel_values, image_grid_thw, vit_layers, extras: dict | None = None):
        # Qwen2.5-VL's path (pooler_output only) with Qwen2-VL's raster pooling: no DeepStack levels to collect.
        return super(Qwen3VLAdapter, self).image_features(pixel_values, image_grid_thw, vit_layers, extras)

    def video_features(self, pixel_values_videos, video_grid_thw, extras: dict) -> torch.Tensor:
        return super(Qwen3VLAdapter, self).video_features(pixel_values_videos, video_grid_thw, extras)

    def layer_additions(self, input_ids, attention_mask, extras: dict):
        return None  # no DeepStack
