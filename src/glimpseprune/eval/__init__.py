"""Evaluation: answer scorers, the LLM judge for free-form answers, analytic FLOPs / retention accounting, and a
paired test for comparing two methods on the same items."""

from . import flops
from .flops import *  # noqa: F403 -- the FLOPs model and retention helpers, re-exported (see eval/flops.py)
from .judge import JudgeResult, JudgeStats, LLMJudge, load_prompt, parse_score
from .scorers import SCORERS, anls, exact_match, get_scorer, levenshtein, normalize_answer, relaxed_match, token_f1
from .stats import paired_exact_test

__all__ = [
    *flops.__all__,
    "paired_exact_test",
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
