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


class OfflineQwenProcessor(Qwen2_5_VLProcessor):
    """``Qwen2_5_VLProcessor`` usable without torchvision (and thus without a video processor)."""

    def check_argument_for_proper_class(self, argument_name, argument):
        # Without torchvision the video-processor class mapping is a dummy; ``None`` must be accepted.
        if argument is None:
            return None
        return super().check_argument_for_proper_class(argument_name, argument)


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


def build_tiny_qwen2_5_vl(tokenizer: Qwen2Tokenizer, spec: TinyQwenSpec | None = None):
    """A randomly initialised ``Qwen2_5_VLForConditionalGeneration`` of a few hundred thousand parameters."""
    spec = spec or TinyQwenSpec()
    h = spec.hidden_size
    head_dim = h // spec.num_heads
    # mrope_section must sum to head_dim / 2 (t, h, w frequency bands).
    quarter = head_dim // 8
    mrope = [head_dim // 2 - 2 * (3 * quarter // 2), 3 * quarter // 2, 3 * quarter // 2]
    ids = tokenizer.convert_tokens_to_ids
    cfg = Qwen2_5_VLConfig(
        text_config=dict(
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
        ),
        vision_config=dict(
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
        ),
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
        model = Qwen2_5_VLForConditionalGeneration(cfg)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


def tiny_qwen2_5_vl(spec: TinyQwenSpec | None = None, corpus: list[str] | None = None):
    """(model, processor) for a tiny random Qwen2.5-VL, fully offline."""
    tok = build_qwen_tokenizer(corpus)
    return build_tiny_qwen2_5_vl(tok, spec), build_qwen_processor(tok, patch_size=(spec or TinyQwenSpec()).patch_size)
