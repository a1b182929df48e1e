"""Qwen2.5-VL on stock ``Qwen2_5_VLForConditionalGeneration`` (transformers 5.x).

Family specifics: 3-axis mRoPE positions from ``get_rope_index`` (passed as [4, bs, L]: the text row that
transformers uses for masks, then t/h/w), a dynamic merged grid per image (``image_grid_thw / 2``), and VIP
conditions pooled from several ViT blocks, which run in *window order*. Videos (``pixel_values_videos``,
``video_grid_thw`` = t merged frames × h × w patches) are pruning units like images (docs/method.md §10.1): their
conditions come from the same blocks during the stock video-tower call, pooled per frame the same way.
"""

from __future__ import annotations

import json
from contextlib import contextmanager

import numpy as np
import torch
from transformers import Qwen2_5_VLProcessor
from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as modeling
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize
from transformers.vision_utils import get_vision_window_index

from ..config import GlimpsePruneConfig, default_prune_layer
from ..data.masks import QWEN_MAX_PIXELS, QWEN_MIN_PIXELS, boxes_to_grid_mask, normalize_boxes
from ..vit_scoring import VitScoring, packed_block_scores
from .base import FamilyAdapter, ImageInfo, PreparedBatch, left_align, register_adapter, split_visual_items

# Published settings (docs/method.md §2, §17.2): K = reduce_layer + 1 per LLM depth.
_PUBLISHED_PRUNE_LAYER = {28: 19, 36: 24}
_PUBLISHED_VIT_LAYERS = {32: [31, 23, 15, 7]}
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"  # around every image's and video's placeholders


def qwen_token_grid(
    width: int,
    height: int,
    patch_size: int = 14,
    merge_size: int = 2,
    min_pixels: int = QWEN_MIN_PIXELS,
    max_pixels: int = QWEN_MAX_PIXELS,
) -> tuple[int, int]:
    """Merged-token grid ``(grid_h, grid_w)`` Qwen2-VL / Qwen2.5-VL produce for a ``width × height`` image.

    Uses transformers' own ``smart_resize`` (factor ``patch_size * merge_size``), so it follows the processor
    exactly; the number of ``<|image_pad|>`` tokens is ``grid_h * grid_w``.
    """
    factor = patch_size * merge_size
    resized_h, resized_w = smart_resize(
        height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels
    )
    return resized_h // factor, resized_w // factor


def qwen_box_mask(boxes_px, width: int, height: int, **grid_kwargs) -> np.ndarray:
    """Token mask on Qwen's merged grid for pixel boxes of a ``width × height`` image.

    ``smart_resize`` is a plain (anisotropic) rescale with no padding or cropping, so a box normalised by the
    *original* image size lands on the same fraction of the resized image. ``grid_kwargs`` go to
    :func:`qwen_token_grid` (``patch_size``, ``merge_size``, ``min_pixels``, ``max_pixels``).
    """
    grid_h, grid_w = qwen_token_grid(width, height, **grid_kwargs)
    return boxes_to_grid_mask(normalize_boxes(boxes_px, width, height), grid_h, grid_w)


