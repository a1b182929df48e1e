"""What LLaVA-NeXT and LLaVA-OneVision share: AnyRes images (a base view plus high-resolution crops, stitched and
unpadded, an ``image_newline`` token after every stitched row) on a LLaVA-style 1-D-position decoder
(docs/method.md §19).

How an AnyRes image meets the engine:

- **Two views, two grids.** The base view (the whole image resized to one crop, h × w tokens) and the crops view
  (the crops stitched back into one canvas, the padding rows or columns removed, R × C tokens; OneVision may shrink
  it bilinearly) are separate ``ImageInfo`` entries with ``view`` "base" / "crops" and the same ``image`` index.
  The VIP gives each view its own 2-D position grid and never attends across views; the stitched canvas is one grid
  because the crops tile the image edge to edge and the LLM reads it row by row across crop borders (per-crop grids
  would restart positions mid-row and cut objects at tile borders). A single-crop image (OneVision's multi-image
  prompts) has only its base view.
- **Newline tokens are never pruned.** They carry no image content (one learned vector) and mark where a stitched row
  ends, so they stay, like text tokens: they are left out of ``visual_mask``, of the VIP grid and of every count.
- **Layout from the stock code.** Where every newline sits, and the crops view's R × C, come from running the stock
  ``pack_image_features`` on a marker tensor (1 for a feature, 0 for the newline), so unpadding and OneVision's
  shrinking are never re-derived here; the VIP's ViT conditions are the ViT hidden states packed by the same stock
  function without newlines, so they line up with the LLM's visual tokens by construction.
- **Boxes** (stage-1 targets, pixel boxes of the original image) map into each view through the processor's own
  geometry (``anyres_box_mask``).
"""

from __future__ import annotations

import numpy as np
import torch
from transformers.image_processing_utils import select_best_resolution
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

from ..config import default_prune_layer
from ..data.masks import boxes_to_grid_mask, normalize_boxes
from ..vit_scoring import VitScoring, received_attention
from .base import PreparedBatch, left_aligned_prompt, split_images
from .llava import LlavaAdapter, cls_attention
from .qwen2_5_vl import capture_block_inputs

BASE_VIEW, CROPS_VIEW = "base", "crops"


def view_layout(packed_marker: torch.Tensor, base_tokens: int, base_grid: tuple[int, int]):
    """From one image's packed marker [L, 1] (1: a feature, 0: a newline): (is_newline [L] bool, view grids).

    Checks that the stock layout is what the rest of the code assumes: the base view's tokens first, then rows of
    the crops view each followed by one newline (or, for a single-crop image, one newline after the base view).
    """
    is_newline = packed_marker[:, 0] == 0
    length = is_newline.numel()
    if bool(is_newline[:base_tokens].any()):
        raise ValueError("AnyRes layout: a newline inside the base view; this transformers version packs "
                         "differently")
    rest = is_newline[base_tokens:]
    rows = int(rest.sum())
    if rows == 0 or (length - base_tokens - rows) % rows:
        raise ValueError(f"AnyRes layout: {length - base_tokens} tokens after the base view do not form rows "
                         "+ newlines")
    cols = (length - base_tokens - rows) // rows
    expect = torch.zeros(rows, cols + 1, dtype=torch.bool)
    expect[:, -1] = True
    if not torch.equal(rest.cpu(), expect.flatten()):
        raise ValueError("AnyRes layout: newlines are not at the end of every stitched row")
    grids = [base_grid] if cols == 0 else [base_grid, (rows, cols)]  # cols 0: one trailing newline, no crops view
    return is_newline, grids


