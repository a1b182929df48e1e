"""Offline construction of tiny random vision-language models for the test-suite (a testing module: nothing in
``src/`` imports it; the recipes' explicit "tiny" options use ``glimpseprune.offline_models``, re-exported here).

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


# The tiny Qwen2.5-VL is also the recipes' "tiny" model, so it lives in the library (offline_models); the other
# builders here reuse its spec and helpers.
from ..offline_models import (  # noqa: E402,F401
    TinyQwenSpec,
    build_tiny_qwen2_5_vl,
    tiny_qwen2_5_vl,
)
from ..offline_models import build_qwen_family as _build_qwen_family  # noqa: E402
from ..offline_models import seeded_model  # noqa: E402
from ..offline_models import qwen_text_config as _qwen_text_config  # noqa: E402,F401


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

from ..offline_processors import (  # noqa: E402,F401  (re-exported for the tests)
    LLAVA_CHAT_TEMPLATE,
    LLAVA_SPECIAL_TOKENS,
    build_llava_processor,
    build_llava_tokenizer,
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
    return seeded_model(LlavaForConditionalGeneration, cfg, tokenizer, spec.seed, set_bos=True)


def tiny_llava(spec: TinyLlavaSpec | None = None, corpus: list[str] | None = None):
    """(model, processor) for a tiny random LLaVA-1.5 (CLIP + Llama), fully offline."""
    tok = build_llava_tokenizer(corpus)
    return build_tiny_llava(tok, spec), build_llava_processor(tok, spec)


# ---- LLaVA-NeXT and LLaVA-OneVision (AnyRes) ----------------------------------------------------------------------

# Small AnyRes canvases (height, width) in units of the tiny crop size: 1x2, 2x1 and 2x2 tiles. Images larger than
# the 2x2 canvas take it (unpadding then removes rows or columns unless the image is square); small wide or tall
# images take 1x2 / 2x1, so crop counts differ between images.
def _tiny_pinpoints(crop: int) -> list[list[int]]:
    return [[crop, 2 * crop], [2 * crop, crop], [2 * crop, 2 * crop]]


@dataclass
class TinyAnyResSpec:
    hidden_size: int = 64
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    vision_depth: int = 4
    vision_hidden: int = 64
    vision_heads: int = 4
    image_size: int = 48  # one crop: a 6 x 6 token grid at patch 8
    patch_size: int = 8
    seed: int = 0
    initializer_range: float = 0.2  # see TinyQwenSpec
    # OneVision only: "anyres_max_N" bilinearly shrinks the stitched crops to about N crops' worth of tokens; at
    # N = 2 a 2 x 2 tiling is shrunk and a 1 x 2 one is not, so the tiny model exercises both paths.
    vision_aspect_ratio: str = "anyres_max_2"
    text_model_type: str = "llama"  # LLaVA-NeXT-7B's LLM family; OneVision uses Qwen2


def _anyres_text_config(tokenizer, spec: TinyAnyResSpec) -> dict:
    return dict(
        model_type=spec.text_model_type,
        vocab_size=len(tokenizer), hidden_size=spec.hidden_size, intermediate_size=4 * spec.hidden_size,
        num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads, num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _seeded(model_cls, cfg, tokenizer, spec):
    cfg.text_config.initializer_range = cfg.vision_config.initializer_range = spec.initializer_range
    return seeded_model(model_cls, cfg, tokenizer, spec.seed, set_bos=True)


def build_tiny_llava_next(tokenizer, spec: TinyAnyResSpec | None = None):
    """A randomly initialised ``LlavaNextForConditionalGeneration`` (CLIP crops + Llama, AnyRes 1x2 / 2x1 / 2x2)."""
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration

    spec = spec or TinyAnyResSpec()
    cfg = LlavaNextConfig(
        vision_config=dict(
            model_type="clip_vision_model", hidden_size=spec.vision_hidden, intermediate_size=2 * spec.vision_hidden,
            num_hidden_layers=spec.vision_depth, num_attention_heads=spec.vision_heads, patch_size=spec.patch_size,
            image_size=spec.image_size, projection_dim=spec.vision_hidden,
        ),
        text_config=_anyres_text_config(tokenizer, spec),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        image_grid_pinpoints=_tiny_pinpoints(spec.image_size),
        image_seq_length=(spec.image_size // spec.patch_size) ** 2,
        initializer_range=spec.initializer_range,
    )
    return _seeded(LlavaNextForConditionalGeneration, cfg, tokenizer, spec)


def build_llava_next_processor(tokenizer, spec: TinyAnyResSpec | None = None):
    """``LlavaNextProcessor`` with the PIL image processor (no torchvision): base view + AnyRes crops."""
    from transformers import LlavaNextImageProcessorPil, LlavaNextProcessor

    spec = spec or TinyAnyResSpec()
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": spec.image_size},
        crop_size={"height": spec.image_size, "width": spec.image_size},
        image_grid_pinpoints=_tiny_pinpoints(spec.image_size),
    )
    return LlavaNextProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=spec.patch_size,
        vision_feature_select_strategy="default", num_additional_image_tokens=1, chat_template=LLAVA_CHAT_TEMPLATE,
    )


def tiny_llava_next(spec: TinyAnyResSpec | None = None, corpus: list[str] | None = None):
    """(model, processor) for a tiny random LLaVA-NeXT, fully offline."""
    tok = build_llava_tokenizer(corpus)
    return build_tiny_llava_next(tok, spec), build_llava_next_processor(tok, spec)


@dataclass
class TinyOnevisionSpec(TinyAnyResSpec):
    text_model_type: str = "qwen2"


def build_onevision_tokenizer(corpus: list[str] | None = None, vocab_size: int = 400):
    from transformers import PreTrainedTokenizerFast

    bpe = train_bpe(corpus or DEFAULT_CORPUS, [*LLAVA_SPECIAL_TOKENS, "<video>"], vocab_size)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<|endoftext|>"
    )
    tok.padding_side = "left"
    return tok


def build_tiny_llava_onevision(tokenizer, spec: TinyOnevisionSpec | None = None):
    """A randomly initialised ``LlavaOnevisionForConditionalGeneration`` (SigLIP crops, no CLS, + Qwen2)."""
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    spec = spec or TinyOnevisionSpec()
    cfg = LlavaOnevisionConfig(
        vision_config=dict(
            model_type="siglip_vision_model", hidden_size=spec.vision_hidden, intermediate_size=2 * spec.vision_hidden,
            num_hidden_layers=spec.vision_depth, num_attention_heads=spec.vision_heads, patch_size=spec.patch_size,
            image_size=spec.image_size, vision_use_head=False,
        ),
        text_config=_anyres_text_config(tokenizer, spec),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        vision_aspect_ratio=spec.vision_aspect_ratio,
        image_grid_pinpoints=_tiny_pinpoints(spec.image_size),
        initializer_range=spec.initializer_range,
    )
    return _seeded(LlavaOnevisionForConditionalGeneration, cfg, tokenizer, spec)


def build_llava_onevision_processor(tokenizer, spec: TinyOnevisionSpec | None = None):
    """``LlavaOnevisionProcessor`` with the PIL image processor and no video processor (torchvision is absent)."""
    from transformers import LlavaOnevisionImageProcessorPil

    from ..adapters.llava_onevision import OfflineOnevisionProcessor

    spec = spec or TinyOnevisionSpec()
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": spec.image_size, "width": spec.image_size},
        image_grid_pinpoints=_tiny_pinpoints(spec.image_size),
    )
    return OfflineOnevisionProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
        num_image_tokens=(spec.image_size // spec.patch_size) ** 2, vision_feature_select_strategy="full",
        vision_aspect_ratio=spec.vision_aspect_ratio, chat_template=LLAVA_CHAT_TEMPLATE,
    )


def tiny_llava_onevision(spec: TinyOnevisionSpec | None = None, corpus: list[str] | None = None):
    """(model, processor) for a tiny random LLaVA-OneVision, fully offline."""
    tok = build_onevision_tokenizer(corpus)
    return build_tiny_llava_onevision(tok, spec), build_llava_onevision_processor(tok, spec)


# ---- Qwen3.5 (hybrid: Gated DeltaNet linear attention + full attention) -------------------------------------------


@dataclass
class TinyQwen3_5Spec(TinyQwen3Spec):
    # Full attention first, then alternating: cuts at K = 1, 2, 3 land on linear, full and linear layers, K - 1 is
    # full for K = 1 and 3 (the row is read right below the cut) and linear for K = 2 (read at layer 0).
    layer_types: tuple[str, ...] = ("full_attention", "linear_attention", "full_attention", "linear_attention")
    linear_heads: int = 2  # key heads of a linear layer (value heads: twice as many, as released)
    linear_head_dim: int = 16
    partial_rotary_factor: float = 0.5  # released: 0.25 of a 256-wide head; here half of a 16-wide head
    # Per-step decay rates A of the linear layers' value heads, drawn uniformly from this range. The stock init
    # draws them from (0.01, 16): a random tiny model then forgets a token within a few steps, so cutting visual
    # tokens (which sit a dozen tokens before the last one) would barely change a linear layer's output and tests
    # of the cut could not tell right from wrong. Slow decay keeps the whole prompt in every state.
    decay_range: tuple[float, float] = (0.005, 0.05)


def build_tiny_qwen3_5(tokenizer: Qwen2Tokenizer, spec: TinyQwen3_5Spec | None = None):
    """A randomly initialised ``Qwen3_5ForConditionalGeneration``: ``spec.layer_types`` mixing Gated DeltaNet
    linear-attention and gated full-attention layers, interleaved mRoPE on part of each head, no DeepStack.

    Runs on CPU with transformers' own torch implementations of the gated delta rule and the causal conv1d (it logs
    that flash-linear-attention / causal-conv1d are not installed)."""
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration

    spec = spec or TinyQwen3_5Spec()
    if len(spec.layer_types) != spec.num_layers:
        raise ValueError(f"layer_types has {len(spec.layer_types)} entries for {spec.num_layers} layers")
    vision_config = dict(
        depth=spec.vision_depth,
        hidden_size=spec.vision_hidden,
        intermediate_size=2 * spec.vision_hidden,
        num_heads=spec.vision_heads,
        patch_size=spec.patch_size,
        spatial_merge_size=2,
        temporal_patch_size=2,
        out_hidden_size=spec.hidden_size,
        num_position_embeddings=64,
    )
    head_dim = spec.hidden_size // spec.num_heads
    rotary = int(head_dim * spec.partial_rotary_factor)  # mrope_section splits the rotated half-dims (t, h, w)
    quarter = rotary // 8
    mrope = [rotary // 2 - 2 * quarter, quarter, quarter]
    extra = dict(
        head_dim=head_dim,
        layer_types=list(spec.layer_types),
        linear_conv_kernel_dim=4,
        linear_key_head_dim=spec.linear_head_dim,
        linear_value_head_dim=spec.linear_head_dim,
        linear_num_key_heads=spec.linear_heads,
        linear_num_value_heads=2 * spec.linear_heads,
    )
    rope = {"mrope_interleaved": True, "partial_rotary_factor": spec.partial_rotary_factor, "mrope_section": mrope}
    model = _build_qwen_family(Qwen3_5Config, Qwen3_5ForConditionalGeneration, tokenizer, spec, vision_config,
                               text_extra=extra, rope_extra=rope)
    generator = torch.Generator().manual_seed(spec.seed)
    low, high = spec.decay_range
    with torch.no_grad():
        for layer in model.model.language_model.layers:
            if layer.block_type == "linear_attention":
                rates = torch.empty(layer.linear_attn.A_log.shape).uniform_(low, high, generator=generator)
                layer.linear_attn.A_log.copy_(rates.log())
    return model


def tiny_qwen3_5(spec: TinyQwen3_5Spec | None = None, corpus: list[str] | None = None):
    """(model, processor) for a tiny random Qwen3.5 (hybrid linear / full attention), fully offline."""
    spec = spec or TinyQwen3_5Spec()
    tok = build_qwen_tokenizer(corpus)
    return build_tiny_qwen3_5(tok, spec), build_qwen3_vl_processor(tok, patch_size=spec.patch_size)


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
    return seeded_model(InternVLForConditionalGeneration, cfg, tokenizer, spec.seed)


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
