r"""Experiments: a resumable runner of many configurations, grid search on valid, paired
significance tests, tables, plots, and the named suites of ``run.py suite``."""
from .runner import Runner, RunnerSettings, RunRecord, SuiteError, Variant
from .suites import SUITES, SuiteContext
from . import testbed  # noqa: F401  (registers the suites that read the diagnostics)
from . import tuned  # noqa: F401  (registers the equal-budget suite)

__all__ = ["Runner", "RunnerSettings", "RunRecord", "SuiteError", "Variant", "SUITES",
           "SuiteContext"]