class AnyResAdapter(LlavaAdapter):
    """A LLaVA-style adapter whose images are AnyRes (family subclasses say how crops are counted and packed)."""

    letterboxes_images = False  # the base view is a plain resize; the crops view is drawn through its own geometry
    vit_has_cls = True  # the vision tower puts a CLS token first (CLIP); False: every position is a patch (SigLIP)
    offers_config_only = False  # LlavaAdapter.config_only builds LLaVA-1.5's fixed-grid config and processor

    # ---- family hooks (subclasses) -------------------------------------------------------------------------
    def crops_per_image(self, image_sizes, batch_num_images) -> list[int]:
        """ViT crops (base included) of every image of the batch, in order, as the stock model splits them."""
        cfg = self.model.config
        return [image_size_to_num_patches(size, cfg.image_grid_pinpoints, cfg.vision_config.image_size)
                for size in image_sizes]

    def pack(self, per_image: list[torch.Tensor], image_sizes, newline: torch.Tensor | None) -> list[torch.Tensor]:
        """The stock ``pack_image_features`` on per-image [crops, h·w, C] features: [L_image, C] each."""
        raise NotImplementedError

    def stock_image_features(self, pixel_values, image_sizes, batch_num_images):
        raise NotImplementedError

    # ---- geometry ------------------------------------------------------------------------------------------
    @property
    def grid(self) -> tuple[int, int]:
        side = self.vision_config.image_size // self.vision_config.patch_size
        return side, side

    def patch_features(self, states: torch.Tensor) -> torch.Tensor:
        """ViT states [crops, T, D] -> the per-crop patch features the projector sees (the stock select strategy)."""
        return states[:, 1:] if self.strategy == "default" else states

    def split_crops(self, rows: torch.Tensor, counts: list[int]) -> list[torch.Tensor]:
        return list(rows.split(counts, dim=0))

    def image_layouts(self, image_sizes, counts: list[int], device):
        """Per image: (is_newline [L_image], view grids), from the stock packing of a marker tensor."""
        gh, gw = self.grid
        markers = [torch.ones(n, gh * gw, 1, device=device) for n in counts]
        packed = self.pack(markers, image_sizes, torch.zeros(1, device=device))
        return [view_layout(p, gh * gw, (gh, gw)) for p in packed]

    def pack_conditions(self, states: torch.Tensor, counts, image_sizes) -> torch.Tensor:
        """ViT states [crops, T, D_v] of the whole batch -> [candidates, D_v] in the LLM's visual-token order."""
        per_image = self.split_crops(self.patch_features(states), counts)
        return torch.cat(self.pack(per_image, image_sizes, None), dim=0)

    # ---- vision --------------------------------------------------------------------------------------------
    def vit_token_scores(self, batch: PreparedBatch, block: int, max_elems: int):
        """Per crop patch: the CLS query's attention (a tower with CLS) or the mean attention the patch receives
        within its crop (no CLS), and its key; packed like the LLM's visual tokens (base view, then the stitched,
        unpadded crops view; newlines have no ViT position and are never candidates)."""
        hidden, _ = batch.extras["vit_block_inputs"][block]
        layer = self.vision_layers[block]
        if self.vit_has_cls:
            probs, keys = cls_attention(layer, hidden)
        else:
            probs, keys = crop_received_attention(layer, hidden, max_elems)
        counts, sizes = batch.extras["anyres_crops"], batch.extras["image_sizes"]
        probs = torch.cat(self.pack(self.split_crops(probs[..., None], counts), sizes, None))[:, 0]
        keys = torch.cat(self.pack(self.split_crops(keys, counts), sizes, None))
        return probs, keys.float(), None

    def image_features(self, pixel_values, image_sizes, batch_num_images, vit_layers, extras: dict):
        """(projected features per image [L_image, D] with newlines, conditions per VIP layer [candidates, D_v])."""
        raw = getattr(vit_layers, "block_inputs", [])
        with capture_block_inputs(self.vision_layers, raw) as inputs:
            out = self.stock_image_features(pixel_values, image_sizes, batch_num_images)
        if raw:
            extras["vit_block_inputs"] = dict(inputs)
        counts = self.crops_per_image(image_sizes, batch_num_images)
        conds = None
        if vit_layers:
            states = out.hidden_states
            for i in vit_layers:
                if not -len(states) <= i < len(states):
                    raise ValueError(f"VIP condition layer {i} out of range: the ViT has "
                                     f"hidden_states[0..{len(states) - 1}]")
            conds = [self.pack_conditions(states[i], counts, image_sizes) for i in vit_layers]
        return list(out.pooler_output), conds, counts

    # ---- boxes ---------------------------------------------------------------------------------------------
    @classmethod
    def box_token_mask(cls, boxes, width, height, encoding, processor):
        """Mask over one image's candidates: the base view (raster) then the crops view (raster), as packed."""
        image_processor = processor.image_processor
        crop = encoding["pixel_values"].shape[-1]
        patch = crop // cls.crop_grid_side(processor, crop)
        processed_h, processed_w = (int(v) for v in encoding["image_sizes"][0])
        return anyres_box_mask(boxes, width, height, (processed_h, processed_w), crop, patch,
                               image_processor.image_grid_pinpoints, cls.max_crops(processor))

    @classmethod
    def crop_grid_side(cls, processor, crop: int) -> int:
        """Tokens along one side of a crop, read from the processor (which sizes the placeholders)."""
        raise NotImplementedError

    @classmethod
    def max_crops(cls, processor) -> int | None:
        """OneVision's ``anyres_max_N`` (the crops view is shrunk to about N crops of tokens); None: never shrunk."""
        return None

    def default_glimpse_config(self, **overrides):
        # No published K for AnyRes families: the paper's depth rule K ~ 2L/3 (config.default_prune_layer); the
        # VIP's ViT layers follow the LLaVA rule (deepest first from the projector's feature layer).
        return super().default_glimpse_config(
            **{"prune_layer": default_prune_layer(self.text_config.num_hidden_layers), **overrides})

    # ---- the batch -----------------------------------------------------------------------------------------
    def prepare(self, inputs: dict, vit_layers: list[int] | None = None) -> PreparedBatch:
        cfg = self.model.config
        input_ids, attention_mask, source_index = left_aligned_prompt(inputs)
        if inputs.get("pixel_values_videos") is not None:
            raise ValueError(f"video inputs are not supported for {self.family} (images only)")

        placeholders = (input_ids == cfg.image_token_id) & attention_mask.bool()
        n_placeholders = int(placeholders.sum())
        pixel_values, image_sizes = inputs.get("pixel_values"), inputs.get("image_sizes")
        if pixel_values is None and n_placeholders:
            raise ValueError(f"the prompts contain {n_placeholders} image placeholder tokens but no image was given")
        embeds = self.embed_tokens(input_ids)
        visual_mask = placeholders.clone()
        images, conds, extras = [[] for _ in range(input_ids.shape[0])], None, {}
        if pixel_values is not None:
            if image_sizes is None or len(image_sizes) != pixel_values.shape[0]:
                raise ValueError("AnyRes images need image_sizes (one (height, width) per image), as the "
                                 "processor gives")
            batch_num_images = inputs.get("batch_num_images")
            counts = self.crops_per_image(image_sizes, batch_num_images)
            layouts = self.image_layouts(image_sizes, counts, embeds.device)
            lengths = [int(nl.numel()) for nl, _ in layouts]
            if sum(lengths) != n_placeholders:
                raise ValueError(
                    f"{len(lengths)} image(s) need {sum(lengths)} placeholder tokens but the prompts have "
                    f"{n_placeholders}; the number of images does not match the image placeholders")
            newline = torch.cat([nl for nl, _ in layouts]).to(visual_mask.device)
            visual_mask[placeholders] = ~newline  # newline tokens stay, like text
            views, owner = [], []
            for k, (nl, grids) in enumerate(layouts):
                for g in grids:
                    views.append(g)
                    owner.append(k)
            per_sample = split_images(visual_mask, [h * w for h, w in views], views)
            images, cursor = [], 0
            for infos in per_sample:
                first = owner[cursor] if infos else 0
                for j, info in enumerate(infos):
                    info.image = owner[cursor + j] - first
                    info.view = BASE_VIEW if j == 0 or owner[cursor + j] != owner[cursor + j - 1] else CROPS_VIEW
                cursor += len(infos)
                images.append(infos)
            features, conds, _ = self.image_features(pixel_values, image_sizes, batch_num_images, vit_layers, extras)
            features = torch.cat(features, dim=0)
            if features.shape[0] != n_placeholders:
                raise ValueError(f"{features.shape[0]} image features for {n_placeholders} placeholders")
            embeds = embeds.masked_scatter(placeholders[..., None], features.to(embeds.device, embeds.dtype))
            extras.update(anyres_crops=counts, image_sizes=image_sizes)

        position_ids = self.text_positions(attention_mask)  # as GenerationMixin._prepare_position_ids_for_generation
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

    def vit_scoring(self) -> VitScoring:
        return VitScoring(
            depth=len(self.vision_layers),
            default_block=self.feature_block(),  # the ViT layer whose output the projector sees
            windowed_blocks=(),  # crops are attended whole: no window attention
            cls_query=self.vit_has_cls,
            token_scores=self.vit_token_scores,
        )

    @classmethod
    def flops_vision_dims(cls, config, lm_hidden: int) -> dict:
        raise ValueError(
            f"FLOPs are not modelled for AnyRes images ({config.model_type}): the ViT runs on every crop while the LLM "
            "sees the unpadded stitched crops, base view and newline tokens, which the per-token FLOPs model does not "
            "describe")


