"""InternVL on stock ``InternVLForConditionalGeneration`` (transformers 5.x): InternViT + pixel shuffle + MLP + LLM.

Family specifics (docs/method.md §20):

- **Dynamic tiles.** The processor resizes each image to a ``cols x rows`` canvas of square tiles (the canvas whose
  aspect ratio is closest to the image's, within ``min_patches..max_patches`` tiles) and, when there is more than one
  tile, appends a **thumbnail**: the whole image resized to one tile. Every tile, thumbnail included, goes through
  the ViT on its own and becomes ``image_seq_length`` LLM tokens; the prompt holds ``<img>`` + all of an image's
  tile tokens (tiles in raster order, thumbnail last) + ``</img>``.
- **Per-tile grids.** Each tile (and the thumbnail) is its own entry in ``PreparedBatch.images`` with its own
  ``s x s`` grid: the VIP's 2-D positions restart at every tile and its attention never crosses tiles (which is
  what the reference's tile-local VIP does), and ``per_image`` keep policies apply per tile. ``<img>`` / ``</img>``
  are text: never pruned.
- **Pixel shuffle.** The ViT's ``S x S`` patch grid (CLS dropped) becomes ``S/2 x S/2`` LLM tokens: token (i, j)
  concatenates patches (2i..2i+1, 2j..2j+1). The VIP's condition for that token is the mean of those four patches'
  outputs of the chosen ViT block, in the same raster order as the tokens.
- Plain 1-D positions (what ``generate`` computes from the attention mask), as for LLaVA.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from transformers import InternVLProcessor
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

from ..config import GlimpsePruneConfig, default_prune_layer
from ..data.masks import boxes_to_grid_mask, normalize_boxes
from ..vit_scoring import VitScoring
from .base import (FamilyAdapter, PlainRopeMixin, PreparedBatch, ProjectedConditions, left_aligned_prompt,
                   register_adapter, split_images)
from .qwen2_5_vl import NoVideoProcessorMixin, capture_block_inputs, capture_block_outputs

# The reference code's InternVL2.5 default (reduce_layer 21, so K = 22) for its 32-layer LLM; other depths: 2/3 L.
_REFERENCE_PRUNE_LAYER = {32: 22}
PROCESSOR_CONFIG = "processor_config.json"


class OfflineInternVLProcessor(NoVideoProcessorMixin, InternVLProcessor):
    """``InternVLProcessor`` without torchvision: images only (its video processor needs torchvision)."""

    def save_pretrained(self, save_directory, **kwargs):
        out = super().save_pretrained(save_directory, **kwargs)
        # The tokens per tile live on the processor, not the image processor: keep them for reloading.
        (Path(save_directory) / PROCESSOR_CONFIG).write_text(
            json.dumps({"processor_class": "InternVLProcessor", "image_seq_length": self.image_seq_length}) + "\n")
        return out


def tile_cls_attention(layer, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CLS attention of one InternViT block from that block's INPUT ``hidden`` [tiles, 1 + P, D] (CLS first).

    Returns (attention from the CLS query to each patch, mean over heads [tiles, P]; patch keys [tiles, P, D]).
    Only the CLS query row is computed: the same softmax as ``attentions[block][:, :, 0, 1:]`` of the stock eager
    tower (q/k norms, when the config has them, act on the whole projection before the heads are split).
    """
    attn = layer.attention
    x = layer.layernorm_before(hidden)
    n, length, _ = x.shape
    q = attn.q_norm(attn.q_proj(x[:, :1])).view(n, attn.num_heads, -1).float()  # [n, H, d]
    k = attn.k_norm(attn.k_proj(x))  # [n, 1 + P, D]
    logits = torch.einsum("nhd,nlhd->nhl", q, k.view(n, length, attn.num_heads, -1).float()) * attn.scale
    probs = torch.softmax(logits, dim=-1)[:, :, 1:].mean(1)
    return probs, k[:, 1:]


def tile_layout(width: int, height: int, image_processor, num_tiles: int) -> tuple[int, int, bool]:
    """(cols, rows, has_thumbnail) of the tiles the processor made from a ``width x height`` image, given how many
    tile images it produced (one: the whole image resized to a tile, no thumbnail).

    The processor picked its canvas by aspect ratio among all tile counts it allowed; among the canvases of the
    count it produced, the same rule picks the same one, whatever ``min_patches`` / ``max_patches`` the call used.
    """
    if num_tiles == 1:
        return 1, 1, False
    size, n = image_processor.size, num_tiles - 1
    cols, rows = get_optimal_tiled_canvas((height, width), (size["height"], size["width"]), n, n)
    if cols * rows != n:
        raise ValueError(f"{num_tiles} tile images for one image cannot be a canvas of tiles plus a thumbnail")
    return cols, rows, True


