"""Tiny random-weight vision-language models built offline: the explicit ``tiny`` model option of the training,
GlimpsePrune+ and benchmark recipes, and the CLI's labelled fallback when the shipped mini model is absent.

A component (recipes and the CLI use it; it imports no recipe and no test fixture). The models are randomly
initialised from small configs, with the offline tokenizers and processors of ``glimpseprune.offline_processors``;
nothing touches the network. Their answers are gibberish: they exercise the mechanics only. The test-suite's other
tiny families live in ``glimpseprune.testing.tiny``, which builds on these.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer

from .offline_processors import build_qwen_processor, build_qwen_tokenizer


@dataclass
class TinyQwenSpec:
    hidden_size: int = 64
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    vision_depth: int = 4
    vision_hidden: int = 64
    vision_heads: int = 4
    fullatt_blocks: tuple[int, ...] = (1, 3)
    patch_size: int = 14
    seed: int = 0
    # Larger than transformers' 0.02: a tiny model initialised at 0.02 repeats one token forever, which would make
    # token-for-token equality tests vacuous. At 0.2 greedy outputs vary from step to step.
    initializer_range: float = 0.2
    # Extra LLM config fields, e.g. (("use_sliding_window", True), ("sliding_window", 12), ("layer_types", [...])).
    text_overrides: tuple = ()


def seeded_model(model_cls, cfg, tokenizer, seed: int, set_bos: bool = False):
    """``model_cls(cfg)`` randomly initialised under ``seed`` (the caller's RNG state untouched), in eval mode, with
    the tokenizer's eos and pad ids (and its bos id with ``set_bos``) on its generation config."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = model_cls(cfg)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    if set_bos:
        model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model.eval()


def qwen_text_config(tokenizer, spec: "TinyQwenSpec", rope_extra: dict | None = None) -> dict:
    """The LLM half of a tiny Qwen-VL config (shared by Qwen2.5-VL and Qwen2-VL)."""
    h = spec.hidden_size
    head_dim = h // spec.num_heads
    # mrope_section must sum to head_dim / 2 (t, h, w frequency bands).
    quarter = head_dim // 8
    mrope = [head_dim // 2 - 2 * (3 * quarter // 2), 3 * quarter // 2, 3 * quarter // 2]
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=h,
        intermediate_size=4 * h,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope, **(rope_extra or {})},
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        **dict(spec.text_overrides),
    )


def build_qwen_family(config_cls, model_cls, tokenizer, spec: "TinyQwenSpec", vision_config: dict,
                       text_extra: dict | None = None, rope_extra: dict | None = None):
    """Assemble and seed-initialise a tiny Qwen-VL model (shared by Qwen2.5-VL and Qwen2-VL)."""
    ids = tokenizer.convert_tokens_to_ids
    cfg = config_cls(
        text_config={**qwen_text_config(tokenizer, spec, rope_extra), **(text_extra or {})},
        vision_config=vision_config,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=True,
        initializer_range=spec.initializer_range,
    )
    cfg.text_config.initializer_range = cfg.vision_config.initializer_range = spec.initializer_range
    cfg.text_config.eos_token_id = tokenizer.eos_token_id
    return seeded_model(model_cls, cfg, tokenizer, spec.seed)


def build_tiny_qwen2_5_vl(tokenizer: Qwen2Tokenizer, spec: TinyQwenSpec | None = None):
    """A randomly initialised ``Qwen2_5_VLForConditionalGeneration`` of a few hundred thousand parameters."""
    spec = spec or TinyQwenSpec()
    h = spec.hidden_size
    vision_config = dict(
        depth=spec.vision_depth,
        hidden_size=spec.vision_hidden,
        intermediate_size=2 * spec.vision_hidden,
        num_heads=spec.vision_heads,
        patch_size=spec.patch_size,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        out_hidden_size=h,
        fullatt_block_indexes=list(spec.fullatt_blocks),
    )
    return build_qwen_family(Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, tokenizer, spec, vision_config)


def tiny_qwen2_5_vl(spec: TinyQwenSpec | None = None, corpus: list[str] | None = None):
    """(model, processor) for a tiny random Qwen2.5-VL, fully offline."""
    tok = build_qwen_tokenizer(corpus)
    return build_tiny_qwen2_5_vl(tok, spec), build_qwen_processor(tok, patch_size=(spec or TinyQwenSpec()).patch_size)
