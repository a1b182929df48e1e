"""Evaluation: answer scorers, the LLM judge for free-form answers, analytic FLOPs / retention accounting, and a
paired test for comparing two methods on the same items."""

from ..budget import kept_ratio_for_layer_averaged, layer_averaged_retention, layer_averaged_retention_schedule
from ..flops import (
    LMDims,
    ModelDims,
    VIPDims,
    VisionDims,
    baseline_prefill_flops,
    decode_flops,
    decoder_layer_flops,
    dims_from_hf_config,
    lm_head_flops,
    lm_linear_flops_per_token,
    prefill_flops,
    vip_flops,
    vision_flops,
)
from .judge import JudgeResult, JudgeStats, LLMJudge, load_prompt, parse_score
from .scorers import SCORERS, anls, exact_match, get_scorer, levenshtein, normalize_answer, relaxed_match, token_f1
from .stats import paired_exact_test

__all__ = [
    "LMDims",
    "ModelDims",
    "VIPDims",
    "VisionDims",
    "baseline_prefill_flops",
    "decode_flops",
    "decoder_layer_flops",
    "dims_from_hf_config",
    "kept_ratio_for_layer_averaged",
    "layer_averaged_retention",
    "layer_averaged_retention_schedule",
    "lm_head_flops",
    "lm_linear_flops_per_token",
    "paired_exact_test",
    "prefill_flops",
    "vip_flops",
    "vision_flops",
    "JudgeResult",
    "JudgeStats",
    "LLMJudge",
    "load_prompt",
    "parse_score",
    "SCORERS",
    "anls",
    "exact_match",
    "get_scorer",
    "levenshtein",
    "normalize_answer",
    "relaxed_match",
    "token_f1",
]
