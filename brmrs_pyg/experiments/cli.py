r"""``run.py suite NAME``: one command per suite of :mod:`brmrs_pyg.experiments`."""
from __future__ import annotations

import argparse
import contextlib
import logging
import shlex
import signal
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

from brmrs_pyg import __version__
from brmrs_pyg.config import ConfigError
from brmrs_pyg.interrupt import TrainingInterrupted, signal_name
from brmrs_pyg.io import atomic_write_json
from brmrs_pyg.pipeline import Paths

from brmrs_pyg.plotting import pyplot
from .executor import Executor, LocalExecutor, plan
from .runner import Runner, RunnerSettings
from .search import PRUNERS
from .suites import SUITES, SuiteContext
from .tuned import DEFAULT_TRIALS, TunedContext

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    r"""The parser of ``run.py suite``."""
    lines = [f"  {name:<12} {(SUITES.get(name).__doc__ or '').split(chr(10))[0].strip()}"
             for name in SUITES.names()]
    parser = argparse.ArgumentParser(
        prog="run.py suite", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run a named experiment suite: every configuration on every seed, each "
                    "in its own folder, then tables (table.csv, table.md), PNG plots and "
                    "suite.json. Finished runs are never run again, interrupted ones resume; "
                    "re-running a finished suite only rebuilds its outputs.",
        epilog="suites:\n" + "\n".join(lines))
    parser.add_argument("name", metavar="NAME", choices=SUITES.names(),
                        help=f"suite: {', '.join(SUITES.names())}")
    parser.add_argument("--dataset", required=True, metavar="D", help="dataset card name")
    parser.add_argument("--data-dir", dest="data_dir", default="", metavar="DIR",
                        help="folder with the dataset files (default: datasets/D/)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[999, 1, 2], metavar="S",
                        help="seeds of every reported configuration (default: 999 1 2)")
    parser.add_argument("--epochs", type=int, metavar="N", help="maximum epochs of every run")
    parser.add_argument("--out", metavar="DIR",
                        help="suite folder (default: runs/suites/NAME-D)")
    parser.add_argument("--grid", default="", metavar="card|FILE",
                        help="main only: grid-search each model on valid over its model "
                             "card's grid: block ('card') or a sweep file {model: {key: "
                             "[values]}}, then run the best point on every seed")
    parser.add_argument("--grid-seed", type=int, dest="grid_seed", metavar="S",
                        help="seed of the grid runs (default: the first of --seeds)")
    parser.add_argument("--models", default="", metavar="M,M",
                        help="main: comma-separated models (default: lightgcn, vbpr, "
                             "concat, decoupled, lattice, freedom, bm3, brmrs; unregistered "
                             "ones are skipped). tuned: comma-separated variants, each model "
                             "or model:key=value[:key=value...] (default: every model, brmrs "
                             "with each fusion, M:plugin=brmrs for each model that takes it)")
    parser.add_argument("--trials", type=int, metavar="N",
                        help=f"tuned only: finished trials of every variant's search (default "
                             f"{DEFAULT_TRIALS})")
    parser.add_argument("--pruner", choices=PRUNERS,
                        help="tuned only: pruner of every search (default median)")
    parser.add_argument("--verbose", action="store_true",
                        help="also print each run's own log (it is in its train.log anyway)")
    add_executor_args(parser)
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config keys for every run (e.g. threads=1 patience=10); "
                             "model.key=value for one model's runs (brmrs.lambda_h=0.5)")
    return parser


def add_executor_args(parser: argparse.ArgumentParser) -> None:
    r"""``--executor`` and its options, shared by ``run.py suite`` and ``run.py search``."""
    parser.add_argument("--executor", choices=("local", "ray"), default="local",
                        help="where runs go: local (default), worker processes on this "
                             "machine; ray, Ray tasks on a Ray cluster or a local Ray "
                             "instance (extra 'ray'; see README, Scaling out)")
    parser.add_argument("--workers", type=int, metavar="W",
                        help="runs at once, one process each. local: default one per GPU "
                             "when there are GPUs and device is not cpu, else 1 (one after "
                             "another in this process); unless threads= is given, each of W "
                             "workers gets cores // W CPU threads. ray: default all the "
                             "cluster holds")
    parser.add_argument("--address", metavar="ADDR",
                        help="ray: the cluster (auto: the one `ray start` began on this "
                             "machine; HOST:PORT; ray://HOST:PORT); default RAY_ADDRESS, else "
                             "a cluster on this machine, else a local Ray instance")
    parser.add_argument("--cpus-per-run", dest="cpus_per_run", type=float, default=1.0,
                        metavar="C", help="ray: CPUs a run asks for, and its threads unless "
                                          "threads= is given (default 1)")
    parser.add_argument("--gpus-per-run", dest="gpus_per_run", type=float, metavar="G",
                        help="ray: GPUs a run asks for (default 1 when the cluster has GPUs "
                             "and device is not cpu, else 0; 0.5 puts two runs on a GPU)")


