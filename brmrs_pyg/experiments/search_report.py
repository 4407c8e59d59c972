r"""The last step of ``run.py search`` (:mod:`.search`): the best point on every seed, then
the search folder's outputs.

- ``search.json``: the settings, every trial (number, params, state, valid score, epochs,
  seconds, run folder) and ``best``: the trial, its params, the valid mean over the seeds
  (what was selected on) and the test metrics of the seeds, reported, never used to select.
- ``trials.csv``: one row per trial.
- ``best.txt``: the best point as one ``key=value`` line for ``run.py``;
  ``best_card.yaml``: the same as a model card's ``defaults:`` block.
- ``history.png`` and ``importances.png`` (Optuna's matplotlib plots) when the ``plots``
  extra is installed; otherwise ``search.json`` says why they are missing.
"""
from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import yaml

from brmrs_pyg import __version__
from brmrs_pyg.io import atomic_write_csv, atomic_write_json, atomic_write_text
from brmrs_pyg.plotting import PlotsUnavailable, pyplot

from .report import _save
from .runner import RunRecord, summarize
from .search import SearchSettings, finished, point_key, variant_of

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)


def run_best(settings: SearchSettings, study: "optuna.Study",
             trial: "optuna.trial.FrozenTrial") -> dict[str, Any]:
    r"""Runs the best trial's point on every seed (the trial itself stands for the first
    seed when its folder is on this machine) and summarises them: ``valid`` and ``test``
    as mean ± std per metric over the seeds, and each seed's run."""
    params = {k: trial.params[k] for k in settings.space}
    variant = variant_of(settings.model, params)
    records: dict[int, RunRecord] = {}
    own = Path(trial.user_attrs.get("folder", "")) / "results.json"
    if own.is_file():
        records[settings.seeds[0]] = RunRecord(variant, settings.seeds[0], own.parent,
                                               json.loads(own.read_text()))
    todo = [s for s in settings.seeds if s not in records]
    if todo:
        log.info("best point (trial %d, valid %.4f): %s on seed(s) %s", trial.number,
                 trial.value, " ".join(f"{k}={v}" for k, v in variant.overrides), todo)
        for record in settings.runner.run([variant], todo, stage="best")[variant]:
            records[record.seed] = record
    runs = [records[s] for s in settings.seeds]
    done = [r.results for r in runs if r.results is not None]
    metrics = list(done[0]["test"]) if done else []
    metric = done[0]["config"]["valid_metric"] if done else ""
    return {"trial": trial.number, "params": params,
            "overrides": " ".join(f"{k}={v}" for k, v in variant.overrides),
            "valid_metric": metric, "trial_valid": trial.value,
            "valid": {m: s.as_dict() for m, s in summarize(runs, "valid", metrics).items()},
            "test": {m: s.as_dict() for m, s in summarize(runs, "test", metrics).items()},
            "seeds": [{"seed": r.seed, "folder": str(r.folder), "error": r.error,
                       **({} if r.results is None else
                          {"valid": r.results["valid"], "test": r.results["test"]})}
                      for r in runs]}


def trial_rows(study: "optuna.Study") -> list[dict[str, Any]]:
    r"""Every trial of the study: number, params, state (``complete``, ``pruned``,
    ``failed`` in training, ``interrupted``, ``repeat`` (a point another trial holds, not
    trained, with ``repeat_of``), ``running``, ``waiting``), valid score (a
    pruned trial's best before it stopped), epochs, seconds, folder and host."""
    rows = []
    trials = study.get_trials(deepcopy=False)
    # the trial that stands for each point trained more than once (studies from before
    # repeats were answered; the card's point trained again unpruned): the card's, else the
    # first; the others are repeats of it
    holders: dict[Any, int] = {}
    for t in trials:
        if finished(t) and (t.user_attrs.get("card")
                            or point_key(t.params) not in holders):
            holders[point_key(t.params)] = t.number
    for t in trials:
        state = t.state.name.lower()
        repeat_of = t.user_attrs.get("repeat_of")
        if repeat_of is None and finished(t) and holders[point_key(t.params)] != t.number:
            repeat_of = holders[point_key(t.params)]
        if repeat_of is not None:
            state = "repeat"
        elif state == "fail":
            state = "failed" if "error" in t.user_attrs else "interrupted"
        value = t.value if t.value is not None else max(t.intermediate_values.values(),
                                                        default=None)
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() \
            if t.datetime_complete and t.datetime_start else None
        notes: dict[str, Any] = {k: t.user_attrs[k] for k in ("error", "retry_of", "card")
                                 if k in t.user_attrs}
        if repeat_of is not None:
            notes["repeat_of"] = repeat_of
        rows.append({"number": t.number, "params": dict(t.params), "state": state,
                     "valid": value, "epochs": t.last_step, "seconds": seconds,
                     "folder": t.user_attrs.get("folder"), "host": t.user_attrs.get("host"),
                     **notes})
    return rows


