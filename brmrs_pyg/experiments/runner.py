r"""Runs many configurations, each in its own folder, resumably: in this process, or on
several local workers (:mod:`.executor`).

A suite is a list of :class:`Variant` (a model and ``key=value`` overrides: a table row) run
on several seeds. Each (variant, seed) is one :func:`brmrs_pyg.pipeline.run` into
``<out>/<model>/<overrides>/s<seed>/``, where ``<overrides>`` names only the keys whose
resolved value differs from the model's default, so the same configuration reached from two
suites (or two sweeps) is one folder. A folder with ``results.json`` is finished and never run
again; one with ``last.pt`` only was interrupted and continues from it
(:func:`~brmrs_pyg.pipeline.resume_config`). With an executor of several workers the runs
to train go W at a time, one worker process each; a run's results do not depend on which.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from brmrs_pyg import pipeline
from brmrs_pyg.checkpoint import RESUMABLE_KEYS
from brmrs_pyg.config import Config, ConfigError, config_changes
from brmrs_pyg.train import TrainingError

from .executor import Executor, Outcome, Slot, seconds_per_run
from .stats import mean_std

log = logging.getLogger(__name__)

#: Config keys a suite sets itself; a suite's ``key=value`` may not set them.
SUITE_KEYS = ("dataset", "model", "seed", "out", "data_dir", "epochs")


class SuiteError(ValueError):
    r"""A suite cannot run as asked (e.g. a folder holds a finished run of another config)."""


@dataclass(frozen=True)
class Variant:
    r"""One configuration of a suite: a model and its overrides, shown as ``label``.

    Args:
        model (str): Registered model name.
        overrides (tuple): ``(key, value)`` pairs; values as on the command line.
        label (str, optional): Row name in tables and plots (default: model and overrides).
    """

    model: str
    overrides: tuple[tuple[str, str], ...] = ()
    label: str = ""

    @classmethod
    def of(cls, model: str, label: str = "", **overrides: Any) -> "Variant":
        r"""``Variant.of("brmrs", lambda_h=0)``: values are converted with :func:`str`
        (booleans lower-case), as if typed as ``key=value``."""
        return cls(model, tuple((k, override_text(v)) for k, v in overrides.items()), label)

    @property
    def name(self) -> str:
        return self.label or " ".join([self.model, *(f"{k}={v}" for k, v in self.overrides)])


def override_text(value: Any) -> str:
    r"""``value`` as typed on a command line (``True`` -> ``"true"``)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


@dataclass(frozen=True)
class RunRecord:
    r"""A (variant, seed) of a suite: its folder and its ``results.json`` (``None`` when
    training failed, with ``error``)."""

    variant: Variant
    seed: int
    folder: Path
    results: dict[str, Any] | None
    error: str = ""


@dataclass(frozen=True)
class RunnerSettings:
    r"""What every run of a suite shares.

    Args:
        paths (Paths): The project root (cards).
        dataset (str): Dataset card name.
        out (Path): The suite's folder; runs go below it.
        data_dir (str, optional): ``--data-dir`` of every run.
        epochs (int, optional): ``--epochs`` of every run (default: the config's).
        overrides (dict, optional): ``key=value`` for every run (e.g. ``threads=1``).
        model_overrides (dict, optional): ``model -> {key: value}`` for that model's runs
            only (``brmrs.lambda_h=0.5`` on the command line).
    """

    paths: pipeline.Paths
    dataset: str
    out: Path
    data_dir: str = ""
    epochs: int | None = None
    overrides: Mapping[str, str] = field(default_factory=dict)
    model_overrides: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