def executor_of(args: argparse.Namespace, overrides: dict[str, str]) -> Executor:
    r"""The executor of ``--executor`` and its options, for runs with ``overrides``."""
    device, threads_set = overrides.get("device", "auto"), "threads" in overrides
    if args.executor == "ray":
        from .ray_executor import RayExecutor
        return RayExecutor(args.address, args.cpus_per_run, args.gpus_per_run, args.workers,
                           device, threads_set, args.verbose)
    if args.address or args.gpus_per_run is not None or args.cpus_per_run != 1.0:
        raise ConfigError("--address, --cpus-per-run and --gpus-per-run are options of "
                          "--executor ray")
    return LocalExecutor(plan(args.workers, device, threads_set), verbose=args.verbose)


def split_overrides(items: Sequence[str]) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    r"""``["lr=0.01", "brmrs.theta=0.2"]`` -> ``({"lr": "0.01"}, {"brmrs": {"theta":
    "0.2"}})``."""
    common: dict[str, str] = {}
    per_model: dict[str, dict[str, str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"expected key=value or model.key=value, got {item!r}")
        model, dot, name = key.partition(".")
        if dot:
            per_model.setdefault(model.strip(), {})[name.strip()] = value
        else:
            common[key.strip()] = value
    return common, per_model


def context_of(args: argparse.Namespace, paths: Paths) -> SuiteContext:
    r"""The suite's context from the parsed command line."""
    if (args.grid or args.models) and args.name not in ("main", "tuned"):
        raise ConfigError("--grid and --models apply to the main suite only (--models also "
                          "to tuned)")
    if args.grid and args.name == "tuned":
        raise ConfigError("--grid applies to the main suite only; tuned searches every "
                          "variant with --trials and --pruner")
    if (args.trials is not None or args.pruner is not None) and args.name != "tuned":
        raise ConfigError("--trials and --pruner apply to the tuned suite only")
    common, per_model = split_overrides(args.overrides)
    out = Path(args.out) if args.out else (
        paths.root / "runs" / "suites" / f"{args.name}-{args.dataset}")
    settings = RunnerSettings(paths, args.dataset, out, args.data_dir, args.epochs, common,
                              per_model)
    models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    runner, seeds = Runner(settings, executor_of(args, common)), tuple(dict.fromkeys(args.seeds))
    if args.name == "tuned":
        return TunedContext(runner, seeds, models=models, trials=(
            DEFAULT_TRIALS if args.trials is None else args.trials), pruner=args.pruner or "median")
    return SuiteContext(runner, seeds, args.grid, args.grid_seed, models)


def run_suite(name: str, ctx: SuiteContext) -> dict[str, Any]:
    r"""Runs suite ``name`` and writes ``suite.json`` (settings, every run, summaries and
    what the suite adds) into its folder; returns its content."""
    s = ctx.runner.settings
    log.info("suite %s on %s, seeds %s, into %s", name, s.dataset, list(ctx.seeds), s.out)
    content = {"suite": name, "dataset": s.dataset, "data_dir": s.data_dir,
               "seeds": list(ctx.seeds), "epochs": s.epochs, "overrides": dict(s.overrides),
               "model_overrides": {m: dict(o) for m, o in s.model_overrides.items()},
               "version": __version__, **SUITES.get(name)(ctx)}
    atomic_write_json(s.out / "suite.json", content)
    log.info("suite %s: tables and plots in %s", name, s.out)
    return content


class ExperimentLinesOnly(logging.Filter):
    r"""Lets through the suite's own lines and every warning or error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.startswith(__package__ or "") or record.levelno >= logging.WARNING


def run_suite_cli(argv: Sequence[str], paths: Paths) -> None:
    r"""Entry point of ``run.py suite``."""
    args = build_parser().parse_intermixed_args(argv)
    ctx = context_of(args, paths)
    pyplot()  # before any training: a missing extra must not wait for the end of a suite
    try:
        with experiment_lines_only(not args.verbose):
            run_suite(args.name, ctx)
    except KeyboardInterrupt as exc:
        raise stopped("suite", exc, list(argv) + (
            [] if args.out else ["--out", str(ctx.runner.settings.out)]),
            "finished runs are kept and interrupted ones resume from their last.pt") from None


def stopped(command: str, exc: KeyboardInterrupt, argv: Sequence[str], kept: str
            ) -> TrainingInterrupted:
    r"""The one line of a ``run.py suite``/``search`` stopped by Ctrl-C or SIGTERM: what is
    kept and the command that continues it."""
    signum = exc.signum if isinstance(exc, TrainingInterrupted) else signal.SIGINT
    return TrainingInterrupted(signum, f"{signal_name(signum)}: {command} stopped; {kept}. "
                                       f"Continue with: python run.py {command} "
                                       f"{shlex.join(argv)}")


@contextlib.contextmanager
def experiment_lines_only(enabled: bool = True) -> Iterator[None]:
    r"""While the block runs, the terminal (the root logger's stderr handlers) shows only the
    lines of :mod:`brmrs_pyg.experiments` (progress) and warnings, not each run's own log
    (in its ``train.log`` anyway); does nothing unless ``enabled``."""
    quiet = ExperimentLinesOnly()
    handlers = [h for h in logging.getLogger().handlers
                if getattr(h, "stream", None) is sys.stderr] if enabled else []
    for handler in handlers:
        handler.addFilter(quiet)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(quiet)
