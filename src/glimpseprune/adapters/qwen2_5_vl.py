"""Qwen2.5-VL on stock ``Qwen2_5_VLForConditionalGeneration`` (transformers 5.x).

Family specifics: 3-axis mRoPE positions from ``get_rope_index`` (passed as [4, bs, L]: the text row that
transformers uses for masks, then t/h/w), a dynamic merged grid per image (``image_grid_thw / 2``), and VIP
conditions pooled from several ViT blocks, which run in *window order*.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as modeling
from transformers.vision_utils import get_vision_window_index

from ..config import GlimpsePruneConfig, default_prune_layer
from .base import FamilyAdapter, PreparedBatch, left_align, register_adapter, split_images

# Published settings (method.md §2, §17.2): K = reduce_layer + 1 per LLM depth.
_PUBLISHED_PRUNE_LAYER = {28: 19, 36: 24}
_PUBLISHED_VIT_LAYERS = {32: [31, 23, 15, 7]}


@contextmanager
def capture_block_outputs(blocks, indices: list[int]):
    """Record the outputs of ``blocks[i]`` for i in ``indices`` during the ``with`` body; hooks are always removed."""
    captured: dict[int, torch.Tensor] = {}
    handles = []
    for i in set(indices):
        def hook(_module, _args, output, i=i):
            captured[i] = output[0] if isinstance(output, tuple) else output

        handles.append(blocks[i].register_forward_hook(hook))
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()


@contextmanager
def capture_block_inputs(blocks, indices: list[int]):
    """Record (hidden_states, kwargs) that ``blocks[i]`` is called with, for i in ``indices``; hooks always removed."""
    captured: dict[int, tuple] = {}
    handles = []
    for i in set(indices):
        def hook(_module, args, kwargs, i=i):
            hidden = args[0] if args else kwargs["hidden_states"]
            captured[i] = (hidden, {k: v for k, v in kwargs.items() if k != "hidden_states"})

        handles.append(blocks[i].register_forward_pre_hook(hook, with_kwargs=True))
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()


@register_adapter
class Qwen2_5_VLAdapter(FamilyAdapter):
    model_types = ("qwen2_5_vl",)
    family = "qwen2_5_vl"

    @property
    def visual(self):
        return self.model.model.visual

    @property
    def merge_size(self) -> int:
        return self.model.config.vision_config.spatial_merge_size

    @property
    def vision_depth(self) -> int:
        return self.model.config.vision_config.depth

    def default_glimpse_config(self, **overrides) -> GlimpsePruneConfig:
        text, vision = self.model.config.text_config, self.model.config.vision_config
        depth = vision.depth
        vit_layers = _PUBLISHED_VIT_LAYERS.get(depth)
        if vit_layers is None:
            # Deepest-first, as published; the full-attention blocks see the whole image.
            vit_layers = sorted(set(vision.fullatt_block_indexes) | {depth - 1}, reverse=True)[:4]
        return self.build_glimpse_config(
            overrides,
            prune_layer=_PUBLISHED_PRUNE_LAYER.get(text.num_hidden_layers, default_prune_layer(text.num_hidden_layers)),
            vision_hidden_size=vision.hidden_size,
            vip_visual_layers=vit_layers,
            attention_logits=True,
        )

    # ---- positions -----------------------------------------------------------------------------------------
    def rope(self, hidden, position_ids):
        return self.text_model.rotary_emb(hidden, position_ids[1:])

    def mask_positions(self, position_ids):
        return position_ids[0]

    def apply_rotary(self, q, cos, sin):
        return modeling.apply_rotary_pos_emb(q, q, cos, sin)[0]

    def rope_index_extras(self, second_per_grid_ts) -> dict:
        return {"second_per_grid_ts": second_per_grid_ts}

    def position_ids(self, input_ids, attention_mask, mm_token_type_ids, image_grid_thw, video_grid_thw, second_per_grid_ts):
        rope_pos, _ = self.model.model.get_rope_index(
            input_ids,
            mm_token_type_ids=mm_token_type_ids,
            image_grid_thw=image_grid_thw,
            video_grid_thw=video_grid_thw,
            attention_mask=attention_mask,
            **self.rope_index_extras(second_per_grid_ts),
        )
        # Text row first, as GenerationMixin builds it: transformers uses it for masks.
        return torch.cat([self.text_positions(attention_mask)[None], rope_pos], dim=0)

    # ---- vision --------------------------------------------------------------------------------------------
    def pool_block_output(self, feat: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """[n_patches, D_v] in window order -> one vector per LLM visual token, in raster (placeholder) order."""
        unit = self.merge_size**2
        pooled = feat.view(-1, unit, feat.shape[-1]).mean(1)
        cfg = self.model.config.vision_config
        window_index, _ = get_vision_window_index(grid_thw, self.merge_size, cfg.window_size, cfg.patch_size)
        return pooled[torch.argsort(window_index.to(pooled.device))]

    def image_features(self, pixel_values, image_grid_thw, vit_layers, extras: dict | None = None):
        raw = getattr(vit_layers, "block_inputs", [])
        with capture_block_outputs(self.visual.blocks, vit_layers or []) as captured, \
                capture_block_inputs(self.visual.blocks, raw) as inputs:
            out = self.model.model.get_image_features(pixel_values, image_grid_thw, return_dict=True)
        embeds = torch.cat(out.pooler_output, dim=0)
        conds = [self.pool_block_output(captured[i], image_grid_thw) for i in vit_layers] if vit_layers else None
        if raw and extras is not None:  # opt-in (VitRequest): raw block inputs for baselines that score ViT attention
            extras["vit_block_inputs"] = dict(inputs)
            extras["image_grid_thw"] = image_grid_thw
        return embeds, conds

    # ---- the batch -----------------------------------------------------------------------------------------
    def prepare(self, inputs: dict, vit_layers: list[int] | None = None) -> PreparedBatch:
        cfg = self.model.config
        input_ids = inputs["input_ids"]
        attention_mask = inputs.get("attention_mask")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        attention_mask = attention_mask.long()
        mm_types = inputs.get("mm_token_type_ids")
        if mm_types is None:
            mm_types = (input_ids == cfg.image_token_id).int() + 2 * (input_ids == cfg.video_token_id).int()
        source_index = None
        order = left_align(attention_mask)
        if order is not None:
            input_ids, attention_mask, mm_types = (t.gather(1, order) for t in (input_ids, attention_mask, mm_types))
            source_index = order

        pixel_values, grid_thw = inputs.get("pixel_values"), inputs.get("image_grid_thw")
        visual_mask = (input_ids == cfg.image_token_id) & attention_mask.bool()
        n_placeholders = int(visual_mask.sum())
        if (pixel_values is None) != (grid_thw is None):
            raise ValueError("pixel_values and image_grid_thw must be given together")
        if pixel_values is None and n_placeholders:
            raise ValueError(f"the prompts contain {n_placeholders} image placeholder tokens but no image was given")

        embeds = self.embed_tokens(input_ids)
        images, conds, extras = [[] for _ in range(input_ids.shape[0])], None, {}
        if pixel_values is not None:
            unit = self.merge_size**2
            tokens = (grid_thw.prod(-1) // unit).tolist()
            if sum(tokens) != n_placeholders:
                raise ValueError(
                    f"{len(tokens)} image(s) need {sum(tokens)} placeholder tokens but the prompts have "
                    f"{n_placeholders}; the number of images does not match the image placeholders"
                )
            grids = [(int(h) // self.merge_size, int(w) // self.merge_size) for _, h, w in grid_thw.tolist()]
            images = split_images(visual_mask, tokens, grids)
            image_embeds, conds = self.image_features(pixel_values, grid_thw, vit_layers, extras)
            embeds = embeds.masked_scatter(visual_mask[..., None], image_embeds.to(embeds.dtype))

        video_grid = inputs.get("video_grid_thw")
        if inputs.get("pixel_values_videos") is not None:
            # Video tokens pass through unpruned: they are embedded like stock and never enter visual_mask.
            video_embeds = torch.cat(
                self.model.model.get_video_features(inputs["pixel_values_videos"], video_grid, return_dict=True).pooler_output
            )
            video_mask = (input_ids == cfg.video_token_id) & attention_mask.bool()
            if int(video_mask.sum()) != video_embeds.shape[0]:
                raise ValueError("the number of videos does not match the video placeholders")
            embeds = embeds.masked_scatter(video_mask[..., None], video_embeds.to(embeds.dtype))

        position_ids = self.position_ids(
            input_ids, attention_mask, mm_types, grid_thw, video_grid, inputs.get("second_per_grid_ts")
        )
        return PreparedBatch(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=embeds,
            position_ids=position_ids,
            visual_mask=visual_mask,
            images=images,
            vit_features=conds,
            source_index=source_index,
            extras=extras,
        )