def crop_received_attention(layer, hidden: torch.Tensor, max_elems: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For a ViT without CLS: the mean attention each patch receives from the patches of its own crop in one encoder
    layer, from that layer's INPUT ``hidden`` [crops, P, D] -> (scores [crops, P], keys [crops, P, D])."""
    attn = layer.self_attn
    x = layer.layer_norm1(hidden)
    crops, patches, _ = x.shape
    q = attn.q_proj(x).reshape(crops * patches, attn.num_heads, -1)
    k = attn.k_proj(x).reshape(crops * patches, attn.num_heads, -1)
    bounds = torch.arange(crops + 1, device=x.device) * patches  # each crop is one attention segment
    scores = received_attention(q, k, bounds, attn.scale, max_elems)
    return scores.view(crops, patches), k.reshape(crops, patches, -1)


def anyres_box_mask(boxes, width: int, height: int, processed_size: tuple[int, int], crop: int, patch: int,
                    pinpoints, max_crops: int | None = None) -> np.ndarray:
    """Pixel boxes of a ``width × height`` image -> bool mask over its AnyRes candidates: the base view's
    (crop/patch)² grid, then the crops view's grid, both raster (the order the LLM sees them, newlines excluded).

    ``processed_size`` (height, width) is the image as the processor received it (boxes are rescaled from
    ``width × height`` to it). Base view: a plain resize of the whole image to one crop, so a box keeps its
    fractions. Crops view: the image is scaled to fit the chosen canvas (aspect kept, ``ceil``), pasted centred,
    cut into crops; in token space the stock unpadding then drops whole rows (or columns) from both ends, and
    OneVision may shrink what is left bilinearly to ``int(rows / r) × int(cols / r)``. A box therefore goes
    original pixels -> canvas pixels (scale, paste offset) -> canvas token units (/ patch) -> minus the unpadded
    rows/columns -> fractions of the unpadded grid, rasterised on the final grid with the docs/method.md §11.3 rule.
    """
    import math

    side = crop // patch
    ph, pw = processed_size
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * np.array(
        [pw / width, ph / height, pw / width, ph / height]) if len(boxes) else np.zeros((0, 4))
    base = boxes_to_grid_mask(normalize_boxes(boxes, pw, ph), side, side) if len(boxes) else np.zeros(side * side, bool)

    canvas_h, canvas_w = select_best_resolution((ph, pw), pinpoints)
    scale_w, scale_h = canvas_w / pw, canvas_h / ph
    if scale_w < scale_h:
        new_w, new_h = canvas_w, min(math.ceil(ph * scale_w), canvas_h)
    else:
        new_h, new_w = canvas_h, min(math.ceil(pw * scale_h), canvas_w)
    paste_x, paste_y = (canvas_w - new_w) // 2, (canvas_h - new_h) // 2
    rows, cols = canvas_h // crop * side, canvas_w // crop * side  # the stitched token canvas
    top = left = 0
    if pw / ph > cols / rows:  # the stock unpad_image rule, in token units
        kept = int(round(ph * (cols / pw), 7))
        top = (rows - kept) // 2
        rows -= 2 * top
    else:
        kept = int(round(pw * (rows / ph), 7))
        left = (cols - kept) // 2
        cols -= 2 * left
    final_rows, final_cols = rows, cols
    if max_crops is not None:
        ratio = math.sqrt(rows * cols / (max_crops * side**2))
        if ratio > 1.1:
            final_rows, final_cols = int(rows // ratio), int(cols // ratio)
    if not len(boxes):
        return np.concatenate([base, np.zeros(final_rows * final_cols, bool)])
    x = (boxes[:, [0, 2]] * new_w / pw + paste_x) / patch - left  # token units of the unpadded grid
    y = (boxes[:, [1, 3]] * new_h / ph + paste_y) / patch - top
    norm = np.stack([x[:, 0] / cols, y[:, 0] / rows, x[:, 1] / cols, y[:, 1] / rows], axis=1)
    return np.concatenate([base, boxes_to_grid_mask(norm, final_rows, final_cols)])
