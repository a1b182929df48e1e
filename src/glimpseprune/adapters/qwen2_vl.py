"""Qwen2-VL on stock ``Qwen2VLForConditionalGeneration`` (transformers 5.x).

Same positions (3-axis mRoPE from ``get_rope_index``, passed as [4, bs, L]), prompt layout and dynamic merged grid
as Qwen2.5-VL, so this subclasses that adapter. Differences: ``get_rope_index`` takes no ``second_per_grid_ts``;
the ViT has no window attention, so its blocks run in raster patch order where every 4 consecutive patches form
one 2×2 merge unit (mean over each group of 4, no reordering); the ViT width is ``vision_config.embed_dim``
(``vision_config.hidden_size`` is the merger's output width).
"""

from __future__ import annotations

import torch
from transformers import Qwen2VLProcessor
from transformers.models.qwen2_vl import modeling_qwen2_vl as modeling

from ..config import GlimpsePruneConfig, default_prune_layer
from .base import register_adapter
from .qwen2_5_vl import NoVideoProcessorMixin, Qwen2_5_VLAdapter, merger_vision_dims


class OfflineQwen2VLProcessor(NoVideoProcessorMixin, Qwen2VLProcessor):
    """``Qwen2VLProcessor`` without torchvision."""


@register_adapter
class Qwen2VLAdapter(Qwen2_5_VLAdapter):
    model_types = ("qwen2_vl",)
    family = "qwen2_vl"
    reference_model_type = "qwen2_vl_gp"

    def default_glimpse_config(self, **overrides) -> GlimpsePruneConfig:
        text, vision = self.model.config.text_config, self.model.config.vision_config
        depth = vision.depth
        step = max(1, depth // 4)  # 32 blocks: 31, 23, 15, 7 (deepest first)
        vit_layers = [depth - 1 - j * step for j in range(4) if depth - 1 - j * step >= 0]
        return self.build_glimpse_config(
            overrides,
            prune_layer=default_prune_layer(text.num_hidden_layers),
            vision_hidden_size=vision.embed_dim,
            vip_visual_layers=vit_layers,
            attention_logits=True,
        )

    vision_rotary = staticmethod(modeling.apply_rotary_pos_emb_vision)
    offline_processor_class = OfflineQwen2VLProcessor

    @classmethod
    def flops_vision_dims(cls, config, lm_hidden: int) -> dict:
        # Qwen2-VL's vision config calls its width embed_dim (its hidden_size is the LLM width); 2-matrix MLP,
        # full attention in every block.
        vc = config.vision_config
        return merger_vision_dims(vc, width=vc.embed_dim, mlp=int(vc.embed_dim * vc.mlp_ratio), gated=False,
                                  out_width=vc.hidden_size, window_patches=None, full_blocks=())

    def apply_rotary(self, q, cos, sin):
        return modeling.apply_rotary_pos_emb(q, q, cos, sin)[0]

    @classmethod
    def video_timing(cls, processor, fps: float) -> dict:
        return {}  # no absolute-time positions on Qwen2-VL

    def rope_index_extras(self, second_per_grid_ts) -> dict:
        return {}  # Qwen2-VL's get_rope_index takes no second_per_grid_ts

    def pool_block_output(self, feat: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """[n_patches, D_v] in raster merge-unit order -> one vector per LLM visual token (mean of each 2×2 unit)."""
        return feat.view(-1, self.merge_size**2, feat.shape[-1]).mean(1)
