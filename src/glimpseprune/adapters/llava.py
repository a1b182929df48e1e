"""LLaVA-1.5 on stock ``LlavaForConditionalGeneration`` (transformers 5.x): CLIP ViT + projector + Llama.

Family specifics (docs/method.md §5.2, §13): plain 1-D positions (what ``generate`` computes from the attention mask),
a fixed square grid of (image_size / patch)² visual tokens per image, and VIP conditions read straight from CLIP
``hidden_states[i]`` (index 0 = embedding output after the pre-LayerNorm, so ``hidden_states[i]`` is the output of
encoder layer i-1), CLS dropped, no pooling, no reordering. The glimpse row uses the log-softmax variant.

``vision_feature_select_strategy``:
- ``"default"`` (LLaVA-1.5): CLS is dropped, every image placeholder is one grid cell and a pruning candidate.
- ``"full"``: the projector also sees CLS, so each image has 1 + h·w placeholders, the first being CLS. The CLS
  token is *not* a pruning candidate: it is left out of ``visual_mask`` (so it is always kept, like a text token)
  and out of the VIP's grid and conditions. Only the h·w patch tokens are scored and possibly dropped.
"""

from __future__ import annotations

import numpy as np
import torch

from ..config import GlimpsePruneConfig, default_prune_layer
from ..data.masks import llava_box_mask
from ..vit_scoring import VitScoring
from .base import (FamilyAdapter, PlainRopeMixin, PreparedBatch, left_aligned_prompt, register_adapter,
                   split_images)
from .qwen2_5_vl import capture_block_inputs

# Published settings (docs/method.md §13): K = reduce_layer + 1 per LLM depth; conditions for the 24-layer CLIP-L/336.
_PUBLISHED_PRUNE_LAYER = {32: 22, 40: 27}
_PUBLISHED_VIT_LAYERS = {24: [23, 17, 11, 5]}


