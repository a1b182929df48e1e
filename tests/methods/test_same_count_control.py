"""The same-K random control: random selection at GlimpsePrune's cut layer with its per-sample kept counts."""

import pytest
import torch

from glimpseprune.methods import get_method
from glimpseprune.methods.random import same_count_control
from glimpseprune.processing import build_inputs

QUESTIONS = ["is there a red circle?", "what colour is the square?", "how many shapes are there?"]


@pytest.fixture(scope="module")
def batch_inputs(qwen, images):
    _, processor = qwen
    return build_inputs(processor, QUESTIONS, [[images["square"]], [images["tall"]], [images["wide"]]])


def test_control_keeps_exactly_glimpse_counts_at_glimpse_layer(gp, batch_inputs):
    # Different caps per run so the counts are not all the same number.
    for cap in (None, 0.3, 0.05):
        glimpse = gp.generate(**batch_inputs, method="glimpse", max_keep_ratio=cap, threshold=0.45,
                              max_new_tokens=1).pruning
        control_method = same_count_control(gp, glimpse, seed=3)
        control = gp.generate(**batch_inputs, method=control_method, max_new_tokens=1).pruning
        assert control.prune_layer == glimpse.prune_layer == gp.config.prune_layer
        assert control.kept == glimpse.kept  # per sample, exactly
        assert control.total == glimpse.total
        assert [layer for layer, _ in control.stages] == [glimpse.prune_layer]
        assert [control.sample_retention(b) for b in range(3)] == [glimpse.sample_retention(b) for b in range(3)]
    counts = glimpse.kept
    assert len(set(counts)) > 1 or counts[0] > 1  # the check above compared something non-trivial


def test_control_is_seeded_row_independent_and_not_the_glimpse_selection(qwen, gp, images, batch_inputs):
    _, processor = qwen
    glimpse = gp.generate(**batch_inputs, method="glimpse", max_keep_ratio=0.2, threshold=0.0,
                          max_new_tokens=1).pruning
    counts = glimpse.kept
    assert all(k == int(0.2 * n) for k, n in zip(counts, glimpse.total))

    def keeps(method, inputs):
        return [s.keep for s in gp.generate(**inputs, method=method, max_new_tokens=1).pruning.samples]

    a = keeps(same_count_control(gp, glimpse, seed=0), batch_inputs)
    b = keeps(same_count_control(gp, glimpse, seed=0), batch_inputs)
    c = keeps(same_count_control(gp, glimpse, seed=1), batch_inputs)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert any(not torch.equal(x, y) for x, y in zip(a, c))
    assert any(not torch.equal(x, s.keep) for x, s in zip(a, glimpse.samples))
    # a batch row keeps what the same prompt alone keeps with its own count
    for i, (question, name) in enumerate(zip(QUESTIONS, ["square", "tall", "wide"])):
        alone = build_inputs(processor, [question], [[images[name]]])
        method = get_method("random", gp, prune_layer=glimpse.prune_layer, seed=0, kept_counts=[counts[i]])
        assert torch.equal(keeps(method, alone)[0], a[i])


def test_control_rejects_bad_counts(gp, batch_inputs):
    with pytest.raises(ValueError, match="one count per sample"):
        gp.generate(**batch_inputs, method=get_method("random", gp, prune_layer=2, kept_counts=[1, 2]),
                    max_new_tokens=1)
    with pytest.raises(ValueError, match="cannot keep"):
        gp.generate(**batch_inputs, method=get_method("random", gp, prune_layer=2, kept_counts=[1, 2, 10**6]),
                    max_new_tokens=1)
    with pytest.raises(ValueError, match="no ratio"):
        get_method("random", gp, prune_layer=2, ratio=0.1, kept_counts=[1, 2, 3])
    with pytest.raises(ValueError, match="non-negative integers"):
        get_method("random", gp, prune_layer=2, kept_counts=[1, -2, 3])
    none = gp.generate(**batch_inputs, method="none", max_new_tokens=1).pruning
    with pytest.raises(ValueError, match="pruned run"):
        same_count_control(gp, none)
