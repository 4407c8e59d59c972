r"""Hyperparameter search on the validation split with Optuna (``run.py search``).

The space is a model card's ``grid:`` block or a space file (:func:`.grid.parse_space`: lists
are choices, ``{low, high[, log][, step]}`` ranges). Every trial is an ordinary run of
:func:`brmrs_pyg.pipeline.run` in ``<out>/trials/<number>/`` on the first seed; the trainer
reports the valid metric after every epoch (its best so far) and the pruner may stop it there
(state ``PRUNED``, folder and ``results.json`` kept). The best *complete* trial by valid, never
by test, is then run on every seed (:class:`.runner.Runner`, in ``<out>/best/``) and the outputs
are written (:mod:`.search_report`).

The study lives in an Optuna storage, by default ``sqlite:///<out>/study.db``, so that the same
command continues it: ``trials`` counts finished trials (complete, pruned, or failed in
training) in total, never "more", and counts each *point* once: a sampler that proposes a point
the study already holds (TPE does, more and more as it narrows down over a list-only space)
gets that trial's result back without training, the trial is marked ``repeat_of`` and not
counted, and, over a list-only space, an untried point is queued next (:func:`run_trial`).
So every search of a budget of N trains N distinct points (or the whole grid, when it has
fewer). One of them is always the model card's own point (the run's config for the searched
keys, when the space holds it): it is queued first and never pruned (:func:`queue_card_point`),
so a search never ends below the card on valid because its point was stopped early or never
drawn; a study from before this rule gets it as one more trial. A trial stopped by Ctrl-C,
SIGTERM or a crash is marked
failed without an ``error`` attribute (interrupted), does not count, and its point is queued
again; a trial left ``RUNNING`` by a killed process (SIGKILL, power loss) is recognised on the
next start by its host and dead process id and handled the same way. Trials running on other
machines of a shared ``--storage`` are left alone.

With ``--workers W`` (:mod:`.executor`), W worker processes run this trial loop against the
same storage; a lock file (``study.lock``) makes "count finished and running trials, then
start one" a single step among the processes of this machine, so the study never gets more
than ``trials`` finished trials. Each loop also re-queues the trials of workers that died,
so the others finish the count. The best point runs once, after all workers end.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from brmrs_pyg import pipeline
from brmrs_pyg.checkpoint import RESUMABLE_KEYS
from brmrs_pyg.config import ADDED_KEYS, Config
from brmrs_pyg.io import FileLock, process_running
from brmrs_pyg.train import TrainingError

from .grid import Grid, Range, grid_points, has_ranges, valid_score
from .executor import Slot, seconds_per_run
from .runner import SUITE_KEYS, Runner, SuiteError, Variant, eta, override_text, with_threads

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

#: Samplers and pruners by their ``--sampler`` / ``--pruner`` names.
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
#: Config keys that may differ between the machines of one study (not part of its identity).
MACHINE_KEYS = (RESUMABLE_KEYS - {"epochs"}) | {"out"}
#: What a search writes into its folder; an existing ``--out`` may hold nothing else.
SEARCH_FILES = frozenset({"study.db", "study.db-journal", "study.db-wal", "study.db-shm",
                          "trials", "best", "search.json", "trials.csv", "best.txt",
                          "best_card.yaml", "history.png", "importances.png", "study.lock"})
#: Seconds a process waits for SQLite's write lock (several workers write one study.db).
SQLITE_TIMEOUT = 60.0
#: A ``RUNNING`` trial without host (killed right after it was created) is stale after this.
UNCLAIMED_SECONDS = 60.0
#: A worker stops after this many repeated points in a row (a space with ranges, whose
#: untried points cannot be listed, that the sampler has narrowed down to points it holds).
MAX_REPEATS = 50
HOST = socket.gethostname()


class SearchError(SuiteError):
    r"""A search cannot run as asked (optuna missing, a foreign ``--out``, a bad space)."""


def import_optuna() -> Any:
    r"""The ``optuna`` module, or :class:`SearchError` naming the extra that installs it."""
    try:
        import optuna
    except ImportError:
        raise SearchError("run.py search needs optuna, the optional extra 'search': "
                          "pip install -e '.[search]'") from None
    return optuna


@dataclass(frozen=True)
class SearchSettings:
    r"""A search.

    Args:
        runner (Runner): Dataset, shared overrides and epochs of every run; its ``out`` is
            where the best point's seeds run (``<out>/best``).
        model (str): The model searched.
        space (dict): Per key, a list of choices or a :class:`~.grid.Range`.
        trials (int): Finished trials wanted in the study, in total.
        out (Path): The search folder.
        seeds (tuple): Seeds of the best point; trials use the first.
        sampler (str, optional): ``tpe``, ``random`` or ``grid``. (default: ``"tpe"``)
        pruner (str or optuna pruner, optional): ``median``, ``hyperband``, ``none``, or a
            pruner object, used as it is (tests inject one). (default: ``"median"``)
        storage (str, optional): An Optuna RDB URL (default: ``sqlite:///<out>/study.db``).
        worker (int, optional): This worker's number; the sampler's seed is the first seed
            plus it, so that workers do not propose the same points. (default: ``0``)
        workers (int, optional): How many workers run trials at once (for the ETA).
            (default: ``1``)
    """

    runner: Runner
    model: str
    space: Grid
    trials: int
    out: Path
    seeds: tuple[int, ...] = (999, 1, 2)
    sampler: str = "tpe"
    pruner: Any = "median"
    storage: str = ""
    worker: int = 0
    workers: int = 1

    @property
    def pruner_name(self) -> str:
        return self.pruner if isinstance(self.pruner, str) else type(self.pruner).__name__

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{self.out.resolve() / 'study.db'}"

    def config(self, params: Mapping[str, Any], seed: int, out: Path | None = None) -> Config:
        r"""The resolved config of ``params`` on ``seed`` (into ``out``)."""
        layers = self.runner.layers(variant_of(self.model, params), seed)
        return pipeline.load_config(self.runner.settings.paths,
                                    [*layers, ("search", {"out": str(out or "")})])


def variant_of(model: str, params: Mapping[str, Any]) -> Variant:
    r"""``params`` as a :class:`Variant` (``key=value`` text, in the space's order)."""
    return Variant(model, tuple((k, override_text(v)) for k, v in params.items()))


def check_space(settings: SearchSettings) -> None:
    r"""Checks the space before anything runs: not empty, no key a flag or ``key=value``
    sets, every choice and range end a valid config value, lists only for the grid
    sampler."""
    space = settings.space
    if not space:
        raise SearchError(f"the search space of {settings.model} is empty: give --space FILE "
                          "or a grid: block in its model card")
    fixed = sorted(set(space) & ({*SUITE_KEYS} | set(settings.runner.settings.overrides)))
    if fixed:
        raise SearchError(f"{', '.join(fixed)}: searched, and also set by a flag or "
                          "key=value; drop one")
    if settings.sampler == "grid" and settings.trials > len(grid_points(space)):  # no range
        raise SearchError(f"--sampler grid: the grid has {len(grid_points(space))} points, "
                          f"fewer than --trials {settings.trials}")
    for key, domain in space.items():
        ends = [domain.low, domain.high] if isinstance(domain, Range) else list(domain)
        for value in ends:
            settings.config({key: value}, settings.seeds[0])  # unknown key, wrong type
    if any(isinstance(d, Range) and d.integer and d.log and d.step not in (None, 1)
           for d in space.values()):
        raise SearchError("an integer log range takes no step")


def identity(settings: SearchSettings) -> dict[str, Any]:
    r"""What makes two commands the same search: the resolved config of the first trial's
    base (without machine-local keys such as ``threads``, nor keys of
    :data:`~brmrs_pyg.config.ADDED_KEYS` at their former value, so that a study stored before
    they existed keeps its name) and the space."""
    base = settings.config({}, settings.seeds[0]).flat()
    return {"config": {k: v for k, v in base.items()
                       if k not in MACHINE_KEYS and k not in settings.space
                       and not (k in ADDED_KEYS and v == ADDED_KEYS[k])},
            "space": {k: dataclasses.asdict(d) if isinstance(d, Range) else list(d)
                      for k, d in settings.space.items()}}


def study_name(ident: Mapping[str, Any]) -> str:
    r"""``<model>-<dataset>-<hash of the identity>``, shared by every machine of a search."""
    digest = hashlib.sha1(json.dumps(ident, sort_keys=True, default=str).encode())
    config = ident["config"]
    return f"{config['model']}-{config['dataset']}-{digest.hexdigest()[:10]}"


def check_out(settings: SearchSettings) -> None:
    r"""An existing ``--out`` is accepted only if it is empty or holds a search's files
    alone (:data:`SEARCH_FILES`), with its ``study.db`` when that is the storage; that the
    study is this search's is checked once it is open (:func:`open_study`)."""
    out = settings.out
    if not out.exists():
        return
    if not out.is_dir():
        raise SearchError(f"--out {out}: not a folder")
    names = {p.name for p in out.iterdir()}
    foreign = sorted(names - SEARCH_FILES)
    if foreign:
        raise SearchError(f"--out {out} holds files that are not a search's ("
                          f"{', '.join(foreign[:5])}); a search writes only into a new or empty "
                          "folder, or continues its own (one with its study.db)")
    if names and not settings.storage and "study.db" not in names:
        raise SearchError(f"--out {out} holds search outputs but no study.db: it is not a "
                          "search to continue with the default storage (give its --storage)")


def open_study(settings: SearchSettings, ident: Mapping[str, Any]) -> "optuna.Study":
    r"""Creates or loads the study of ``ident`` in the storage; refuses a folder whose
    ``study.db`` holds another search."""
    optuna = import_optuna()
    name = study_name(ident)
    fresh = not settings.out.exists() or not any(settings.out.iterdir())
    settings.out.mkdir(parents=True, exist_ok=True)
    url = settings.storage_url
    storage = optuna.storages.RDBStorage(url, engine_kwargs={
        "connect_args": {"timeout": SQLITE_TIMEOUT}} if url.startswith("sqlite") else None)
    names = optuna.get_all_study_names(storage)
    if name not in names and settings.storage and not fresh:
        raise SearchError(f"--out {settings.out} holds a search whose study is not in "
                          f"--storage (no study {name} there); give another --out")
    if name not in names and names and not settings.storage:
        raise SearchError(f"--out {settings.out}: its study.db holds another search "
                          f"({_difference(optuna, storage, names, ident)}); give another --out")
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize",
                                load_if_exists=True, sampler=_sampler(optuna, settings),
                                pruner=_pruner(optuna, settings))
    if "identity" not in study.user_attrs:
        study.set_user_attr("identity", json.loads(json.dumps(ident, default=str)))
    return study


def _difference(optuna: Any, storage: Any, names: list[str], ident: Mapping[str, Any]) -> str:
    # what differs from the first other study of the storage, for the refusal
    if not names:
        return "none"
    theirs = optuna.load_study(study_name=names[0], storage=storage).user_attrs.get(
        "identity", {})
    mine = json.loads(json.dumps(ident, default=str))
    diff = [f"space: {theirs.get('space')} there, {mine['space']} now"
            if theirs.get("space") != mine["space"] else ""]
    a, b = theirs.get("config", {}), mine["config"]
    diff += [f"{k}: {a.get(k)!r} there, {b.get(k)!r} now" for k in sorted(set(a) | set(b))
             if a.get(k) != b.get(k)]
    return f"study {names[0]}; " + "; ".join(d for d in diff if d)


def _sampler(optuna: Any, settings: SearchSettings) -> Any:
    seed = settings.seeds[0] + settings.worker
    if settings.sampler == "grid":
        # one seed for every worker: the grid sampler shuffles its points with it and gives
        # trial n the n-th point, so workers with other shuffles would repeat points and
        # skip others
        return optuna.samplers.GridSampler({k: list(v) for k, v in settings.space.items()
                                            if not isinstance(v, Range)}, seed=settings.seeds[0])
    if settings.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def _pruner(optuna: Any, settings: SearchSettings) -> Any:
    if not isinstance(settings.pruner, str):
        return settings.pruner
    run = settings.config({}, settings.seeds[0]).run
    if settings.pruner == "median":
        # the first 5 trials are never pruned, nor any trial in its first 4 epochs, whose
        # valid scores mostly reflect the initialisation, or before epoch min_epochs, before
        # which early stopping does not end a run either
        return optuna.pruners.MedianPruner(n_startup_trials=5,
                                           n_warmup_steps=max(5, run.min_epochs))
    if settings.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, run.min_epochs),
                                              max_resource=run.epochs)
    return optuna.pruners.NopPruner()


