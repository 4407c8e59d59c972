r"""A suite run's diagnostics (``analysis.json`` of :func:`brmrs_pyg.analysis.analyze_run`) as
the suites read them: the run's analysis, and the recall of the fused ranking per
ground-truth type on data that has one (the synthetic testbed's ``ground_truth.tsv``)."""
from __future__ import annotations

import json
import logging
from typing import Any, Sequence

from brmrs_pyg.data.synthetic import GROUND_TRUTH_FILE
from brmrs_pyg.pipeline import Paths, data_dir_of
from brmrs_pyg.recommenders.branched import FUSED

from .runner import RunRecord, Runner, SuiteError, Summary, Variant
from .stats import mean_std

log = logging.getLogger(__name__)

#: Cut-off of the partition and per-type recall the suites report and plot.
K = 20
#: Column prefix of the recall per ground-truth type in the suites' tables
#: (``recall@20:synergy``).
TYPE_COLUMN = f"recall@{K}:"
#: The tables' note on those columns.
TYPE_NOTE = (f"{TYPE_COLUMN}<type>: test recall@{K} of the fused ranking on the held-out pairs "
             "of each ground-truth type (analysis.json).")


def analyze(record: RunRecord, paths: Paths) -> dict[str, Any] | None:
    r"""The run's ``analysis.json``, computed by :func:`brmrs_pyg.analysis.analyze_run`
    when missing; ``None`` for a failed run, or a run the analysis refuses (e.g. a model
    without branches), with a warning."""
    if record.results is None:
        return None
    path = record.folder / "analysis.json"
    if path.is_file():
        return dict(json.loads(path.read_text()))
    try:
        from brmrs_pyg.analysis import analyze_run
    except ImportError:
        raise SuiteError("this suite needs brmrs_pyg.analysis (the diagnostics of "
                         "run.py analyze), which this installation lacks") from None
    try:
        return dict(analyze_run(record.folder, paths, ks=(10, K), split="test", plots=True))
    except ValueError as exc:  # the package's data and config errors are ValueErrors
        log.warning("no analysis of %s: %s", record.folder, exc)
        return None


def has_ground_truth(runner: Runner, model: str, seed: int) -> bool:
    r"""Whether ``model``'s data, as ``runner`` resolves it, has a ground truth of information
    types (``ground_truth.tsv``: the synthetic testbed)."""
    config = runner.config(Variant(model), seed)
    return (data_dir_of(config, runner.settings.paths) / GROUND_TRUTH_FILE).is_file()


def type_recall(analysis: dict[str, Any] | None) -> dict[str, float]:
    r"""Recall@K of the fused (ranking) branch per ground-truth type (``ground_truth`` ->
    ``recall@K`` -> ``fused`` of ``analysis.json``: hits / held-out pairs of the type)."""
    if analysis is None:
        return {}
    by_type = analysis.get("ground_truth", {}).get(f"recall@{K}", {}).get(FUSED, {})
    return {k: float(v) for k, v in by_type.items()}


def mean_over_seeds(maps: Sequence[dict[str, float]]) -> dict[str, Summary]:
    r"""Per key, mean ± std over the seeds' dicts that have it."""
    keys = list(dict.fromkeys(k for m in maps for k in m))
    out = {}
    for key in keys:
        values = [m[key] for m in maps if key in m]
        out[key] = Summary(*mean_std(values), len(values))
    return out


def type_recalls(records: Sequence[RunRecord], paths: Paths) -> dict[str, Summary]:
    r"""Per ground-truth type, :func:`type_recall` mean ± std over the seeds' ``records``."""
    return mean_over_seeds([type_recall(analyze(r, paths)) for r in records])
