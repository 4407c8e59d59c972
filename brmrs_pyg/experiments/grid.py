r"""Grid search on the validation split: every point of a grid on one seed, the best by
the runs' ``valid_metric`` (never by test), then that point on every seed.

Grids are explicit lists, from a model card's ``grid:`` block or a sweep file
(``{model: {key: [values]}}``), never config keys that are sometimes lists (STYLE.md rule 2).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from brmrs_pyg.config import ConfigError
from brmrs_pyg.pipeline import Paths

from .runner import RunRecord, Runner, Variant, override_text

#: A grid: each key's candidate values, explored as their Cartesian product.
Grid = Mapping[str, Sequence[Any]]


def grid_points(grid: Grid) -> list[dict[str, Any]]:
    r"""The Cartesian product of ``grid``, in the order of its keys (last key fastest).

    >>> grid_points({"a": [1, 2], "b": ["x"]})
    [{'a': 1, 'b': 'x'}, {'a': 2, 'b': 'x'}]
    """
    for key, values in grid.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise ConfigError(f"grid key {key!r}: expected a non-empty list of values, got "
                              f"{values!r}")
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def card_grid(model: str, paths: Paths) -> dict[str, list[Any]]:
    r"""The ``grid:`` block of ``models/<model>.yaml`` (empty when there is none)."""
    path = paths.model_cards / f"{model}.yaml"
    raw = yaml.safe_load(path.read_text()) if path.is_file() else None
    return dict((raw or {}).get("grid") or {})


def read_sweep_file(path: Path) -> dict[str, dict[str, list[Any]]]:
    r"""A sweep file: ``{model: {key: [values, ...]}}`` (YAML)."""
    raw = yaml.safe_load(Path(path).read_text())
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise ConfigError(f"{path}: a sweep file maps model names to {{key: [values]}}")
    for model, grid in raw.items():
        grid_points(grid)  # checks the lists
    return {str(m): dict(g) for m, g in raw.items()}


def valid_score(results: Mapping[str, Any]) -> float:
    r"""A run's validation score: its ``valid_metric`` on the valid split at the best epoch."""
    return float(results["valid"][results["config"]["valid_metric"]])


def select_best(candidates: Sequence[tuple[Variant, Mapping[str, Any] | None]]) -> Variant:
    r"""The variant whose run scores highest on validation (:func:`valid_score`); the first
    wins a tie; failed runs (``None``) never win. Test metrics are not looked at."""
    scored = [(valid_score(res), i) for i, (_, res) in enumerate(candidates) if res is not None]
    if not scored:
        raise ConfigError("every grid point failed: nothing to select")
    metrics = {res["config"]["valid_metric"] for _, res in candidates if res is not None}
    if len(metrics) > 1:
        raise ConfigError(f"grid points were selected on different metrics {sorted(metrics)}")
    best = max(scored, key=lambda pair: (pair[0], -pair[1]))
    return candidates[best[1]][0]


@dataclass(frozen=True)
class GridOutcome:
    r"""A grid search: every point's run on the grid seed, and the chosen point."""

    points: list[RunRecord]
    best: Variant

    def as_dict(self) -> dict[str, Any]:
        return {"best": dict(self.best.overrides), "seed": self.points[0].seed,
                "points": [{"overrides": dict(r.variant.overrides), "folder": str(r.folder),
                            "valid": None if r.results is None else valid_score(r.results)}
                           for r in self.points]}


def grid_search(runner: Runner, base: Variant, grid: Grid, seed: int) -> GridOutcome:
    r"""Runs every point of ``grid`` (on top of ``base``'s overrides) with ``seed`` and
    selects the best on validation. The chosen variant keeps ``base``'s label."""
    points = [Variant(base.model, (*base.overrides,
                                   *((k, override_text(v)) for k, v in point.items())),
                      base.label) for point in grid_points(grid)]
    names = [Variant(v.model, v.overrides) for v in points]  # progress lines show the point
    records = runner.run(names, [seed], stage=f"grid {base.name}")
    flat = [records[v][0] for v in names]
    best = select_best([(r.variant, r.results) for r in flat])
    return GridOutcome(flat, Variant(best.model, best.overrides, base.label))