def point_key(params: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    r"""A point's identity: its keys and values, whatever their order."""
    return tuple(sorted(params.items()))


def finished(trial: "optuna.trial.FrozenTrial") -> bool:
    r"""Whether a trial trained to its end: complete, pruned, or failed in training (with
    an ``error`` attribute; a failed trial without one was interrupted), and not a repeat
    (``repeat_of``: it trained nothing)."""
    from optuna.trial import TrialState
    if "repeat_of" in trial.user_attrs:
        return False
    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
        trial.state == TrialState.FAIL and "error" in trial.user_attrs)


def counts(study: "optuna.Study") -> tuple[int, int]:
    r"""Finished points (the distinct points of the :func:`finished` trials, so a point
    trained twice, as TPE had studies do before repeats were answered, counts once) and
    trials running now."""
    from optuna.trial import TrialState
    points = set()
    running = 0
    for t in study.get_trials(deepcopy=False):
        running += t.state == TrialState.RUNNING
        if finished(t):
            points.add(point_key(t.params))
    return len(points), running


def trials_wanted(settings: "SearchSettings") -> int:
    r"""``settings.trials``, or the number of points of a list-only space with fewer."""
    if has_ranges(settings.space):
        return settings.trials
    return min(settings.trials, grid_size(settings.space))


