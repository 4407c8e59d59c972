r"""Paired significance tests between two runs or two groups of seeds, on the per-user test
metrics every run saves in ``per_user.npz`` (:func:`brmrs_pyg.pipeline.write_per_user`)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .runner import RunRecord, SuiteError
from .stats import TestResult, paired_t_test, wilcoxon_signed_rank

log = logging.getLogger(__name__)


def load_per_user(folder: Path, metric: str, split: str = "test"
                  ) -> tuple[np.ndarray, np.ndarray]:
    r"""``(users, values)`` of ``metric`` on ``split`` from ``folder/per_user.npz``."""
    path = Path(folder) / "per_user.npz"
    if not path.is_file():
        raise SuiteError(f"{path} is missing: runs written before per-user metrics existed "
                         f"cannot be compared per user; run them again")
    with np.load(path) as arrays:
        key = f"{split}_{metric}"
        if key not in arrays:
            raise SuiteError(f"{path} has no {key} (it has {', '.join(sorted(arrays))})")
        return arrays[f"{split}_users"], arrays[key]


def per_user_mean(folders: Sequence[Path], metric: str, split: str = "test"
                  ) -> dict[int, float]:
    r"""Each user's ``metric`` averaged over the runs in ``folders`` (users evaluated in
    every run)."""
    tables = [dict(zip(*(a.tolist() for a in load_per_user(f, metric, split))))
              for f in folders]
    users = set.intersection(*(set(t) for t in tables))
    if any(len(t) != len(users) for t in tables):
        log.warning("the runs evaluated different %s users; comparing the %d they share",
                    split, len(users))
    return {u: float(np.mean([t[u] for t in tables])) for u in sorted(users)}


@dataclass(frozen=True)
class Comparison:
    r"""A paired comparison of two groups of runs on one per-user metric: ``mean_a`` and
    ``mean_b`` over the shared users (each user's value averaged over a group's seeds),
    and both tests of :math:`a - b`."""

    metric: str
    num_users: int
    mean_a: float
    mean_b: float
    wilcoxon: TestResult
    t_test: TestResult

    def as_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "num_users": self.num_users, "mean_a": self.mean_a,
                "mean_b": self.mean_b, "wilcoxon_w_plus": self.wilcoxon.statistic,
                "wilcoxon_z": self.wilcoxon.z, "wilcoxon_p": self.wilcoxon.p_value,
                "t": self.t_test.statistic, "t_df": self.t_test.df,
                "t_p": self.t_test.p_value}


def compare_runs(a: Sequence[Path], b: Sequence[Path], metric: str, split: str = "test"
                 ) -> Comparison:
    r"""Compares the runs in folders ``a`` with those in ``b`` (one folder each for two
    runs, a folder per seed for two groups) on ``metric``, per user: each user's value is
    averaged over a group's runs, then the pairs go to :func:`wilcoxon_signed_rank` and
    :func:`paired_t_test`."""
    mean_a, mean_b = per_user_mean(a, metric, split), per_user_mean(b, metric, split)
    users = sorted(set(mean_a) & set(mean_b))
    if len(users) < 2:
        raise SuiteError(f"only {len(users)} users shared by the two groups: nothing to test")
    x = np.array([mean_a[u] for u in users])
    y = np.array([mean_b[u] for u in users])
    return Comparison(metric, len(users), float(x.mean()), float(y.mean()),
                      wilcoxon_signed_rank(x, y), paired_t_test(x, y))


def compare_records(a: Sequence[RunRecord], b: Sequence[RunRecord], metrics: Sequence[str]
                    ) -> list[Comparison]:
    r""":func:`compare_runs` on the finished runs of two variants, for each metric."""
    fa = [r.folder for r in a if r.results is not None]
    fb = [r.folder for r in b if r.results is not None]
    if not fa or not fb:
        raise SuiteError("a compared variant has no finished run")
    return [compare_runs(fa, fb, m) for m in metrics]
