r"""CPU seconds per training epoch with PyTorch's default Adam against the fused Adam of
:func:`brmrs_pyg.train.make_optimizer`, side by side in one process.

    python benchmarks/fused_adam.py --dataset synthetic_sports --models lightgcn bm3 \
        --steps 15 --rounds 3

For each model, two copies are built from the same seed, one per optimiser; after a warm-up
epoch each, their epochs alternate for ``--rounds`` rounds and the process CPU time of each is
recorded (the number that survives other jobs on a shared machine). ``--steps N`` trains each
epoch on N batches drawn once from the training pairs (the per-step cost, for data where a
whole epoch is long). Prints a Markdown table of the median CPU seconds per epoch of each and
their ratio.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]


def epoch_of(dataset: str, model_name: str, fused: bool, steps: int) -> Callable[[], object]:
    r"""One training epoch of a fresh ``model_name`` (seed 0, card defaults) on CPU with the
    fused Adam or PyTorch's default one."""
    import torch

    from brmrs_pyg.pipeline import (Paths, build_evaluators, build_model, card_of,
                                    load_config, load_data, seed_everything)
    from brmrs_pyg.train import make_optimizer, train_epoch

    name, _, data_dir = dataset.partition(":")
    paths = Paths(ROOT)
    run = {"dataset": name, "model": model_name, "device": "cpu"}
    if data_dir:
        run["data_dir"] = data_dir
    config = load_config(paths, [("benchmark", run)])
    seed_everything(0)
    data = load_data(card_of(config, paths), config, paths)
    model = build_model(config, data, torch.device("cpu"))
    index, _ = build_evaluators(data, torch.device("cpu"), config.run.eval_batch_size)
    optimizer = (make_optimizer(model, config.run.lr) if fused
                 else torch.optim.Adam(model.parameters(), lr=config.run.lr))
    edges = data.train
    if steps:
        generator = torch.Generator().manual_seed(0)
        pick = torch.randperm(edges.size(1), generator=generator)
        edges = edges[:, pick[:steps * config.run.batch_size]]
    return lambda: train_epoch(model, optimizer, edges, index, config.run.batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="synthetic_sports", help="NAME or NAME:DIR")
    parser.add_argument("--models", nargs="+", default=["lightgcn", "brmrs"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=0,
                        help="batches per epoch (0: the whole training split)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    print("| model | default Adam CPU s / epoch | fused CPU s / epoch | ratio |")
    print("|---|---|---|---|")
    for model in args.models:
        epochs = {fused: epoch_of(args.dataset, model, fused, args.steps)
                  for fused in (False, True)}
        for epoch in epochs.values():
            epoch()
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.rounds):
            for fused, epoch in epochs.items():
                start = time.process_time()
                epoch()
                times[fused].append(time.process_time() - start)
        default, fused = (statistics.median(times[f]) for f in (False, True))
        print(f"| {model} | {default:.3f} | {fused:.3f} | {default / fused:.2f} |", flush=True)


if __name__ == "__main__":
    main()