def recover_stale(study: "optuna.Study") -> list[int]:
    r"""Marks the ``RUNNING`` trials of dead processes of this host (and unclaimed ones) as
    failed (without ``error``: interrupted) and queues their points again; returns their
    numbers."""
    from optuna.trial import TrialState
    stale = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        host, pid = t.user_attrs.get("host"), t.user_attrs.get("pid")
        age = time.time() - t.datetime_start.timestamp() if t.datetime_start else 0.0
        if (host == HOST and pid is not None and not process_running(int(pid))) or (
                host is None and age > UNCLAIMED_SECONDS):
            try:
                study.tell(t.number, state=TrialState.FAIL)
            except (RuntimeError, ValueError):  # another worker recovered it first
                continue
            study.enqueue_trial(t.params, user_attrs=_retry_attrs(t))
            stale.append(t.number)
    if stale:
        log.info("trial(s) %s were left running by a process that died: marked failed "
                 "(interrupted) and queued again", ", ".join(map(str, stale)))
    return stale


def _retry_attrs(trial: "optuna.Trial | optuna.trial.FrozenTrial") -> dict[str, Any]:
    # an interrupted trial's point runs again, as the card's point if it was that
    return {"retry_of": trial.number, **({"card": True} if trial.user_attrs.get("card")
                                          else {})}


