r"""The ``tuned`` suite: every listed variant gets the same tuning budget, then one table.

A variant is a model with optional fixed keys, written ``model`` or
``model:key=value[:key=value...]`` (its label is that text, e.g. ``brmrs:fusion=concat``).
Each variant is searched like ``run.py search --space card`` (:func:`.search.search`, not a
copy of it) into ``<out>/<label>/``: the same trials, sampler (TPE), pruner, epochs and seeds
for all, over its model card's ``grid:`` block minus the keys the variant fixes and the keys
set for every run. A grid with no more points than the trials is searched whole instead,
each point once (:func:`sampler_and_trials`): TPE would only repeat points there. Every
search counts distinct points and includes the card's own point, never pruned
(:mod:`.search`). The best point by valid (never test) runs on every seed; the table has one
row per variant.
Re-running continues unfinished searches and trains nothing for finished ones (the study in
each ``study.db`` counts its finished trials).

The cost of a search is :func:`cpu_core_hours`: over its trials that trained (complete or
pruned), the trial's wall time (Optuna's start to end: data, graphs, training, evaluation)
times the CPU threads the run used (``timings.threads`` of its ``results.json``).
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from brmrs_pyg.config import ConfigError
from brmrs_pyg.nn.fusion import FUSIONS
from brmrs_pyg.recommenders import MODELS
from brmrs_pyg.registry import normalize_name

from .diagnostics import TYPE_NOTE, known_type_recalls, type_cells
from .grid import Grid, card_grid, has_ranges
from .report import SIGNIFICANCE_NOTE, TABLE_METRICS, TableRow, bar_plot, write_tables
from .runner import (SUITE_KEYS, RunRecord, Runner, Summary, Variant, _slug, override_text,
                     summarize)
from .search import SearchSettings, grid_size, import_optuna, search
from .suites import SUITES, SuiteContext, compare_to, mean_valid, runs_json, summary_json

log = logging.getLogger(__name__)

#: Finished trials of each variant's search unless ``--trials`` says otherwise.
DEFAULT_TRIALS = 20
#: The sampler of every search (part of the equal budget).
SAMPLER = "tpe"
#: What the cost column holds (the table's notes define it).
COST_NOTE = ("cpu_core_hours: CPU-core hours (trial wall time x threads) of the search: over "
             "its trials that trained (complete or pruned), the trial's wall time (Optuna's "
             "start to end: data, graphs, training, evaluation) times the CPU threads the run "
             "used (timings.threads of its results.json), / 3600. Interrupted trials, trials "
             "failed in training and the best point's runs on the other seeds are not counted.")


@dataclass(frozen=True)
class TunedContext(SuiteContext):
    r"""A :class:`.suites.SuiteContext` with the search budget of the ``tuned`` suite;
    ``models`` holds the variant entries (:func:`parse_entry`).

    Args:
        trials (int, optional): Finished trials of every search. (default: ``20``)
        pruner (str, optional): ``median``, ``hyperband`` or ``none``. (default: ``"median"``)
    """

    trials: int = DEFAULT_TRIALS
    pruner: str = "median"


@dataclass(frozen=True)
class SearchSummary:
    r"""What ``suite.json`` and the table say of one variant's search.

    Args:
        folder (str): The search folder.
        space (list): The keys tuned (empty: the fixed point ran on every seed).
        point (dict): The chosen values of the tuned keys.
        trials (int): Finished trials (complete, pruned, failed in training).
        pruned (int): Of those, pruned.
        failed (int): Of those, failed in training.
        cpu_core_hours (float): The cost (:func:`cpu_core_hours`).
        study (str, optional): The Optuna study's name. (default: ``""``)
        sampler (str, optional): The sampler (:func:`sampler_and_trials`); ``""`` when
            nothing was tuned. (default: ``""``)
    """

    folder: str
    space: list[str]
    point: dict[str, Any]
    trials: int
    pruned: int
    failed: int
    cpu_core_hours: float
    study: str = ""
    sampler: str = ""

    @property
    def point_text(self) -> str:
        return " ".join(f"{k}={override_text(v)}" for k, v in self.point.items()) or \
            "(nothing tuned)"


@dataclass(frozen=True)
class Tuned:
    r"""One variant after its search: its runs at the chosen point, one per seed, and the
    search's summary."""

    variant: Variant
    records: list[RunRecord]
    search: SearchSummary


