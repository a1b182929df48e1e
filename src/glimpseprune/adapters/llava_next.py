"""LLaVA-NeXT on stock ``LlavaNextForConditionalGeneration`` (transformers 5.x): CLIP crops + projector + Llama-style
LLM, AnyRes images (adapters/anyres.py, docs/method.md §19).

Family facts: every image has a base view and a crops view (the crop count follows ``image_grid_pinpoints`` and
the image size, also for several images in one prompt); the CLS token is dropped (``vision_feature_select_strategy``
"default"); the processor sizes a crop's grid as crop / ``patch_size``.
"""

from __future__ import annotations

from .anyres import AnyResAdapter
from .base import register_adapter


@register_adapter
class LlavaNextAdapter(AnyResAdapter):
    model_types = ("llava_next",)
    family = "llava_next"
    reference_model_type = None  # the published GlimpsePrune code lists LLaVA-NeXT on its roadmap only

    def stock_image_features(self, pixel_values, image_sizes, batch_num_images):
        cfg = self.model.config
        if self.strategy != "default":
            raise ValueError("LLaVA-NeXT packs crops of h·w patch features; vision_feature_select_strategy "
                             f"{self.strategy!r} (CLS kept) does not tile and is not supported")
        return self.model.model.get_image_features(
            pixel_values, image_sizes, vision_feature_layer=cfg.vision_feature_layer,
            vision_feature_select_strategy=self.strategy, output_hidden_states=True, return_dict=True)

    def pack(self, per_image, image_sizes, newline):
        packed, _ = self.model.model.pack_image_features(
            per_image, image_sizes, vision_feature_select_strategy=self.strategy, image_newline=newline)
        return packed

    @classmethod
    def crop_grid_side(cls, processor, crop: int) -> int:
        return crop // processor.patch_size