def card_point(settings: SearchSettings) -> dict[str, Any] | None:
    r"""The model card's point in the space: the searched keys' values in the run's config
    without the search (card defaults, the variant's and the suite's keys), each as the
    space writes it; ``None`` when the space does not hold it."""
    base = settings.config({}, settings.seeds[0]).flat()
    point: dict[str, Any] = {}
    for key, domain in settings.space.items():
        value = base.get(key)
        if isinstance(domain, Range):
            if value is None or not domain.low <= value <= domain.high:
                return None
            point[key] = value
        else:
            # equal values (1 and 1.0 are; True and 1 are not)
            same = [v for v in domain
                    if v == value and isinstance(v, bool) == isinstance(value, bool)]
            if not same:
                return None
            point[key] = same[0]
    return point


def queue_card_point(study: "optuna.Study", settings: SearchSettings) -> None:
    r"""Queues the card's point (:func:`card_point`) as a trial that is never pruned, unless
    a complete trial holds it or a card trial is queued, running or finished already."""
    from optuna.trial import TrialState
    point = card_point(settings)
    if point is None:
        log.info("the card's point is not in the space: the search does not include it")
        return
    key = point_key(point)
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("card") and (
                finished(t) or t.state in (TrialState.WAITING, TrialState.RUNNING)):
            return  # queued, running or trained as the card's point already
        if t.state == TrialState.COMPLETE and finished(t) and point_key(t.params) == key:
            return  # a complete trial holds it
    study.enqueue_trial(point, user_attrs={"card": True})
    log.info("the card's point (%s) runs first, never pruned",
             " ".join(f"{k}={override_text(v)}" for k, v in point.items()))