def parse_entry(text: str) -> Variant:
    r"""A variant entry ``model[:key=value...]`` as a :class:`Variant` labelled ``text``
    (syntax only; :func:`check_variants` checks models and keys).

    >>> parse_entry("brmrs:fusion=concat").overrides
    (('fusion', 'concat'),)
    """
    model, *items = [part.strip() for part in text.strip().split(":")]
    pairs = [item.partition("=") for item in items]
    if not model or "=" in model or any(not key or not sep for key, sep, _ in pairs):
        raise ConfigError(f"variant {text!r}: expected model or model:key=value[:key=value...]")
    keys = [key.strip() for key, _, _ in pairs]
    if len(set(keys)) < len(keys):
        raise ConfigError(f"variant {text!r}: a key is given twice")
    return Variant(model, tuple((k, v.strip()) for k, (_, _, v) in zip(keys, pairs)),
                   text.strip())


def parse_variants(entries: Sequence[str]) -> list[Variant]:
    r"""The variants of ``entries`` (:func:`parse_entry`); two with one label, or with one
    folder name, are an error."""
    variants = [parse_entry(e) for e in entries]
    for name, key in (("label", lambda v: v.name), ("folder name", lambda v: _slug(v.name))):
        seen = [key(v) for v in variants]
        twice = sorted({s for s in seen if seen.count(s) > 1})
        if twice:
            raise ConfigError(f"--models: two variants with the {name} {twice[0]!r}")
    return variants


def default_entries() -> list[str]:
    r"""Every registered model but ``brmrs``; ``brmrs`` with each registered fusion (its
    card's grid tunes the fusion too, so a plain ``brmrs`` would be a search over fusions,
    not one of them); ``M:plugin=brmrs`` for every model whose class supports the plug-in."""
    models = MODELS.names()
    fusions = [f"brmrs:fusion={f}" for f in FUSIONS.names()] if "brmrs" in MODELS else []
    plugins = [f"{m}:plugin=brmrs" for m in models
               if getattr(MODELS.get(m), "supports_plugin", False)]
    return [*(m for m in models if m != "brmrs"), *fusions, *plugins]


def check_variants(runner: Runner, variants: Sequence[Variant], seed: int) -> list[Variant]:
    r"""Each variant with its model's registered name, once its model is registered and
    its keys resolve (unknown key, wrong type: :class:`ConfigError`)."""
    names = {normalize_name(m): m for m in MODELS.names()}
    out = []
    for v in variants:
        if normalize_name(v.model) not in names:
            raise ConfigError(f"variant {v.name!r}: unknown model {v.model!r}; choose one of: "
                              f"{', '.join(MODELS.names())}")
        flags = sorted({k for k, _ in v.overrides} & set(SUITE_KEYS))
        if flags:
            raise ConfigError(f"variant {v.name!r}: {', '.join(flags)} is set by the suite's "
                              "flags, not by a variant")
        v = dataclasses.replace(v, model=names[normalize_name(v.model)])
        runner.config(v, seed)
        out.append(v)
    return out


def space_of(variant: Variant, runner: Runner) -> Grid:
    r"""The variant's search space: its model card's ``grid:`` block minus the keys the
    variant fixes and those set for every run (``key=value``, ``model.key=value``)."""
    s = runner.settings
    fixed = ({k for k, _ in variant.overrides} | set(s.overrides)
             | set(s.model_overrides.get(variant.model, {})))
    return {k: d for k, d in card_grid(variant.model, s.paths).items() if k not in fixed}


def sampler_and_trials(space: Grid, trials: int) -> tuple[str, int]:
    r"""The sampler and finished trials of a search over ``space`` with a budget of
    ``trials``: the whole grid, each point once (``grid``), when it has no more points than
    that (a repeated point trains the same run again); otherwise ``trials`` of
    :data:`SAMPLER`.

    >>> sampler_and_trials({"a": [1, 2, 3]}, 20), sampler_and_trials({"a": [1, 2, 3]}, 2)
    (('grid', 3), ('tpe', 2))
    """
    if space and not has_ranges(space):
        size = grid_size(space)
        if size <= trials:
            return "grid", size
    return SAMPLER, trials


def search_settings(ctx: TunedContext, variant: Variant) -> SearchSettings:
    r"""The settings of ``run.py search --model M --space card --trials N --pruner P
    --seeds ... --out <out>/<label>`` with the suite's ``key=value`` and the variant's
    fixed keys, the sampler and trials of :func:`sampler_and_trials`."""
    s = ctx.runner.settings
    out = s.out / _slug(variant.name)
    overrides = {**s.overrides, **s.model_overrides.get(variant.model, {}),
                 **dict(variant.overrides)}
    runner = Runner(dataclasses.replace(s, out=out / "best", overrides=overrides,
                                        model_overrides={}), ctx.runner.executor)
    space = space_of(variant, ctx.runner)
    sampler, trials = sampler_and_trials(space, ctx.trials)
    return SearchSettings(runner, variant.model, space, trials, out, ctx.seeds, sampler,
                          ctx.pruner)


