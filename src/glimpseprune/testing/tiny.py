"""Offline construction of tiny random vision-language models for the test-suite (a testing module: library
components never import it; recipes reach it only through their explicit "tiny" options).

Nothing here touches the network: models are randomly initialised from small configs, with the offline
tokenizers and processors of ``glimpseprune.offline_processors``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer, Qwen2VLImageProcessorPil

from ..offline_processors import (  # noqa: F401  (re-exported for the tests)
    DEFAULT_CORPUS,
    QWEN_CHAT_TEMPLATE,
    QWEN_SPECIAL_TOKENS,
    QWEN_TEXT_FIRST_CHAT_TEMPLATE,
    build_qwen2_vl_processor,
    build_qwen_processor,
    build_qwen_tokenizer,
    train_bpe,
)
from ..adapters.qwen2_5_vl import OfflineQwenProcessor  # noqa: F401
from ..adapters.qwen2_vl import OfflineQwen2VLProcessor  # noqa: F401


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


def _qwen_text_config(tokenizer, spec: "TinyQwenSpec", rope_extra: dict | None = None) -> dict:
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


def _build_qwen_family(config_cls, model_cls, tokenizer, spec: "TinyQwenSpec", vision_config: dict,
                       text_extra: dict | None = None, rope_extra: dict | None = None):
    """Assemble and seed-initialise a tiny Qwen-VL model (shared by Qwen2.5-VL and Qwen2-VL)."""
    ids = tokenizer.convert_tokens_to_ids
    cfg = config_cls(
        text_config={**_qwen_text_config(tokenizer, spec, rope_extra), **(text_extra or {})},
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
    with torch.random.fork_rng():
        torch.manual_seed(spec.seed)
        model = model_cls(cfg)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


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
    return _build_qwen_family(Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, tokenizer, spec, vision_config)


def tiny_qwen2_5_vl(spec: TinyQwenSpec | None = None, corpus: list[str] | None = None):
    """(model, processor) for a tiny random Qwen2.5-VL, fully offline."""
    tok = build_qwen_tokenizer(corpus)
    return build_tiny_qwen2_5_vl(tok, spec), build_qwen_processor(tok, patch_size=(spec or TinyQwenSpec()).patch_size)


# ---- Qwen2-VL -----------------------------------------------------------------------------------------------------


def build_tiny_qwen2_vl(tokenizer: Qwen2Tokenizer, spec: TinyQwenSpec | None = None):
    """A randomly initialised ``Qwen2VLForConditionalGeneration`` (no window attention; ``fullatt_blocks`` unused)."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    spec = spec or TinyQwenSpec()
    h = spec.hidden_size
    vision_config = dict(
        depth=spec.vision_depth,
        embed_dim=spec.vision_hidden,
        hidden_size=h,  # the merger's output width = the LLM width
        mlp_ratio=2,
        num_heads=spec.vision_heads,
        patch_size=spec.patch_size,
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
    return _build_qwen_family(Qwen2VLConfig, Qwen2VLForConditionalGeneration, tokenizer, spec, vision_config)


def tiny_qwen2_vl(spec: TinyQwenSpec | None = None, corpus: list[str] | None = None):
    """(model, processor) for a tiny random Qwen2-VL, fully offline."""
    tok = build_qwen_tokenizer(corpus)
    patch = (spec or TinyQwenSpec()).patch_size
    return build_tiny_qwen2_vl(tok, spec), build_qwen2_vl_processor(tok, patch_size=patch)


# ---- Qwen3-VL -----------------------------------------------------------------------------------------------------


@dataclass
class TinyQwen3Spec(TinyQwenSpec):
    patch_size: int = 16
    deepstack: tuple[int, ...] = (0, 1, 2)  # ViT blocks whose merged features are added after LLM layers 0, 1, 2


def build_tiny_qwen3_vl(tokenizer: Qwen2Tokenizer, spec: TinyQwen3Spec | None = None):
    """A randomly initialised ``Qwen3VLForConditionalGeneration``: DeepStack after the first len(deepstack) LLM
    layers, interleaved mRoPE, Qwen3 q/k norms."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    spec = spec or TinyQwen3Spec()
    vision_config = dict(
        depth=spec.vision_depth,
        hidden_size=spec.vision_hidden,
        intermediate_size=2 * spec.vision_hidden,
        num_heads=spec.vision_heads,
        patch_size=spec.patch_size,
        spatial_merge_size=2,
        temporal_patch_size=2,
        out_hidden_size=spec.hidden_size,
        num_position_embeddings=64,  # an 8 x 8 learned grid, bilinearly resampled to every image
        deepstack_visual_indexes=list(spec.deepstack),
    )
    extra = dict(head_dim=spec.hidden_size // spec.num_heads)
    return _build_qwen_family(Qwen3VLConfig, Qwen3VLForConditionalGeneration, tokenizer, spec, vision_config,
                              text_extra=extra, rope_extra={"mrope_interleaved": True})


def build_qwen3_vl_processor(tokenizer: Qwen2Tokenizer, patch_size: int = 16, min_pixels: int = 64 * 64,
                             max_pixels: int = 32 * 32 * 1280):
    from ..adapters.qwen3_vl import OfflineQwen3VLProcessor

    image_processor = Qwen2VLImageProcessorPil(
        patch_size=patch_size, merge_size=2, temporal_patch_size=2,
        size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
    )
    return OfflineQwen3VLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=None, chat_template=QWEN_CHAT_TEMPLATE
    )


def tiny_qwen3_vl(spec: TinyQwen3Spec | None = None, corpus: list[str] | None = None):
    """(model, processor) for a tiny random Qwen3-VL, fully offline."""
    spec = spec or TinyQwen3Spec()
    tok = build_qwen_tokenizer(corpus)
    return build_tiny_qwen3_vl(tok, spec), build_qwen3_vl_processor(tok, patch_size=spec.patch_size)


# ---- LLaVA-1.5 ----------------------------------------------------------------------------------------------------

LLAVA_SPECIAL_TOKENS = ["<|endoftext|>", "<image>", "<s>", "</s>", "<pad>"]

# ``USER: <image>\n... ASSISTANT:`` as in llava-hf; real checkpoints ship their own template.
LLAVA_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'].upper() }}: {% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}"
    "{% endif %}{% endfor %}{% endif %} {% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


@dataclass
class TinyLlavaSpec:
    hidden_size: int = 64
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    vision_depth: int = 4  # >= 4 so that 4 distinct CLIP hidden states can condition the VIP
    vision_hidden: int = 64
    vision_heads: int = 4
    image_size: int = 224
    patch_size: int = 14
    vision_feature_select_strategy: str = "default"  # or "full" (keeps CLS: one extra, never pruned, token)
    vision_feature_layer: int = -2
    seed: int = 0
    initializer_range: float = 0.2  # see TinyQwenSpec


def build_llava_tokenizer(corpus: list[str] | None = None, vocab_size: int = 400):
    from transformers import PreTrainedTokenizerFast

    bpe = train_bpe(corpus or DEFAULT_CORPUS, LLAVA_SPECIAL_TOKENS, vocab_size)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<|endoftext|>"
    )
    tok.padding_side = "left"
    return tok


def build_tiny_llava(tokenizer, spec: TinyLlavaSpec | None = None):
    """A randomly initialised ``LlavaForConditionalGeneration`` (CLIP vision tower + Llama)."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    spec = spec or TinyLlavaSpec()
    side = spec.image_size // spec.patch_size
    cfg = LlavaConfig(
        vision_config=dict(
            model_type="clip_vision_model", hidden_size=spec.vision_hidden, intermediate_size=2 * spec.vision_hidden,
            num_hidden_layers=spec.vision_depth, num_attention_heads=spec.vision_heads, patch_size=spec.patch_size,
            image_size=spec.image_size, projection_dim=spec.vision_hidden,
        ),
        text_config=dict(
            model_type="llama", vocab_size=len(tokenizer), hidden_size=spec.hidden_size,
            intermediate_size=4 * spec.hidden_size, num_hidden_layers=spec.num_layers,
            num_attention_heads=spec.num_heads, num_key_value_heads=spec.num_kv_heads, max_position_embeddings=2048,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy=spec.vision_feature_select_strategy,
        vision_feature_layer=spec.vision_feature_layer,
        image_seq_length=side * side + int(spec.vision_feature_select_strategy == "full"),
        initializer_range=spec.initializer_range,
    )
    cfg.text_config.initializer_range = cfg.vision_config.initializer_range = spec.initializer_range
    with torch.random.fork_rng():
        torch.manual_seed(spec.seed)
        model = LlavaForConditionalGeneration(cfg)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model.eval()


def build_llava_processor(tokenizer, spec: TinyLlavaSpec | None = None):
    """``LlavaProcessor`` with LLaVA-1.5's pad-to-square (mean-colour letterbox) preprocessing."""
    from transformers import LlavaImageProcessorPil, LlavaProcessor

    spec = spec or TinyLlavaSpec()
    image_processor = LlavaImageProcessorPil(
        do_pad=True,
        size={"shortest_edge": spec.image_size},
        crop_size={"height": spec.image_size, "width": spec.image_size},
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=spec.patch_size,
        vision_feature_select_strategy=spec.vision_feature_select_strategy,
        num_additional_image_tokens=1,  # CLIP's CLS
        chat_template=LLAVA_CHAT_TEMPLATE,
    )


def tiny_llava(spec: TinyLlavaSpec | None = None, corpus: list[str] | None = None):
    """(model, processor) for a tiny random LLaVA-1.5 (CLIP + Llama), fully offline."""
    tok = build_llava_tokenizer(corpus)
    return build_tiny_llava(tok, spec), build_llava_processor(tok, spec)


# ---- InternVL -----------------------------------------------------------------------------------------------------

INTERNVL_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>",
                           "<video>"]

# The layout of the InternVL-hf chat templates (one ``<IMG_CONTEXT>`` line per image, which the processor expands to
# ``<img>`` + tiles x tokens-per-tile context tokens + ``</img>``), without the default system turn.
INTERNVL_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<IMG_CONTEXT>\n"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass
class TinyInternVLSpec:
    hidden_size: int = 64
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    vision_depth: int = 4  # >= 4 so that 4 distinct ViT blocks can condition the VIP
    vision_hidden: int = 64
    vision_heads: int = 4
    tile_size: int = 112  # 8 x 8 patches per tile -> 4 x 4 LLM tokens after the 2 x 2 pixel shuffle
    patch_size: int = 14
    max_tiles: int = 4  # dynamic tiling: at most 4 tiles (+ the thumbnail when there are several)
    seed: int = 0
    initializer_range: float = 0.2  # see TinyQwenSpec

    @property
    def tokens_per_tile(self) -> int:
        side = self.tile_size // self.patch_size // 2
        return side * side


def build_internvl_tokenizer(corpus: list[str] | None = None, vocab_size: int = 400) -> Qwen2Tokenizer:
    """A ``Qwen2Tokenizer`` with InternVL's image tokens, named as the InternVL processor reads them."""
    bpe = train_bpe(corpus or DEFAULT_CORPUS, INTERNVL_SPECIAL_TOKENS, vocab_size)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tok = Qwen2Tokenizer(
        vocab=model["vocab"], merges=merges, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        extra_special_tokens={"start_image_token": "<img>", "end_image_token": "</img>",
                              "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"},
    )
    tok.add_special_tokens({"additional_special_tokens": INTERNVL_SPECIAL_TOKENS[1:]})
    tok.padding_side = "left"
    return tok


def build_tiny_internvl(tokenizer, spec: TinyInternVLSpec | None = None):
    """A randomly initialised ``InternVLForConditionalGeneration`` (InternViT with CLS + 2x2 pixel shuffle + Qwen2)."""
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    spec = spec or TinyInternVLSpec()
    cfg = InternVLConfig(
        vision_config=dict(
            hidden_size=spec.vision_hidden, intermediate_size=2 * spec.vision_hidden,
            num_hidden_layers=spec.vision_depth, num_attention_heads=spec.vision_heads,
            image_size=spec.tile_size, patch_size=spec.patch_size, initializer_range=spec.initializer_range,
            # 0.1 (the default) keeps every ViT block close to the identity: the tiny tower's tokens would barely
            # differ, so selections and conditions would be tested on near-duplicates.
            layer_scale_init_value=1.0,
        ),
        text_config=dict(
            model_type="qwen2", vocab_size=len(tokenizer), hidden_size=spec.hidden_size,
            intermediate_size=4 * spec.hidden_size, num_hidden_layers=spec.num_layers,
            num_attention_heads=spec.num_heads, num_key_value_heads=spec.num_kv_heads,
            max_position_embeddings=4096, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
            bos_token_id=None, initializer_range=spec.initializer_range,
        ),
        image_token_id=tokenizer.context_image_token_id,
        image_seq_length=spec.tokens_per_tile,
        downsample_ratio=0.5,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        initializer_range=spec.initializer_range,
    )
    with torch.random.fork_rng():
        torch.manual_seed(spec.seed)
        model = InternVLForConditionalGeneration(cfg)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


def build_internvl_processor(tokenizer, spec: TinyInternVLSpec | None = None):
    """InternVL's processor on the PIL tiling image processor (no torchvision, so no video processor)."""
    from transformers import GotOcr2ImageProcessorPil

    from ..adapters.internvl import OfflineInternVLProcessor

    spec = spec or TinyInternVLSpec()
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": spec.tile_size, "width": spec.tile_size}, crop_to_patches=True, min_patches=1,
        max_patches=spec.max_tiles,
    )
    return OfflineInternVLProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                                    image_seq_length=spec.tokens_per_tile, chat_template=INTERNVL_CHAT_TEMPLATE)


def tiny_internvl(spec: TinyInternVLSpec | None = None, corpus: list[str] | None = None):
    """(model, processor) for a tiny random InternVL (dynamic tiles + thumbnail, pixel shuffle), fully offline."""
    tok = build_internvl_tokenizer(corpus)
    return build_tiny_internvl(tok, spec), build_internvl_processor(tok, spec)