class Runner:
    r"""Runs variants on seeds, skipping finished runs and resuming interrupted ones.

    Args:
        settings (RunnerSettings): What every run shares.
        executor (Executor, optional): Where the runs to train go (local workers, Ray);
            :obj:`None` or one local worker: one after another in this process.
            (default: :obj:`None`)
    """

    def __init__(self, settings: RunnerSettings, executor: Executor | None = None
                 ) -> None:
        bad = sorted(set(settings.overrides) & set(SUITE_KEYS))
        if bad:
            raise ConfigError(f"a suite sets {', '.join(bad)} itself: use its flags "
                              f"(--dataset, --data-dir, --epochs, --seeds, --out)")
        self.settings = settings
        self.executor = executor

    def layers(self, variant: Variant, seed: int) -> list[tuple[str, Mapping[str, Any]]]:
        r"""Override layers of one run: the suite's ``key=value``, the model's
        ``model.key=value``, the variant's overrides, then the suite's flags."""
        s = self.settings
        flags: dict[str, Any] = {"dataset": s.dataset, "model": variant.model, "seed": seed}
        if s.data_dir:
            flags["data_dir"] = s.data_dir
        if s.epochs is not None:
            flags["epochs"] = s.epochs
        return [("suite key=value", dict(s.overrides)),
                (f"suite {variant.model}.key=value", dict(s.model_overrides.get(variant.model,
                                                                                {}))),
                (f"variant {variant.name!r}", dict(variant.overrides)), ("suite flags", flags)]

    def config(self, variant: Variant, seed: int) -> Config:
        r"""The resolved config of a run (without its ``out``)."""
        return pipeline.load_config(self.settings.paths, self.layers(variant, seed))

    def folder(self, variant: Variant, seed: int) -> Path:
        r"""``<out>/<model>/<k=v,...>/s<seed>``: the keys whose value differs from the
        model's default in this suite (``defaults`` when none)."""
        base = self.config(Variant(variant.model), seed).flat()
        mine = self.config(variant, seed).flat()
        diff = [f"{k}={mine[k]}" for k in mine if mine[k] != base[k]]
        return self.settings.out / variant.model / _slug(",".join(diff) or "defaults") / \
            f"s{seed}"

    def run_one(self, variant: Variant, seed: int) -> tuple[RunRecord, bool]:
        r"""Runs (or resumes, or reads back) one run; returns its record and whether it
        trained in this call."""
        folder = self.folder(variant, seed)
        layers = self.layers(variant, seed)
        config = pipeline.load_config(self.settings.paths,
                                      [*layers, ("suite folder", {"out": str(folder)})])
        done = folder / "results.json"
        if done.is_file():
            results = json.loads(done.read_text())
            _check_same_config(results["config"], config.flat(), done)
            return RunRecord(variant, seed, folder, results), False
        resume = None
        if (folder / "last.pt").is_file():
            # the checkpoint's config is the base; ``out`` stays the saved one, in case the
            # suite folder was moved since
            config, resume = pipeline.resume_config(self.settings.paths, folder, layers)
            log.info("resuming %s from %s", variant.name, folder / "last.pt")
        try:
            results = pipeline.run(config, self.settings.paths, folder, resume=resume)
        except TrainingError as exc:
            log.warning("%s seed %d failed: %s", variant.name, seed, exc)
            return RunRecord(variant, seed, folder, None, str(exc)), True
        return RunRecord(variant, seed, folder, results), True

    def run(self, variants: Sequence[Variant], seeds: Sequence[int], stage: str = "runs"
            ) -> dict[Variant, list[RunRecord]]:
        r"""Runs every variant on every seed, logging one progress line per run
        (``[stage i/N] name seed: outcome | ETA``); returns the records per variant, in
        seed order."""
        todo = [(v, s) for v in dict.fromkeys(variants) for s in seeds]
        if self.executor is not None and not self.executor.inline:
            return self._run_on_workers(todo, stage, self.executor)
        # a configuration reached by two variants (a sweep's default point) trains once
        left = len({f for f in (self.folder(v, s) for v, s in todo)
                    if not (f / "results.json").is_file()})
        spent: list[float] = []
        out: dict[Variant, list[RunRecord]] = {v: [] for v, _ in todo}
        for i, (variant, seed) in enumerate(todo, 1):
            start = time.perf_counter()
            record, trained = self.run_one(variant, seed)
            if trained:
                spent.append(time.perf_counter() - start)
                left -= 1
            out[variant].append(record)
            _progress(stage, i, len(todo), record, _outcome(record, trained, spent),
                      eta(spent, left))
        return out

    def _run_on_workers(self, todo: list[tuple[Variant, int]], stage: str,
                        executor: Executor) -> dict[Variant, list[RunRecord]]:
        r""":meth:`run` with the runs to train on the executor's workers: finished runs are
        read back here; each folder trains once, its record shared by the variants that
        reach it; a worker that dies is reported and its run left to resume."""
        records: dict[tuple[Variant, int], RunRecord] = {}
        by_folder: dict[Path, list[tuple[Variant, int]]] = {}
        for variant, seed in todo:
            by_folder.setdefault(self.folder(variant, seed), []).append((variant, seed))
        train = [runs for folder, runs in by_folder.items()
                 if not (folder / "results.json").is_file()]
        for variant, seed in todo:
            if not any((variant, seed) in runs for runs in train):
                records[variant, seed] = self.run_one(variant, seed)[0]
        for i, ((variant, seed), record) in enumerate(records.items(), 1):
            _progress(stage, i, len(todo), record, _outcome(record, False, []),
                      eta([], len(train)))
        i = len(records)
        spent: list[float] = []
        jobs = [self._job(*runs[0]) for runs in train]
        for outcome in executor.map(run_in_worker, jobs):
            runs = train[outcome.index]
            record = self._record_of(outcome, *runs[0])
            spent.append(outcome.seconds)
            for variant, seed in runs:
                records[variant, seed] = dataclasses.replace(record, variant=variant)
                i += 1
                _progress(stage, i, len(todo), records[variant, seed],
                          _outcome(record, True, spent),
                          eta(seconds_per_run(spent, executor.workers), len(train) - len(spent)))
        out: dict[Variant, list[RunRecord]] = {v: [] for v, _ in todo}
        for variant, seed in todo:
            out[variant].append(records[variant, seed])
        return out

    def _job(self, variant: Variant, seed: int) -> Callable[[Slot], tuple[Any, ...]]:
        def job(slot: Slot) -> tuple[RunnerSettings, Variant, int]:
            return with_threads(self.settings, slot), variant, seed
        return job

    def _record_of(self, outcome: Outcome, variant: Variant, seed: int) -> RunRecord:
        if outcome.ok and outcome.value is not None:
            record: RunRecord = outcome.value[0]
            return record
        folder = self.folder(variant, seed)
        log.warning("%s seed %d: its worker ended (%s) in %s; run the command again to "
                    "resume it from its last.pt (an error's traceback is above)", variant.name,
                    seed, outcome.why(), folder)
        return RunRecord(variant, seed, folder, None, f"worker {outcome.why()}")


