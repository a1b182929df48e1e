"""The mini base model: its sizes (:class:`MiniModelSpec`), a randomly initialised stock Qwen2.5-VL of those sizes,
its tokenizer and processor trained on the examples' texts, saving, and plain greedy answers for validation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .pretrain_data import Example, example_image

@dataclass
class MiniModelSpec:
    text_hidden: int = 128
    text_layers: int = 6
    text_heads: int = 4
    text_kv_heads: int = 2
    text_intermediate: int = 384
    vision_hidden: int = 96
    vision_depth: int = 4
    vision_heads: int = 4
    vision_intermediate: int = 192
    fullatt_blocks: list[int] = field(default_factory=lambda: [1, 3])
    window_size: int = 112
    patch_size: int = 14
    initializer_range: float = 0.02
    # Text embeddings at ~unit scale (and an untied LM head): at 0.02 they are ~50x smaller than the vision
    # tower's merged tokens, whose values then swamp the question in the residual stream (the decoder could not
    # even tell the question types apart after 100 steps).
    embed_init_std: float = 1.0
    tie_word_embeddings: bool = False
    # Std of the decoder's residual-branch output projections (o_proj, down_proj), GPT-2 style small init; None:
    # ``initializer_range``. At 0.02 the text positions' residual stream grew to norm ~460 within 300 steps while the
    # image moved it by ~0.2, i.e. the model was blind to the image (see docs/mini_model.md, attempt Z).
    resid_init_std: float | None = None
    # Std of the vision merger's last projection (the merged visual tokens that enter the decoder); None:
    # ``initializer_range``. At 0.02 the merged tokens have norm ~1 against ~11 for the text embeddings (std 1.0), and
    # after one decoder layer a visual token's own content is a ~7 % perturbation of what it attended to: the decoder
    # cannot tell an object's token from the background's. ~0.25 puts both at the same scale.
    merger_init_std: float | None = None


def build_model(tokenizer, spec: MiniModelSpec, seed: int):
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    head_dim = spec.text_hidden // spec.text_heads
    if head_dim % 8:
        raise ValueError(f"text head dim {head_dim} must be a multiple of 8 (mRoPE sections)")
    quarter = head_dim // 8
    mrope = [head_dim // 2 - 2 * (3 * quarter // 2), 3 * quarter // 2, 3 * quarter // 2]  # sums to head_dim/2
    ids = tokenizer.convert_tokens_to_ids
    cfg = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=spec.text_hidden, intermediate_size=spec.text_intermediate,
            num_hidden_layers=spec.text_layers, num_attention_heads=spec.text_heads,
            num_key_value_heads=spec.text_kv_heads, max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope},
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
        ),
        vision_config=dict(
            depth=spec.vision_depth, hidden_size=spec.vision_hidden, intermediate_size=spec.vision_intermediate,
            num_heads=spec.vision_heads, patch_size=spec.patch_size, spatial_merge_size=2, temporal_patch_size=2,
            window_size=spec.window_size, out_hidden_size=spec.text_hidden,
            fullatt_block_indexes=list(spec.fullatt_blocks),
        ),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=spec.tie_word_embeddings, initializer_range=spec.initializer_range,
    )
    cfg.text_config.initializer_range = cfg.vision_config.initializer_range = spec.initializer_range
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(cfg)
        with torch.no_grad():
            if spec.embed_init_std:
                model.get_input_embeddings().weight.normal_(0.0, spec.embed_init_std)
            if spec.merger_init_std is not None:
                model.model.visual.merger.mlp[-1].weight.normal_(0.0, spec.merger_init_std)
            if spec.resid_init_std is not None:
                for layer in model.model.language_model.layers:
                    layer.self_attn.o_proj.weight.normal_(0.0, spec.resid_init_std)
                    layer.mlp.down_proj.weight.normal_(0.0, spec.resid_init_std)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.do_sample = False
    return model


def build_tokenizer_processor(examples: list[Example], cfg, synthetic: bool):
    """Tokenizer trained on the examples' texts and the processor around it; ``cfg`` is the pretraining config
    (``lowercase_prob``, ``role_tokens``, ``tokenizer_vocab_size``, pixels, patch size, ``prompt_order``)."""
    from ..offline_processors import build_qwen_processor, build_qwen_tokenizer

    questions = {ex.question for ex in examples}
    if cfg.lowercase_prob:
        questions |= {q[:1].lower() + q[1:] for q in questions}
    corpus = sorted(questions | {ex.answer for ex in examples})
    if synthetic:
        from ..data.scenes import all_texts

        extra = set(all_texts())
        if cfg.lowercase_prob:
            extra |= {t[:1].lower() + t[1:] for t in extra}
        corpus = sorted(set(corpus) | extra)
    if cfg.role_tokens:
        corpus = sorted(set(corpus) | {"system", "user", "assistant"})
    tok = build_qwen_tokenizer(corpus, vocab_size=cfg.tokenizer_vocab_size)
    return build_qwen_processor(tok, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels,
                                patch_size=cfg.model.patch_size, chat_template=chat_template(cfg.prompt_order))


def chat_template(prompt_order: str) -> str:
    from ..offline_processors import QWEN_CHAT_TEMPLATE, QWEN_TEXT_FIRST_CHAT_TEMPLATE

    templates = {"image_first": QWEN_CHAT_TEMPLATE, "text_first": QWEN_TEXT_FIRST_CHAT_TEMPLATE}
    if prompt_order not in templates:
        raise ValueError(f"prompt_order must be one of {sorted(templates)}, got {prompt_order!r}")
    return templates[prompt_order]


def save_model(model, processor, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    processor.save_pretrained(directory)


def greedy_answers(model, processor, examples: list[Example], batch_size: int = 16, max_new_tokens: int = 4):
    """Plain (unpruned) greedy answers with the stock ``generate``."""
    import torch

    from ..processing import build_inputs

    answers = []
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(examples), batch_size):
            chunk = examples[i:i + batch_size]
            inputs = build_inputs(processor, [ex.question for ex in chunk], [[example_image(ex)] for ex in chunk])
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
            answers += [a.strip() for a in processor.batch_decode(out[:, inputs["input_ids"].shape[1]:],
                                                                  skip_special_tokens=True)]
    return answers


def accuracy(answers: list[str], examples: list[Example]) -> float:
    from ..eval.scorers import exact_match

    return sum(exact_match(a, ex.answer) for a, ex in zip(answers, examples)) / max(len(examples), 1)
