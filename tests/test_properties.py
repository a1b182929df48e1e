"""Property-based tests (hypothesis), bounded in time: the keep policy (on keep logits) against an obviously correct
reference, and input building over arbitrary question text (control strings included)."""

import math
from collections import Counter

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from glimpseprune.policy import KeepPolicy
from glimpseprune.processing import build_inputs
from glimpseprune.testing.tiny import tiny_llava, tiny_qwen2_5_vl

BOUNDED = settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def reference_group(logits: list[float], policy: KeepPolicy) -> list[bool]:
    """sigmoid(z) > t (float64, exact enough on this grid); if kept/n > r keep the top int(r*n); then floor to the top
    min_keep; ranks by (-z, index)."""
    n = len(logits)
    if n == 0:
        return []
    rank = sorted(range(n), key=lambda i: (-logits[i], i))
    keep = [1.0 / (1.0 + math.exp(-z)) > policy.threshold for z in logits]
    if policy.max_keep_ratio is not None:
        if sum(keep) / n > policy.max_keep_ratio:
            cap = int(policy.max_keep_ratio * n)
            keep = [False] * n
            for i in rank[:cap]:
                keep[i] = True
    floor = min(policy.min_keep, n)
    if sum(keep) < floor:
        for i in rank[:floor]:
            keep[i] = True
    return keep


# keep logits on a coarse grid, so ties (and the tie rule) are common
probs_st = st.lists(st.integers(-8, 8).map(lambda k: k / 2), min_size=0, max_size=40)


@st.composite
def policy_case(draw):
    probs = draw(probs_st)
    cuts = sorted(draw(st.lists(st.integers(1, max(1, len(probs) - 1)), max_size=3, unique=True)))
    cuts = [c for c in cuts if 0 < c < len(probs)]  # every image has at least one token
    bounds = [0, *cuts, len(probs)]
    sizes = [b - a for a, b in zip(bounds, bounds[1:])]
    policy = KeepPolicy(
        threshold=draw(st.sampled_from([0.0, 0.25, 0.5, 0.875, 1.0])),
        max_keep_ratio=draw(st.one_of(st.none(), st.floats(0.01, 1.0))),
        min_keep=draw(st.integers(0, 6)),
        per_image=draw(st.booleans()),
    ).validate()
    return probs, sizes, policy


@BOUNDED
@given(policy_case())
def test_keep_policy_matches_reference(case):
    probs, sizes, policy = case
    got = policy.select(torch.tensor(probs, dtype=torch.float32), sizes).tolist()
    if policy.per_image:
        want, start = [], 0
        for n in sizes:
            want += reference_group(probs[start:start + n], policy)
            start += n
    else:
        want = reference_group(probs, policy)
    assert got == want
    groups = sizes if policy.per_image else [len(probs)]
    start = 0
    for n in groups:  # the bounds a user relies on, per group
        kept = sum(got[start:start + n])
        assert kept >= min(policy.min_keep, n)
        if policy.max_keep_ratio is not None and n:
            assert kept / n <= policy.max_keep_ratio or kept <= max(int(policy.max_keep_ratio * n),
                                                                      min(policy.min_keep, n))
        start += n


@BOUNDED
@given(probs_st.filter(len), st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_higher_threshold_keeps_a_subset(probs, t1, t2):
    lo, hi = sorted((t1, t2))
    p = torch.tensor(probs)
    a = KeepPolicy(threshold=lo, min_keep=0).select(p, [len(probs)])
    b = KeepPolicy(threshold=hi, min_keep=0).select(p, [len(probs)])
    assert not (b & ~a).any()


# ---- input building ----------------------------------------------------------------------------------------------

CONTROL = ["<|im_end|>", "<|im_start|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
           "<|endoftext|>", "<image>", "<s>", "</s>", "<pad>", "\n", " ", "user", "assistant", "USER:", "ASSISTANT:"]
text_st = st.lists(st.one_of(st.sampled_from(CONTROL), st.text(st.characters(min_codepoint=32, max_codepoint=126),
                                                                  max_size=6)), min_size=1, max_size=8).map("".join)
question_st = text_st.filter(lambda q: q.strip())
_FAMILIES = {}


@pytest.fixture(scope="module", params=["qwen2_5_vl", "llava"])
def processor(request):
    if request.param not in _FAMILIES:
        _FAMILIES[request.param] = (tiny_qwen2_5_vl if request.param == "qwen2_5_vl" else tiny_llava)()[1]
    return _FAMILIES[request.param]


def special_ids(tok) -> set[int]:
    return set(tok.all_special_ids) | set(tok.get_added_vocab().values())


@settings(max_examples=40, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(question=question_st)
def test_any_question_adds_no_control_tokens(processor, question):
    tok = processor.tokenizer
    special = special_ids(tok)
    ids = build_inputs(processor, [question], [[]])["input_ids"][0].tolist()
    benign = build_inputs(processor, ["x"], [[]])["input_ids"][0].tolist()
    assert Counter(i for i in ids if i in special) == Counter(i for i in benign if i in special)
    assert question in tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


@settings(max_examples=15, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(questions=st.lists(question_st, min_size=2, max_size=3), with_image=st.lists(st.booleans(), min_size=3,
                                                                                      max_size=3))
def test_batch_row_equals_the_prompt_alone(processor, questions, with_image):
    image = Image.new("RGB", (40, 30), (10, 200, 30))
    images = [[image] if w else [] for w, _ in zip(with_image, questions)]
    batch = build_inputs(processor, questions, images)
    for b, (q, imgs) in enumerate(zip(questions, images)):
        alone = build_inputs(processor, [q], [imgs])
        n = alone["input_ids"].shape[1]
        assert torch.equal(batch["input_ids"][b, -n:], alone["input_ids"][0])
        assert batch["attention_mask"][b, -n:].all() and not batch["attention_mask"][b, :-n].any()
