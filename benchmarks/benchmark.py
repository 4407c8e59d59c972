#!/usr/bin/env python
r"""Training and evaluation speed of models on real and synthetic data, against their floors
and as the data grows.

Models use their card defaults, as ``run.py`` does. For each (dataset, model) pair, in a fresh
subprocess (so peak memory is that pair's own; a synthetic dataset is generated first, in a
process of its own, so no model's memory or setup includes the generator):
seconds per training epoch (mean of ``--epochs`` epochs after one warm-up epoch), seconds per
full-ranking evaluation of the valid split (mean of ``--evals``), the process CPU time per
epoch (a ratio that survives other load on the machine), one-off setup time from start to
model ready (wall and CPU, split into data loading and model building: graph, feature
preparation and parameters; caches included; the graph's share alone as ``graph_s``) and
peak resident memory (and peak CUDA memory on a GPU). Each model's times are also given as a
ratio to the first model's on the same dataset, measured in the same run.

Floors (``floors.py``, on unless ``--no-floor``): in the same process, the products a
model's training step cannot avoid (its sparse products over its graphs, its dense feature
products, its batch and pool scoring) are timed alone, and the epoch time is given as a
multiple of that floor (``x floor``); the evaluation likewise against the dense score
product plus top-k of the same users and items.

    python benchmarks/benchmark.py --datasets lfm2k:../shared/data/lfm2k synthetic_sports \
        --models lightgcn bpr --out bench.json

A dataset is ``NAME`` (files in datasets/NAME/, synthetic ones generated on first use) or
``NAME:DIR``. A model is ``NAME`` or ``NAME:key=value,key=value`` (card defaults overridden,
e.g. ``brmrs:lambda_h=0``). ``--cache-dir DIR`` points the graph and feature caches at DIR
(an empty folder times a first run, the same folder again a second run). ``--profile N``
also records N training steps of each model with ``torch.profiler`` and reports the
operators that took the most time (where the time goes).

Cost curves: ``--scale 0.25 0.5 1 2 4`` generates ``--scale-dataset`` (a synthetic card,
default ``synthetic_sports``) at those multiples of its users, items and interactions (into
``datasets/<card>-<tag>/``, as the run key ``generator`` does; scale 1 is the card's own
folder), measures ``--models`` (default ``lightgcn brmrs``) at each, each with an empty
graph cache unless ``--cache-dir`` is given (so ``graph_s`` is a first build), and prints
seconds per epoch, per evaluation, graph build and peak memory with the exponent fitted to
each curve, and a log-log plot (``--plot``, with matplotlib).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Options:
    r"""What :func:`measure` does for one (dataset, model) pair."""

    epochs: int = 3
    evals: int = 2
    device: str = "auto"
    profile: int = 0
    threads: int = 0
    steps: int = 0
    cache_dir: str = ""
    floor: bool = True
    generator: str = ""


@contextlib.contextmanager
def timed_graph_build(record: dict[str, float]) -> Iterator[None]:
    r"""Records in ``record["graph_s"]`` the seconds the pipeline spends in
    ``load_or_build_graph`` (a build, or a cache load) while the block runs, by wrapping
    the name the pipeline calls (this benchmark process only)."""
    from brmrs_pyg import pipeline

    original = pipeline.load_or_build_graph

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            record["graph_s"] = record.get("graph_s", 0.0) + time.perf_counter() - start

    pipeline.load_or_build_graph = wrapped
    try:
        yield
    finally:
        pipeline.load_or_build_graph = original


def run_config(dataset: str, model_spec: str, opts: Options) -> tuple[Any, Any]:
    r"""The run configuration (and its :class:`~brmrs_pyg.pipeline.Paths`) of one
    (dataset, model) pair, as ``run.py`` would build it."""
    from brmrs_pyg.pipeline import Paths, load_config

    name, _, data_dir = dataset.partition(":")
    model_name, _, extra = model_spec.partition(":")
    overrides = dict(pair.split("=", 1) for pair in extra.split(",") if pair)
    paths = Paths(ROOT)
    config = load_config(paths, [("benchmark", {"dataset": name, "model": model_name,
                                                "data_dir": data_dir, "device": opts.device,
                                                "cache_dir": opts.cache_dir,
                                                "generator": opts.generator}),
                                 ("--models", overrides)])
    return config, paths


def prepare(dataset: str, model_spec: str, opts: Options) -> dict:
    r"""Generates ``dataset`` (with ``opts.generator``) if its card has a generator and its
    folder is not there yet, by loading it as the model's run would, with a throwaway cache
    (so the measured runs' caches stay cold). Run in a process of its own before the models
    are measured, so that no model's peak memory or setup time includes the generator."""
    from brmrs_pyg.pipeline import card_of, load_data

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as cache:
        config, paths = run_config(dataset, model_spec,
                                   Options(**{**asdict(opts), "cache_dir": cache}))
        load_data(card_of(config, paths), config, paths)
    return {"dataset": dataset, "generator": opts.generator,
            "prepare_s": time.perf_counter() - start,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def measure(dataset: str, model_spec: str, opts: Options) -> dict:
    import torch

    from brmrs_pyg.allocator import reuse_freed_memory
    from brmrs_pyg.pipeline import (build_evaluators, build_model, card_of, load_data,
                                    resolve_device, seed_everything)
    from brmrs_pyg.train import make_optimizer

    name = dataset.partition(":")[0]
    model_name = model_spec.partition(":")[0]
    config, paths = run_config(dataset, model_spec, opts)
    seed_everything(0)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    reuse_freed_memory()  # as a run does
    dev = resolve_device(opts.device)
    start, cpu_start = time.perf_counter(), time.process_time()
    data = load_data(card_of(config, paths), config, paths)
    loaded = time.perf_counter()
    setup: dict[str, float] = {}
    with timed_graph_build(setup):
        model = build_model(config, data, dev)
    setup.update({"setup_s": time.perf_counter() - start, "data_s": loaded - start,
                  "model_s": time.perf_counter() - loaded,
                  "setup_cpu_s": time.process_time() - cpu_start})
    index, evaluators = build_evaluators(data, dev, config.run.eval_batch_size)
    optimizer = make_optimizer(model, config.run.lr)
    edges = data.train.to(dev)
    batch_size = config.run.batch_size
    train = time_training(model, optimizer, edges, index, batch_size, opts, dev)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the floors
    floor = {}
    if opts.floor:
        from floors import floor_ops, floor_ratio, measure_floor

        steps = math.ceil(edges.size(1) / batch_size)
        # with --steps the measured epoch repeats its once-per-epoch work steps/N times
        floor = measure_floor(floor_ops(model_name, model, batch_size), dev, steps,
                              steps / opts.steps if opts.steps else 1.0)
        floor["floor_ratio"] = floor_ratio(train["seconds_per_epoch"], floor["floor_epoch_s"])
        floor["floor_cpu_ratio"] = floor_ratio(train["cpu_seconds_per_epoch"],
                                               floor["floor_cpu_epoch_s"])
    model.eval()
    evaluation = time_evaluation(model, evaluators["valid"], opts, dev)
    return {
        "dataset": name, "model": model_spec, "device": str(dev), "generator": opts.generator,
        "threads": torch.get_num_threads(), "users": data.num_users, "items": data.num_items,
        "train_interactions": int(data.train.size(1)), **setup, **train, **evaluation,
        **floor, "peak_rss_mb": peak_rss,
        "peak_cuda_mb": (torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda"
                         else None),
        "profile": (profile_training(model, optimizer, edges, index, batch_size, opts.profile)
                    if opts.profile else None),
    }


def _sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_training(model, optimizer, edges, index, batch_size: int, opts: Options, dev) -> dict:
    r"""Seconds (wall and process CPU) per training epoch: ``opts.epochs`` whole epochs
    after a warm-up one, or ``opts.steps`` steps scaled to an epoch's number of steps."""
    from brmrs_pyg.train import train_epoch

    if opts.steps:  # `steps` steps on a random subset, scaled to the epoch's number of steps
        timed, rounds = random_steps(edges, opts.steps, batch_size), 1
        scale = math.ceil(edges.size(1) / batch_size) / opts.steps
        train_epoch(model, optimizer, random_steps(edges, 2, batch_size), index, batch_size)
    else:
        timed, rounds, scale = edges, opts.epochs, 1.0
        train_epoch(model, optimizer, edges, index, batch_size)  # warm-up
    _sync(dev)
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(rounds):
        train_epoch(model, optimizer, timed, index, batch_size)
    _sync(dev)
    return {"timed_steps": opts.steps or None,
            "seconds_per_epoch": (time.perf_counter() - start) / rounds * scale,
            "cpu_seconds_per_epoch": (time.process_time() - cpu_start) / rounds * scale}


def time_evaluation(model, valid, opts: Options, dev) -> dict:
    r"""Seconds per full-ranking evaluation of ``valid`` (mean of ``opts.evals`` after a
    warm-up) and, with ``opts.floor``, of its floor: the dense scores of the same users
    against every item and their top-k, from the model's own final embeddings."""
    import torch

    if not opts.evals:
        return {"seconds_per_eval": None}
    if opts.evals > 1:  # with one, it is timed cold: at 4x Sports an evaluation takes minutes
        valid.evaluate(model.scorer())  # warm-up
        _sync(dev)
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(opts.evals):
        valid.evaluate(model.scorer())
    _sync(dev)
    out: dict[str, Any] = {"seconds_per_eval": (time.perf_counter() - start) / opts.evals,
                           "cpu_seconds_per_eval": (time.process_time() - cpu_start) / opts.evals}
    if opts.floor:
        from floors import eval_floor, floor_ratio, time_op

        with torch.no_grad():
            user, item = model()
        op = eval_floor(user, item, valid.users.numel(), valid.chunk_rows, max(valid.ks) + 1)
        # two runs, no warm-up (the evaluation above was one): at 4x Sports a run takes
        # minutes on a CPU
        out["eval_floor_s"], out["eval_floor_cpu_s"] = time_op(
            op, dev, min_seconds=10.0, max_runs=3, min_runs=2, warmup=False)
        out["eval_floor_ratio"] = floor_ratio(out["seconds_per_eval"], out["eval_floor_s"])
        out["eval_floor_cpu_ratio"] = floor_ratio(out["cpu_seconds_per_eval"],
                                                  out["eval_floor_cpu_s"])
    return out


def random_steps(edges, steps: int, batch_size: int):
    r"""A random subset of the training pairs that makes ``steps`` batches."""
    import torch

    return edges[:, torch.randperm(edges.size(1), device=edges.device)[:steps * batch_size]]


def profile_training(model, optimizer, edges, index, batch_size: int, steps: int,
                     top: int = 12) -> list[dict]:
    r"""``steps`` training steps under ``torch.profiler``: the ``top`` operators by self time
    (forward and backward), with their share of the total."""
    from torch.profiler import ProfilerActivity, profile

    from brmrs_pyg.train import train_epoch

    activities = [ProfilerActivity.CPU]
    if edges.is_cuda:
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        train_epoch(model, optimizer, random_steps(edges, steps, batch_size), index, batch_size)
    events = prof.key_averages()
    key = "self_device_time_total" if edges.is_cuda else "self_cpu_time_total"
    total = sum(getattr(e, key) for e in events) or 1.0
    ranked = sorted(events, key=lambda e: -getattr(e, key))[:top]
    return [{"op": e.key, "ms_per_step": getattr(e, key) / 1000 / steps,
             "share": getattr(e, key) / total, "calls_per_step": e.count / steps}
            for e in ranked]


def run_one(dataset: str, model: str, opts: Options) -> dict:
    r""":func:`measure` of one pair in a fresh subprocess (its own peak memory)."""
    return _in_subprocess("--one", dataset, model, opts, f"benchmark of {model} on {dataset}")


def prepare_one(dataset: str, model: str, opts: Options) -> dict | None:
    r""":func:`prepare` in a fresh subprocess, for a dataset whose card generates it (else
    nothing to do: :obj:`None`)."""
    from brmrs_pyg.data.errors import DataError
    from brmrs_pyg.data.folder import dataset_card

    name, _, data_dir = dataset.partition(":")
    try:
        card = dataset_card(name, data_dir, ROOT / "datasets")
    except DataError as err:
        sys.exit(f"dataset {dataset}: {err}")
    if card.generator is None:
        return None
    return _in_subprocess("--prepare", dataset, model, opts, f"generating {dataset}")


def _in_subprocess(flag: str, dataset: str, model: str, opts: Options, what: str) -> dict:
    cmd = [sys.executable, __file__, flag, dataset, model, "--options",
           json.dumps(asdict(opts))]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{what} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def add_ratios(row: dict, base: dict) -> None:
    r"""The ratios of ``row``'s times to the first model's (``base``) on the same data."""
    row["epoch_ratio"] = row["seconds_per_epoch"] / base["seconds_per_epoch"]
    row["cpu_epoch_ratio"] = row["cpu_seconds_per_epoch"] / base["cpu_seconds_per_epoch"]
    row["eval_ratio"] = (row["seconds_per_eval"] / base["seconds_per_eval"]
                         if row["seconds_per_eval"] else None)


def report(row: dict) -> None:
    r"""Prints one measured row (and its profile and floor, when measured)."""
    print(f"{row['dataset']:<18} {row['model']:<10} {row['device']:<5} "
          f"{row['users']:>6}u {row['items']:>6}i {row['train_interactions']:>7}tr | "
          f"epoch {row['seconds_per_epoch']:7.3f}s (x{row['epoch_ratio']:.2f}, "
          f"CPU x{row['cpu_epoch_ratio']:.2f}"
          + (f", x{row['floor_ratio']:.2f} floor, CPU x{row['floor_cpu_ratio']:.2f} floor"
             if "floor_ratio" in row else "") + ") | "
          + (f"eval {row['seconds_per_eval']:7.3f}s (x{row['eval_ratio']:.2f}"
             + (f", x{row['eval_floor_ratio']:.2f} floor, CPU x"
                f"{row['eval_floor_cpu_ratio']:.2f} floor" if "eval_floor_ratio" in row
                else "") + ") | " if row["seconds_per_eval"] else "")
          + f"setup {row['setup_s']:6.1f}s (data {row['data_s']:.1f}s, model "
          f"{row['model_s']:.1f}s, graph {row.get('graph_s', 0.0):.1f}s; CPU "
          f"{row['setup_cpu_s']:.1f}s) | peak RSS {row['peak_rss_mb']:7.0f} MB"
          + (f" | peak CUDA {row['peak_cuda_mb']:.0f} MB" if row["peak_cuda_mb"] else ""),
          flush=True)
    for op in row["profile"] or []:
        print(f"    {op['share']:6.1%} {op['ms_per_step']:8.2f} ms/step "
              f"{op['calls_per_step']:6.1f} calls/step  {op['op']}")


def floor_table(rows: list[dict]) -> str:
    r"""The Markdown table of the models' epoch and evaluation times against their floors
    (wall seconds; the ratios in wall and in process CPU time)."""
    lines = ["| dataset | model | s / epoch | floor s / epoch | x floor (wall, CPU) | "
             "s / eval | eval floor s | x eval floor (wall, CPU) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "floor_ratio" not in r:
            continue
        evaluation = "- | - | -"
        if r.get("eval_floor_s") is not None:
            evaluation = (f"{r['seconds_per_eval']:.3g} | {r['eval_floor_s']:.3g} | "
                          f"{r['eval_floor_ratio']:.2f}, {r['eval_floor_cpu_ratio']:.2f}")
        lines.append(f"| {r['dataset']} | {r['model']} | {r['seconds_per_epoch']:.3g} | "
                     f"{r['floor_epoch_s']:.3g} | {r['floor_ratio']:.2f}, "
                     f"{r['floor_cpu_ratio']:.2f} | {evaluation} |")
    return "\n".join(lines)


def scale_runs(args: argparse.Namespace, opts: Options) -> list[dict]:
    r"""The ``--scale`` runs: every model at every scale of ``--scale-dataset``."""
    from brmrs_pyg.data.folder import dataset_card
    from scaling import scaled_generator

    card = dataset_card(args.scale_dataset, "", ROOT / "datasets")
    if card.generator is None:
        sys.exit(f"--scale needs a synthetic card (with a generator: block), "
                 f"{args.scale_dataset!r} has none")
    rows: list[dict] = []
    for scale in args.scale:
        base = None
        scaled = Options(**{**asdict(opts), "generator": scaled_generator(card.generator, scale)})
        # generated before the models, in its own process: not in the first model's memory
        prepare_one(args.scale_dataset, args.models[0], scaled)
        for model in args.models:
            with tempfile.TemporaryDirectory(prefix="bench-cache-") as empty:
                row = run_one(args.scale_dataset, model, Options(**{
                    **asdict(scaled), "cache_dir": opts.cache_dir or empty}))
            row["scale"] = scale
            base = base or row
            add_ratios(row, base)
            report(row)
            rows.append(row)
            save(rows, args.out)
    return rows


def save(rows: list[dict], out: Path | None) -> None:
    r"""Writes the rows measured so far to ``out`` (atomically), so that a long run stopped
    part-way keeps them (``--from-json`` prints their tables and plot)."""
    if out:
        from brmrs_pyg.io import atomic_write_json

        atomic_write_json(out, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+",
                        default=["lfm2k:" + str(ROOT.parent / "shared" / "data" / "lfm2k"),
                                 "synthetic_sports"])
    parser.add_argument("--models", nargs="+",
                        help="the first model is the baseline of the ratios (default: "
                             "lightgcn; with --scale: lightgcn brmrs)")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs (after a warm-up)")
    parser.add_argument("--steps", type=int, default=0, metavar="N",
                        help="time N training steps on a random subset and scale them to an "
                             "epoch's number of steps, instead of --epochs whole epochs (for "
                             "slow models on large data; once-per-epoch work, e.g. a graph "
                             "rebuilt each epoch, is then counted once per N steps)")
    parser.add_argument("--evals", type=int, default=2,
                        help="timed evaluations (0: none), after a warm-up one unless 1")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: torch's default)")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="also profile N training steps per model (0: off)")
    parser.add_argument("--floor", action=argparse.BooleanOptionalAction, default=True,
                        help="also time each model's floor and its evaluation's (floors.py)")
    parser.add_argument("--cache-dir", default="",
                        help="graph and feature cache folder (default: the run's, "
                             "~/.cache/brmrs_pyg; with --scale an empty one per run)")
    parser.add_argument("--scale", nargs="+", type=float, metavar="S",
                        help="cost curves: --scale-dataset generated at these multiples of "
                             "its users, items and interactions (instead of --datasets)")
    parser.add_argument("--scale-dataset", default="synthetic_sports",
                        help="the synthetic card that --scale multiplies")
    parser.add_argument("--plot", type=Path,
                        help="the log-log plot of --scale (default: beside --out, else "
                             "benchmark-scale.png)")
    parser.add_argument("--out", type=Path,
                        help="also write the rows as JSON here (after every row)")
    parser.add_argument("--from-json", type=Path, metavar="JSON",
                        help="measure nothing: print the tables (and plot) of the rows an "
                             "earlier --out wrote")
    parser.add_argument("--one", nargs=2, metavar=("DATASET", "MODEL"), help=argparse.SUPPRESS)
    parser.add_argument("--prepare", nargs=2, metavar=("DATASET", "MODEL"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--options", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]
    if args.one or args.prepare:
        work = measure if args.one else prepare
        print(json.dumps(work(*(args.one or args.prepare), Options(**json.loads(args.options)))))
        return
    if args.from_json:
        args.out = None
        summary(json.loads(args.from_json.read_text()), args)
        return
    opts = Options(args.epochs, args.evals, args.device, args.profile, args.threads,
                   args.steps, args.cache_dir, args.floor)
    args.models = args.models or (["lightgcn", "brmrs"] if args.scale else ["lightgcn"])
    if args.scale:
        rows = scale_runs(args, opts)
    else:
        rows = []
        for dataset in args.datasets:
            base = None
            prepare_one(dataset, args.models[0], opts)
            for model in args.models:
                row = run_one(dataset, model, opts)
                base = base or row
                add_ratios(row, base)
                report(row)
                rows.append(row)
                save(rows, args.out)
    summary(rows, args)


def summary(rows: list[dict], args: argparse.Namespace) -> None:
    r"""The tables of a run's rows (floors; cost curves with their exponents and plot)."""
    if any("floor_ratio" in r for r in rows):
        print(floor_table(rows))
    if any("scale" in r for r in rows):
        from scaling import plot, table

        print(table(rows))
        out = args.out or args.from_json
        default = out.with_name(out.stem + "-scale.png") if out else None
        print(plot(rows, args.plot or default or Path("benchmark-scale.png")))


if __name__ == "__main__":
    main()