def cls_attention(layer, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CLS attention of one CLIP encoder layer from that layer's INPUT ``hidden`` [n_img, 1 + P, D] (CLS first).

    Returns (attention from the CLS query to each patch, mean over heads [n_img, P]; patch keys, head-concatenated
    [n_img, P, D]). Only the CLS query row is computed (one row per image and head, against all 1 + P keys): the
    same softmax as ``attentions[layer][:, :, 0, 1:]`` of the stock eager tower, without any attention map.
    """
    attn = layer.self_attn
    x = layer.layer_norm1(hidden)
    n, length, _ = x.shape
    heads = attn.num_heads
    q = attn.q_proj(x[:, :1]).view(n, heads, -1).float()  # [n, H, d]
    k = attn.k_proj(x).view(n, length, heads, -1)  # [n, 1 + P, H, d]
    logits = torch.einsum("nhd,nlhd->nhl", q, k.float()) * attn.scale
    probs = torch.softmax(logits, dim=-1)[:, :, 1:].mean(1)
    return probs, k[:, 1:].reshape(n, length - 1, -1)


@register_adapter
class LlavaAdapter(PlainRopeMixin, FamilyAdapter):
    model_types = ("llava",)
    family = "llava"
    reference_model_type = "llava_llama_gp"
    letterboxes_images = True  # LLaVA-1.5 pads each image to a centred square before resizing

    @property
    def vision_config(self):
        return self.model.config.vision_config

    @property
    def strategy(self) -> str:
        return self.model.config.vision_feature_select_strategy

    @property
    def grid(self) -> tuple[int, int]:
        side = self.vision_config.image_size // self.vision_config.patch_size
        return side, side

    @property
    def vision_layers(self):
        """The CLIP encoder layers (``hidden_states[i + 1]`` is the output of ``vision_layers[i]``)."""
        tower = self.model.model.vision_tower
        return getattr(tower, "vision_model", tower).encoder.layers  # CLIPVisionModel wraps one in older versions

    def feature_block(self) -> int:
        """The CLIP encoder layer whose OUTPUT LLaVA feeds to its projector (-2 on LLaVA-1.5: the penultimate)."""
        index = self.feature_layer_index()
        if index == 0:
            raise ValueError("vision_feature_layer selects the embedding output: no CLIP encoder layer produces it")
        return index - 1

    def feature_layer_index(self) -> int:
        """The ``hidden_states`` index LLaVA feeds to its projector (the deepest one if it concatenates several)."""
        layer = self.model.config.vision_feature_layer
        layer = max(layer) if isinstance(layer, (list, tuple)) else layer
        n = self.vision_config.num_hidden_layers + 1  # hidden_states has depth + 1 entries
        return layer % n

    @property
    def vision_depth(self) -> int:
        return self.vision_config.num_hidden_layers

    def vit_layer_range(self) -> tuple[int, int]:
        # VIP conditions index CLIP's hidden_states (depth + 1 entries, 0 = embeddings), negative from the end
        n = self.vision_depth + 1
        return (-n, n)

    def default_glimpse_config(self, **overrides) -> GlimpsePruneConfig:
        text, vision = self.model.config.text_config, self.vision_config
        vit_layers = _PUBLISHED_VIT_LAYERS.get(vision.num_hidden_layers)
        if vit_layers is None:
            # Deepest-first from the projector's feature layer, evenly spread (24 layers: 23, 17, 11, 5).
            top = self.feature_layer_index()
            step = max(1, (top + 1) // 4)
            vit_layers = [top - j * step for j in range(4) if top - j * step >= 0]
        return self.build_glimpse_config(
            overrides,
            prune_layer=_PUBLISHED_PRUNE_LAYER.get(text.num_hidden_layers, default_prune_layer(text.num_hidden_layers)),
            vision_hidden_size=vision.hidden_size,
            vip_visual_layers=vit_layers,
            attention_logits=False,
        )

    @classmethod
    def box_token_mask(cls, boxes, width, height, encoding, processor):
        # The fixed square grid of the letterboxed image: pixel_values [1, C, S, S], one token per patch.
        side = encoding["pixel_values"].shape[-1]
        patch = getattr(processor, "patch_size", None) or processor.image_processor.patch_size
        grid = side // patch
        if not boxes:
            return np.zeros(grid * grid, bool)
        return llava_box_mask(boxes, width, height, grid=grid)

    @classmethod
    def flops_vision_dims(cls, config, lm_hidden: int) -> dict:
        vc = config.vision_config
        if vc.model_type != "clip_vision_model":
            raise ValueError(f"LLaVA FLOPs support a CLIP vision tower only, got {vc.model_type!r}")
        layers = config.vision_feature_layer
        n_feature_layers = 1 if isinstance(layers, int) else len(layers)
        return dict(
            hidden=vc.hidden_size,
            depth=vc.num_hidden_layers,  # the whole tower runs even though features come from layer -2
            mlp=vc.intermediate_size,
            gated_mlp=False,
            patches_per_token=1,
            patch_input=vc.num_channels * vc.patch_size**2,
            projector=((vc.hidden_size * n_feature_layers, lm_hidden), (lm_hidden, lm_hidden)),
            # The "default" strategy drops CLS after the ViT; "full" keeps it as an LLM token.
            extra_tokens_per_image=1 if config.vision_feature_select_strategy == "default" else 0,
        )

    offers_config_only = True

    @classmethod
    def config_only(cls, config: dict, max_pixels: int | None = None):
        from transformers import AutoConfig

        from ..offline_processors import build_llava_processor, build_llava_tokenizer

        tok = build_llava_tokenizer()
        vision = config["vision_config"]
        strategy = config.get("vision_feature_select_strategy", "default")
        text = dict(config["text_config"])
        text["vocab_size"] = text.get("vocab_size") or len(tok)
        text.update(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        side = vision["image_size"] // vision["patch_size"]
        extras = {k: v for k, v in config.items() if k not in ("model_type", "text_config", "vision_config")}
        hf = AutoConfig.for_model(config["model_type"], text_config=text, vision_config=dict(vision),
                                  image_token_index=tok.convert_tokens_to_ids("<image>"),
                                  image_seq_length=side * side + int(strategy == "full"), **extras)
        processor = build_llava_processor(tok, image_size=vision["image_size"], patch_size=vision["patch_size"],
                                          vision_feature_select_strategy=strategy)
        return hf, processor

    # ---- vision --------------------------------------------------------------------------------------------
    def vit_scoring(self) -> VitScoring:
        return VitScoring(
            depth=len(self.vision_layers),
            default_block=self.feature_block(),  # the CLIP layer whose output LLaVA projects
            windowed_blocks=(),  # CLIP has no window attention
            cls_query=True,  # the CLS token's attention to each patch
            token_scores=self.vit_token_scores,
        )

    def vit_token_scores(self, batch: PreparedBatch, block: int, max_elems: int):
        """(CLS attention [T], key [T, D], None) per LLM visual token of the batch (patches, raster, batch order);
        one CLS query row per image and head, so ``max_elems`` is not needed."""
        hidden, _ = batch.extras["vit_block_inputs"][block]
        probs, keys = cls_attention(self.vision_layers[block], hidden)
        return probs.reshape(-1), keys.reshape(-1, keys.shape[-1]).float(), None

    def image_features(self, pixel_values, vit_layers, extras: dict | None = None):
        """(projected features [n_img · tokens_per_image, D], conditions: per VIP layer [n_img · h·w, D_v]).

        A ``VitRequest`` also gets ``extras["vit_block_inputs"][i] = (hidden [n_img, 1 + h·w, D_v], kwargs)``: the
        input of CLIP encoder layer i (CLS first), captured by a temporary hook during this one vision-tower pass.
        """
        cfg = self.model.config
        raw = getattr(vit_layers, "block_inputs", [])
        with capture_block_inputs(self.vision_layers, raw) as inputs:
            out = self.model.model.get_image_features(
                pixel_values,
                vision_feature_layer=cfg.vision_feature_layer,
                vision_feature_select_strategy=cfg.vision_feature_select_strategy,
                output_hidden_states=True,
                return_dict=True,
            )
        if raw and extras is not None:  # opt-in (VitRequest): raw layer inputs for baselines that score CLS attention
            extras["vit_block_inputs"] = dict(inputs)
        embeds = torch.cat(list(out.pooler_output), dim=0)
        conds = None
        if vit_layers:
            states = out.hidden_states
            for i in vit_layers:
                if not 0 <= i < len(states):
                    raise ValueError(f"VIP condition layer {i} out of range: CLIP has hidden_states[0..{len(states) - 1}]")
            conds = [states[i][:, 1:].reshape(-1, states[i].shape[-1]) for i in vit_layers]  # CLS always dropped
        return embeds, conds

    # ---- the batch -----------------------------------------------------------------------------------------
    def prepare(self, inputs: dict, vit_layers: list[int] | None = None) -> PreparedBatch:
        cfg = self.model.config
        input_ids, attention_mask, source_index = left_aligned_prompt(inputs)

        placeholders = (input_ids == cfg.image_token_id) & attention_mask.bool()
        n_placeholders = int(placeholders.sum())
        pixel_values = inputs.get("pixel_values")
        if pixel_values is None and n_placeholders:
            raise ValueError(f"the prompts contain {n_placeholders} image placeholder tokens but no image was given")

        embeds = self.embed_tokens(input_ids)
        visual_mask = placeholders.clone()
        images, conds, extras = [[] for _ in range(input_ids.shape[0])], None, {}
        if pixel_values is not None:
            n_images = pixel_values.shape[0]
            gh, gw = self.grid
            with_cls = self.strategy == "full"
            per_image = gh * gw + int(with_cls)
            if n_images * per_image != n_placeholders:
                raise ValueError(
                    f"{n_images} image(s) need {n_images * per_image} placeholder tokens but the prompts have "
                    f"{n_placeholders}; the number of images does not match the image placeholders"
                )
            if with_cls:
                for b in range(input_ids.shape[0]):
                    cols = placeholders[b].nonzero().squeeze(1)
                    if cols.numel() % per_image:
                        raise ValueError(f"sample {b} has {cols.numel()} image placeholders, not a multiple of {per_image}")
                    visual_mask[b, cols[::per_image]] = False  # each image's CLS: kept, never a candidate
            images = split_images(visual_mask, [gh * gw] * n_images, [(gh, gw)] * n_images)
            image_embeds, conds = self.image_features(pixel_values, vit_layers, extras)
            if image_embeds.shape[0] != n_placeholders:
                raise ValueError(f"{image_embeds.shape[0]} image features for {n_placeholders} placeholders")
            embeds = embeds.masked_scatter(placeholders[..., None], image_embeds.to(embeds.device, embeds.dtype))

        # Same as GenerationMixin._prepare_position_ids_for_generation.
        position_ids = self.text_positions(attention_mask)
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
