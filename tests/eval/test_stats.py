"""The paired exact test against hand-computed binomial tails."""

import math

import pytest

from glimpseprune.eval.stats import paired_exact_test


def test_paired_exact_test_by_hand():
    # 10 items only A got right, 2 only B, 5 both, 3 neither: p = 2 * P(Bin(12, 1/2) <= 2)
    a = [1] * 10 + [0] * 2 + [1] * 5 + [0] * 3
    b = [0] * 10 + [1] * 2 + [1] * 5 + [0] * 3
    result = paired_exact_test(a, b)
    assert result == {"n": 20, "a_only": 10, "b_only": 2, "p_value": pytest.approx(2 * (1 + 12 + 66) / 4096)}
    assert paired_exact_test(b, a)["p_value"] == result["p_value"]  # symmetric
    # balanced disagreement and no disagreement are no evidence at all
    assert paired_exact_test([1, 0, 1, 0], [0, 1, 1, 0])["p_value"] == 1.0
    assert paired_exact_test([1, 1, 0], [1, 1, 0]) == {"n": 3, "a_only": 0, "b_only": 0, "p_value": 1.0}
    # one-sided extreme: 8 to 0 -> 2 / 2^8
    assert paired_exact_test([1] * 8, [0] * 8)["p_value"] == pytest.approx(2 / 256)
    assert math.isclose(paired_exact_test([True, False], [False, False])["p_value"], 1.0)


@pytest.mark.parametrize("a, b, match", [([1, 0], [1], "same items"), ([1, 0.5], [1, 0], "0/1 scores")])
def test_paired_exact_test_refuses_bad_input(a, b, match):
    with pytest.raises(ValueError, match=match):
        paired_exact_test(a, b)
