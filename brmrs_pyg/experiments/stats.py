r"""Statistics for comparing runs: mean ± sample standard deviation over seeds, and two
paired tests on per-user metrics (Wilcoxon signed-rank, Student's paired t), written with
:mod:`math` only (no SciPy)."""
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


def _differences(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired samples need two 1-d arrays of one length, got shapes "
                         f"{x.shape} and {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("paired samples must be finite")
    return x - y


def average_ranks(values: np.ndarray) -> np.ndarray:
    r"""Ranks 1..n of ``values`` (ascending), ties sharing the mean of their ranks.

    >>> average_ranks(np.array([3.0, 1.0, 3.0])).tolist()
    [2.5, 1.0, 2.5]
    """
    order = np.argsort(values, kind="stable")
    ranks = np.empty(values.size, dtype=np.float64)
    sorted_values = values[order]
    start = 0
    for end in range(1, values.size + 1):
        if end == values.size or sorted_values[end] != sorted_values[start]:
            ranks[order[start:end]] = (start + 1 + end) / 2  # mean of ranks start+1..end
            start = end
    return ranks


def wilcoxon_signed_rank(a: ArrayLike, b: ArrayLike, continuity: bool = False
                         ) -> TestResult:
    r"""Wilcoxon's signed-rank test of paired samples (two-sided), normal approximation.

    Zero differences :math:`d = a - b` are dropped (Wilcoxon's convention), leaving
    :math:`n`; the others are ranked by :math:`|d|`, ties getting their average rank. With
    :math:`W^+` the sum of the ranks of positive differences and :math:`t_j` the sizes of the
    groups of tied :math:`|d|`,

    .. math::
        \mu = \frac{n(n+1)}{4}, \quad
        \sigma^2 = \frac{n(n+1)(2n+1)}{24} - \frac{\sum_j (t_j^3 - t_j)}{48}, \quad
        z = \frac{W^+ - \mu - c}{\sigma}, \quad p = \operatorname{erfc}(|z| / \sqrt{2}),

    with the continuity correction :math:`c = \tfrac12 \operatorname{sign}(W^+ - \mu)` when
    ``continuity`` (R's default), else 0. The approximation suits the hundreds of users of
    a recommendation test split; for :math:`n < 20` an exact table is more accurate. With no
    non-zero difference the p-value is 1.

    Args:
        a, b (array-like): Paired samples, e.g. two models' per-user Recall@20.
        continuity (bool, optional): Apply the continuity correction. (default: :obj:`False`)

    Shapes:
        - **a**, **b**: :math:`(N,)`.
    """
    d = _differences(a, b)
    d = d[d != 0]
    n = d.size
    if n == 0:
        return TestResult(statistic=0.0, p_value=1.0, n=0, z=0.0)
    ranks = average_ranks(np.abs(d))
    w_plus = float(ranks[d > 0].sum())
    _, counts = np.unique(np.abs(d), return_counts=True)
    mean = n * (n + 1) / 4
    var = n * (n + 1) * (2 * n + 1) / 24 - float((counts ** 3 - counts).sum()) / 48
    shift = math.copysign(0.5, w_plus - mean) if continuity and w_plus != mean else 0.0
    z = (w_plus - mean - shift) / math.sqrt(var)
    return TestResult(statistic=w_plus, p_value=math.erfc(abs(z) / math.sqrt(2)), n=n, z=z)


def paired_t_test(a: ArrayLike, b: ArrayLike) -> TestResult:
    r"""Student's paired t-test (two-sided) of :math:`d = a - b`:

    .. math::
        t = \frac{\bar d}{s_d / \sqrt{n}}, \qquad
        p = 2\,P(T_{n-1} > |t|) = I_{\nu/(\nu + t^2)}\big(\tfrac{\nu}{2}, \tfrac12\big),
        \quad \nu = n - 1,

    with :math:`s_d` the sample standard deviation and :math:`I` the regularized incomplete
    beta function (:func:`regularized_incomplete_beta`), exact for every :math:`n`. Identical
    differences give :math:`t = \pm\infty, p = 0` (or :math:`t = 0, p = 1` when all are 0).

    Shapes:
        - **a**, **b**: :math:`(N,)`, :math:`N \ge 2`.
    """
    d = _differences(a, b)
    n = d.size
    if n < 2:
        raise ValueError(f"the paired t-test needs at least 2 pairs, got {n}")
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    df = float(n - 1)
    if sd == 0:
        t = 0.0 if mean == 0 else math.copysign(math.inf, mean)
        return TestResult(statistic=t, p_value=1.0 if mean == 0 else 0.0, n=n, z=t, df=df)
    t = mean / (sd / math.sqrt(n))
    return TestResult(statistic=t, p_value=student_t_two_sided(t, df), n=n, z=t, df=df)


def student_t_two_sided(t: float, df: float) -> float:
    r"""Two-sided tail :math:`P(|T_\nu| > |t|) = I_{\nu/(\nu+t^2)}(\nu/2, 1/2)` of Student's t.

    >>> round(student_t_two_sided(1.0, 1.0), 6)  # Cauchy: 1 - 2 atan(1) / pi
    0.5
    """
    if df <= 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    return regularized_incomplete_beta(df / (df + t * t), df / 2, 0.5)


def regularized_incomplete_beta(x: float, a: float, b: float) -> float:
    r"""The regularized incomplete beta function

    .. math::
        I_x(a, b) = \frac{1}{B(a, b)} \int_0^x s^{a-1} (1 - s)^{b-1} \, ds,

    from its continued fraction (evaluated by the modified Lentz method), which converges
    fast for :math:`x < (a + 1) / (a + b + 2)`; above that, :math:`I_x(a, b) =
    1 - I_{1-x}(b, a)`.

    >>> round(regularized_incomplete_beta(0.5, 2.0, 2.0), 12)
    0.5
    """
    if not 0.0 <= x <= 1.0 or a <= 0 or b <= 0:
        raise ValueError(f"need 0 <= x <= 1 and a, b > 0, got x={x}, a={a}, b={b}")
    if x == 0.0 or x == 1.0:
        return x
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x)
                 + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _beta_fraction(x, a, b) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(1.0 - x, b, a) / b


def _beta_fraction(x: float, a: float, b: float, tol: float = 1e-15,
                   max_terms: int = 1000) -> float:
    r"""The continued fraction :math:`1 / (1 + d_1 / (1 + d_2 / (1 + \dots)))` of
    :math:`I_x(a, b)`, with :math:`d_{2m+1} = -\frac{(a+m)(a+b+m)x}{(a+2m)(a+2m+1)}` and
    :math:`d_{2m} = \frac{m(b-m)x}{(a+2m-1)(a+2m)}`."""
    tiny = 1e-300

    def guard(v: float) -> float:
        return v if abs(v) > tiny else tiny

    c, d = 1.0, 1.0 / guard(1.0 - (a + b) * x / (a + 1))
    value = d
    for m in range(1, max_terms + 1):
        for coef in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                     -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 / guard(1.0 + coef * d)
            c = guard(1.0 + coef / c)
            value *= c * d
        if abs(c * d - 1.0) < tol:
            return value
    raise ArithmeticError(f"incomplete beta fraction did not converge for x={x}, a={a}, b={b}")