def write_outputs(settings: SearchSettings, study: "optuna.Study", best: dict[str, Any],
                  storage: str) -> dict[str, Any]:
    r"""Writes the search folder's outputs (see the module) and returns ``search.json``'s
    content."""
    out = settings.out
    rows = trial_rows(study)
    keys = list(settings.space)
    atomic_write_csv(out / "trials.csv",
                     ["number", "state", "valid", *keys, "epochs", "seconds", "folder"],
                     ([r["number"], r["state"], r["valid"], *(r["params"].get(k) for k in keys),
                       r["epochs"], r["seconds"], r["folder"]] for r in rows))
    atomic_write_text(out / "best.txt", best["overrides"] + "\n")
    atomic_write_text(out / "best_card.yaml", best_card(settings, study, best))
    plots, note = write_plots(study, out, f"valid {best['valid_metric']}")
    content = {"study": study.study_name, "storage": storage, "model": settings.model,
               "identity": study.user_attrs.get("identity"), "trials_wanted": settings.trials,
               "sampler": settings.sampler, "pruner": settings.pruner_name,
               "seeds": list(settings.seeds), "trials": rows, "best": best, "plots": plots,
               **({"plots_note": note} if note else {}), "version": __version__}
    atomic_write_json(out / "search.json", content)
    valid, test = best["valid"].get(best["valid_metric"], {}), best["test"]
    log.info("best: trial %d, %s | valid %s %s over %d seed(s) | test (reported, not used to "
             "select) %s", best["trial"], best["overrides"], best["valid_metric"],
             _mean_std(valid), len(settings.seeds),
             " ".join(f"{m} {_mean_std(test[m])}" for m in ("recall@20", "ndcg@20") if m in test))
    log.info("wrote %s (search.json, trials.csv, best.txt, best_card.yaml%s)", out,
             "".join(f", {p}" for p in plots))
    return content


def best_card(settings: SearchSettings, study: "optuna.Study", best: dict[str, Any]) -> str:
    r"""The best point as a model card snippet, with where it comes from."""
    ident = study.user_attrs.get("identity", {}).get("config", {})
    valid = best["valid"].get(best["valid_metric"], {})
    head = (f"# chosen by run.py search on {ident.get('dataset')} valid {best['valid_metric']} "
            f"(study {study.study_name}, trial {best['trial']}, mean {_mean_std(valid)} over "
            f"seeds {' '.join(map(str, settings.seeds))}); test metrics were not used\n")
    return head + yaml.safe_dump({"defaults": best["params"]}, sort_keys=False)


def write_plots(study: "optuna.Study", out: Path, target: str) -> tuple[list[str], str]:
    r"""Optuna's optimisation history and parameter importances (for ``target``, the
    objective's name) as PNGs; returns the files written and a note on those that could not
    be drawn."""
    try:
        pyplot()
    except PlotsUnavailable as exc:
        log.info("plots skipped: %s", exc)
        return [], f"plots skipped: {exc}"
    from optuna.visualization import matplotlib as vis
    draws: dict[str, tuple[Callable[..., Any], str]] = {
        "history.png": (vis.plot_optimization_history, f"{study.study_name}: history"),
        "importances.png": (vis.plot_param_importances, f"{study.study_name}: importances")}
    written, notes = [], []
    for name, (draw, title) in draws.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # optuna's ExperimentalWarning
                axes = draw(study, target_name=target)
            _save(axes.figure, out / name, title)
            written.append(name)
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # e.g. < 2 trials
            notes.append(f"{name} not drawn: {exc}")
    return written, "; ".join(notes)


def _mean_std(summary: dict[str, Any]) -> str:
    if not summary:
        return "-"
    std = summary.get("std")
    return f"{summary['mean']:.4f}" + ("" if std is None else f" ± {std:.4f}")
