r"""The command line of ``run.py`` (DESIGN.md section 4)."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from brmrs_pyg.analysis import AnalysisError, analyze_run
from brmrs_pyg.checkpoint import RESUMABLE_KEYS, ResumeError
from brmrs_pyg.config import Config, ConfigError, RunConfig, describe_keys
from brmrs_pyg.data.cards import available_cards
from brmrs_pyg.data.errors import DataError
from brmrs_pyg.data.prepare.cli import run_prepare
from brmrs_pyg.experiments import SuiteError
from brmrs_pyg.experiments.cli import run_suite_cli
from brmrs_pyg.experiments.search_cli import run_search_cli
from brmrs_pyg.interrupt import TrainingInterrupted
from brmrs_pyg.plotting import PlotsUnavailable
from brmrs_pyg.pipeline import Paths, load_config, out_dir_of, resume_config, run
from brmrs_pyg.recommenders import MODELS
from brmrs_pyg.trained import RunError
from brmrs_pyg.trained_cli import run_export, run_recommend
from brmrs_pyg.registry import UnknownNameError
from brmrs_pyg.train import TrainingError

#: Flags of the command line and the config keys they set.
FLAGS = {"dataset": str, "model": str, "data_dir": str, "seed": int, "epochs": int, "out": str}


def build_parser(paths: Paths) -> argparse.ArgumentParser:
    r"""The argument parser; its help lists every config key of every model."""
    parser = argparse.ArgumentParser(
        prog="run.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train and evaluate a recommender. With no arguments: LightGCN on the "
                    "embedded synthetic dataset (generated on first use). To build a dataset "
                    "from raw Amazon files or your own table: run.py prepare {amazon,csv} "
                    "--help. Diagnostics of a finished run: run.py analyze DIR (--help). "
                    "A named experiment suite (seeds, grids, tables, plots): run.py suite --help. "
                    "Hyperparameter search on valid with Optuna: run.py search --help. "
                    "Use a finished run: run.py recommend DIR --users all, run.py export DIR "
                    "(--help).",
        epilog=_keys_help(paths))
    parser.add_argument("--dataset", metavar="NAME",
                        help="dataset card datasets/NAME.yaml (available: "
                             f"{', '.join(available_cards(paths.dataset_cards))})")
    parser.add_argument("--model", metavar="NAME",
                        help=f"model (available: {', '.join(MODELS.names())})")
    parser.add_argument("--data-dir", metavar="DIR", dest="data_dir",
                        help="folder with the dataset files (default: datasets/NAME/)")
    parser.add_argument("--seed", type=int, metavar="S", help="random seed (default: 999)")
    parser.add_argument("--epochs", type=int, metavar="N",
                        help="maximum training epochs (default: 1000; early stopping applies)")
    parser.add_argument("--out", metavar="DIR",
                        help="output folder (default: runs/<dataset>-<model>-s<seed>-<time>)")
    parser.add_argument("--resume", metavar="DIR",
                        help="continue the interrupted run in DIR from DIR/last.pt with its "
                             "saved config; key=value may change only "
                             f"{', '.join(sorted(RESUMABLE_KEYS))}")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="any config key below, e.g. lr=0.0005 save_topk=true")
    return parser


def _keys_help(paths: Paths) -> str:
    lines = ["config keys (key=value; precedence: defaults < dataset card < model card "
             "< key=value < flags):"]
    lines += [f"  {name:<16} {typ:<5} {default!r:<12} {text}"
              for name, typ, default, text in describe_keys(RunConfig)]
    for name in MODELS.names():
        lines.append(f"model keys of {name} (defaults before models/{name}.yaml):")
        keys = describe_keys(MODELS.get(name).Params)
        lines += [f"  {key:<16} {typ:<5} {default!r:<12} {text}"
                  for key, typ, default, text in keys] or ["  (none)"]
    return "\n".join(lines)


def parse_overrides(items: Sequence[str]) -> dict[str, str]:
    r"""``["lr=0.01", ...]`` -> ``{"lr": "0.01", ...}``; anything else is a ConfigError."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"expected key=value, got {item!r}")
        out[key.strip()] = value
    return out


def override_layers(args: argparse.Namespace) -> list[tuple[str, dict[str, object]]]:
    r"""The command line's ``key=value`` overrides, then its flags (higher priority)."""
    flags = {k: getattr(args, k) for k in FLAGS if getattr(args, k) is not None}
    return [("command line", dict(parse_overrides(args.overrides))),
            ("command-line flags", flags)]


