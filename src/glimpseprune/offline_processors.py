"""Tokenizers and processors built offline (Qwen and LLaVA-1.5 formats): a byte-level BPE trained in a fraction of a
small corpus, Qwen's special tokens and chat layout, and the PIL image processor (no torchvision, no hub).

Used by the mini-model recipe (the shipped mini model's tokenizer was made this way), the GPU benchmark's
config-only models and the test fixtures (``glimpseprune.testing``). Real checkpoints ship their own tokenizer
and template and never use these.
"""

from __future__ import annotations

import json

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import Qwen2Tokenizer, Qwen2VLImageProcessorPil

from .adapters.qwen2_5_vl import OfflineQwenProcessor
from .adapters.qwen2_vl import OfflineQwen2VLProcessor

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


# ---- LLaVA-1.5 ----------------------------------------------------------------------------------------------------

LLAVA_SPECIAL_TOKENS = ["<|endoftext|>", "<image>", "<s>", "</s>", "<pad>"]

# ``USER: <image>\n... ASSISTANT:`` as in llava-hf; real checkpoints ship their own template.
LLAVA_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'].upper() }}: {% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}"
    "{% endif %}{% endfor %}{% endif %} {% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def build_llava_tokenizer(corpus: list[str] | None = None, vocab_size: int = 400):
    from transformers import PreTrainedTokenizerFast

    bpe = train_bpe(corpus or DEFAULT_CORPUS, LLAVA_SPECIAL_TOKENS, vocab_size)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<|endoftext|>"
    )
    tok.padding_side = "left"
    return tok


def build_llava_processor(tokenizer, spec=None, *, image_size: int = 224, patch_size: int = 14,
                          vision_feature_select_strategy: str = "default"):
    """``LlavaProcessor`` with LLaVA-1.5's pad-to-square (mean-colour letterbox) preprocessing. ``spec``: anything
    with ``image_size``, ``patch_size`` and ``vision_feature_select_strategy`` (a tiny model's spec); without it
    the keyword values."""
    from transformers import LlavaImageProcessorPil, LlavaProcessor

    if spec is not None:
        image_size, patch_size = spec.image_size, spec.patch_size
        vision_feature_select_strategy = spec.vision_feature_select_strategy
    image_processor = LlavaImageProcessorPil(
        do_pad=True,
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy=vision_feature_select_strategy,
        num_additional_image_tokens=1,  # CLIP's CLS
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