def suggest(trial: "optuna.Trial", space: Grid) -> dict[str, Any]:
    r"""The trial's point: ``suggest_categorical`` for lists, ``suggest_int`` or
    ``suggest_float`` for ranges."""
    params: dict[str, Any] = {}
    for key, d in space.items():
        if not isinstance(d, Range):
            params[key] = trial.suggest_categorical(key, list(d))
        elif d.integer:
            params[key] = trial.suggest_int(key, int(d.low), int(d.high),
                                            step=int(d.step or 1), log=d.log)
        else:
            params[key] = trial.suggest_float(key, d.low, d.high, step=d.step, log=d.log)
    return params


def run_trial(trial: "optuna.Trial", settings: SearchSettings) -> float:
    r"""The objective: one run into ``<out>/trials/<number>`` reporting its best valid score
    after every epoch. Returns the run's valid score; raises ``TrialPruned`` when the pruner
    stopped it (its ``results.json`` written first) and :class:`TrainingError` when training
    failed (attribute ``error``). Any other exception (Ctrl-C, SIGTERM, a crash) marks it
    failed without ``error`` (interrupted: not counted) and queues its point again before
    it propagates."""
    import optuna
    params = suggest(trial, settings.space)
    card = bool(trial.user_attrs.get("card"))
    earlier = _holder(trial, params, complete_only=card)
    if earlier is not None:
        return _repeat(trial, earlier, settings)
    folder = settings.out / "trials" / str(trial.number)
    for key, value in {"host": HOST, "pid": os.getpid(), "folder": str(folder)}.items():
        trial.set_user_attr(key, value)
    best, pruned = float("-inf"), False

    def on_epoch(epoch: int, score: float) -> bool:
        nonlocal best, pruned
        best = max(best, score)
        trial.report(best, epoch)
        pruned = not card and trial.should_prune()
        return pruned

    try:
        config = settings.config(params, settings.seeds[0], folder)
        results = pipeline.run(config, settings.runner.settings.paths, folder,
                               on_epoch=on_epoch)
    except TrainingError as exc:
        trial.set_user_attr("error", str(exc))
        raise
    except BaseException:
        trial.study.enqueue_trial(params, user_attrs=_retry_attrs(trial))
        raise
    if pruned:
        raise optuna.TrialPruned(f"pruned after epoch {results['epochs_run']}")
    return valid_score(results)


def _holder(trial: "optuna.Trial", params: Mapping[str, Any], complete_only: bool = False
            ) -> "optuna.trial.FrozenTrial | None":
    r"""The first other trial of the study that holds ``params``, not a repeat itself:
    finished (its result stands) or running with a lower number (it is being trained; of
    two workers that drew the same point at once, the first trial trains it); with
    ``complete_only`` (the card's point, which a pruned trial does not settle), complete."""
    from optuna.trial import TrialState
    key = point_key(params)
    for t in trial.study.get_trials(deepcopy=False):
        holds = (t.state == TrialState.COMPLETE if complete_only
                 else finished(t) or (t.state == TrialState.RUNNING
                                      and t.number < trial.number))
        if (t.number != trial.number and "repeat_of" not in t.user_attrs and holds
                and point_key(t.params) == key):
            return t
    return None


