r"""Seconds per epoch of short runs at several ``threads`` settings, on an idle machine and
with another job holding one core, to check that the ``threads`` default is never much slower
than the best setting.

    python benchmarks/threads.py --jobs synthetic:lightgcn lfm2k:lightgcn:../shared/data/lfm2k \
        lfm2k:brmrs:../shared/data/lfm2k --threads 0 1 2 --epochs 6

Each run is ``run.py --epochs N threads=T`` in its own process, into a temporary folder; the
busy condition starts a single-threaded process doing dense products for the whole run (the
"other job"). Prints a Markdown table of seconds per training epoch and per evaluation (from
the run's ``results.json``), the threads the run used, and each setting's ratio to the best
setting of its job and condition.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
HOG = ("import torch\ntorch.set_num_threads(1)\na = torch.randn(800, 800)\n"
       "while True:\n    a = (a @ a).tanh()\n")


@contextlib.contextmanager
def other_job(busy: bool) -> Iterator[None]:
    r"""A process keeping one core busy while the block runs (nothing when not ``busy``)."""
    if not busy:
        yield
        return
    hog = subprocess.Popen([sys.executable, "-c", HOG])
    time.sleep(2.0)  # let it start before the measured run does
    try:
        yield
    finally:
        hog.kill()
        hog.wait()


def measure(job: str, threads: int, epochs: int, folder: Path) -> dict:
    dataset, model, *data_dir = job.split(":", 2)
    out = folder / f"{dataset}-{model}-t{threads}"
    cmd = [sys.executable, str(ROOT / "run.py"), "--dataset", dataset, "--model", model,
           "--epochs", str(epochs), f"threads={threads}", "checkpoint_every=0",
           f"cache_dir={folder / 'cache'}", "--out", str(out)]
    if data_dir:
        cmd += ["--data-dir", data_dir[0]]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
    wall = time.perf_counter() - start
    timings = json.loads((out / "results.json").read_text())["timings"]
    return {"job": f"{dataset} {model}", "setting": threads, "used": timings.get("threads"),
            "epoch": timings["seconds_per_epoch"], "eval": timings["seconds_per_eval"],
            "wall": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", nargs="+", default=["synthetic:lightgcn"],
                        help="DATASET:MODEL[:DATA_DIR]")
    parser.add_argument("--threads", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--conditions", nargs="+", default=["idle", "busy"],
                        choices=["idle", "busy"])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for job in args.jobs:  # a first run generates the data and fills the caches
            measure(job, 1, 1, Path(tmp) / "warm")
        for condition in args.conditions:
            with other_job(condition == "busy"):
                for job in args.jobs:
                    for threads in args.threads:
                        row = measure(job, threads, args.epochs, Path(tmp) / condition)
                        rows.append({**row, "condition": condition})
                        print(f"{condition} {row['job']} threads={threads}: "
                              f"{row['epoch']:.3f} s/epoch", file=sys.stderr)
    best = {}
    for r in rows:
        key = (r["job"], r["condition"])
        best[key] = min(best.get(key, float("inf")), r["epoch"])
    print("| job | machine | threads= | threads used | s/epoch | x best | s/eval |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = r["epoch"] / best[(r["job"], r["condition"])]
        print(f"| {r['job']} | {r['condition']} | {r['setting']} | {r['used']} | "
              f"{r['epoch']:.3f} | {ratio:.2f} | {r['eval']:.3f} |")


if __name__ == "__main__":
    main()
