"""Statistics of brmrs_pyg.experiments.stats against published and hand-computed values."""
import math

import numpy as np
import pytest

from brmrs_pyg.experiments.stats import (
    average_ranks,
    mean_std,
    paired_t_test,
    regularized_incomplete_beta,
    student_t_two_sided,
    wilcoxon_signed_rank,
)

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


def test_degenerate_samples():
    assert wilcoxon_signed_rank([1, 2], [1, 2]).p_value == 1.0
    same = paired_t_test([1, 2, 3], [1, 2, 3])
    assert (same.statistic, same.p_value) == (0.0, 1.0)
    shifted = paired_t_test([2, 3, 4], [1, 2, 3])
    assert shifted.statistic == math.inf and shifted.p_value == 0.0
    with pytest.raises(ValueError, match="one length"):
        paired_t_test([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="at least 2"):
        paired_t_test([1], [2])
    with pytest.raises(ValueError, match="finite"):
        wilcoxon_signed_rank([1, math.nan], [1, 2])


def test_student_t_tail_against_closed_forms():
    for t in (0.0, 0.3, 1.3, 7.0, -2.5):
        # nu = 1 is the Cauchy distribution, nu = 2 has a closed form as well
        assert student_t_two_sided(t, 1) == pytest.approx(1 - 2 * math.atan(abs(t)) / math.pi)
        assert student_t_two_sided(t, 2) == pytest.approx(1 - abs(t) / math.sqrt(2 + t * t))
    # a large nu approaches the normal tail
    assert student_t_two_sided(1.96, 1e6) == pytest.approx(math.erfc(1.96 / math.sqrt(2)),
                                                            rel=1e-4)


def test_incomplete_beta_special_cases():
    for x in (0.0, 0.1, 0.5, 0.93, 1.0):
        assert regularized_incomplete_beta(x, 1, 1) == pytest.approx(x)
        assert regularized_incomplete_beta(x, 3.5, 1) == pytest.approx(x ** 3.5)
        assert regularized_incomplete_beta(x, 1, 2.5) == pytest.approx(1 - (1 - x) ** 2.5)
    assert regularized_incomplete_beta(0.5, 7.3, 7.3) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        regularized_incomplete_beta(1.5, 1, 1)


def test_against_scipy_when_installed():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a = rng.integers(0, 6, 300) / 5  # many zeros and ties, as per-user recalls have
    b = np.clip(a + rng.integers(-1, 3, 300) / 5, 0, 1)
    ours, theirs = wilcoxon_signed_rank(a, b), stats.wilcoxon(a, b, method="approx")
    assert ours.p_value == pytest.approx(theirs.pvalue, rel=1e-9)
    assert min(ours.statistic, ours.n * (ours.n + 1) / 2 - ours.statistic) == theirs.statistic
    ours, theirs = paired_t_test(a, b), stats.ttest_rel(a, b)
    assert ours.statistic == pytest.approx(theirs.statistic)
    assert ours.p_value == pytest.approx(theirs.pvalue, rel=1e-9)
    for df in (3, 17.5, 240):
        assert student_t_two_sided(2.1, df) == pytest.approx(2 * stats.t.sf(2.1, df), rel=1e-10)


def test_mean_std_and_ranks():
    mean, std = mean_std([0.2, 0.4, 0.9])
    assert mean == pytest.approx(0.5)
    assert std == pytest.approx(math.sqrt(((0.3) ** 2 + 0.1 ** 2 + 0.4 ** 2) / 2))
    assert math.isnan(mean_std([0.3])[1])
    assert average_ranks(np.array([2.0, 2.0, 2.0, 1.0])).tolist() == [3.0, 3.0, 3.0, 1.0]
