"""LLaVA-OneVision on stock ``LlavaOnevisionForConditionalGeneration`` (transformers 5.x): SigLIP crops (no CLS,
``vision_feature_select_strategy`` "full") + projector + Qwen2 LLM, AnyRes images (adapters/anyres.py,
docs/method.md §19).

Family facts:
- a prompt with one image gets the base view and the crops view; in a prompt with several images
  (``batch_num_images`` > 1) each image is only its base view, letterboxed to a square, plus one newline;
- ``vision_aspect_ratio`` "anyres_max_N" shrinks a crops view larger than about N crops (bilinear, in the stock
  packing), so its grid is smaller than the stitched crops;
- no CLS: VisionZip / VScan score each patch by the mean attention it receives within its crop (as on Qwen).
- video inputs are refused (images only; the video processor needs torchvision).
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import LlavaOnevisionProcessor
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

from .anyres import AnyResAdapter
from .base import register_adapter
from .qwen2_5_vl import NoVideoProcessorMixin

# What the stock processor's config records besides the tokenizer, image processor and chat template.
_PROCESSOR_FIELDS = ("num_image_tokens", "vision_feature_select_strategy", "vision_aspect_ratio")


class OfflineOnevisionProcessor(NoVideoProcessorMixin, LlavaOnevisionProcessor):
    """``LlavaOnevisionProcessor`` without torchvision (images only)."""

    def save_pretrained(self, save_directory, **kwargs):
        out = super().save_pretrained(save_directory, **kwargs)
        fields = {k: getattr(self, k) for k in _PROCESSOR_FIELDS}
        (Path(save_directory) / "processor_config.json").write_text(
            json.dumps({"processor_class": "LlavaOnevisionProcessor", **fields}, indent=2))
        return out


@register_adapter
class LlavaOnevisionAdapter(AnyResAdapter):
    model_types = ("llava_onevision",)
    family = "llava_onevision"
    reference_model_type = None  # the published GlimpsePrune code has no LLaVA-OneVision
    vit_has_cls = False  # SigLIP

    def crops_per_image(self, image_sizes, batch_num_images):
        cfg = self.model.config
        # The stock rule: only a prompt with exactly one image is cut into crops (no batch_num_images: all are).
        single = [True] * len(image_sizes) if batch_num_images is None else [
            int(n) == 1 for n in batch_num_images for _ in range(int(n))]
        if len(single) != len(image_sizes):
            raise ValueError(f"batch_num_images counts {len(single)} images but {len(image_sizes)} were given")
        return [image_size_to_num_patches(size, cfg.image_grid_pinpoints, cfg.vision_config.image_size) if one else 1
                for size, one in zip(image_sizes, single)]

    def stock_image_features(self, pixel_values, image_sizes, batch_num_images):
        cfg = self.model.config
        return self.model.model.get_image_features(
            pixel_values, image_sizes, vision_feature_layer=cfg.vision_feature_layer,
            vision_feature_select_strategy=self.strategy, batch_num_images=batch_num_images,
            output_hidden_states=True, return_dict=True)

    def pack(self, per_image, image_sizes, newline):
        packed, _ = self.model.model.pack_image_features(
            per_image, image_sizes, image_newline=newline, vision_aspect_ratio=self.model.config.vision_aspect_ratio)
        return packed

    @classmethod
    def crop_grid_side(cls, processor, crop: int) -> int:
        return round(processor.num_image_tokens ** 0.5)

    @classmethod
    def max_crops(cls, processor) -> int | None:
        return int(processor.vision_aspect_ratio.removeprefix("anyres_max_"))

    @classmethod
    def offline_processor(cls, path):
        from transformers import AutoTokenizer, LlavaOnevisionImageProcessorPil

        path = Path(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        image_processor = LlavaOnevisionImageProcessorPil.from_pretrained(path)
        template = getattr(tokenizer, "chat_template", None)
        if template is None and (path / "chat_template.json").is_file():
            template = json.loads((path / "chat_template.json").read_text())["chat_template"]
        config_file = path / "processor_config.json"
        fields = json.loads(config_file.read_text()) if config_file.is_file() else {}
        kwargs = {k: fields[k] for k in _PROCESSOR_FIELDS if k in fields}
        return OfflineOnevisionProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                                         chat_template=template, **kwargs)
