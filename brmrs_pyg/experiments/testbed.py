r"""Suites that read the paper's diagnostics (:func:`brmrs_pyg.analysis.analyze_run`):
``empirical`` (what the decoupling losses do to the six-way partition) and ``robustness``
(models on synthetic data whose generator moves the weight of synergy and of the unimodal
factors)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from brmrs_pyg.data.cards import load_card
from brmrs_pyg.recommenders import MODELS

from .diagnostics import K, analyze, mean_over_seeds, type_recalls
from .report import TABLE_METRICS, Panel, Series, TableRow, line_plot, write_tables
from .runner import SuiteError, Summary, Variant, summarize
from .suites import SUITES, SuiteContext, available, runs_json, summary_json

#: Sweeps of the ``empirical`` suite: weights of ``decoupled``'s two decoupling losses.
EMPIRICAL: dict[str, list[float]] = {"lambda_orth": [0.0, 0.01, 0.1, 1.0],
                                     "lambda_nce": [0.0, 0.01, 0.1, 1.0]}
#: Sweeps of the ``robustness`` suite: generator overrides (``generator=...``) per sweep.
#: Each sweep's name is the first key it sets; the x axis shows that key's value.
ROBUSTNESS: dict[str, list[str]] = {
    "gamma_s": [f"gamma_s={v}" for v in (0.0, 0.5, 1.0, 2.0, 4.0)],
    "gamma_t": [f"gamma_t={v},gamma_v={v}" for v in (0.0, 0.5, 1.0, 2.0, 4.0)],
}
ROBUSTNESS_MODELS = ("lightgcn", "concat", "freedom", "brmrs")


def partition(analysis: dict[str, Any] | None) -> dict[str, float]:
    r"""The ratios of ``partition@K`` (class -> ratio of held-out pairs)."""
    return _ratios(analysis, f"partition@{K}")


def unique_split(analysis: dict[str, Any] | None) -> dict[str, float]:
    r"""The ratios of ``unique_split@K`` (``<m>_unique_kept`` / ``<m>_unique_lost``: the
    modality-unique pairs the fused branch hits / misses -> ratio of held-out pairs); empty
    for an ``analysis.json`` written before the split existed."""
    return _ratios(analysis, f"unique_split@{K}")


def _ratios(analysis: dict[str, Any] | None, key: str) -> dict[str, float]:
    part = {} if analysis is None else analysis.get(key, {})
    return {k: float(v) for k, v in part.items() if isinstance(v, (int, float))}


def _stacked(classes: Sequence[str]) -> list[str]:
    r"""The partition's classes among ``classes``, each ``<m>_unique`` replaced by its kept
    and lost parts where ``classes`` has them: disjoint shares that sum to 1."""
    return [part for c in classes if not c.endswith(("_kept", "_lost"))
            for part in ((f"{c}_kept", f"{c}_lost") if f"{c}_lost" in classes else (c,))]


def _stats(maps: Sequence[dict[str, Summary]], keys: Sequence[str]) -> list[Series]:
    r"""A series per key over the ticks (one dict per tick); NaN where a tick lacks it."""
    return [Series(key, [m[key].mean if key in m else np.nan for m in maps],
                   [m[key].std if key in m else np.nan for m in maps]) for key in keys]


@SUITES.register("empirical")
def empirical_suite(ctx: SuiteContext) -> dict[str, Any]:
    r"""decoupled's decoupling weights vs the six-way partition of test pairs.

    Each weight of :data:`EMPIRICAL` swept; test metrics, and the partition of the test
    pairs (``analyze_run``) against each weight, with each ``<m>_unique`` class also split
    into the pairs the fused branch keeps and loses (table columns; stacked in the plot)."""
    if "decoupled" not in MODELS:
        raise SuiteError(f"the empirical suite needs the model decoupled (registered: "
                         f"{', '.join(MODELS.names())})")
    sweeps = {key: [Variant.of("decoupled", f"{key}={v}", **{key: v}) for v in values]
              for key, values in EMPIRICAL.items()}
    records = ctx.runner.run([v for vs in sweeps.values() for v in vs], ctx.seeds,
                             "empirical")
    paths = ctx.runner.settings.paths
    analyses = {v: [analyze(r, paths) for r in recs] for v, recs in records.items()}
    parts = {v: mean_over_seeds([partition(a) | unique_split(a) for a in runs])
             for v, runs in analyses.items()}
    classes = list(dict.fromkeys(c for p in parts.values() for c in p))
    rows, part_rows, panels = [], [], []
    for key, variants in sweeps.items():
        values = [dict(v.overrides)[key] for v in variants]
        for v, value in zip(variants, values):
            rows.append(TableRow(v.name, summarize(records[v], "test", TABLE_METRICS),
                                 {"weight": key, "value": value}))
            part_rows.append(TableRow(v.name, parts[v], {"weight": key, "value": value}))
        series = _stats([parts[v] for v in variants], _stacked(classes))
        stacked = not any(np.isnan(s.y).any() for s in series)
        panels.append(Panel(f"decoupled: {key}", key, f"share of test pairs (K={K})", values,
                            series, stacked=stacked))
    write_tables(ctx.out, rows, "decoupled: decoupling weights")
    write_tables(ctx.out, part_rows, f"Six-way partition of test pairs at K={K}",
                 metrics=classes, stem="partition", mark_best=False,
                 notes=["", "`<m>_unique_kept` / `<m>_unique_lost`: the pairs of `<m>_unique` "
                        "that the fused branch hits / misses (they add up to `<m>_unique`)."])
    line_plot(ctx.out / "partition.png", f"Six-way partition of test pairs (hits@{K}) vs "
              "decoupling weight", panels)
    return {"runs": runs_json(records), "summary": summary_json(records),
            "partition": {v.name: {c: s.as_dict() for c, s in p.items()}
                          for v, p in parts.items()}}


@SUITES.register("robustness")
def robustness_suite(ctx: SuiteContext) -> dict[str, Any]:
    r"""Models on synthetic data with swept factor weights: R@20, recall per type.

    On a card with a generator, :data:`ROBUSTNESS_MODELS` on data generated with each value
    of each sweep of :data:`ROBUSTNESS` (``generator=...``): test Recall@20 per model, and
    recall per ground-truth type (``analyze_run``), against the value."""
    settings = ctx.runner.settings
    if load_card(settings.dataset, settings.paths.dataset_cards).generator is None:
        raise SuiteError(f"the robustness suite changes the synthetic generator; dataset "
                         f"{settings.dataset!r} has none (use a card with a generator: "
                         f"block, e.g. synthetic)")
    models = available(ROBUSTNESS_MODELS)
    grid = {(key, gen, m): Variant.of(m, f"{m} {gen}", generator=gen)
            for key, gens in ROBUSTNESS.items() for gen in gens for m in models}
    records = ctx.runner.run(list(grid.values()), ctx.seeds, "robustness")
    types = {v: type_recalls(recs, settings.paths) for v, recs in records.items()}
    rows, type_rows, panels = [], [], []
    for key, gens in ROBUSTNESS.items():
        ticks = [gen.split(",")[0].partition("=")[2] for gen in gens]
        shown = " = ".join(part.partition("=")[0] for part in gens[0].split(","))
        recall = {m: [summarize(records[grid[key, g, m]], "test", ["recall@20"])
                      for g in gens] for m in models}
        panels.append(Panel(f"sweep of {shown}", shown, "test recall@20 (mean ± std)", ticks,
                            [Series(m, [s["recall@20"].mean if s else np.nan for s in recall[m]],
                                    [s["recall@20"].std if s else np.nan for s in recall[m]])
                             for m in models]))
        for g, tick in zip(gens, ticks):
            for m in models:
                v = grid[key, g, m]
                extra = {"sweep": key, "value": tick, "model": m}
                rows.append(TableRow(v.name, summarize(records[v], "test", TABLE_METRICS),
                                     extra))
                type_rows.append(TableRow(v.name, types[v], extra))
        type_panels = [Panel(f"{m}: recall@{K} per type", shown,
                             f"test recall@{K} of the pairs of a type", ticks,
                             _stats([types[grid[key, g, m]] for g in gens],
                                    list(dict.fromkeys(t for g in gens
                                                       for t in types[grid[key, g, m]]))))
                       for m in models]
        if any(p.series for p in type_panels):
            line_plot(ctx.out / f"robustness_types_{key}.png", f"Recall@{K} per ground-truth "
                      f"type vs {shown}", type_panels)
    write_tables(ctx.out, rows, "Robustness to the generator's factor weights")
    type_names = list(dict.fromkeys(t for r in type_rows for t in r.cells))
    if type_names:
        write_tables(ctx.out, type_rows, f"Recall@{K} per ground-truth type",
                     metrics=type_names, stem="types", mark_best=False)
    line_plot(ctx.out / "robustness.png", "Test Recall@20 vs the generator's factor "
              "weights", panels)
    return {"runs": runs_json(records), "summary": summary_json(records),
            "recall_by_type": {v.name: {t: s.as_dict() for t, s in p.items()}
                               for v, p in types.items()}}
