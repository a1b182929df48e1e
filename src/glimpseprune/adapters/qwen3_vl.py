"""Qwen3-VL on stock ``Qwen3VLForConditionalGeneration`` (transformers 5.x).

Same prompt layout, 4-row positions ([text; t; h; w] from ``get_rope_index``, no ``second_per_grid_ts``) and raster
2×2 merge units as Qwen2-VL, so this subclasses that adapter. What is new:

- **DeepStack**: the ViT's merged features from ``vision_config.deepstack_visual_indexes`` are ADDED to the hidden
  states of the visual tokens after LLM layers 0, 1, ... (one ViT level per layer). Here they become the batch's
  ``layer_additions``, which the one layer loop applies after each of those layers to the visual tokens STILL
  PRESENT: a cut before or inside the DeepStack layers drops the additions of the dropped tokens with them, and
  the kept tokens receive theirs at their own (never renumbered) positions. Video tokens get theirs too, as stock.
- **Video frames and timestamps**: a video's placeholders are one run per merged frame, each after a
  ``<x.x seconds>`` timestamp in plain text; the timestamps are text (never candidates) and the video's tokens are
  still one pruning unit, found by counting placeholders across the runs (``split_visual_items``).
- **Interleaved mRoPE**: the t/h/w frequency bands interleave; the stock text rotary embedding computes it from the
  same 3-row positions, so nothing here changes.
- The ViT has no window attention and no CLS: the VIP conditions are mean-pooled 2×2 units (as Qwen2-VL); ViT
  scoring is the mean attention a patch receives. Its width is ``vision_config.hidden_size``.

Defaults for the released sizes (LLM layers / ViT blocks / DeepStack indexes, from their public configs: 2B 28 /
24 / (5, 11, 17); 4B 36 / 24 / (5, 11, 17); 8B 36 / 27 / (8, 16, 24); 32B 64 / 27 / (8, 16, 24)); the reasoning is
in docs/qwen3_vl.md:

- K = round(2L/3) (19, 24, 24, 43): the paper's depth rule that gives its published K on Qwen2.5-VL (19 of 28,
  24 of 36); it is far after the last DeepStack layer (L ≥ 28 vs 3 DeepStack layers), so the glimpse reads a row
  over visual tokens that already hold every ViT level.
- VIP ViT layers = the last block plus the DeepStack blocks, deepest first ([23, 17, 11, 5] and [26, 24, 16, 8]):
  the levels Qwen3-VL itself feeds the LLM, spread over the depth like the published [31, 23, 15, 7].
"""

from __future__ import annotations

import torch
from transformers import Qwen3VLProcessor
from transformers.models.qwen3_vl import modeling_qwen3_vl as modeling

from ..config import GlimpsePruneConfig, default_prune_layer
from ..layer_loop import LayerAdditions
from .base import register_adapter
from .qwen2_5_vl import (VISION_END, VISION_START, NoVideoProcessorMixin, capture_block_inputs, capture_block_outputs,
                         merger_vision_dims)
from .qwen2_vl import Qwen2VLAdapter


class OfflineQwen3VLProcessor(NoVideoProcessorMixin, Qwen3VLProcessor):
    """``Qwen3VLProcessor`` without torchvision, so without its video processor (``build_inputs(videos=...)`` lays
    out video frames through the image processor instead, ``encode_video``)."""


def vip_layers_for(depth: int, deepstack: list[int]) -> list[int]:
    """The last ViT block and the DeepStack blocks, deepest first, at most four (distinct)."""
    return sorted({depth - 1, *deepstack}, reverse=True)[:4]


