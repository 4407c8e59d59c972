r"""``run.py search``: the command line of :mod:`.search`."""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import yaml

from brmrs_pyg.pipeline import Paths

from .cli import (add_executor_args, executor_of, experiment_lines_only, split_overrides,
                  stopped)
from .grid import card_grid, parse_space
from .runner import Runner, RunnerSettings
from .search import (PRUNERS, SAMPLERS, SearchError, SearchSettings, grid_size, import_optuna,
                      search)

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    r"""The parser of ``run.py search``."""
    parser = argparse.ArgumentParser(
        prog="run.py search",
        description="Hyperparameter search on the valid split with Optuna (extra 'search'). "
                    "Each trial is a run in OUT/trials/<number>/; a pruned trial stops early. "
                    "The best point by valid (never test) then runs on every seed (OUT/best/) "
                    "and OUT gets search.json, trials.csv, best.txt (key=value), "
                    "best_card.yaml and plots. The study is kept in OUT/study.db: the same "
                    "command continues it after an interruption, up to --trials finished "
                    "trials in total.")
    parser.add_argument("--dataset", required=True, metavar="D", help="dataset card name")
    parser.add_argument("--data-dir", dest="data_dir", default="", metavar="DIR",
                        help="folder with the dataset files (default: datasets/D/)")
    parser.add_argument("--model", required=True, metavar="M", help="model to tune")
    parser.add_argument("--trials", type=int, required=True, metavar="N",
                        help="finished trials wanted in the study, in total (a continued "
                             "search runs only the missing ones)")
    parser.add_argument("--space", default="card", metavar="card|FILE",
                        help="'card': the grid: block of models/M.yaml; or a YAML file "
                             "{key: [values] or {low, high[, log: true][, step]}}")
    parser.add_argument("--sampler", choices=SAMPLERS, default="tpe",
                        help="tpe (default), random, or grid (lists only; --trials is capped "
                             "at the grid's size)")
    parser.add_argument("--pruner", choices=PRUNERS, default="median",
                        help="median (default; from the 6th trial and the 5th epoch), "
                             "hyperband, none")
    parser.add_argument("--storage", default="", metavar="URL",
                        help="Optuna RDB URL shared by several machines, e.g. "
                             "postgresql://user:pw@host/db (default: sqlite:///OUT/study.db)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[999, 1, 2], metavar="S",
                        help="seeds of the best point; trials use the first (default: 999 1 2)")
    parser.add_argument("--epochs", type=int, metavar="N", help="maximum epochs of every run")
    parser.add_argument("--out", metavar="DIR",
                        help="search folder (default: runs/search-D-M-<time>); an existing one "
                             "is continued if it holds this search's study.db")
    parser.add_argument("--verbose", action="store_true",
                        help="also print each run's own log (it is in its train.log anyway)")
    add_executor_args(parser)
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config keys for every run, e.g. threads=1 patience=10 epochs=60")
    return parser


def read_space_file(path: Path) -> dict[str, Any]:
    r"""A search-space file: YAML ``{key: [values] or {low, high[, log][, step]}}``."""
    if not path.is_file():
        raise SearchError(f"--space {path}: no such file (or 'card' for the model card's grid)")
    return parse_space(yaml.safe_load(path.read_text()), str(path))


def settings_of(args: argparse.Namespace, paths: Paths) -> SearchSettings:
    r"""The search's settings from the parsed command line."""
    common, per_model = split_overrides(args.overrides)
    if per_model:
        raise SearchError("a search tunes one model: write key=value, not model.key=value")
    epochs = args.epochs
    if "epochs" in common:  # as key=value too, like the other keys of a run
        if epochs is not None:
            raise SearchError("epochs given twice (--epochs and epochs=)")
        epochs = int(common.pop("epochs"))
    space = (card_grid(args.model, paths) if args.space == "card"
             else read_space_file(Path(args.space)))
    out = Path(args.out) if args.out else paths.root / "runs" / (
        f"search-{args.dataset}-{args.model}-{time.strftime('%Y%m%d-%H%M%S')}")
    runner = Runner(RunnerSettings(paths, args.dataset, out / "best", args.data_dir, epochs,
                                   common), executor_of(args, common))
    trials = args.trials
    if args.sampler == "grid" and space and trials > grid_size(space):
        log.info("--sampler grid: %d points in the grid, so %d trials, not %d",
                 grid_size(space), grid_size(space), trials)
        trials = grid_size(space)
    return SearchSettings(runner, args.model, space, trials, out,
                          tuple(dict.fromkeys(args.seeds)), args.sampler, args.pruner,
                          args.storage)


def run_search_cli(argv: Sequence[str], paths: Paths) -> None:
    r"""Entry point of ``run.py search``; an interruption (Ctrl-C, SIGTERM) becomes one line
    saying how to continue."""
    optuna = import_optuna()
    args = build_parser().parse_intermixed_args(argv)
    settings = settings_of(args, paths)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our progress line replaces its own
    try:
        with experiment_lines_only(not args.verbose):
            search(settings)
    except KeyboardInterrupt as exc:
        again = list(argv) + ([] if args.out else ["--out", str(settings.out)])
        raise stopped("search", exc, again, "finished trials are kept in the study and the "
                      "trials under way will run again") from None
