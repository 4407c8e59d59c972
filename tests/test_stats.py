"""Statistics of brmrs_pyg.experiments.stats against published and hand-computed values."""
import math

import numpy as np
import pytest

from brmrs_pyg.experiments.stats import mean_std, paired_t_test, wilcoxon_signed_rank

# Student's sleep data (Cushny & Peebles 1905, "Student" 1908; R's `sleep`): extra hours of
# sleep of 10 patients under two drugs. R's published outputs:
#   t.test(extra ~ group, data = sleep, paired = TRUE): t = -4.0621, df = 9, p-value = 0.002833
#   wilcox.test(..., paired = TRUE) (normal approximation, continuity corrected, one zero
#   difference dropped, one tie): V = 0, p-value = 0.009091
SLEEP_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
SLEEP_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]


def test_paired_t_test_on_the_sleep_data():
    result = paired_t_test(SLEEP_1, SLEEP_2)
    assert result.statistic == pytest.approx(-4.0621, abs=1e-4)
    assert result.df == 9 and result.n == 10
    assert result.p_value == pytest.approx(0.002833, abs=5e-7)
    swapped = paired_t_test(SLEEP_2, SLEEP_1)
    assert swapped.statistic == pytest.approx(-result.statistic)
    assert swapped.p_value == pytest.approx(result.p_value)


def test_wilcoxon_on_the_sleep_data():
    result = wilcoxon_signed_rank(SLEEP_1, SLEEP_2, continuity=True)
    assert result.statistic == 0.0 and result.n == 9
    assert result.p_value == pytest.approx(0.009091, abs=5e-7)
    # by hand without the correction: sigma^2 = 9*10*19/24 - (2^3 - 2)/48 = 71.125,
    # z = (0 - 22.5) / sqrt(71.125)
    z = -22.5 / math.sqrt(71.125)
    plain = wilcoxon_signed_rank(SLEEP_1, SLEEP_2)
    assert plain.z == pytest.approx(z)
    assert plain.p_value == pytest.approx(math.erfc(-z / math.sqrt(2)))


def test_wilcoxon_hand_computed_with_ties_and_a_zero():
    # d = 1, -2, 3, 0, 4, -4, 5: the zero is dropped (n = 6); |d| = 1, 2, 3, 4, 4, 5 ranks
    # 1, 2, 3, 4.5, 4.5, 6; W+ = 1 + 3 + 4.5 + 6 = 14.5; mu = 6*7/4 = 10.5;
    # sigma^2 = 6*7*13/24 - (8 - 2)/48 = 22.625
    a = [1, 0, 3, 5, 4, 0, 5]
    b = [0, 2, 0, 5, 0, 4, 0]
    result = wilcoxon_signed_rank(a, b)
    assert (result.statistic, result.n) == (14.5, 6)
    assert result.z == pytest.approx(4 / math.sqrt(22.625))
    assert result.p_value == pytest.approx(0.40038, abs=1e-5)  # 2 (1 - Phi(0.8409))
    corrected = wilcoxon_signed_rank(a, b, continuity=True)
    assert corrected.z == pytest.approx(3.5 / math.sqrt(22.625))


def test_wilcoxon_signs_follow_the_order_of_the_samples():
    a, b = [1, 0, 3, 5, 4, 0, 5], [0, 2, 0, 5, 0, 4, 0]  # W+ = 14.5, W- = 6.5 (above)
    forward, backward = wilcoxon_signed_rank(a, b), wilcoxon_signed_rank(b, a)
    assert (forward.statistic, backward.statistic) == (14.5, 6.5)
    assert backward.z == pytest.approx(-forward.z) and forward.z > 0
    assert backward.p_value == pytest.approx(forward.p_value)


