r"""Named suites: each regenerates one of the paper's results on any dataset, in one command
(``run.py suite NAME``). A suite runs its variants on every seed (:class:`Runner`), then
writes ``table.csv``, ``table.md`` and PNG plots into its folder and returns what goes into
``suite.json``. Re-running a finished suite trains nothing and rebuilds the outputs.

This module holds the suites on BR-MRS and the baselines (``main``, ``ablation``,
``negatives``, ``sensitivity``); :mod:`.testbed` those that read the diagnostics.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from brmrs_pyg.config import ConfigError
from brmrs_pyg.data.cards import load_card
from brmrs_pyg.recommenders import MODELS
from brmrs_pyg.registry import Registry

from .compare import compare_records
from .diagnostics import TYPE_NOTE, known_type_recalls, type_cells
from .grid import Grid, card_grid, grid_search, read_sweep_file, valid_score
from .report import (SIGNIFICANCE_NOTE, TABLE_METRICS, Panel, Series, TableRow, bar_plot,
                     line_plot, significance_lines, write_tables)
from .runner import RunRecord, Runner, SuiteError, Summary, Variant, summarize

log = logging.getLogger(__name__)

#: Metrics the paired tests report.
TEST_METRICS = ("recall@20", "ndcg@20")
#: Models of the ``main`` table, in the paper's order (those not registered are skipped).
MAIN_MODELS = ("lightgcn", "vbpr", "concat", "decoupled", "lattice", "freedom", "bm3", "brmrs")
#: One-at-a-time sweeps of the ``sensitivity`` suite (the card's value is one of each).
SENSITIVITY: dict[str, list[Any]] = {
    "lambda_h": [0.0, 0.1, 0.5, 1.0, 2.0],
    "lambda_s": [0.0, 0.1, 0.5, 1.0, 2.0],
    "theta": [0.0, 0.05, 0.1, 0.5, 1.0],
    "pool_size": [2, 5, 10, 20, 50],
    "hard_k": [1, 2, 3, 5],
}


@dataclass(frozen=True)
class SuiteContext:
    r"""What a suite gets: the runner (dataset, folder, shared overrides), the seeds and the
    suite options.

    Args:
        runner (Runner): Runs the variants.
        seeds (tuple): Seeds of every reported variant.
        grid (str, optional): ``main`` only: ``"card"`` (each model card's ``grid:``), a
            sweep file, or ``""`` (no search: the cards' defaults).
        grid_seed (int, optional): Seed of the grid runs (default: the first seed).
        models (tuple, optional): ``main`` only: the models (default :data:`MAIN_MODELS`).
    """

    runner: Runner
    seeds: tuple[int, ...]
    grid: str = ""
    grid_seed: int | None = None
    models: tuple[str, ...] = ()

    @property
    def out(self) -> Path:
        return self.runner.settings.out

    def grid_for(self, model: str) -> Grid:
        r"""The grid to search for ``model`` (empty: none)."""
        if not self.grid:
            return {}
        if self.grid == "card":
            return card_grid(model, self.runner.settings.paths)
        return read_sweep_file(Path(self.grid)).get(model, {})


#: A suite: runs and reports, returns its part of ``suite.json``.
Suite = Callable[[SuiteContext], dict[str, Any]]
SUITES: Registry[Suite] = Registry("suite")


def available(models: Sequence[str]) -> list[str]:
    r"""The registered ones of ``models``; each missing one is skipped with a warning."""
    missing = [m for m in models if m not in MODELS]
    for m in missing:
        log.warning("model %s is not registered here: skipped (available: %s)", m,
                    ", ".join(MODELS.names()))
    return [m for m in models if m in MODELS]


def runnable(ctx: SuiteContext, variants: Sequence[Variant]) -> list[Variant]:
    r"""The variants whose config resolves; each other one is skipped with a warning
    naming the reason (e.g. ``hard_k`` above ``pool_size``)."""
    out = []
    for v in variants:
        try:
            ctx.runner.config(v, ctx.seeds[0])
        except ConfigError as exc:
            log.warning("%s skipped: %s", v.name, exc)
            continue
        out.append(v)
    return out


def rows_of(records: dict[Variant, list[RunRecord]], split: str = "test",
            metrics: Sequence[str] = TABLE_METRICS) -> list[TableRow]:
    r"""A table row (mean ± std over seeds) per variant."""
    return [TableRow(v.name, summarize(recs, split, metrics)) for v, recs in records.items()]


def runs_json(records: dict[Variant, list[RunRecord]]) -> list[dict[str, Any]]:
    r"""The runs of a suite for ``suite.json``: label, model, overrides, seed, folder and
    status."""
    return [{"label": v.name, "model": v.model, "overrides": dict(v.overrides), "seed": r.seed,
             "folder": str(r.folder), "status": "failed: " + r.error if r.results is None
             else "done"} for v, recs in records.items() for r in recs]


def summary_json(records: dict[Variant, list[RunRecord]]) -> dict[str, Any]:
    r"""Per variant label and split, the mean ± std of every table metric."""
    return {v.name: {split: {m: s.as_dict() for m, s in summarize(recs, split,
                                                                   TABLE_METRICS).items()}
                     for split in ("valid", "test")} for v, recs in records.items()}


def mean_valid(records: Sequence[RunRecord]) -> float:
    r"""A variant's mean validation score over its finished seeds (-inf when none)."""
    scores = [valid_score(r.results) for r in records if r.results is not None]
    return float(np.mean(scores)) if scores else -np.inf


def compare_to(ctx: SuiteContext, records: dict[Variant, list[RunRecord]], ref: Variant,
               others: Sequence[Variant]) -> tuple[dict[str, Any], list[str]]:
    r"""Paired tests of ``ref`` against each of ``others`` on :data:`TEST_METRICS`: their
    ``suite.json`` entries and Markdown lines."""
    out: dict[str, Any] = {}
    lines: list[str] = []
    for other in others:
        try:
            comparisons = compare_records(records[ref], records[other], TEST_METRICS)
        except SuiteError as exc:
            log.warning("no paired test of %s vs %s: %s", ref.name, other.name, exc)
            continue
        out[f"{ref.name} vs {other.name}"] = [c.as_dict() for c in comparisons]
        lines += significance_lines(ref.name, other.name, comparisons)
    return out, lines + (["", SIGNIFICANCE_NOTE] if lines else [])


def report(ctx: SuiteContext, records: dict[Variant, list[RunRecord]], title: str,
           notes: Sequence[str] = (), extra: dict[str, Any] | None = None,
           columns: dict[Variant, dict[str, Summary]] | None = None) -> dict[str, Any]:
    r"""The common ending of a suite: table, bar plot and ``suite.json`` content.
    ``columns``: more cells of a variant's row, after the test metrics."""
    rows = rows_of(records)
    for row, variant in zip(rows, records):
        row.cells.update((columns or {}).get(variant, {}))
    more = [m for r in rows for m in r.cells if m not in TABLE_METRICS]
    write_tables(ctx.out, rows, title, metrics=[*TABLE_METRICS, *dict.fromkeys(more)],
                 notes=notes)
    bar_plot(ctx.out / "test_metrics.png", title, rows)
    return {"runs": runs_json(records), "summary": summary_json(records), **(extra or {})}


@SUITES.register("main")
def main_suite(ctx: SuiteContext) -> dict[str, Any]:
    r"""All models: test R@10/20, N@10/20; brmrs vs the best other (by valid).

    Every available model of :data:`MAIN_MODELS` (or ``ctx.models``), optionally
    grid-searched on valid, on every seed; paired tests of ``brmrs`` against the other
    model with the best mean validation score."""
    models = available(ctx.models or MAIN_MODELS)
    if not models:
        raise SuiteError("no model of the suite is registered")
    variants, grids = [], {}
    seed = ctx.seeds[0] if ctx.grid_seed is None else ctx.grid_seed
    for model in models:
        base = Variant(model, label=model)
        grid = ctx.grid_for(model)
        if grid:
            outcome = grid_search(ctx.runner, base, grid, seed)
            grids[model] = outcome.as_dict()
            base = outcome.best
        variants.append(base)
    records = ctx.runner.run(variants, ctx.seeds, "main")
    significance: dict[str, Any] = {}
    lines: list[str] = []
    ours = [v for v in variants if v.model == "brmrs"]
    others = [v for v in variants if v.model != "brmrs"]
    if ours and others:
        best_other = max(others, key=lambda v: mean_valid(records[v]))
        significance, lines = compare_to(ctx, records, ours[0], [best_other])
    chosen = "; ".join(f"{v.model} " + (" ".join(f"{k}={x}" for k, x in v.overrides) or
                                          "(card defaults)")
                       for v in variants if v.model in grids)
    notes = [f"Grid search on valid (seed {seed}), chosen: {chosen}; other models: card "
             "defaults." if grids else "Hyperparameters: the model cards' defaults.", *lines]
    return report(ctx, records, "Main comparison", notes,
                  {"grid": grids, "significance": significance})


@SUITES.register("ablation")
def ablation_suite(ctx: SuiteContext) -> dict[str, Any]:
    r"""BR-MRS with CHNS on/off x synergy on/off.

    ``lambda_h``, ``lambda_s`` in {0, the resolved (card) value}; paired tests of the full
    model against each ablation; on data with a ground truth of information types (the
    synthetic testbed), each variant's recall per type."""
    params = ctx.runner.config(Variant("brmrs"), ctx.seeds[0]).model
    if not params.lambda_h or not params.lambda_s:
        raise SuiteError(f"the ablation switches CHNS and synergy off, but they are off "
                         f"already (lambda_h={params.lambda_h}, lambda_s={params.lambda_s})")
    full = Variant.of("brmrs", "BR-MRS", lambda_h=params.lambda_h, lambda_s=params.lambda_s)
    variants = [full,
                Variant.of("brmrs", "w/o CHNS", lambda_h=0.0, lambda_s=params.lambda_s),
                Variant.of("brmrs", "w/o synergy", lambda_h=params.lambda_h, lambda_s=0.0),
                Variant.of("brmrs", "w/o CHNS, synergy", lambda_h=0.0, lambda_s=0.0)]
    records = ctx.runner.run(variants, ctx.seeds, "ablation")
    significance, lines = compare_to(ctx, records, full, variants[1:])
    notes = [f"On: lambda_h={params.lambda_h}, lambda_s={params.lambda_s}."]
    # what each loss does per information type, on data with a ground truth
    types = {v: known_type_recalls(ctx.runner, "brmrs", ctx.seeds[0], recs)
             for v, recs in records.items()}
    if any(types.values()):
        notes += ["", TYPE_NOTE]
    return report(ctx, records, "BR-MRS ablation", [*notes, *lines],
                  {"significance": significance,
                   "recall_by_type": {v.name: {t: x.as_dict() for t, x in by_type.items()}
                                      for v, by_type in types.items() if by_type}},
                  {v: type_cells(by_type) for v, by_type in types.items()})


@SUITES.register("negatives")
def negatives_suite(ctx: SuiteContext) -> dict[str, Any]:
    r"""BR-MRS's hard negatives: uniform, fused, each modality, CHNS.

    The hard-negative term fed by uniform negatives, the fused score's hardest, each
    modality's hardest, and CHNS (``hard_negatives``); paired tests of CHNS against each."""
    config = ctx.runner.config(Variant("brmrs"), ctx.seeds[0])
    if not config.model.lambda_h:
        raise SuiteError("the negatives suite compares sources of the hard-negative term; "
                         "it is off (lambda_h=0)")
    settings = ctx.runner.settings
    card = load_card(settings.dataset, settings.paths.dataset_cards)
    modalities = [m.name for m in card.select(config.run.modalities)]
    variants = [Variant.of("brmrs", "uniform", hard_negatives="uniform"),
                Variant.of("brmrs", "hardest under fused", hard_negatives="fused"),
                *(Variant.of("brmrs", f"hardest under {m}", hard_negatives=m)
                  for m in modalities),
                Variant.of("brmrs", "CHNS (cross-modal)", hard_negatives="chns")]
    records = ctx.runner.run(variants, ctx.seeds, "negatives")
    significance, lines = compare_to(ctx, records, variants[-1], variants[:-1])
    return report(ctx, records, "Hard-negative sources", lines, {"significance": significance})


@SUITES.register("sensitivity")
def sensitivity_suite(ctx: SuiteContext) -> dict[str, Any]:
    r"""BR-MRS, one hyperparameter at a time: valid and test R@20 vs value.

    The sweeps of :data:`SENSITIVITY` around the card's configuration."""
    sweeps = {key: runnable(ctx, [Variant.of("brmrs", f"{key}={v}", **{key: v})
                                  for v in values]) for key, values in SENSITIVITY.items()}
    records = ctx.runner.run([v for vs in sweeps.values() for v in vs], ctx.seeds,
                             "sensitivity")
    rows = []
    panels = []
    for key, variants in sweeps.items():
        values = [dict(v.overrides)[key] for v in variants]
        rows += [TableRow(v.name, summarize(records[v], "test", TABLE_METRICS),
                          {"parameter": key, "value": value})
                 for v, value in zip(variants, values)]
        series = []
        for split in ("valid", "test"):
            stats = [summarize(records[v], split, ["recall@20"]).get("recall@20")
                     for v in variants]
            series.append(Series(f"{split} recall@20",
                                 [s.mean if s else np.nan for s in stats],
                                 [s.std if s else np.nan for s in stats]))
        panels.append(Panel(key, key, "recall@20 (mean ± std)", values, series))
    write_tables(ctx.out, rows, "BR-MRS sensitivity (one parameter at a time)")
    line_plot(ctx.out / "sensitivity.png", "BR-MRS sensitivity: Recall@20 vs each "
              "hyperparameter", panels)
    return {"runs": runs_json(records), "summary": summary_json(records),
            "sweeps": {k: [dict(v.overrides)[k] for v in vs] for k, vs in sweeps.items()}}