def resolve_config(args: argparse.Namespace, paths: Paths) -> Config:
    r"""The run's config from the parsed command line (see :func:`load_config`)."""
    return load_config(paths, override_layers(args))


def build_analyze_parser() -> argparse.ArgumentParser:
    r"""The parser of ``run.py analyze``."""
    parser = argparse.ArgumentParser(
        prog="run.py analyze",
        description="Diagnostics of a finished run of a model with branches (DESIGN.md "
                    "section 1): per held-out pair and branch, the rank of the item; the "
                    "six-way partition of hits (redundant, degraded, <modality>_unique, "
                    "synergy, all_fail), per-branch recall, CHNS versus uniform negative "
                    "margins, cross-modal confusion, and recall per ground-truth type on "
                    "synthetic data. Writes DIR/analysis.json and PNG plots beside it.")
    parser.add_argument("run_dir", metavar="DIR", help="output folder of a finished run")
    parser.add_argument("--k", type=int, nargs="+", default=[10, 20], metavar="K",
                        help="cut-offs (default: 10 20)")
    parser.add_argument("--split", choices=["test", "valid"], default="test",
                        help="held-out split to analyse (default: test)")
    parser.add_argument("--no-plots", action="store_true", help="write analysis.json only")
    parser.add_argument("--modalities", metavar="A,B",
                        help="the two modalities to compare when the model has more")
    parser.add_argument("--pool-size", type=int, default=10, metavar="P",
                        help="candidates per pair for the margin diagnostics (default: 10)")
    return parser


def run_analyze(argv: Sequence[str], paths: Paths) -> None:
    r"""``run.py analyze DIR ...``: writes ``DIR/analysis.json`` (see
    :func:`brmrs_pyg.analysis.analyze_run`)."""
    args = build_analyze_parser().parse_args(argv)
    pair = tuple(m.strip() for m in args.modalities.split(",")) if args.modalities else None
    report = analyze_run(Path(args.run_dir), paths, ks=tuple(args.k), split=args.split,
                         plots=not args.no_plots, modalities=pair, pool_size=args.pool_size)
    for k in report["ks"]:
        recall = ", ".join(f"{b} {v:.4f}" for b, v in report[f"recall@{k}"].items())
        print(f"recall@{k}: {recall}")
        if f"partition@{k}" in report:
            shares = ", ".join(f"{c} {v:.3f}" for c, v in report[f"partition@{k}"].items())
            print(f"partition@{k}: {shares}")
    print(f"wrote {Path(args.run_dir) / 'analysis.json'}"
          + (f" and {', '.join(report['plots'])}" if report.get("plots") else ""))


def main(argv: Sequence[str] | None = None, root: Path | None = None) -> int:
    r"""Entry point of ``run.py``; returns the process exit code."""
    paths = Paths(root or Path.cwd())
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv[:1] in (["prepare"], ["analyze"], ["suite"], ["recommend"],
                                      ["export"], ["search"]) else None
    args = None if command else build_parser(paths).parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    try:
        if command == "prepare":
            run_prepare(argv[1:], paths.dataset_cards)
            return 0
        if command == "analyze":
            run_analyze(argv[1:], paths)
            return 0
        if command == "suite":
            run_suite_cli(argv[1:], paths)
            return 0
        if command == "search":
            run_search_cli(argv[1:], paths)
            return 0
        if command in ("recommend", "export"):
            (run_recommend if command == "recommend" else run_export)(argv[1:], paths)
            return 0
        assert args is not None
        if args.resume:
            run_dir = Path(args.resume)
            if args.out is not None and Path(args.out).resolve() != run_dir.resolve():
                raise ResumeError(f"--resume {run_dir} writes into {run_dir}; drop --out "
                                  f"{args.out}")
            args.out = None  # the run's folder is DIR whatever the saved config says
            config, payload = resume_config(paths, run_dir, override_layers(args))
            run(config, paths, run_dir, resume=payload)
        else:
            config = resolve_config(args, paths)
            run(config, paths, out_dir_of(config, paths))
    except (ConfigError, DataError, UnknownNameError, TrainingError, ResumeError,
            AnalysisError, SuiteError, PlotsUnavailable, RunError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrainingInterrupted as exc:  # SIGINT or SIGTERM: one line, no traceback
        print(exc, file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:  # Ctrl-C outside training (loading data, building graphs)
        print("interrupted (Ctrl-C) outside training; every file written so far is complete "
              "(written atomically), nothing else was saved", file=sys.stderr)
        return 130
    return 0
