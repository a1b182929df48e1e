"""Offline construction of tiny vision-language models, tokenizers and processors.

Nothing here touches the network: the tokenizer is a byte-level BPE trained in a fraction of a second on a small
corpus, models are randomly initialised from small configs, and processors are assembled by hand (transformers'
``AutoProcessor`` needs torchvision for Qwen2.5-VL, which is not usable with the CPU torch build we pin).

Used by the test-suite, the benchmarks, and as the clearly-labelled fallback model of the CLI.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLProcessor,
    Qwen2Tokenizer,
    Qwen2VLImageProcessorPil,
)

QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# A chat template with the same token layout as Qwen2.5-VL's (minus the default system turn, which only costs
# tokens on a tiny model). Real checkpoints ship their own template and never use this one.
QWEN_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# The same layout with the question *before* the image(s) in each user turn (text items first, then images). Under
# causal attention, image tokens can then read the question and mark themselves as relevant; the embedded mini
# model is trained and shipped with it (its saved chat template), so every code path that formats prompts through
# ``apply_chat_template`` uses the order the model was trained with.
QWEN_TEXT_FIRST_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] != 'image' %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

DEFAULT_CORPUS = [
    "what colour is the shape in the image?",
    "is there a red circle? yes no",
    "the answer is yes or no.",
    "describe the picture in one word.",
    "how many squares are there? one two three four",
    "what shape is the green object? circle square triangle star",
    "red green blue yellow purple orange white black",
]


def train_bpe(corpus: list[str], special_tokens: list[str], vocab_size: int = 400) -> Tokenizer:
    """Train a byte-level BPE on ``corpus``; every byte is in the alphabet, so any text can be encoded."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(corpus * 4, trainer)
    return bpe


def build_qwen_tokenizer(corpus: list[str] | None = None, vocab_size: int = 400) -> Qwen2Tokenizer:
    """A real ``Qwen2Tokenizer`` over a locally trained vocabulary, with Qwen's special tokens."""
    bpe = train_bpe(corpus or DEFAULT_CORPUS, QWEN_SPECIAL_TOKENS, vocab_size)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tok = Qwen2Tokenizer(
        vocab=model["vocab"],
        merges=merges,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    tok.add_special_tokens({"additional_special_tokens": QWEN_SPECIAL_TOKENS[1:]})
    tok.padding_side = "left"
    return tok


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


class OfflineQwen2VLProcessor(NoVideoProcessorMixin, Qwen2VLProcessor):
    """``Qwen2VLProcessor`` without torchvision."""


def build_qwen_processor(
    tokenizer: Qwen2Tokenizer,
    min_pixels: int = 56 * 56,
    max_pixels: int = 28 * 28 * 1280,
    patch_size: int = 14,
    chat_template: str | None = QWEN_CHAT_TEMPLATE,
) -> OfflineQwenProcessor:
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=patch_size,
        merge_size=2,
        temporal_patch_size=2,
        size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
    )
    return OfflineQwenProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=None, chat_template=chat_template
    )


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


def _qwen_text_config(tokenizer, spec: "TinyQwenSpec") -> dict:
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
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope},
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        **dict(spec.text_overrides),
    )


def _build_qwen_family(config_cls, model_cls, tokenizer, spec: "TinyQwenSpec", vision_config: dict):
    """Assemble and seed-initialise a tiny Qwen-VL model (shared by Qwen2.5-VL and Qwen2-VL)."""
    ids = tokenizer.convert_tokens_to_ids
    cfg = config_cls(
        text_config=_qwen_text_config(tokenizer, spec),
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


def build_qwen2_vl_processor(tokenizer: Qwen2Tokenizer, patch_size: int = 14, min_pixels: int = 56 * 56,
                             max_pixels: int = 28 * 28 * 1280):
    """``Qwen2VLProcessor`` without torchvision (no video processor), same chat layout as the Qwen2.5-VL one."""
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=patch_size, merge_size=2, temporal_patch_size=2,
        size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
    )
    return OfflineQwen2VLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=None, chat_template=QWEN_CHAT_TEMPLATE
    )


def tiny_qwen2_vl(spec: TinyQwenSpec | None = None, corpus: list[str] | None = None):
    """(model, processor) for a tiny random Qwen2-VL, fully offline."""
    tok = build_qwen_tokenizer(corpus)
    patch = (spec or TinyQwenSpec()).patch_size
    return build_tiny_qwen2_vl(tok, spec), build_qwen2_vl_processor(tok, patch_size=patch)


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