def cpu_core_hours(trials: Sequence[Mapping[str, Any]], folder: Path) -> float:
    r"""The cost of the search in ``folder`` from its ``search.json`` trial rows:
    :math:`\sum_t w_t h_t / 3600` over the trials whose folder (``<folder>/trials/<number>``,
    so a moved search folder still counts) holds a ``results.json`` (complete or pruned),
    with :math:`w_t` the trial's wall seconds and :math:`h_t` the threads of its run."""
    total = 0.0
    for row in trials:
        path = folder / "trials" / str(row["number"]) / "results.json"
        if row.get("seconds") is None or not path.is_file():
            continue
        total += float(row["seconds"]) * int(json.loads(path.read_text())["timings"]["threads"])
    return total / 3600


def records_of(variant: Variant, seeds: Sequence[Mapping[str, Any]]) -> list[RunRecord]:
    r"""The runs of a search's best point (``best.seeds`` of ``search.json``) as records of
    ``variant``, each read back from its folder's ``results.json``."""
    out = []
    for seed in seeds:
        folder = Path(seed["folder"])
        done = folder / "results.json"
        results = json.loads(done.read_text()) if done.is_file() else None
        out.append(RunRecord(variant, int(seed["seed"]), folder, results,
                             seed.get("error") or ""))
    return out


def tune(ctx: TunedContext, variant: Variant) -> Tuned:
    r"""Searches ``variant`` (or, with nothing left to tune, runs its fixed point on every
    seed) and returns its runs at the chosen point."""
    settings = search_settings(ctx, variant)
    runner = settings.runner
    if not settings.space:
        log.info("%s: nothing left to tune (its card's grid: keys are fixed); its point runs "
                 "on every seed", variant.name)
        runs = runner.run([Variant(variant.model, label=variant.name)], ctx.seeds, "fixed")
        records = [dataclasses.replace(r, variant=variant) for rs in runs.values() for r in rs]
        return Tuned(variant, records, SearchSummary(str(settings.out), [], {}, 0, 0, 0, 0.0))
    content = search(settings)
    states = [t["state"] for t in content["trials"]]
    summary = SearchSummary(str(settings.out), list(settings.space), content["best"]["params"],
                            sum(s in ("complete", "pruned", "failed") for s in states),
                            states.count("pruned"), states.count("failed"),
                            cpu_core_hours(content["trials"], settings.out), content["study"],
                            settings.sampler)
    return Tuned(variant, records_of(variant, content["best"]["seeds"]), summary)


def reference_of(tuned: Sequence[Tuned]) -> Tuned | None:
    r"""The reference of the ``brmrs`` variants: the variant of another model, without the
    plug-in, with the highest mean valid score over its seeds (first on a tie); test
    metrics are not looked at."""
    others = [t for t in tuned if t.variant.model != "brmrs" and not is_plugin(t.variant)]
    return max(others, key=lambda t: mean_valid(t.records)) if others else None


def is_plugin(variant: Variant) -> bool:
    r"""Whether the variant fixes a loss plug-in (``plugin=...``)."""
    return bool(dict(variant.overrides).get("plugin"))


def significance(ctx: SuiteContext, tuned: Sequence[Tuned], ref: Tuned | None
                 ) -> tuple[dict[str, Any], list[str]]:
    r"""Paired tests: every ``brmrs`` variant against ``ref``; every ``M:plugin=...``
    variant against plain ``M`` when listed. Their ``suite.json`` entries and Markdown
    lines."""
    records = {t.variant: t.records for t in tuned}
    plain = {t.variant.model: t.variant for t in tuned if not t.variant.overrides}
    pairs = [(t.variant, ref.variant) for t in tuned
             if ref is not None and t.variant.model == "brmrs"]
    pairs += [(t.variant, plain[t.variant.model]) for t in tuned
              if is_plugin(t.variant) and t.variant.model in plain]
    entries: dict[str, Any] = {}
    lines: list[str] = []
    for a, b in pairs:
        found, text = compare_to(ctx, records, a, [b])
        entries.update(found)
        lines += [line for line in text if line != SIGNIFICANCE_NOTE]
    return entries, lines + (["", SIGNIFICANCE_NOTE] if entries else [])


