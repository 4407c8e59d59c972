#!/usr/bin/env python
r"""Training and evaluation speed of models on real and synthetic data.

Models use their card defaults, as ``run.py`` does. For each (dataset, model) pair, in a fresh
subprocess (so peak memory is that pair's own):
seconds per training epoch (mean of ``--epochs`` epochs after one warm-up epoch), seconds per
full-ranking evaluation of the valid split (mean of ``--evals``), the process CPU time per
epoch (a ratio that survives other load on the machine), one-off setup time from start to
model ready (wall and CPU, split into data loading and model building: graph, feature
preparation and parameters; caches included) and peak resident memory (and peak CUDA memory
on a GPU). Each model's times are also given as a ratio to the first model's on the same
dataset, measured in the same run.

    python benchmarks/benchmark.py --datasets lfm2k:../shared/data/lfm2k synthetic_sports \
        --models lightgcn bpr --out bench.json

A dataset is ``NAME`` (files in datasets/NAME/, synthetic ones generated on first use) or
``NAME:DIR``. A model is ``NAME`` or ``NAME:key=value,key=value`` (card defaults overridden,
e.g. ``brmrs:lambda_h=0``). ``--cache-dir DIR`` points the graph and feature caches at DIR
(an empty folder times a first run, the same folder again a second run). ``--profile N``
also records N training steps of each model with ``torch.profiler`` and reports the
operators that took the most time (where the time goes).
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(dataset: str, model_spec: str, epochs: int, evals: int, device: str,
            profile_steps: int, threads: int, steps: int = 0, cache_dir: str = "") -> dict:
    import torch

    from brmrs_pyg.pipeline import (Paths, build_evaluators, build_model, card_of,
                                    load_config, load_data, resolve_device, seed_everything)
    from brmrs_pyg.train import train_epoch

    name, _, data_dir = dataset.partition(":")
    model_name, _, extra = model_spec.partition(":")
    overrides = dict(pair.split("=", 1) for pair in extra.split(",") if pair)
    paths = Paths(ROOT)
    config = load_config(paths, [("benchmark", {"dataset": name, "model": model_name,
                                                "data_dir": data_dir, "device": device,
                                                "cache_dir": cache_dir}),
                                 ("--models", overrides)])
    seed_everything(0)
    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    data = load_data(card_of(config, paths), config, paths)
    loaded = time.perf_counter()
    model = build_model(config, data, dev)
    setup = {"setup_s": time.perf_counter() - start, "data_s": loaded - start,
             "model_s": time.perf_counter() - loaded,
             "setup_cpu_s": time.process_time() - cpu_start}
    index, evaluators = build_evaluators(data, dev, config.run.eval_batch_size)
    valid = evaluators["valid"]
    optimizer = torch.optim.Adam(model.parameters(), lr=config.run.lr)
    edges = data.train.to(dev)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    batch_size = config.run.batch_size
    if steps:  # `steps` steps on a random subset, scaled to the epoch's number of steps
        timed, rounds = random_steps(edges, steps, batch_size), 1
        scale = math.ceil(edges.size(1) / batch_size) / steps
        train_epoch(model, optimizer, random_steps(edges, 2, batch_size), index, batch_size)
    else:
        timed, rounds, scale = edges, epochs, 1.0
        train_epoch(model, optimizer, edges, index, batch_size)  # warm-up
    sync()
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(rounds):
        train_epoch(model, optimizer, timed, index, batch_size)
    sync()
    per_epoch = (time.perf_counter() - start) / rounds * scale
    cpu_per_epoch = (time.process_time() - cpu_start) / rounds * scale
    model.eval()
    per_eval = None
    if evals:
        valid.evaluate(model.scorer())  # warm-up
        sync()
        start = time.perf_counter()
        for _ in range(evals):
            valid.evaluate(model.scorer())
        sync()
        per_eval = (time.perf_counter() - start) / evals
    return {
        "dataset": name, "model": model_spec, "device": str(dev),
        "threads": torch.get_num_threads(), "users": data.num_users, "items": data.num_items,
        "train_interactions": int(data.train.size(1)), **setup,
        "timed_steps": steps or None, "seconds_per_epoch": per_epoch, "cpu_seconds_per_epoch": cpu_per_epoch,
        "seconds_per_eval": per_eval,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_cuda_mb": (torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda"
                         else None),
        "profile": (profile_training(model, optimizer, edges, index, config.run.batch_size,
                                     profile_steps) if profile_steps else None),
    }


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+",
                        default=["lfm2k:" + str(ROOT.parent / "shared" / "data" / "lfm2k"),
                                 "synthetic_sports"])
    parser.add_argument("--models", nargs="+", default=["lightgcn"],
                        help="the first model is the baseline of the ratios")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs (after a warm-up)")
    parser.add_argument("--steps", type=int, default=0, metavar="N",
                        help="time N training steps on a random subset and scale them to an "
                             "epoch's number of steps, instead of --epochs whole epochs (for "
                             "slow models on large data; once-per-epoch work, e.g. a graph "
                             "rebuilt each epoch, is then counted once per N steps)")
    parser.add_argument("--evals", type=int, default=2, help="timed evaluations (0: none)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: torch's default)")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="also profile N training steps per model (0: off)")
    parser.add_argument("--cache-dir", default="",
                        help="graph and feature cache folder (default: the run's, "
                             "~/.cache/brmrs_pyg)")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--one", nargs=2, metavar=("DATASET", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.one:
        print(json.dumps(measure(*args.one, args.epochs, args.evals, args.device,
                                 args.profile, args.threads, args.steps, args.cache_dir)))
        return
    rows = []
    for dataset in args.datasets:
        base = None
        for model in args.models:
            cmd = [sys.executable, __file__, "--one", dataset, model, "--epochs",
                   str(args.epochs), "--evals", str(args.evals), "--device", args.device,
                   "--profile", str(args.profile), "--threads", str(args.threads),
                   "--steps", str(args.steps), "--cache-dir", args.cache_dir]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"benchmark of {model} on {dataset} failed:\n{done.stderr[-3000:]}")
            row = json.loads(done.stdout.strip().splitlines()[-1])
            base = base or row
            row["epoch_ratio"] = row["seconds_per_epoch"] / base["seconds_per_epoch"]
            row["cpu_epoch_ratio"] = (row["cpu_seconds_per_epoch"]
                                      / base["cpu_seconds_per_epoch"])
            row["eval_ratio"] = (row["seconds_per_eval"] / base["seconds_per_eval"]
                                 if row["seconds_per_eval"] else None)
            rows.append(row)
            print(f"{row['dataset']:<18} {row['model']:<10} {row['device']:<5} "
                  f"{row['users']:>6}u {row['items']:>6}i {row['train_interactions']:>7}tr | "
                  f"epoch {row['seconds_per_epoch']:7.3f}s (x{row['epoch_ratio']:.2f}, "
                  f"CPU x{row['cpu_epoch_ratio']:.2f}) | "
                  + (f"eval {row['seconds_per_eval']:7.3f}s (x{row['eval_ratio']:.2f}) | "
                     if row["seconds_per_eval"] else "")
                  + f"setup {row['setup_s']:6.1f}s (data {row['data_s']:.1f}s, model "
                  f"{row['model_s']:.1f}s; CPU {row['setup_cpu_s']:.1f}s) | "
                  f"peak RSS {row['peak_rss_mb']:7.0f} MB"
                  + (f" | peak CUDA {row['peak_cuda_mb']:.0f} MB" if row["peak_cuda_mb"]
                     else ""), flush=True)
            for op in row["profile"] or []:
                print(f"    {op['share']:6.1%} {op['ms_per_step']:8.2f} ms/step "
                      f"{op['calls_per_step']:6.1f} calls/step  {op['op']}")
    if args.out:
        from brmrs_pyg.io import atomic_write_json

        atomic_write_json(args.out, rows)


if __name__ == "__main__":
    main()