def with_threads(settings: RunnerSettings, slot: Slot) -> RunnerSettings:
    r"""``settings`` with the slot's ``threads=`` (unchanged when the slot sets none)."""
    if slot.threads is None:
        return settings
    return dataclasses.replace(settings, overrides={**settings.overrides,
                                                    "threads": str(slot.threads)})


def run_in_worker(settings: RunnerSettings, variant: Variant, seed: int
                  ) -> tuple[RunRecord, bool]:
    r"""A worker's job: :meth:`Runner.run_one` of one (variant, seed)."""
    return Runner(settings).run_one(variant, seed)


def _progress(stage: str, i: int, total: int, record: RunRecord, outcome: str, left: str
              ) -> None:
    log.info("[%s %d/%d] %s seed %d: %s | ETA %s", stage, i, total, record.variant.name,
             record.seed, outcome, left)


def _outcome(record: RunRecord, trained: bool, spent: list[float]) -> str:
    if record.results is None:
        return "FAILED"
    metric = record.results["config"]["valid_metric"]
    valid = f"valid {metric} {record.results['valid'][metric]:.4f}"
    return f"{valid} in {spent[-1]:.0f}s" if trained else f"{valid} (finished before)"


def eta(spent: list[float], left: int) -> str:
    r"""The time ``left`` more runs will take at the mean of the ``spent`` seconds so far."""
    if not left:
        return "0s"
    if not spent:
        return "?"
    seconds = int(sum(spent) / len(spent) * left)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s"


def _slug(text: str, limit: int = 100) -> str:
    r"""A folder name for ``text``: unsafe characters become ``_``; long names are cut and
    made unique with a hash of the whole."""
    safe = re.sub(r"[^A-Za-z0-9._=,+-]", "_", text)
    if len(safe) <= limit:
        return safe
    return f"{safe[:limit - 11]}-{hashlib.sha1(text.encode()).hexdigest()[:10]}"


def _check_same_config(saved: Mapping[str, Any], wanted: Mapping[str, Any], path: Path
                       ) -> None:
    diff = config_changes(saved, wanted, RESUMABLE_KEYS | {"out"})
    if diff:
        detail = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, a, b in diff)
        raise SuiteError(f"{path} is a finished run of another config ({detail}): give the "
                         f"suite another --out, or delete that folder to run it again")


@dataclass(frozen=True)
class Summary:
    r"""Mean ± sample standard deviation of a metric over ``n`` seeds (``std`` NaN for one)."""

    mean: float
    std: float
    n: int

    def as_dict(self) -> dict[str, float | int | None]:
        return {"mean": self.mean, "std": None if self.std != self.std else self.std,
                "n": self.n}


def summarize(records: Sequence[RunRecord], split: str, metrics: Sequence[str]
              ) -> dict[str, Summary]:
    r"""Per metric, mean ± std over the finished runs of ``records`` on ``split``
    (``"valid"`` or ``"test"``); empty when none finished."""
    done = [r.results for r in records if r.results is not None]
    if not done:
        return {}
    return {m: Summary(*mean_std([res[split][m] for res in done]), len(done)) for m in metrics}
