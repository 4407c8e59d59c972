r"""Grid search on the validation split: every point of a grid on one seed, the best by
the runs' ``valid_metric`` (never by test), then that point on every seed.

Grids are explicit lists, from a model card's ``grid:`` block or a sweep file
(``{model: {key: [values]}}``), never config keys that are sometimes lists (STYLE.md rule 2).
The same block is the search space of ``run.py search`` (:mod:`.search`), where a key may
also be a numeric range, ``{low: 1.0e-4, high: 1.0e-2, log: true}`` or ``{low: 1, high: 4,
step: 1}``; this module parses and checks both forms, and a grid refuses ranges.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from brmrs_pyg.config import ConfigError
from brmrs_pyg.pipeline import Paths

from .runner import RunRecord, Runner, Variant, override_text

#: The keys of a range in a grid or search space.
RANGE_KEYS = ("low", "high", "log", "step")


@dataclass(frozen=True)
class Range:
    r"""A numeric interval of a search space, ``low <= value <= high``; integers when
    ``low``, ``high`` (and ``step``) are integers, sampled on a log scale with ``log``, on
    multiples of ``step`` above ``low`` with ``step`` (not both).

    Args:
        low (int or float): Smallest value.
        high (int or float): Largest value.
        log (bool, optional): Log-uniform (``low > 0``). (default: :obj:`False`)
        step (int or float, optional): Spacing of the values. (default: :obj:`None`)
    """

    low: float
    high: float
    log: bool = False
    step: float | None = None

    @property
    def integer(self) -> bool:
        return all(isinstance(v, int) for v in (self.low, self.high, self.step)
                   if v is not None)


#: A grid or search space: each key's candidate values (a list) or, in a search, a
#: :class:`Range`. A grid explores the Cartesian product of its lists.
Grid = Mapping[str, "Sequence[Any] | Range"]


def has_ranges(space: Grid) -> bool:
    r"""Whether a space has a :class:`Range`, so that its points cannot be listed."""
    return any(isinstance(d, Range) for d in space.values())


def grid_points(grid: Grid) -> list[dict[str, Any]]:
    r"""The Cartesian product of ``grid``, in the order of its keys (last key fastest).
    A :class:`Range` cannot be enumerated and is refused.

    >>> grid_points({"a": [1, 2], "b": ["x"]})
    [{'a': 1, 'b': 'x'}, {'a': 2, 'b': 'x'}]
    """
    lists = {key: _choices(key, values) for key, values in grid.items()}
    keys = list(lists)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(lists[k] for k in keys))]


def _choices(key: str, values: Any) -> list[Any]:
    # a grid key's values: a non-empty list, never a range or a lone string
    if isinstance(values, Range):
        raise ConfigError(f"grid key {key!r}: a range ({values.low} to {values.high}) "
                          "cannot be enumerated; a grid takes lists of values only (a range "
                          "is for run.py search with --sampler tpe or random)")
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise ConfigError(f"grid key {key!r}: expected a non-empty list of values, got "
                          f"{values!r}")
    return list(values)


def parse_space(raw: Any, where: str) -> dict[str, list[Any] | Range]:
    r"""A ``grid:`` block or search-space file as read from YAML: per key a non-empty list
    (choices) or a mapping ``{low, high[, log][, step]}`` (a :class:`Range`). Numbers
    written like ``1e-4``, which YAML reads as strings, are converted. ``where`` names the
    source in errors.

    >>> parse_space({"lr": {"low": "1e-4", "high": 0.01, "log": True}, "k": [1, 2]}, "x")
    {'lr': Range(low=0.0001, high=0.01, log=True, step=None), 'k': [1, 2]}
    """
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping {{key: [values] or {{low, high}}}}, "
                          f"got {raw!r}")
    space: dict[str, list[Any] | Range] = {}
    for key, value in raw.items():
        space[str(key)] = (_range(str(key), value, where) if isinstance(value, Mapping)
                           else _choices(str(key), value))
    return space


def _range(key: str, raw: Mapping[str, Any], where: str) -> Range:
    unknown = sorted(set(map(str, raw)) - set(RANGE_KEYS))
    if unknown or "low" not in raw or "high" not in raw:
        raise ConfigError(f"{where}: key {key!r}: a range is {{low, high}} with optional log: "
                          f"true or step (got {dict(raw)!r})")
    low, high = _number(raw["low"], key, where), _number(raw["high"], key, where)
    step = None if raw.get("step") is None else _number(raw["step"], key, where)
    log = raw.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: key {key!r}: log must be true or false, got {log!r}")
    problem = ("low must be below high" if not low < high else
               "log and step cannot be combined" if log and step is not None else
               "a log range needs low > 0" if log and low <= 0 else
               "step must be positive" if step is not None and step <= 0 else "")
    if problem:
        raise ConfigError(f"{where}: key {key!r}: {problem} (got {dict(raw)!r})")
    return Range(low, high, log, step)


def _number(value: Any, key: str, where: str) -> float:
    # YAML 1.1 (PyYAML) reads 1e-4 (no dot) as a string
    if isinstance(value, str):
        try:
            value = int(value) if value.strip().lstrip("+-").isdigit() else float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: key {key!r}: expected a number, got {value!r}")
    return value


def card_grid(model: str, paths: Paths) -> dict[str, list[Any] | Range]:
    r"""The ``grid:`` block of ``models/<model>.yaml`` (empty when there is none), checked
    by :func:`parse_space`."""
    path = paths.model_cards / f"{model}.yaml"
    raw = yaml.safe_load(path.read_text()) if path.is_file() else None
    return parse_space((raw or {}).get("grid"), f"{path} grid:")


def read_sweep_file(path: Path) -> dict[str, dict[str, list[Any]]]:
    r"""A sweep file: ``{model: {key: [values, ...]}}`` (YAML)."""
    raw = yaml.safe_load(Path(path).read_text())
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise ConfigError(f"{path}: a sweep file maps model names to {{key: [values]}}")
    for model, grid in raw.items():
        grid_points(parse_space(grid, f"{path}: {model}"))  # checks the lists
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