def _repeat(trial: "optuna.Trial", earlier: "optuna.trial.FrozenTrial",
            settings: SearchSettings) -> float:
    r"""Ends a trial whose point ``earlier`` holds, without training, with ``earlier``'s
    result so far, so the sampler learns nothing new but loses nothing: its value when it
    completed; otherwise (pruned, failed, or still running on another worker) its valid
    scores so far, as a pruned trial. Over a list-only space an untried point is queued
    first, so the next trial trains something new."""
    import optuna
    from optuna.trial import TrialState
    trial.set_user_attr("repeat_of", earlier.number)
    _queue_untried(trial.study, settings, trial.number)
    if earlier.state == TrialState.COMPLETE:
        assert earlier.value is not None
        return earlier.value
    for step, value in earlier.intermediate_values.items():
        trial.report(value, step)
    raise optuna.TrialPruned(f"the point of trial {earlier.number} "
                             f"({earlier.state.name.lower()})")


def _queue_untried(study: "optuna.Study", settings: SearchSettings, number: int) -> None:
    # a point of a list-only space that no trial holds or waits for, drawn with a seed of
    # the study's first seed and the trial's number (the same draw on a rerun)
    if has_ranges(settings.space):
        return
    from optuna.trial import TrialState
    taken = set()
    for t in study.get_trials(deepcopy=False):
        if finished(t) or t.state == TrialState.RUNNING:
            taken.add(point_key(t.params))
        elif t.state == TrialState.WAITING:  # a queued point is in its fixed params
            taken.add(point_key(t.system_attrs.get("fixed_params", {})))
    untried = [p for p in grid_points(settings.space) if point_key(p) not in taken]
    if untried:
        pick = random.Random(settings.seeds[0] * 1_000_003 + number).choice(untried)
        study.enqueue_trial(pick, user_attrs={"untried_after": number})


def optimize(settings: SearchSettings, study: "optuna.Study") -> None:
    r"""Runs trials until the study holds ``settings.trials`` finished ones (counting those
    running elsewhere), one progress line per trial."""
    import optuna
    spent: list[float] = []
    wanted = trials_wanted(settings)
    if wanted < settings.trials:
        log.info("the space has %d points, fewer than --trials %d: the search stops when "
                 "it has trained each once", wanted, settings.trials)
    repeats = 0
    while True:
        turn = FileLock(settings.out / "study.lock")
        recover_stale(study)
        done, running = counts(study)
        if done + running >= wanted and not card_waiting(study):
            turn.release()
            break
        if repeats >= MAX_REPEATS:
            turn.release()
            log.warning("%d points in a row were ones the study holds: this worker stops "
                        "with %d of %d points (the sampler has narrowed the space down)",
                        repeats, done, wanted)
            break
        start = time.perf_counter()
        mine: list[int] = []

        def objective(trial: optuna.Trial) -> float:
            turn.release()  # the trial is RUNNING in the study: the next count sees it
            mine.append(trial.number)
            return run_trial(trial, settings)

        try:
            study.optimize(objective, n_trials=1, catch=(TrainingError,))
        finally:
            turn.release()
        repeat = study.get_trials(deepcopy=False)[mine[-1]].user_attrs.get("repeat_of")
        if repeat is not None:
            repeats += 1
            log.info("trial %d: the point of trial %d (finished or running): not trained, "
                     "not counted", mine[-1], repeat)
            continue
        repeats = 0
        spent.append(time.perf_counter() - start)
        log.info(progress_line(study, mine[-1], spent, wanted, settings.workers))
    if running and settings.workers == 1:  # a worker's siblings are no one else's
        log.info("%d trial(s) still running elsewhere: the best point is chosen among the "
                 "finished ones; run the command again later to include them", running)