def internvl_box_mask(boxes_px, width: int, height: int, cols: int, rows: int, thumbnail: bool,
                      side: int) -> np.ndarray:
    """Token mask over all of one image's tiles (raster tile order, thumbnail last), ``side x side`` tokens each.

    The canvas is a plain (anisotropic) resize of the image, cut into ``cols x rows`` tiles, so tile (r, c) shows
    the normalised region [c/cols, (c+1)/cols] x [r/rows, (r+1)/rows]: a box normalised by the original size,
    re-expressed in that tile's own [0, 1] coordinates, is rasterised by the common rule
    (``data.masks.boxes_to_grid_mask``; parts outside the tile are clipped away). The thumbnail shows the whole image.
    """
    norm = normalize_boxes(boxes_px, width, height) if len(boxes_px) else np.zeros((0, 4))
    parts = []
    for r in range(rows):
        for c in range(cols):
            local = norm * np.array([cols, rows, cols, rows]) - np.array([c, r, c, r])
            parts.append(boxes_to_grid_mask(local, side, side))
    if thumbnail:
        parts.append(boxes_to_grid_mask(norm, side, side))
    return np.concatenate(parts)


@register_adapter
class InternVLAdapter(PlainRopeMixin, FamilyAdapter):
    model_types = ("internvl",)
    family = "internvl"
    reference_model_type = "internvl2_5_gp"  # the authors' InternVL2.5 modules (docs/method.md §17.5)
    offers_projected_conditions = True

    @property
    def vision_config(self):
        return self.model.config.vision_config

    @property
    def vision_layers(self):
        return self.model.model.vision_tower.encoder.layer

    @property
    def vision_depth(self) -> int:
        return self.vision_config.num_hidden_layers

    @property
    def shuffle(self) -> int:
        """Side of the square of ViT patches that one LLM token concatenates (2 for ``downsample_ratio`` 0.5)."""
        ratio = self.model.config.downsample_ratio
        side = round(1 / ratio)
        if not math.isclose(side * ratio, 1.0):
            raise ValueError(f"downsample_ratio {ratio} is not 1/n; this adapter supports integer pixel shuffles")
        return side

    @property
    def patch_side(self) -> int:
        """ViT patches per tile side."""
        image, patch = self.vision_config.image_size, self.vision_config.patch_size
        return image[0] // patch[0]

    @property
    def tile_grid(self) -> tuple[int, int]:
        side = self.patch_side // self.shuffle
        return side, side

    def feature_block(self) -> int:
        """The ViT block whose output the projector reads (``vision_feature_layer``, -1 = the last block)."""
        layer = self.model.config.vision_feature_layer
        if isinstance(layer, (list, tuple)):
            raise ValueError("InternVL with several vision_feature_layer entries is not supported")
        # hidden_states[i] of the tower is the output of block i - 1 (index 0: the embeddings), -1 the last block.
        index = layer % (self.vision_depth + 1)
        if index == 0:
            raise ValueError("vision_feature_layer selects the embedding output: no ViT block produces it")
        return index - 1

    def default_glimpse_config(self, **overrides) -> GlimpsePruneConfig:
        text = self.model.config.text_config
        # Deepest first, from the block the projector reads, evenly spread (24 blocks: 23, 17, 11, 5), like LLaVA.
        top = self.feature_block()
        step = max(1, (top + 1) // 4)
        vit_layers = [top - j * step for j in range(4) if top - j * step >= 0]
        return self.build_glimpse_config(
            overrides,
            prune_layer=_REFERENCE_PRUNE_LAYER.get(text.num_hidden_layers, default_prune_layer(text.num_hidden_layers)),
            vision_hidden_size=self.vision_config.hidden_size,
            vip_visual_layers=vit_layers,
            attention_logits=False,  # the reference's InternVL default: log-softmax rows
        )

    @classmethod
    def reference_config_fields(cls, raw: dict) -> dict:
        """The authors' InternVL2.5 modules (docs/method.md §17.5): LayerNorm + plain-MLP VIP blocks, every block
        conditioned on the projected visual tokens, a LayerNorm glimpse norm, VIP attention within each tile."""
        if raw.get("attn_fuse_global", False) is not False:
            raise ValueError("attn_fuse_global=true (VIP attention across all tiles of a sample, positions restarting "
                             "per tile) is not supported: our VIP attends within one tile's grid "
                             "(docs/method.md §17.5)")
        fields = dict(
            vip_block="layernorm_plain",
            vip_conditions="projected",
            # one VIP block per entry (at least one), all on the same projected tokens
            vip_visual_layers=list(raw.get("selected_visual_layers") or [-1]),
            glimpse_norm="layernorm",  # a LayerNorm in their InternVL code whatever le_norm_type says
            norm_eps=1e-5,  # torch's LayerNorm default, which their code uses
        )
        llm = raw.get("llm_config")
        if isinstance(llm, dict) and "num_hidden_layers" in llm:
            fields["num_layers"] = int(llm["num_hidden_layers"])
        return fields

    @classmethod
    def offline_processor(cls, path):
        # AutoProcessor needs torchvision for InternVL's video processor; images need only the PIL tiler.
        from transformers import AutoTokenizer, GotOcr2ImageProcessorPil

        path = Path(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        image_processor = GotOcr2ImageProcessorPil.from_pretrained(path)
        seq_length = None
        for name, key in ((PROCESSOR_CONFIG, "image_seq_length"), ("config.json", "image_seq_length")):
            if (path / name).is_file():
                seq_length = json.loads((path / name).read_text()).get(key)
                if seq_length is not None:
                    break
        if seq_length is None:
            raise ValueError(f"{path}: no image_seq_length in {PROCESSOR_CONFIG} or config.json")
        template = getattr(tokenizer, "chat_template", None)
        if template is None and (path / "chat_template.json").is_file():
            template = json.loads((path / "chat_template.json").read_text())["chat_template"]
        return OfflineInternVLProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                                        image_seq_length=int(seq_length), chat_template=template)

    @classmethod
    def image_size_kwargs(cls, processor, min_pixels, max_pixels) -> dict:
        # A pixel budget becomes a tile budget (tiles of the processor's size).
        size = processor.image_processor.size
        area = size["height"] * size["width"]
        kwargs = {}
        if max_pixels is not None:
            kwargs["max_patches"] = max(1, max_pixels // area)
        if min_pixels is not None:
            kwargs["min_patches"] = max(1, -(-min_pixels // area))
        return kwargs

    @classmethod
    def box_token_mask(cls, boxes, width, height, encoding, processor):
        num_tiles = encoding["pixel_values"].shape[0]
        cols, rows, thumbnail = tile_layout(width, height, processor.image_processor, num_tiles)
        side = math.isqrt(processor.image_seq_length)
        return internvl_box_mask(list(boxes), width, height, cols, rows, thumbnail, side)

    @classmethod
    def grid_regions(cls, width, height, processor):
        # The tiles in raster order, then the thumbnail (a second view of the whole image, not a part of it).
        num_tiles = processor._get_num_multimodal_tokens(image_sizes=[(height, width)]).num_image_patches[0]
        cols, rows, thumbnail = tile_layout(width, height, processor.image_processor, num_tiles)
        tiles = [(c / cols, r / rows, (c + 1) / cols, (r + 1) / rows) for r in range(rows) for c in range(cols)]
        return tiles + [None] * thumbnail

    @classmethod
    def flops_vision_dims(cls, config, lm_hidden: int) -> dict:
        vc = config.vision_config
        shuffle = round(1 / config.downsample_ratio)
        patch = vc.patch_size[0] if isinstance(vc.patch_size, (list, tuple)) else vc.patch_size
        width = vc.hidden_size * shuffle**2
        return dict(
            hidden=vc.hidden_size,
            depth=vc.num_hidden_layers,
            mlp=vc.intermediate_size,
            gated_mlp=False,
            patches_per_token=shuffle**2,
            patch_input=vc.num_channels * patch**2,
            projector=((width, lm_hidden), (lm_hidden, lm_hidden)),  # LayerNorm, Linear, GELU, Linear
            extra_tokens_per_image=1,  # the CLS token of every tile, dropped after the ViT
        )

    # ---- vision --------------------------------------------------------------------------------------------
    def vit_scoring(self) -> VitScoring:
        return VitScoring(
            depth=self.vision_depth,
            default_block=self.feature_block(),  # the block whose output the projector reads
            windowed_blocks=(),  # InternViT attends over the whole tile in every block
            cls_query=True,  # the CLS token's attention to each patch, as for CLIP
            token_scores=self.vit_token_scores,
        )

    def vit_token_scores(self, batch: PreparedBatch, block: int, max_elems: int):
        """(CLS attention [T], key [T, D], None) per LLM visual token of the batch: each token's share is the mean
        over the n x n patches the pixel shuffle joins into it (so a tile's token scores still sum to its patch
        attention / n²), its key the mean of theirs. One CLS row per tile and head: ``max_elems`` is not needed."""
        hidden, _ = batch.extras["vit_block_inputs"][block]
        probs, keys = tile_cls_attention(self.vision_layers[block], hidden)
        return self.pool_patches(probs[..., None])[:, 0], self.pool_patches(keys).float(), None

    def pool_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """[tiles, S², D] per-patch values (raster, no CLS) -> [tiles · (S/n)², D]: each n x n unit of patches that
        the pixel shuffle turns into one LLM token averaged, in the tokens' raster order."""
        tiles, _, dim = patches.shape
        side, n = self.patch_side, self.shuffle
        units = patches.reshape(tiles, side // n, n, side // n, n, dim)
        return units.mean((2, 4)).reshape(-1, dim)

    def image_features(self, pixel_values, vit_layers, extras: dict | None = None):
        """(projected features [tiles · per_tile, D], conditions: per VIP layer [tiles · per_tile, D_v]).

        A ``VitRequest`` also gets ``extras["vit_block_inputs"][i] = (hidden [tiles, 1 + P, D_v], {})``: the input of
        ViT block i, captured during this one vision-tower pass. A ``ProjectedConditions`` request gets the projected
        tokens themselves (width D) as every block's condition.
        """
        cfg = self.model.config
        projected = 0
        if isinstance(vit_layers, ProjectedConditions):  # the authors' InternVL2.5 modules, docs/method.md §17.5
            vit_layers, projected = None, len(vit_layers)
        for i in vit_layers or []:
            if not 0 <= i < self.vision_depth:
                raise ValueError(f"VIP condition layer {i} out of range: the ViT has blocks 0..{self.vision_depth - 1}")
        raw = getattr(vit_layers, "block_inputs", [])
        with capture_block_outputs(self.vision_layers, vit_layers or []) as captured, \
                capture_block_inputs(self.vision_layers, raw) as inputs:
            out = self.model.model.get_image_features(
                pixel_values,
                vision_feature_layer=cfg.vision_feature_layer,
                vision_feature_select_strategy=cfg.vision_feature_select_strategy,
                return_dict=True,
            )
        if raw and extras is not None:  # opt-in (VitRequest): raw block inputs for baselines that score CLS attention
            extras["vit_block_inputs"] = dict(inputs)
        embeds = out.pooler_output.reshape(-1, out.pooler_output.shape[-1])
        # CLS dropped, as the projector's input drops it
        conds = [self.pool_patches(captured[i][:, 1:]) for i in vit_layers] if vit_layers else None
        if projected:
            conds = [embeds] * projected  # the same tensor for every VIP block
        return embeds, conds

    # ---- the batch -----------------------------------------------------------------------------------------
    def prepare(self, inputs: dict, vit_layers: list[int] | None = None) -> PreparedBatch:
        cfg = self.model.config
        if cfg.vision_feature_select_strategy != "default":
            raise ValueError("InternVL needs vision_feature_select_strategy 'default' (CLS dropped before the shuffle)")
        input_ids, attention_mask, source_index = left_aligned_prompt(inputs)

        placeholders = (input_ids == cfg.image_token_id) & attention_mask.bool()
        n_placeholders = int(placeholders.sum())
        pixel_values = inputs.get("pixel_values")
        if pixel_values is None and n_placeholders:
            raise ValueError(f"the prompts contain {n_placeholders} image placeholder tokens but no image was given")

        embeds = self.embed_tokens(input_ids)
        images, conds, extras = [[] for _ in range(input_ids.shape[0])], None, {}
        if pixel_values is not None:
            n_tiles = pixel_values.shape[0]
            grid = self.tile_grid
            per_tile = grid[0] * grid[1]
            if n_tiles * per_tile != n_placeholders:
                raise ValueError(
                    f"{n_tiles} image tile(s) need {n_tiles * per_tile} placeholder tokens but the prompts have "
                    f"{n_placeholders}; the number of images does not match the image placeholders"
                )
            for b, run in _runs(placeholders):
                if run % per_tile:
                    raise ValueError(f"sample {b} has an image of {run} placeholder tokens, not a whole number of "
                                     f"{per_tile}-token tiles; the image placeholders do not match the images")
            images = split_images(placeholders, [per_tile] * n_tiles, [grid] * n_tiles)
            image_embeds, conds = self.image_features(pixel_values, vit_layers, extras)
            if image_embeds.shape[0] != n_placeholders:
                raise ValueError(f"{image_embeds.shape[0]} image features for {n_placeholders} placeholders")
            embeds = embeds.masked_scatter(placeholders[..., None], image_embeds.to(embeds.device, embeds.dtype))

        return PreparedBatch(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=embeds,
            position_ids=self.text_positions(attention_mask),  # as GenerationMixin computes them
            visual_mask=placeholders,
            images=images,
            vit_features=conds,
            source_index=source_index,
            extras=extras,
        )


def _runs(mask: torch.Tensor):
    """(row, length) of every run of consecutive True entries of a [bs, L] bool mask, in order."""
    for b, row in enumerate(mask.tolist()):
        length = 0
        for value in row + [False]:
            if value:
                length += 1
            elif length:
                yield b, length
                length = 0