def test_wilcoxon_matches_the_tie_corrected_formula_on_many_tied_users():
    # per-user recalls: many zero differences and large tie groups, n in the hundreds
    rng = np.random.default_rng(0)
    a = rng.integers(0, 6, 300) / 5
    b = np.clip(a + rng.integers(-1, 3, 300) / 5, 0, 1)
    d = (a - b)[a != b]
    n, size = d.size, np.abs(d)
    # average ranks by counting: |d_j| < |d_i| below it, its tie group (itself included)
    # sharing the ranks that follow
    ranks = (size[None, :] < size[:, None]).sum(1) + ((size[None, :] == size[:, None]).sum(1)
                                                       + 1) / 2
    w_plus = ranks[d > 0].sum()
    _, ties = np.unique(size, return_counts=True)
    sigma = math.sqrt(n * (n + 1) * (2 * n + 1) / 24 - (ties ** 3 - ties).sum() / 48)
    mu = n * (n + 1) / 4
    for continuity, c in ((False, 0.0), (True, math.copysign(0.5, w_plus - mu))):
        result = wilcoxon_signed_rank(a, b, continuity=continuity)
        z = (w_plus - mu - c) / sigma
        assert (result.statistic, result.n) == (pytest.approx(w_plus), n)
        assert result.z == pytest.approx(z, rel=1e-12)
        assert result.p_value == pytest.approx(math.erfc(abs(z) / math.sqrt(2)), rel=1e-9)


def test_paired_t_test_against_closed_forms():
    # d = 1, 3: t = 2 / (sqrt(2) / sqrt(2)) = 2 on nu = 1 (Cauchy): p = 1 - 2 atan(2) / pi
    result = paired_t_test([1, 3], [0, 0])
    assert (result.statistic, result.df) == (pytest.approx(2.0), 1)
    assert result.p_value == pytest.approx(1 - 2 * math.atan(2) / math.pi, rel=1e-12)
    # d = 1, 2, 4: mean 7/3, s^2 = 7/3, t = sqrt(7) on nu = 2: p = 1 - t / sqrt(2 + t^2)
    result = paired_t_test([1, 2, 4], [0, 0, 0])
    assert (result.statistic, result.df) == (pytest.approx(math.sqrt(7)), 2)
    assert result.p_value == pytest.approx(1 - math.sqrt(7) / 3, rel=1e-12)


def test_degenerate_samples():
    for no_difference in (wilcoxon_signed_rank([1, 2], [1, 2]),
                          wilcoxon_signed_rank([], [])):
        assert (no_difference.statistic, no_difference.p_value, no_difference.n,
                no_difference.z) == (0.0, 1.0, 0, 0.0)
    one = wilcoxon_signed_rank([2], [1])  # n = 1: W+ = 1, mu = 1/2, sigma = 1/2
    assert (one.statistic, one.n, one.z) == (1.0, 1, pytest.approx(1.0))
    same = paired_t_test([1, 2, 3], [1, 2, 3])
    assert (same.statistic, same.p_value) == (0.0, 1.0)
    shifted = paired_t_test([2, 3, 4], [1, 2, 3])
    assert shifted.statistic == math.inf and shifted.p_value == 0.0
    assert paired_t_test([1, 2, 3], [2, 3, 4]).statistic == -math.inf
    with pytest.raises(ValueError, match="one length"):
        paired_t_test([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="one length"):
        wilcoxon_signed_rank([[1, 2]], [[1, 2]])
    with pytest.raises(ValueError, match="at least 2"):
        paired_t_test([1], [2])
    with pytest.raises(ValueError, match="finite, got 2 NaN"):
        wilcoxon_signed_rank([1, math.nan], [math.inf, 2])
    with pytest.raises(ValueError, match="finite"):
        paired_t_test([1, 2], [1, math.nan])


def test_mean_std():
    mean, std = mean_std([0.2, 0.4, 0.9])
    assert mean == pytest.approx(0.5)
    assert std == pytest.approx(math.sqrt(((0.3) ** 2 + 0.1 ** 2 + 0.4 ** 2) / 2))
    assert math.isnan(mean_std([0.3])[1])