def card_waiting(study: "optuna.Study") -> bool:
    r"""Whether the card's point is queued and not yet taken (it runs even when the study
    holds its budget of points: a study from before it was queued gets it on top)."""
    from optuna.trial import TrialState
    return any(t.user_attrs.get("card")
               for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def progress_line(study: "optuna.Study", number: int, spent: list[float], wanted: int,
                  workers: int = 1) -> str:
    r"""``trial N (i/T): STATE valid v | best b (trial k) | elapsed | ETA``, the ETA for
    ``workers`` running trials at once; ``(T/T + k on top)`` once the card's point ran on top
    of a study that already held its budget."""
    from optuna.trial import TrialState
    trial = study.get_trials(deepcopy=False)[number]
    done, _ = counts(study)
    value = "-" if trial.value is None else f"{trial.value:.4f}"
    if trial.state == TrialState.PRUNED:
        value += f" at epoch {trial.last_step}"
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    top = best_trial(study) if complete else None
    best = f"best {top.value:.4f} (trial {top.number})" if top else "best -"
    of = f"{done}/{wanted}" if done <= wanted else f"{wanted}/{wanted} + {done - wanted} on top"
    return (f"trial {number} ({of}): {trial.state.name} valid {value} | {best} | "
            f"{spent[-1]:.0f}s | ETA "
            f"{eta(seconds_per_run(spent, workers), max(wanted - done, 0))}")


def best_trial(study: "optuna.Study") -> "optuna.trial.FrozenTrial":
    r"""The complete trial with the highest valid score (the first one on a tie); test
    metrics are never looked at."""
    from optuna.trial import TrialState
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if "repeat_of" not in t.user_attrs]
    if not complete:
        raise SearchError("no trial completed: there is no best point (see the trials' "
                          "train.log for why they failed or were pruned)")
    return max(complete, key=lambda t: (t.value, -t.number))


def search(settings: SearchSettings) -> dict[str, Any]:
    r"""Runs (or continues) the search, trains its best point on every seed and writes the
    outputs (:func:`.search_report.write_outputs`); returns ``search.json``'s content."""
    from .search_report import run_best, write_outputs
    import_optuna()
    if settings.trials < 1:
        raise SearchError(f"--trials {settings.trials}: at least 1")
    check_space(settings)
    check_out(settings)
    ident = identity(settings)
    study = open_study(settings, ident)
    log.info("search %s: %d trials of %s on %s, sampler %s, pruner %s, storage %s, into %s",
             study.study_name, settings.trials, settings.model, ident["config"]["dataset"],
             settings.sampler, settings.pruner_name, _redacted(settings.storage_url), settings.out)
    recover_stale(study)  # an interrupted trial's point runs again first
    queue_card_point(study, settings)
    executor = settings.runner.executor
    if executor is not None and not executor.inline:
        optimize_on_workers(settings, study)
    else:
        optimize(settings, study)
    best = run_best(settings, study, best_trial(study))
    return write_outputs(settings, study, best, _redacted(settings.storage_url))


def optimize_on_workers(settings: SearchSettings, study: "optuna.Study") -> None:
    r""":func:`optimize` in each of the runner's executor's workers, on the same study (whose
    stale trials :func:`search` has recovered already); a worker that died is reported and its
    trial queued again (run the command again if the study is still short of ``trials``)."""
    executor = settings.runner.executor
    assert executor is not None

    def job(slot: Slot) -> tuple[SearchSettings]:
        runner = Runner(with_threads(settings.runner.settings, slot))
        return dataclasses.replace(settings, runner=runner, worker=slot.index,
                                   workers=executor.workers),

    if executor.machines > 1 and settings.storage_url.startswith("sqlite"):
        log.warning("the study is an SQLite file and the workers run on %d machines: SQLite "
                    "and the lock beside it are safe only on one machine's disk; for a "
                    "cluster give --storage postgresql://... (see README, Scaling out)",
                    executor.machines)
    log.info("%d workers on the study", executor.workers)
    for outcome in executor.map(search_worker, [job] * executor.workers):
        if not outcome.ok:
            log.warning("search worker %d ended (%s)", outcome.index, outcome.why())
    recover_stale(study)
    done, _ = counts(study)
    if done < trials_wanted(settings):
        log.warning("%d of %d trials finished: run the command again to run the others",
                    done, trials_wanted(settings))


def search_worker(settings: SearchSettings) -> None:
    r"""A worker's job: the trial loop of :func:`optimize` on the study of ``settings``."""
    optuna = import_optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optimize(settings, open_study(settings, identity(settings)))


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url
    return make_url(url).render_as_string(hide_password=True)


def grid_size(space: Grid) -> int:
    r"""How many points a grid sampler can try (lists only)."""
    return len(grid_points(space))

