r"""Baselines of the cold-start item protocol (``split=cold_items``) that learn nothing, to
read the trained models' numbers against. None may look at a cold item's valid or test
interactions: a cold item has features and nothing else.

- ``random``: uniformly random scores, the floor (about :math:`K / |C|` Recall@K among
  :math:`|C|` candidates).
- ``cold_pop``: popularity predicted from the features, the same list for every user. A cold
  item has no popularity of its own, so its score is the mean training popularity (number of
  training interactions) of its ``knn_k`` most similar warm items by cosine of the features,
  averaged over the modalities; a warm item's score is its own training popularity.
- ``feature_knn``: item-kNN on the features, personalised,

  .. math::
      s(u, i) = \frac{1}{M} \sum_m \frac{1}{|\mathcal{O}_u|} \sum_{j \in \mathcal{O}_u}
      \cos(\mathbf{x}^m_i, \mathbf{x}^m_j),

  the mean cosine of the item to the user's training items, averaged over the modalities.

They are scorers, not models: they have nothing to train, and the trainer wants parameters.
Each is evaluated with the runs' own evaluators (the same split, masking and metrics).

Usage (the split and modalities are a run's, from the same keys)::

    python -m brmrs_pyg.experiments.coldstart --dataset lfm2k --data-dir ../shared/data/lfm2k \
        [--seeds 999,1,2] [--out FILE.json] [key=value ...]
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from brmrs_pyg.data.mmrec import InteractionData
from brmrs_pyg.evaluation import Scorer
from brmrs_pyg.graphs import interaction_matrix
from brmrs_pyg.nn.sparse import spmm
from brmrs_pyg.pipeline import Paths, build_evaluators, card_of, load_config, load_data
from brmrs_pyg.threads import set_threads

log = logging.getLogger(__name__)

#: The metrics of the table: cold-item ranking (``test``) and all items (``test_all_items``).
TABLE_METRICS = ("recall@20", "ndcg@20")


def random_scorer(num_items: int, seed: int) -> Scorer:
    r"""Uniform random scores, a fresh draw for every call, from a generator seeded once."""
    generator = torch.Generator().manual_seed(seed)
    return lambda users: torch.rand(users.numel(), num_items, generator=generator)


def feature_knn_scorer(data: InteractionData) -> Scorer:
    r"""``feature_knn`` (module docstring): the users' mean normalised training-item features
    per modality, scored by inner product with the items' normalised features."""
    mean = interaction_matrix(data.train, data.num_users, data.num_items, "mean")
    items = [F.normalize(x.float(), dim=1) for x in data.features.values()]
    user = torch.cat([spmm(mean, x) for x in items], 1) / len(items)
    item = torch.cat(items, 1)
    return lambda users: user[users] @ item.T


def cold_popularity(data: InteractionData, k: int, chunk_size: int = 4096) -> Tensor:
    r"""``cold_pop``'s scores (module docstring), shape :math:`(|\mathcal{I}|,)`: the training
    popularity of a warm item, the modality-averaged mean popularity of the ``k`` most similar
    warm items of a cold item."""
    if data.cold is None:
        raise ValueError("cold_popularity needs a cold-item split (data.cold)")
    popularity = torch.bincount(data.train[1], minlength=data.num_items).float()
    cold = data.cold.mask(data.num_items)
    cold_ids, warm_ids = cold.nonzero().view(-1), (~cold).nonzero().view(-1)
    k = min(k, warm_ids.numel())
    estimate = torch.zeros(cold_ids.numel())
    for x in data.features.values():
        x = F.normalize(x.float(), dim=1)
        for start in range(0, cold_ids.numel(), chunk_size):
            rows = cold_ids[start:start + chunk_size]
            nearest = (x[rows] @ x[warm_ids].T).topk(k, dim=1).indices
            estimate[start:start + rows.numel()] += popularity[warm_ids[nearest]].mean(1)
    scores = popularity.clone()
    scores[cold_ids] = estimate / len(data.features)
    return scores


def evaluate_baselines(data: InteractionData, knn_k: int, seeds: Sequence[int],
                       chunk_size: int = 4096) -> dict[str, list[dict[str, Any]]]:
    r"""Every baseline's ``{"test": metrics, "test_all_items": metrics}``, one entry per seed
    for ``random``, one for the deterministic ``cold_pop`` and ``feature_knn``."""
    _, evaluators = build_evaluators(data, torch.device("cpu"), chunk_size)
    popularity = cold_popularity(data, knn_k)

    def popular(users: Tensor) -> Tensor:
        return popularity.expand(users.numel(), -1).clone()

    scorers: dict[str, list[Scorer]] = {
        "random": [random_scorer(data.num_items, s) for s in seeds],
        "cold_pop": [popular],
        "feature_knn": [feature_knn_scorer(data)],
    }
    return {name: [{split: evaluators[split].evaluate(scorer).metrics
                    for split in ("test", "test_all_items")} for scorer in group]
            for name, group in scorers.items()}


def table(results: dict[str, list[dict[str, Any]]]) -> str:
    r"""A markdown table of :data:`TABLE_METRICS`, mean ± std over the entries of a row."""
    head = [f"{split} {m}" for split in ("test", "test_all_items") for m in TABLE_METRICS]
    lines = ["| baseline | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for name, entries in results.items():
        cells = []
        for split in ("test", "test_all_items"):
            for metric in TABLE_METRICS:
                values = [e[split][metric] for e in entries]
                std = statistics.stdev(values) if len(values) > 1 else 0.0
                cells.append(f"{statistics.mean(values):.4f} ± {std:.4f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, root: Path | None = None) -> int:
    r"""The command line of the module docstring; prints the table, writes ``--out``."""
    parser = argparse.ArgumentParser(prog="python -m brmrs_pyg.experiments.coldstart",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--dataset", default=None)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--seeds", default="999,1,2", help="seeds of the random baseline")
    parser.add_argument("--out", default=None, help="JSON file for every number")
    parser.add_argument("overrides", nargs="*", help="run keys, key=value (split_seed, "
                        "cold_ratio, modalities, knn_k, ...)")
    args = parser.parse_args(argv)
    keys: dict[str, Any] = dict(kv.split("=", 1) for kv in args.overrides)
    keys.update({k: v for k, v in (("dataset", args.dataset), ("data_dir", args.data_dir))
                 if v is not None})
    # a features model, so that the data load reads the modalities; it is never built
    keys = {"model": "vbpr", **keys, "split": "cold_items"}
    paths = Paths(root or Path(__file__).resolve().parents[2])
    config = load_config(paths, [("command line", keys)])
    data = load_data(card_of(config, paths), config, paths)
    set_threads(config.run.threads, torch.device("cpu"))
    seeds = [int(s) for s in args.seeds.split(",")]
    results = evaluate_baselines(data, config.run.knn_k, seeds, config.run.eval_batch_size)
    print(table(results))
    if args.out:
        Path(args.out).write_text(json.dumps({"config": config.flat(), "dataset": data.stats(),
                                              "baselines": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
