import math

import pytest
import torch

from glimpseprune.policy import KeepPolicy


def z(p):
    """Keep logits for the given probabilities (the policy decides on logits)."""
    return torch.logit(torch.tensor(p, dtype=torch.float64)).float()


def test_threshold_is_strict():
    p = [0.5, 0.51, 0.2, 0.9]
    assert KeepPolicy().select(z(p), [4]).tolist() == [False, True, False, True]


def test_cap_keeps_top_floor_of_ratio():
    p = [0.9, 0.8, 0.95, 0.7, 0.6, 0.99, 0.1, 0.2, 0.3, 0.4]
    keep = KeepPolicy(max_keep_ratio=0.25).select(z(p), [10])  # int(2.5) = 2
    assert keep.nonzero().squeeze(1).tolist() == [2, 5]


def test_min_keep_floor_when_nothing_passes():
    p = [0.1, 0.3, 0.2]
    assert KeepPolicy(min_keep=1).select(z(p), [3]).tolist() == [False, True, False]
    assert KeepPolicy(min_keep=0).select(z(p), [3]).sum() == 0
    assert KeepPolicy(max_keep_ratio=0.1).select(z(p), [3]).sum() == 1  # cap 0 tokens, floor wins


def test_per_sample_cap_is_shared_across_images_but_per_image_is_not():
    p = [0.9] * 10 + [0.8] * 10
    shared = KeepPolicy(max_keep_ratio=0.2).select(z(p), [10, 10])
    assert shared[:10].sum() == 4 and shared[10:].sum() == 0
    per_image = KeepPolicy(max_keep_ratio=0.2, per_image=True).select(z(p), [10, 10])
    assert per_image[:10].sum() == 2 and per_image[10:].sum() == 2


def test_top_k_policy_keeps_exactly_k_when_probabilities_underflow():
    # The exact-budget box-free policy (threshold 0, cap r). These logits all have sigmoid == 0.0 in float32 (and
    # 1.0 for the large ones), so a decision on probabilities would keep min_keep = 1 token (or tie arbitrarily).
    logits = torch.tensor([-200.0, -150.0, -300.0, -120.0, -180.0, -400.0, -110.0, -250.0])
    assert torch.sigmoid(logits).eq(0).all()
    keep = KeepPolicy(threshold=0.0, max_keep_ratio=0.5).select(logits, [8])
    assert keep.nonzero().squeeze(1).tolist() == [1, 3, 4, 6]  # the 4 largest logits
    saturated = torch.tensor([200.0, 150.0, 300.0, 120.0])
    assert torch.sigmoid(saturated).eq(1).all()
    assert KeepPolicy(threshold=0.0, max_keep_ratio=0.5).select(saturated, [4]).nonzero().squeeze(1).tolist() == [0, 2]
    # Threshold 1.0 passes nothing; the floor then keeps the top logit.
    assert KeepPolicy(threshold=1.0).select(saturated, [4]).nonzero().squeeze(1).tolist() == [2]


def test_threshold_in_logit_space_matches_probability_threshold():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2000, generator=g, dtype=torch.float64) * 3
    for t in (0.1, 0.3, 0.5, 0.7, 0.95):
        keep = KeepPolicy(threshold=t, min_keep=0).select(logits, [2000])
        assert torch.equal(keep, torch.sigmoid(logits) > t)


def test_cap_follows_the_reference_rule_at_floating_point_edges():
    # 0.29 * 100 == 28.999999999999996 in floating point and 29 / 100 == 0.29: the reference rule (cap only when
    # kept / N > r, then keep int(r * N)) lets 29 kept tokens stand and cuts 30 down to 28.
    assert 0.29 * 100 < 29 and 29 / 100 == 0.29
    policy = KeepPolicy(max_keep_ratio=0.29, min_keep=0)
    logits = torch.linspace(5, -5, 100)
    for kept, expected in ((28, 28), (29, 29), (30, 28), (100, 28)):
        shifted = logits.clone()
        shifted[:kept] = torch.linspace(10, 1, kept)
        shifted[kept:] = -torch.linspace(1, 10, 100 - kept)
        keep = policy.select(shifted, [100])
        assert int(keep.sum()) == expected, (kept, int(keep.sum()))
        assert keep[:expected].all()  # the top logits
    # A whole-number product that is exact (0.25 * 8 == 2): 2 kept stay, 3 become 2.
    quarter = KeepPolicy(max_keep_ratio=0.25, min_keep=0)
    assert int(quarter.select(torch.tensor([3.0, 2.0, -1.0, -2.0, -3.0, -4.0, -5.0, -6.0]), [8]).sum()) == 2
    assert quarter.select(torch.tensor([3.0, 2.0, 1.0, -2.0, -3.0, -4.0, -5.0, -6.0]), [8]).tolist() == [
        True, True] + [False] * 6


@pytest.mark.parametrize("kwargs", [dict(threshold=math.nan), dict(threshold=1.5), dict(threshold=-0.1),
                                    dict(max_keep_ratio=0.0), dict(max_keep_ratio=1.2), dict(max_keep_ratio=math.nan),
                                    dict(min_keep=-1), dict(min_keep=1.5), dict(threshold="0.5")])
def test_invalid_policies_are_rejected(kwargs):
    with pytest.raises(ValueError):
        KeepPolicy(**kwargs).validate()


def test_nan_scores_refuse_to_prune():
    with pytest.raises(FloatingPointError):
        KeepPolicy().select(torch.tensor([0.2, float("nan")]), [2])


def test_an_empty_group_keeps_nothing_instead_of_dividing_by_zero():
    """A per-image group without tokens (an image that contributed none) used to raise ZeroDivisionError in the cap."""
    capped = KeepPolicy(threshold=0.0, max_keep_ratio=0.5, min_keep=1, per_image=True)
    empty = capped.select_group(torch.zeros(0))
    assert empty.dtype == torch.bool and empty.shape == (0,)
    logits = torch.tensor([3.0, 1.0, 2.0, 0.0])
    keep = capped.select(logits, [4, 0])
    assert keep.tolist() == [True, False, True, False]  # the empty image changes nothing for the other one
    assert capped.select(logits, [0, 4]).tolist() == keep.tolist()
    assert capped.select(logits, [2, 0, 2]).tolist() == [True, False, True, False]