@register_adapter
class Qwen3VLAdapter(Qwen2VLAdapter):
    model_types = ("qwen3_vl",)
    family = "qwen3_vl"
    reference_model_type = None  # the published GlimpsePrune code has no Qwen3-VL
    vision_rotary = staticmethod(modeling.apply_rotary_pos_emb_vision)
    offline_processor_class = OfflineQwen3VLProcessor

    def default_glimpse_config(self, **overrides) -> GlimpsePruneConfig:
        text, vision = self.model.config.text_config, self.model.config.vision_config
        return self.build_glimpse_config(
            overrides,
            prune_layer=default_prune_layer(text.num_hidden_layers),
            vision_hidden_size=vision.hidden_size,
            vip_visual_layers=vip_layers_for(vision.depth, list(vision.deepstack_visual_indexes)),
            attention_logits=True,
        )

    @classmethod
    def flops_vision_dims(cls, config, lm_hidden: int) -> dict:
        # 2-matrix GELU MLP, full attention in every block. The main merger and one more per DeepStack level each
        # run Linear(4·D_v -> 4·D_v), Linear(4·D_v -> LLM width) per LLM visual token.
        vc = config.vision_config
        dims = merger_vision_dims(vc, width=vc.hidden_size, mlp=vc.intermediate_size, gated=False,
                                  out_width=vc.out_hidden_size, window_patches=None, full_blocks=())
        dims["projector"] = dims["projector"] * (1 + len(vc.deepstack_visual_indexes))
        return dims

    @classmethod
    def video_placeholder(cls, processor, frames, tokens_per_frame, input_frames, fps) -> str:
        # One run per temporal patch after its time: the mean time of the patch's first and last input frame, by
        # the stock processor's own rule.
        times = processor._calculate_timestamps(list(range(input_frames)), fps,
                                                processor.image_processor.temporal_patch_size)
        return "".join(f"<{s:.1f} seconds>{VISION_START}{processor.video_token * tokens_per_frame}{VISION_END}"
                       for s in times)

    @classmethod
    def video_timing(cls, processor, fps: float) -> dict:
        return {}  # the times are in the prompt text

    def apply_rotary(self, q, cos, sin):
        return modeling.apply_rotary_pos_emb(q, q, cos, sin)[0]

    # ---- vision --------------------------------------------------------------------------------------------
    def image_features(self, pixel_values, image_grid_thw, vit_layers, extras: dict | None = None):
        raw = getattr(vit_layers, "block_inputs", [])
        with capture_block_outputs(self.visual.blocks, vit_layers or []) as captured, \
                capture_block_inputs(self.visual.blocks, raw) as inputs:
            out = self.model.model.get_image_features(pixel_values, image_grid_thw, return_dict=True)
        embeds = torch.cat(out.pooler_output, dim=0)
        conds = [self.pool_block_output(captured[i], image_grid_thw) for i in vit_layers] if vit_layers else None
        if extras is not None:
            extras["deepstack_image"] = [torch.cat(level, dim=0) for level in out.deepstack_features]
            if raw:
                extras["vit_block_inputs"] = dict(inputs)
                extras["image_grid_thw"] = image_grid_thw
        return embeds, conds

    def keep_video_extras(self, out, extras: dict) -> None:
        extras["deepstack_video"] = [torch.cat(level, dim=0) for level in out.deepstack_features]

    def layer_additions(self, input_ids, attention_mask, extras: dict) -> LayerAdditions | None:
        """DeepStack: level i is added after LLM layer i to every image and video token, in sequence order."""
        cfg = self.model.config
        valid = attention_mask.bool()
        image = (input_ids == cfg.image_token_id) & valid
        video = (input_ids == cfg.video_token_id) & valid
        image_levels, video_levels = extras.pop("deepstack_image", None), extras.pop("deepstack_video", None)
        if image_levels is None and video_levels is None:
            return None
        if image_levels is None:
            image = torch.zeros_like(image)
        if video_levels is None:
            video = torch.zeros_like(video)
        owned = image | video
        levels = image_levels if image_levels is not None else video_levels
        values = {}
        for i in range(len(levels)):
            joint = levels[i].new_zeros(int(owned.sum()), levels[i].shape[-1])
            if image_levels is not None:
                joint[image[owned]] = image_levels[i].to(joint.dtype)
            if video_levels is not None:
                joint[video[owned]] = video_levels[i].to(joint.dtype)
            values[i] = joint
        return LayerAdditions(columns=owned, values=values)
