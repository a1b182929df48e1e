"""PruneState's retention accounting by hand, per sample and batch-wide, single and multi-stage."""

import pytest
import torch

from glimpseprune.prune_state import ImagePruning, PruneState, SamplePruning


def sample(total: int, kept: int) -> SamplePruning:
    keep = torch.zeros(total, dtype=torch.bool)
    keep[:kept] = True
    return SamplePruning([ImagePruning((1, total), keep, None)], torch.arange(kept))


def test_retention_by_hand_multi_stage():
    # L = 4; cuts at layer 1 and layer 3. Sample 0: 16 -> 8 -> 4 tokens; sample 1: 8 -> 2 -> 2 tokens.
    state = PruneState("pyramid", 1, 4, [sample(16, 4), sample(8, 2)], stages=[(1, [8, 2]), (3, [4, 2])])
    assert state.sample_retention(0) == pytest.approx((1 * 1 + 2 * 8 / 16 + 1 * 4 / 16) / 4)  # 0.5625
    assert state.sample_retention(1) == pytest.approx((1 * 1 + 2 * 2 / 8 + 1 * 2 / 8) / 4)  # 0.4375
    # batch-wide: token-weighted over the 24 tokens, not the mean of the two samples
    assert state.layer_averaged_retention == pytest.approx((1 + 2 * 10 / 24 + 6 / 24) / 4)


def test_retention_single_cut_and_unpruned():
    glimpse = PruneState("glimpse", 2, 4, [sample(16, 4)], stages=[(2, [4])])
    assert glimpse.sample_retention(0) == pytest.approx((2 + 2 * 0.25) / 4)
    assert PruneState("none", None, 4, [sample(16, 16)]).sample_retention(0) == 1.0
    assert PruneState("glimpse", 2, 4, [sample(0, 0)], stages=[(2, [0])]).sample_retention(0) == 1.0  # no image