def video_patches(image_processor, frames: list) -> dict:
    """``pixel_values_videos`` [t·h·w, C·p_t·p·p] and ``video_grid_thw`` [[t, h, w]] of one video from its frames, through
    a Qwen-format image processor (which makes every image one temporal patch by repeating it p_t times).

    Patch layout (the stock video processor's): temporal patches in time order, each in the image's merge-unit
    order; inside a patch, channel-major, then the p_t frames of the temporal patch, then the p × p pixels. So
    frame k of temporal patch j is input frame j·p_t + k, and the last input frame is repeated to fill the last
    patch. A video of p_t copies of one frame is therefore exactly that frame's image patches."""
    if not frames:
        raise ValueError("a video needs at least one frame")
    sizes = sorted({frame.size for frame in frames})
    if len(sizes) != 1:
        raise ValueError(f"all frames of a video must have one size; got {sizes}")
    p_t = image_processor.temporal_patch_size
    enc = image_processor(images=list(frames), return_tensors="pt")
    grids = enc["image_grid_thw"]
    patches_per_frame = int(grids[0].prod())
    n, dim = len(frames), enc["pixel_values"].shape[-1]
    per_frame = enc["pixel_values"].view(n, patches_per_frame, -1, p_t, image_processor.patch_size**2)[:, :, :, 0]
    if n % p_t:
        per_frame = torch.cat([per_frame, per_frame[-1:].expand(p_t - n % p_t, *per_frame.shape[1:])])
    t = per_frame.shape[0] // p_t
    # [t, p_t, patches, C, p·p] -> [t, patches, C, p_t, p·p]
    video = per_frame.view(t, p_t, *per_frame.shape[1:]).permute(0, 2, 3, 1, 4).reshape(t * patches_per_frame, dim)
    _, h, w = (int(x) for x in grids[0])
    return {"pixel_values_videos": video, "video_grid_thw": torch.tensor([[t, h, w]])}


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


def merger_vision_dims(vc, *, width: int, mlp: int, gated: bool, out_width: int, window_patches: int | None,
                       full_blocks) -> dict:
    """FLOPs dims (``flops.VisionDims`` fields) of a Qwen-style ViT with a 2x2 patch merger."""
    merge = vc.spatial_merge_size**2
    return dict(
        hidden=width,
        depth=vc.depth,
        mlp=mlp,
        gated_mlp=gated,
        patches_per_token=merge,
        patch_input=vc.in_channels * vc.temporal_patch_size * vc.patch_size**2,
        # The merger: norm, then Linear(4·D_v -> 4·D_v), GELU, Linear(4·D_v -> LLM width).
        projector=((merge * width, merge * width), (merge * width, out_width)),
        window_patches=window_patches,
        full_attention_blocks=tuple(full_blocks),
    )


class NoVideoProcessorMixin:
    """Qwen-VL processors usable without torchvision, and thus without a video processor."""

    def check_argument_for_proper_class(self, argument_name, argument):
        # Without torchvision the video-processor class mapping is a dummy; ``None`` must be accepted.
        if argument is None:
            return None
        return super().check_argument_for_proper_class(argument_name, argument)

    def save_pretrained(self, save_directory, **kwargs):
        """Save tokenizer, image processor and chat template; ``processing.load_processor`` reassembles them.

        (The stock method iterates over every attribute and fails on the absent video processor.)
        """
        import os

        os.makedirs(save_directory, exist_ok=True)
        self.tokenizer.save_pretrained(save_directory)
        self.image_processor.save_pretrained(save_directory)
        if self.chat_template:
            with open(os.path.join(save_directory, "chat_template.json"), "w") as f:
                json.dump({"chat_template": self.chat_template}, f)
        return [save_directory]


class OfflineQwenProcessor(NoVideoProcessorMixin, Qwen2_5_VLProcessor):
    """``Qwen2_5_VLProcessor`` without torchvision."""


def assemble_offline_processor(processor_cls, path):
    """The checkpoint's tokenizer, PIL image processor and chat template in ``processor_cls`` (no torchvision)."""
    import json
    from pathlib import Path

    from transformers import AutoTokenizer, Qwen2VLImageProcessorPil

    tokenizer = AutoTokenizer.from_pretrained(path)
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(path)
    template = getattr(tokenizer, "chat_template", None)
    template_file = Path(path) / "chat_template.json"
    if template is None and template_file.is_file():
        template = json.loads(template_file.read_text())["chat_template"]
    return processor_cls(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                         chat_template=template)


