"""Rewards for GlimpsePrune+ RL (method.md §12.1): exact match, the LLM judge, or a function of your own.

A reward function takes the batch's records and completions and returns one value per completion:

    fn(records: list[dict], completions: list[str]) -> list[float | None]

``None`` means "could not be scored" (e.g. the judge's request failed or its reply had no score). Such a completion
is never given a made-up value: it is left out of its group's advantage and of the loss, and counted in the logged
``reward/failed``. A group with fewer than two scored completions contributes nothing.

``reward: "exact"`` — 1/0 exact match after our answer normalisation (``eval.scorers.exact_match``) against the
record's ``short_answer`` (else ``answers`` / ``answer``).
``reward: "judge"`` — the OpenAI-compatible LLM judge (``eval.judge.LLMJudge``) on (question, reference, completion).
``reward: "auto"`` — exact match for records with a ``short_answer``, the judge for the others (the published mix).
``reward: "package.module:function"`` — a user function with the signature above.
"""

from __future__ import annotations

import importlib
from typing import Callable

from ..eval.scorers import exact_match

RewardFn = Callable[[list, list], list]


def _get(record, key: str, default=None):
    if isinstance(record, dict):
        return record.get(key, default)
    return getattr(record, key, default)


def _references(record, short: bool) -> list[str]:
    refs = (_get(record, "short_answer") if short else None) or _get(record, "answers") or _get(record, "answer")
    if refs is None:
        raise ValueError(f"record {_get(record, 'id', '?')} has no answer to reward against")
    return [str(r) for r in refs] if isinstance(refs, (list, tuple)) else [str(refs)]


def exact_match_reward(records: list, completions: list[str]) -> list[float]:
    """Against ``short_answer`` when the record has one (glimpse-shapes, Visual-CoT short prompts), else ``answer``."""
    return [exact_match(c, _references(r, short=True)) for r, c in zip(records, completions)]


def judge_reward(judge) -> RewardFn:
    """Judge scores in [0, 1]; a failed request or an unparsable reply gives None (flagged, never scored 0)."""

    def reward(records: list, completions: list[str]) -> list[float | None]:
        out = []
        for record, completion in zip(records, completions):
            question = str(_get(record, "question", ""))
            results = [judge.score(question, ref, completion) for ref in _references(record, short=False)]
            ok = [res.score for res in results if res.ok]
            out.append(max(ok) if ok else None)
        return out

    return reward


def is_short_answer(record) -> bool:
    """A record is rewarded by exact match when it carries a ``short_answer``."""
    return bool(_get(record, "short_answer"))


def mixed_reward(judge) -> RewardFn:
    by_judge = judge_reward(judge) if judge is not None else None

    def reward(records: list, completions: list[str]) -> list[float | None]:
        out: list[float | None] = [None] * len(records)
        short = [i for i, r in enumerate(records) if is_short_answer(r)]
        free = [i for i in range(len(records)) if i not in set(short)]
        for i, v in zip(short, exact_match_reward([records[i] for i in short], [completions[i] for i in short])):
            out[i] = v
        if free:
            if by_judge is None:
                raise ValueError("free-form records need the LLM judge (reward_judge: {base_url, model, ...})")
            for i, v in zip(free, by_judge([records[i] for i in free], [completions[i] for i in free])):
                out[i] = v
        return out

    return reward


def load_callable(spec: str) -> RewardFn:
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"reward {spec!r}: expected 'exact', 'judge', 'auto' or 'package.module:function'")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"reward {spec!r}: cannot import it ({err})") from None
    if not callable(fn):
        raise ValueError(f"reward {spec!r} is not callable")
    return fn


def build_reward(spec: str | RewardFn, judge_options: dict | None = None, cache_dir=None) -> RewardFn:
    if callable(spec):
        return spec
    if spec == "exact":
        return exact_match_reward
    judge = None
    if spec in ("judge", "auto") and judge_options:
        from ..eval.judge import LLMJudge

        judge = LLMJudge(cache_dir=judge_options.get("cache_dir", cache_dir),
                         **{k: v for k, v in judge_options.items() if k != "cache_dir"})
    if spec == "judge":
        if judge is None:
            raise ValueError("reward 'judge' needs reward_judge: {base_url, model, ...}")
        return judge_reward(judge)
    if spec == "auto":
        return mixed_reward(judge)
    return load_callable(spec)


def score_completions(fn: RewardFn, records: list, completions: list[str]) -> list[float | None]:
    values = list(fn(records, completions))
    if len(values) != len(completions):
        raise ValueError(f"reward function returned {len(values)} values for {len(completions)} completions")
    return [None if v is None else float(v) for v in values]
