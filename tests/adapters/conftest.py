"""One tiny model per family, built once per session; the suite in test_families.py runs over all of them."""

from dataclasses import dataclass

import pytest
import torch

from glimpseprune import GlimpsePrune
from glimpseprune.testing.tiny import (TinyLlavaSpec, tiny_internvl, tiny_llava, tiny_llava_next, tiny_llava_onevision,
                                       tiny_qwen2_5_vl,
                                       tiny_qwen2_vl, tiny_qwen3_vl)
from glimpseprune.testing.tiny import tiny_qwen3_5

# A new family joins the whole suite by adding one line here.
BUILDERS = {
    "qwen2_5_vl": tiny_qwen2_5_vl,
    "qwen2_vl": tiny_qwen2_vl,
    "qwen3_vl": tiny_qwen3_vl,  # DeepStack after LLM layers 0-2: the suite's cuts at 0 / 2 / 3 are before / inside / after
    "llava": tiny_llava,
    "llava_cls": lambda: tiny_llava(TinyLlavaSpec(vision_feature_select_strategy="full")),  # CLS kept as a token
    "llava_next": tiny_llava_next,  # AnyRes: base view + unpadded stitched crops, newline tokens never pruned
    "llava_onevision": tiny_llava_onevision,  # AnyRes with SigLIP (no CLS), shrunk crops view, Qwen2 LLM
    # Hybrid [full, linear, full, linear]: the suite's cuts at 1 / 2 / 3 land on linear / full / linear layers
    "qwen3_5": tiny_qwen3_5,
    "internvl": tiny_internvl,  # dynamic tiles + thumbnail: every tile its own 4 x 4 grid
}
FAMILIES = ["qwen2_5_vl", "qwen2_vl", "qwen3_vl", "llava", "llava_cls", "llava_next", "llava_onevision", "qwen3_5",
            "internvl"]
ANYRES = ("llava_next", "llava_onevision")


@dataclass
class Family:
    name: str
    model: object
    processor: object
    gp: GlimpsePrune

    @property
    def image_token_id(self) -> int:
        return self.model.config.image_token_id

    def prunable(self, input_ids: torch.Tensor, inputs: dict | None = None) -> torch.Tensor:
        """[n] bool for one row: the pruning candidates, derived independently of the adapters (AnyRes needs the
        batch-1 ``inputs``: its newline tokens, never candidates, are where the stock model's embeddings hold its
        ``image_newline`` vector)."""
        mask = input_ids == self.image_token_id
        if self.name in ANYRES:
            from .reference import stock_language_model_inputs

            embeds = stock_language_model_inputs(self.model, dict(inputs))["inputs_embeds"][0]
            newline = (embeds == self.model.model.image_newline.to(embeds.dtype)).all(-1)
            return mask & ~newline
        if getattr(self.model.config, "vision_feature_select_strategy", None) == "full":
            per_image = self.model.config.image_seq_length  # 1 + h·w: the first of each image is CLS
            cols = mask.nonzero().squeeze(1)
            mask[cols[::per_image]] = False
        return mask


_CACHE: dict[str, Family] = {}


@pytest.fixture(scope="session", params=FAMILIES)
def fam(request) -> Family:
    name = request.param
    if name not in _CACHE:
        model, processor = BUILDERS[name]()
        _CACHE[name] = Family(name, model, processor, GlimpsePrune(model, processor).with_new_modules(seed=0))
    return _CACHE[name]
