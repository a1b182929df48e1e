import math

import pytest
import torch

from glimpseprune.policy import KeepPolicy


def test_threshold_is_strict():
    p = torch.tensor([0.5, 0.51, 0.2, 0.9])
    assert KeepPolicy().select(p, [4]).tolist() == [False, True, False, True]


def test_cap_keeps_top_floor_of_ratio():
    p = torch.tensor([0.9, 0.8, 0.95, 0.7, 0.6, 0.99, 0.1, 0.2, 0.3, 0.4])
    keep = KeepPolicy(max_keep_ratio=0.25).select(p, [10])  # floor(2.5) = 2
    assert keep.nonzero().squeeze(1).tolist() == [2, 5]


def test_min_keep_floor_when_nothing_passes():
    p = torch.tensor([0.1, 0.3, 0.2])
    assert KeepPolicy(min_keep=1).select(p, [3]).tolist() == [False, True, False]
    assert KeepPolicy(min_keep=0).select(p, [3]).sum() == 0
    assert KeepPolicy(max_keep_ratio=0.1).select(p, [3]).sum() == 1  # cap 0 tokens, floor wins


def test_per_sample_cap_is_shared_across_images_but_per_image_is_not():
    p = torch.cat([torch.full((10,), 0.9), torch.full((10,), 0.8)])
    shared = KeepPolicy(max_keep_ratio=0.2).select(p, [10, 10])
    assert shared[:10].sum() == 4 and shared[10:].sum() == 0
    per_image = KeepPolicy(max_keep_ratio=0.2, per_image=True).select(p, [10, 10])
    assert per_image[:10].sum() == 2 and per_image[10:].sum() == 2


@pytest.mark.parametrize("kwargs", [dict(threshold=math.nan), dict(threshold=1.5), dict(threshold=-0.1),
                                    dict(max_keep_ratio=0.0), dict(max_keep_ratio=1.2), dict(max_keep_ratio=math.nan),
                                    dict(min_keep=-1), dict(min_keep=1.5), dict(threshold="0.5")])
def test_invalid_policies_are_rejected(kwargs):
    with pytest.raises(ValueError):
        KeepPolicy(**kwargs).validate()


def test_nan_scores_refuse_to_prune():
    with pytest.raises(FloatingPointError):
        KeepPolicy().select(torch.tensor([0.2, float("nan")]), [2])
