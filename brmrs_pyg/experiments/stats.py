r"""Statistics for comparing runs: mean ± sample standard deviation over seeds, and two
paired tests on per-user metrics (Wilcoxon signed-rank, Student's paired t) from
:mod:`scipy.stats`, with the options that reproduce R's ``wilcox.test`` and ``t.test``."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from numpy.typing import ArrayLike


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    r"""Mean and sample standard deviation (:math:`n - 1` in the denominator) of ``values``;
    the deviation is NaN for fewer than two values.

    >>> mean_std([1.0, 2.0, 3.0])
    (2.0, 1.0)
    """
    if not len(values):
        raise ValueError("mean_std of no values")
    x = np.asarray(values, dtype=np.float64)
    return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else math.nan


@dataclass(frozen=True)
class TestResult:
    r"""The outcome of a paired two-sided test.

    Attributes:
        statistic (float): :math:`W^+` (Wilcoxon) or :math:`t` (paired t-test).
        p_value (float): Two-sided p-value.
        n (int): Pairs used (Wilcoxon drops zero differences).
        z (float): The standardised statistic the p-value comes from (for the t-test, equal
            to :math:`t`).
        df (float): Degrees of freedom (t-test; NaN for Wilcoxon).
    """

    __test__ = False  # not a pytest class, despite the name

    statistic: float
    p_value: float
    n: int
    z: float
    df: float = math.nan


def _paired(a: ArrayLike, b: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired samples need two 1-d arrays of one length, got shapes "
                         f"{x.shape} and {y.shape}")
    bad = int((~np.isfinite(x)).sum() + (~np.isfinite(y)).sum())
    if bad:
        # SciPy would propagate a NaN into the p-value; a missing per-user value is a bug
        # upstream, so say so here
        raise ValueError(f"paired samples must be finite, got {bad} NaN or infinite values")
    return x, y


def wilcoxon_signed_rank(a: ArrayLike, b: ArrayLike, continuity: bool = False
                         ) -> TestResult:
    r"""Wilcoxon's signed-rank test of paired samples (two-sided), normal approximation
    (:func:`scipy.stats.wilcoxon`).

    Zero differences :math:`d = a - b` are dropped (Wilcoxon's convention), leaving
    :math:`n`; the others are ranked by :math:`|d|`, ties getting their average rank. With
    :math:`W^+` the sum of the ranks of positive differences and :math:`t_j` the sizes of the
    groups of tied :math:`|d|`,

    .. math::
        \mu = \frac{n(n+1)}{4}, \quad
        \sigma^2 = \frac{n(n+1)(2n+1)}{24} - \frac{\sum_j (t_j^3 - t_j)}{48}, \quad
        z = \frac{W^+ - \mu - c}{\sigma}, \quad p = \operatorname{erfc}(|z| / \sqrt{2}),

    with the continuity correction :math:`c = \tfrac12 \operatorname{sign}(W^+ - \mu)` when
    ``continuity``, else 0. This is R's ``wilcox.test(a, b, paired = TRUE)`` whenever R
    takes its normal approximation (any zero or tied difference, or :math:`n \ge 50`), with
    R's ``correct = TRUE`` when ``continuity``. SciPy options and why:

    - ``zero_method="wilcox"``: drop zeros, as R does (``"pratt"``/``"zsplit"`` keep them).
    - ``method="asymptotic"`` always, so that :math:`z` exists: R is exact for
      :math:`n < 50` without zeros or ties, and SciPy's ``"auto"`` is exact or a
      permutation test for :math:`n \le 50` even with them (0.0039 on R's ``sleep`` data,
      where R gives 0.0091). The hundreds of tied per-user values of a test split get the
      normal approximation from all three.
    - ``correction=continuity``, off by default, unlike R.
    - The statistic is :math:`W^+` (R's ``V``), not SciPy's :math:`\min(W^+, W^-)`, and
      :math:`z` keeps the sign of :math:`W^+ - \mu` (SciPy reports :math:`-|z|`).

    With no non-zero difference the p-value is 1.

    Args:
        a, b (array-like): Paired samples, e.g. two models' per-user Recall@20.
        continuity (bool, optional): Apply the continuity correction. (default: :obj:`False`)

    Shapes:
        - **a**, **b**: :math:`(N,)`.
    """
    from scipy import stats  # here, not at the top: every run.py start imports this module

    x, y = _paired(a, b)
    d = x - y  # differenced once here, as SciPy advises, so the ranks see one rounding
    nonzero = d[d != 0]
    n = nonzero.size
    if n == 0:  # SciPy returns a NaN p-value: no evidence against equality, so 1
        return TestResult(statistic=0.0, p_value=1.0, n=0, z=0.0)
    res = stats.wilcoxon(d, zero_method="wilcox", correction=continuity,
                         method="asymptotic")
    w_plus = float(stats.rankdata(np.abs(nonzero))[nonzero > 0].sum())
    # W+ and mu are multiples of 1/2, so the correction never flips the sign of z
    z = math.copysign(abs(float(res.zstatistic)), w_plus - n * (n + 1) / 4)
    return TestResult(statistic=w_plus, p_value=float(res.pvalue), n=n, z=z)


def paired_t_test(a: ArrayLike, b: ArrayLike) -> TestResult:
    r"""Student's paired t-test (two-sided) of :math:`d = a - b`
    (:func:`scipy.stats.ttest_rel`, as R's ``t.test(a, b, paired = TRUE)``):

    .. math::
        t = \frac{\bar d}{s_d / \sqrt{n}}, \qquad p = 2\,P(T_{n-1} > |t|),

    with :math:`s_d` the sample standard deviation. Identical differences give
    :math:`t = \pm\infty, p = 0` (or :math:`t = 0, p = 1` when all are 0), where SciPy
    returns NaN for all-zero differences.

    Shapes:
        - **a**, **b**: :math:`(N,)`, :math:`N \ge 2`.
    """
    from scipy import stats  # here, not at the top: every run.py start imports this module

    x, y = _paired(a, b)
    d = x - y
    n = d.size
    if n < 2:
        raise ValueError(f"the paired t-test needs at least 2 pairs, got {n}")
    df = float(n - 1)
    mean = float(d.mean())
    if float(d.std(ddof=1)) == 0:
        t = 0.0 if mean == 0 else math.copysign(math.inf, mean)
        return TestResult(statistic=t, p_value=1.0 if mean == 0 else 0.0, n=n, z=t, df=df)
    res = stats.ttest_rel(x, y)
    t = float(res.statistic)
    return TestResult(statistic=t, p_value=float(res.pvalue), n=n, z=t, df=df)