def row_of(tuned: Tuned, types: Mapping[str, Summary]) -> TableRow:
    r"""A variant's row: test metrics, the mean valid score it was selected on, the recall
    per ground-truth type (``types``), and its search (point, trials, cost)."""
    done = [r.results for r in tuned.records if r.results is not None]
    metric = done[0]["config"]["valid_metric"] if done else "recall@20"
    cells = dict(summarize(tuned.records, "test", TABLE_METRICS))
    cells.update({f"valid_{m}": s for m, s in summarize(tuned.records, "valid",
                                                         [metric]).items()})
    cells.update(type_cells(types))
    s = tuned.search
    return TableRow(tuned.variant.name, cells, {
        "point": s.point_text, "trials": str(s.trials), "pruned": str(s.pruned),
        "cpu_core_hours": f"{s.cpu_core_hours:.6g}"})


@SUITES.register("tuned")
def tuned_suite(ctx: SuiteContext) -> dict[str, Any]:
    r"""Every variant searched with one budget (--trials, --pruner): the table.

    Each variant of ``--models`` (default: :func:`default_entries`) searched on valid like
    ``run.py search --space card``, its best point on every seed; paired tests of each
    ``brmrs`` variant against the best other on valid, and of each plug-in variant against
    its plain model."""
    if not isinstance(ctx, TunedContext):
        ctx = TunedContext(**{f.name: getattr(ctx, f.name)
                              for f in dataclasses.fields(SuiteContext)})
    if ctx.trials < 1:
        raise ConfigError(f"--trials {ctx.trials}: at least 1")
    entries = list(ctx.models) or default_entries()
    variants = check_variants(ctx.runner, parse_variants(entries), ctx.seeds[0])
    optuna = import_optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the search's lines replace its own
    tuned = []
    for i, variant in enumerate(variants, 1):
        space = space_of(variant, ctx.runner)
        sampler, trials = sampler_and_trials(space, ctx.trials)
        log.info("[tuned %d/%d] %s: %d trials, sampler %s%s, pruner %s, over %s", i,
                 len(variants), variant.name, trials, sampler,
                 " (the whole grid)" if sampler == "grid" else "", ctx.pruner,
                 ", ".join(space) or "nothing (fixed point)")
        tuned.append(tune(ctx, variant))
    return report(ctx, tuned)


def report(ctx: TunedContext, tuned: Sequence[Tuned]) -> dict[str, Any]:
    r"""Writes the table, notes and bar plot; returns the suite's part of ``suite.json``."""
    ref = reference_of(tuned)
    found, lines = significance(ctx, tuned, ref)
    types = {t.variant: known_type_recalls(ctx.runner, t.variant.model, ctx.seeds[0], t.records)
             for t in tuned}
    rows = [row_of(t, types[t.variant]) for t in tuned]
    metrics = list(dict.fromkeys(m for r in rows for m in r.cells))
    fixed = [t.variant.name for t in tuned if not t.search.space]
    notes = [f"Equal budget: each variant searched on valid (seed {ctx.seeds[0]}) with "
             f"{ctx.trials} finished trials, each a distinct point (a point proposed again is "
             f"answered without training and not counted), sampler {SAMPLER}, pruner "
             f"{ctx.pruner}, over its model card's grid: block minus the keys it fixes and "
             f"those set for every run (a grid of at most {ctx.trials} points searched whole, "
             "each point once); the card's own point is one of them, run first and never "
             "pruned (searches from before that rule got it as one more trial); the best "
             "complete trial by valid (never test) then on every seed. point: the chosen "
             "values; trials: finished trials (distinct points), of which pruned; valid_*: "
             "the mean valid score selected on.", COST_NOTE]
    if fixed:
        notes.append(f"Nothing left to tune, the fixed point on every seed: {', '.join(fixed)}.")
    if ref is not None:
        notes.append(f"Reference of the brmrs paired tests: {ref.variant.name}, the variant of "
                     "another model without plug-in with the highest mean valid score over "
                     "seeds (chosen on valid, never on test).")
    if any(types.values()):
        notes.append(TYPE_NOTE)
    title = "Equal-budget tuning"
    write_tables(ctx.out, rows, title, metrics=metrics,
                 notes=[*(part for note in notes for part in ("", note)), *lines])
    bar_plot(ctx.out / "test_metrics.png", title, rows)
    records = {t.variant: t.records for t in tuned}
    return {"runs": runs_json(records), "summary": summary_json(records),
            "budget": {"trials": ctx.trials, "sampler": SAMPLER, "pruner": ctx.pruner,
                       "space": "card", "epochs": ctx.runner.settings.epochs},
            "searches": {t.variant.name: dataclasses.asdict(t.search) for t in tuned},
            "reference": None if ref is None else {
                "label": ref.variant.name, "chosen_on": "valid",
                "mean_valid": mean_valid(ref.records)},
            "significance": found,
            "recall_by_type": {v.name: {t: s.as_dict() for t, s in by_type.items()}
                               for v, by_type in types.items()}}