@register_adapter
class Qwen2_5_VLAdapter(FamilyAdapter):
    model_types = ("qwen2_5_vl",)
    family = "qwen2_5_vl"
    reference_model_type = "qwen2_5_vl_gp"

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

    offline_processor_class = OfflineQwenProcessor

    @classmethod
    def offline_processor(cls, path):
        # AutoProcessor needs torchvision for the Qwen video processor; images work with the PIL processor alone.
        return assemble_offline_processor(cls.offline_processor_class, path)

    offers_config_only = True

    @classmethod
    def config_only(cls, config: dict, max_pixels: int | None = None):
        from transformers import AutoConfig, Qwen2VLImageProcessorPil

        from ..offline_processors import QWEN_CHAT_TEMPLATE, build_qwen_tokenizer

        tok = build_qwen_tokenizer()
        ids = tok.convert_tokens_to_ids
        text = dict(config["text_config"])
        text["vocab_size"] = text.get("vocab_size") or len(tok)
        text.update(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None)
        hf = AutoConfig.for_model(
            config["model_type"], text_config=text, vision_config=dict(config["vision_config"]),
            image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
            vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
            tie_word_embeddings=config.get("tie_word_embeddings", False))
        size = {"shortest_edge": 56 * 56, "longest_edge": max_pixels or 28 * 28 * 1280}
        image_processor = Qwen2VLImageProcessorPil(patch_size=config["vision_config"]["patch_size"], merge_size=2,
                                                   temporal_patch_size=2, size=size)
        processor = cls.offline_processor_class(image_processor=image_processor, tokenizer=tok, video_processor=None,
                                                chat_template=QWEN_CHAT_TEMPLATE)
        return hf, processor

    @classmethod
    def image_size_kwargs(cls, processor, min_pixels, max_pixels) -> dict:
        if not (min_pixels or max_pixels):
            return {}
        size = dict(processor.image_processor.size)
        size = {k: v for k, v in size.items() if k in ("shortest_edge", "longest_edge") and v is not None}
        if min_pixels:
            size["shortest_edge"] = int(min_pixels)
        if max_pixels:
            size["longest_edge"] = int(max_pixels)
        return {"size": size}

    @classmethod
    def box_token_mask(cls, boxes, width, height, encoding, processor):
        # The dynamic grid is a plain rescale (no padding), so boxes normalised by the original size map directly.
        merge = getattr(processor.image_processor, "merge_size", 2)
        _, gh, gw = (int(x) for x in encoding["image_grid_thw"][0])
        gh, gw = gh // merge, gw // merge
        if not boxes:
            return np.zeros(gh * gw, bool)
        return boxes_to_grid_mask(normalize_boxes(boxes, width, height), gh, gw)

    @classmethod
    def flops_vision_dims(cls, config, lm_hidden: int) -> dict:
        # 3-matrix SiLU-gated MLP; windowed attention except in the full-attention blocks. window_size is in
        # pixels, so one window holds (window_size / patch_size)^2 patches (8x8 = 64 for the released models).
        vc = config.vision_config
        return merger_vision_dims(
            vc,
            width=vc.hidden_size,
            mlp=vc.intermediate_size,
            gated=True,
            out_width=vc.out_hidden_size,
            window_patches=(vc.window_size // vc.patch_size) ** 2,
            full_blocks=vc.fullatt_block_indexes,
        )

    # ---- video inputs (no torchvision: frames go through the image processor) ---------------------------------
    @classmethod
    def encode_video(cls, processor, frames: list, fps: float) -> tuple[dict, dict]:
        """One video given as decoded frames (``PIL`` images of one size, sampled at ``fps`` frames per second)
        -> (per-token tensors [L] of its placeholder text: input_ids, attention_mask, mm_token_type_ids; video
        tensors: pixel_values_videos, video_grid_thw and the family's timing input).

        The stock video processors need torchvision; here every frame is resized and normalised by the image
        processor exactly as an image (its ``size`` limits apply per frame; the stock video processor's budget
        over all frames is not applied), then consecutive frames are paired into temporal patches, the last frame
        repeated when the count is odd, in the stock video layout (``video_patches``)."""
        tensors = video_patches(processor.image_processor, frames)
        t, h, w = (int(x) for x in tensors["video_grid_thw"][0])
        tokens_per_frame = h * w // processor.image_processor.merge_size**2
        text = cls.video_placeholder(processor, t, tokens_per_frame, len(frames), fps)
        ids = torch.tensor(processor.tokenizer(text, add_special_tokens=False)["input_ids"])
        if int((ids == processor.video_token_id).sum()) != t * tokens_per_frame:
            raise ValueError("the tokenizer does not keep the video placeholder token whole")
        per_token = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                     "mm_token_type_ids": 2 * (ids == processor.video_token_id).long()}
        tensors.update(cls.video_timing(processor, fps))
        return per_token, tensors

    @classmethod
    def video_placeholder(cls, processor, frames: int, tokens_per_frame: int, input_frames: int, fps: float) -> str:
        """The prompt text of one video: its placeholder tokens between the vision start and end markers."""
        return VISION_START + processor.video_token * (frames * tokens_per_frame) + VISION_END

    @classmethod
    def video_timing(cls, processor, fps: float) -> dict:
        """Model inputs that tell the positions how much time one temporal patch spans (Qwen2.5-VL's absolute-time
        mRoPE: ``second_per_grid_ts`` = temporal patch size / fps)."""
        return {"second_per_grid_ts": torch.tensor([processor.image_processor.temporal_patch_size / fps])}

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
    vision_rotary = staticmethod(modeling.apply_rotary_pos_emb_vision)  # the ViT's own rotary, for scoring

    def vit_scoring(self) -> VitScoring:
        vision = self.model.config.vision_config
        full = sorted(getattr(vision, "fullatt_block_indexes", None) or [])  # Qwen2-VL: every block is full
        depth = len(self.visual.blocks)
        return VitScoring(
            depth=depth,
            default_block=full[-1] if full else depth - 1,  # the last block that sees the whole image
            windowed_blocks=tuple(i for i in range(depth) if full and i not in full),
            cls_query=False,  # no CLS token: a patch's score is the mean attention it receives
            token_scores=self.vit_token_scores,
        )

    def vit_token_scores(self, batch: PreparedBatch, block: int, max_elems: int):
        if batch.has_video:
            # The raw block inputs are captured from the image tower call only; a video's frames would need their
            # own pass through the scoring, which is not written: refuse rather than score the wrong tokens.
            raise ValueError("ViT-attention scoring (visionzip, vscan) covers images only; this batch has video "
                             "tokens: generate with prune_video=False or use a method that needs no ViT scoring")
        hidden, kwargs = batch.extras["vit_block_inputs"][block]
        grid_thw = batch.extras["image_grid_thw"]
        return packed_block_scores(self.visual.blocks[block], hidden, kwargs, self.vision_rotary,
                                   lambda rows: self.pool_block_output(rows, grid_thw), max_elems)

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
        valid = attention_mask.bool()
        image_mask = (input_ids == cfg.image_token_id) & valid
        video_mask = (input_ids == cfg.video_token_id) & valid
        visual_mask = image_mask | video_mask  # images and videos are both pruning candidates (docs/method.md §10)
        embeds = self.embed_tokens(input_ids)
        extras = {}
        image_items, image_embeds, image_conds = self._visual_part(
            "image", pixel_values, grid_thw, image_mask, vit_layers, extras)
        video_items, video_embeds, video_conds = self._visual_part(
            "video", inputs.get("pixel_values_videos"), inputs.get("video_grid_thw"), video_mask, vit_layers, extras)
        for mask, features in ((image_mask, image_embeds), (video_mask, video_embeds)):
            if features is not None:
                embeds = embeds.masked_scatter(mask[..., None], features.to(embeds.device, embeds.dtype))
        kinds = image_mask.long() + 2 * video_mask.long()
        images = split_visual_items(kinds, {1: image_items, 2: video_items}, {1: "image", 2: "video"})
        conds = None
        if vit_layers:
            # One condition row per visual token in sequence order: images and videos interleave as in the prompt.
            is_video = video_mask[visual_mask]
            conds = []
            for i in range(len(vit_layers)):
                parts = [c[i] for c in (image_conds, video_conds) if c is not None]
                if not parts:
                    break
                joint = parts[0].new_zeros(int(visual_mask.sum()), parts[0].shape[-1])
                if image_conds is not None:
                    joint[~is_video.to(joint.device)] = image_conds[i].to(joint.dtype)
                if video_conds is not None:
                    joint[is_video.to(joint.device)] = video_conds[i].to(joint.dtype)
                conds.append(joint)
            conds = conds or None

        position_ids = self.position_ids(
            input_ids, attention_mask, mm_types, grid_thw, inputs.get("video_grid_thw"), inputs.get("second_per_grid_ts")
        )
        batch = PreparedBatch(
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
        batch.layer_additions = self.layer_additions(input_ids, attention_mask, extras)
        return batch

    def _visual_part(self, kind, pixel_values, grid_thw, placeholders, vit_layers, extras):
        """(items, embeddings [T, D], VIP conditions per layer or None) of one modality (``"image"``/``"video"``),
        after checking its pixels, grids and placeholder count agree."""
        n_placeholders = int(placeholders.sum())
        if (pixel_values is None) != (grid_thw is None):
            names = ("pixel_values", "image_grid_thw") if kind == "image" else ("pixel_values_videos", "video_grid_thw")
            raise ValueError(f"{names[0]} and {names[1]} must be given together")
        if pixel_values is None:
            if n_placeholders:
                raise ValueError(f"the prompts contain {n_placeholders} {kind} placeholder tokens but no {kind} was given")
            return [], None, None
        unit = self.merge_size**2
        tokens = (grid_thw.prod(-1) // unit).tolist()
        if sum(tokens) != n_placeholders:
            raise ValueError(
                f"{len(tokens)} {kind}(s) need {sum(tokens)} placeholder tokens but the prompts have "
                f"{n_placeholders}; the number of {kind}s does not match the {kind} placeholders"
            )
        m = self.merge_size
        if kind == "image":
            items = [ImageInfo(grid=(h // m, w // m), num_tokens=n) for (_, h, w), n in zip(grid_thw.tolist(), tokens)]
            embeds, conds = self.image_features(pixel_values, grid_thw, vit_layers, extras)
        else:
            items = [ImageInfo(grid=(h // m, w // m), num_tokens=n, frames=t, kind="video")
                     for (t, h, w), n in zip(grid_thw.tolist(), tokens)]
            embeds, conds = self.video_features(pixel_values, grid_thw, vit_layers, extras)
        return items, embeds, conds

    def video_features(self, pixel_values_videos, video_grid_thw, vit_layers, extras: dict):
        """(embeddings, VIP conditions) of the videos: the same ViT blocks as for images, pooled the same way
        (every frame's merge units in raster order, frame after frame, as the placeholders)."""
        with capture_block_outputs(self.visual.blocks, vit_layers or []) as captured:
            out = self.model.model.get_video_features(pixel_values_videos, video_grid_thw, return_dict=True)
        conds = [self.pool_block_output(captured[i], video_grid_thw) for i in vit_layers] if vit_layers else None
        self.keep_video_extras(out, extras)
        return torch.cat(out.pooler_output), conds

    def keep_video_extras(self, out, extras: dict) -> None:
        """What the video tower's output leaves for later (nothing on this family; DeepStack levels on Qwen3-VL)."""

    def layer_additions(self, input_ids, attention_mask, extras: dict):
        """Per-layer residual additions owned by visual tokens (none on this family)."""
        return None
