r"""The paper's diagnostics of a finished run (DESIGN.md section 1, "Diagnostics"), written by
``python run.py analyze DIR`` to ``DIR/analysis.json`` with plots beside it.

For every held-out pair :math:`(u, i^+)` of a split and every branch :math:`b` (each modality
and ``fused``) the rank

.. math::
    r_b(u, i^+) = 1 + |\{j \notin \mathcal{O}^{train}_u,\ j \ne i^+ : s_b(u, j) > s_b(u, i^+)\}|

(a tie counts in the positive's favour), and a hit at :math:`K` is :math:`r_b \le K`. With
hits :math:`T, V, F` under the two modalities :math:`m_1, m_2` and the fused branch, each
pair falls in exactly one class of the partition

=================  ==========================================
``redundant``      :math:`V \wedge T \wedge F`
``degraded``       :math:`V \wedge T \wedge \neg F`
``<m1>_unique``    :math:`T \wedge \neg V`
``<m2>_unique``    :math:`V \wedge \neg T`
``synergy``        :math:`\neg V \wedge \neg T \wedge F`
``all_fail``       :math:`\neg V \wedge \neg T \wedge \neg F`
=================  ==========================================

(:math:`T` the hits of :math:`m_1`, :math:`V` those of :math:`m_2`). A ``<m>_unique`` class
ignores :math:`F`; the report also splits each by whether the fused branch keeps the hit
(``unique_split@K``, shares of all pairs, and ``unique_split_counts@K``), so the unique pairs
that fusion loses are seen (``degraded`` only counts pairs both modalities hit):

======================  ==========================================
``<m1>_unique_kept``    :math:`T \wedge \neg V \wedge F`
``<m1>_unique_lost``    :math:`T \wedge \neg V \wedge \neg F`
``<m2>_unique_kept``    :math:`V \wedge \neg T \wedge F`
``<m2>_unique_lost``    :math:`V \wedge \neg T \wedge \neg F`
======================  ==========================================

``<m>_unique_kept + <m>_unique_lost = <m>_unique``. Per branch, Recall@K
from the same ranks averages :math:`|\{i^+ : r \le K\}| / |T_u|` over users, as the evaluator
does (equal to it when no scores tie).

**Margins.** Each pair gets a pool of :math:`P` candidates drawn uniformly, with a fixed seed,
from the items that are neither the user's training nor held-out items (a held-out item of
the user is not a negative). The CHNS negative of modality :math:`m` is the pool's hardest
candidate under the *other* modality, :math:`j_{m'} = \arg\max_{j} s_{m'}(u, j)`; the uniform
negative is the pool's first column. The report gives the distribution of
:math:`s_m(u, i^+) - s_m(u, j)` for both. The cross-modal confusion rate
``"<m'>-><b>"`` is the fraction of pairs with :math:`s_b(u, i^+) > s_b(u, j_{m'})`: the
negative that :math:`m'` ranks highest is separated by branch :math:`b`.

**Ground truth.** When the run's data folder has ``ground_truth.tsv`` (synthetic data,
:mod:`brmrs_pyg.data.synthetic`, or written by hand with types ``<m>_unique`` for the
dataset's modalities, ``synergy`` and ``redundant``), every pair's type is known, and the
report adds, per type, the pair count, each branch's hit rate at :math:`K` (hits / pairs of
the type) and the partition and unique-split counts.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from brmrs_pyg.data.mmrec import InteractionData
from brmrs_pyg.data.synthetic import GroundTruth, read_ground_truth, truth_types
from brmrs_pyg.interactions import PairIndex
from brmrs_pyg.io import atomic_write_json
from brmrs_pyg.losses import warmup_weight
from brmrs_pyg.pipeline import Paths, data_dir_of
from brmrs_pyg.recommenders.base import gather, row_scores
from brmrs_pyg.recommenders.brmrs import FUSED
from brmrs_pyg.sampling import hardest_in_pool, sample_negatives
from brmrs_pyg.restore import branch_embeddings, restore_run

log = logging.getLogger(__name__)
SPLIT_LABELS = {"valid": 1, "test": 2}
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
#: Pair-times-item scores compared at once when ranking (bounds the memory of :func:`ranks`).
RANK_BLOCK = 1 << 24


class GroundTruthSource(NamedTuple):
    r"""Where a run's ground truth may be (``folder/ground_truth.tsv``), and the dataset's
    modalities, which name its ``<m>_unique`` types."""

    folder: Path
    modalities: tuple[str, ...]


class AnalysisError(ValueError):
    r"""A run that cannot be analysed (missing files, a model without branches, bad options)."""


def heldout_pairs(train: PairIndex, heldout: PairIndex) -> tuple[Tensor, Tensor]:
    r"""The held-out pairs the evaluator ranks: those of users with a training and a held-out
    interaction, sorted by user then item.

    Shapes:
        - **output**: ``(users, items)``, each :math:`(N,)`.
    """
    eligible = torch.nonzero((heldout.degree() > 0) & (train.degree() > 0)).view(-1)
    rows, items = heldout.pairs_of(eligible)
    return eligible[rows], items


@torch.no_grad()
def ranks(user_emb: Tensor, item_emb: Tensor, users: Tensor, items: Tensor,
          train: PairIndex, chunk_size: int = 1024) -> Tensor:
    r"""Rank of each held-out pair among the user's non-training items (module docstring).

    Users are scored ``chunk_size`` at a time against all items, and the comparison runs on
    at most :data:`RANK_BLOCK` scores at once: never a users x items matrix for all users.

    Args:
        user_emb (Tensor): :math:`(|\mathcal{U}|, d)`; **item_emb**: :math:`(|\mathcal{I}|, d)`.
        users (Tensor): :math:`(N,)` user of each pair, ascending.
        items (Tensor): :math:`(N,)` held-out item of each pair.
        train (PairIndex): Training interactions, excluded from the ranking.

    Shapes:
        - **output**: :math:`(N,)`, int64 in :math:`[1, |\mathcal{I}|]`.
    """
    out = torch.empty_like(users)
    uniq, inverse = torch.unique_consecutive(users, return_inverse=True)
    bounds = torch.searchsorted(inverse, torch.arange(0, uniq.numel() + chunk_size, chunk_size))
    block = max(1, RANK_BLOCK // max(item_emb.size(0), 1))
    for c, start in enumerate(range(0, uniq.numel(), chunk_size)):
        chunk = uniq[start:start + chunk_size]
        scores = user_emb[chunk] @ item_emb.T
        rows, masked = train.pairs_of(chunk)
        scores[rows, masked] = -float("inf")
        for lo in range(int(bounds[c]), int(bounds[c + 1]), block):
            sel = slice(lo, min(lo + block, int(bounds[c + 1])))
            local = inverse[sel] - start
            pos = scores[local, items[sel]]
            out[sel] = 1 + (scores[local] > pos[:, None]).sum(1, dtype=torch.int32)
    return out


def recall_from_ranks(rank: Tensor, users: Tensor, k: int) -> float:
    r"""Recall@k averaged over users, from the ranks of all their held-out pairs."""
    hits = torch.bincount(users, weights=(rank <= k).double())
    total = torch.bincount(users).double()
    present = total > 0
    return float((hits[present] / total[present]).mean()) if bool(present.any()) else 0.0


def partition(hits: dict[str, Tensor], pair: tuple[str, str]) -> dict[str, Tensor]:
    r"""The six-way partition (module docstring) as boolean masks over the pairs, keyed
    ``redundant``, ``degraded``, ``<m1>_unique``, ``<m2>_unique``, ``synergy``, ``all_fail``."""
    t, v, f = hits[pair[0]], hits[pair[1]], hits[FUSED]
    return {"redundant": t & v & f, "degraded": t & v & ~f, f"{pair[0]}_unique": t & ~v,
            f"{pair[1]}_unique": v & ~t, "synergy": ~t & ~v & f, "all_fail": ~t & ~v & ~f}


def unique_split(hits: dict[str, Tensor], pair: tuple[str, str]) -> dict[str, Tensor]:
    r"""Each ``<m>_unique`` class of :func:`partition` split by the fused branch's hit, as
    boolean masks over the pairs: ``<m1>_unique_kept`` (:math:`T \wedge \neg V \wedge F`),
    ``<m1>_unique_lost`` (:math:`T \wedge \neg V \wedge \neg F`), then the same for ``m2``."""
    t, v, f = hits[pair[0]], hits[pair[1]], hits[FUSED]
    out = {}
    for m, only in ((pair[0], t & ~v), (pair[1], v & ~t)):
        out[f"{m}_unique_kept"], out[f"{m}_unique_lost"] = only & f, only & ~f
    return out


def summary(values: Tensor) -> dict[str, float]:
    r"""Mean, standard deviation, :data:`QUANTILES` and the fraction above zero."""
    v = values.double()
    out = {"mean": float(v.mean()), "std": float(v.std()) if v.numel() > 1 else 0.0,
           "frac_positive": float((v > 0).double().mean())}
    q = torch.quantile(v, torch.tensor(QUANTILES, dtype=torch.float64))
    out.update({f"q{round(100 * p):02d}": float(x) for p, x in zip(QUANTILES, q)})
    return out


@torch.no_grad()
def pool_margins(branches: dict[str, tuple[Tensor, Tensor]], users: Tensor, items: Tensor,
                 known: PairIndex, pair: tuple[str, str], pool_size: int, seed: int,
                 chunk: int = 8192) -> tuple[dict[str, dict[str, Tensor]], dict[str, float]]:
    r"""CHNS and uniform margins per modality of ``pair``, and the cross-modal confusion rates
    (module docstring), from a pool of ``pool_size`` candidates per pair outside ``known``
    drawn with ``seed``.

    Returns:
        ``({m: {"chns": (N,), "uniform": (N,)}}, {"<source>-><branch>": rate})``.
    """
    gen = torch.Generator(device=users.device).manual_seed(seed)
    pool = sample_negatives(users, known, pool_size, generator=gen)
    pos: dict[str, list[Tensor]] = {b: [] for b in branches}
    cand: dict[str, list[Tensor]] = {b: [] for b in branches}
    for lo in range(0, users.numel(), chunk):
        u, i, p = users[lo:lo + chunk], items[lo:lo + chunk], pool[lo:lo + chunk]
        for name, (user_emb, item_emb) in branches.items():
            ue = gather(user_emb, u)
            pos[name].append((ue * gather(item_emb, i)).sum(-1))
            cand[name].append(row_scores(ue, gather(item_emb, p)))
    pos_s = {b: torch.cat(v) for b, v in pos.items()}
    pool_s = {b: torch.cat(v) for b, v in cand.items()}
    hardest = {m: hardest_in_pool(pool_s[m], 1) for m in pair}
    margins = {}
    for m, other in (pair, pair[::-1]):
        margins[m] = {"chns": pos_s[m] - pool_s[m].gather(1, hardest[other]).squeeze(1),
                      "uniform": pos_s[m] - pool_s[m][:, 0]}
    confusion = {f"{src}->{b}": float((pos_s[b] > pool_s[b].gather(1, hardest[src]).squeeze(1))
                                      .double().mean())
                 for src in pair for b in (*pair, FUSED)}
    return margins, confusion


def pair_types(truth: GroundTruth, users: Tensor, items: Tensor, label: int,
               num_items: int, where: Path) -> np.ndarray:
    r"""The ground-truth type of each pair ``(users[j], items[j])`` of split ``label``.

    Raises:
        AnalysisError: A pair is missing from ``ground_truth.tsv`` (data regenerated since?).
    """
    keep = truth.labels == label
    keys = truth.users[keep] * num_items + truth.items[keep]
    order = np.argsort(keys)
    query = users.numpy() * num_items + items.numpy()
    pos = np.searchsorted(keys[order], query).clip(max=max(len(keys) - 1, 0))
    found = (keys[order][pos] == query) if len(keys) else np.zeros(len(query), dtype=bool)
    if not found.all():
        user, item = divmod(int(query[np.flatnonzero(~found)[0]]), num_items)
        raise AnalysisError(f"{where}: no ground truth for held-out pair (user {user}, item "
                            f"{item}); was the dataset regenerated after the run?")
    return truth.types[keep][order][pos]


def by_type(types: np.ndarray, hits: dict[int, dict[str, Tensor]],
            classes: dict[str, dict[int, dict[str, Tensor]]],
            order: tuple[str, ...]) -> dict[str, Any]:
    r"""Per ground-truth type present in ``types``, in the ``order`` of the known types: pair
    counts, each branch's hit rate at every K, and, for each family of ``classes`` (e.g.
    ``partition`` and ``unique_split``, each K -> class -> mask), its counts at every K."""
    present = set(types.tolist())
    names = [t for t in order if t in present]
    masks = {t: torch.from_numpy(types == t) for t in names}
    out: dict[str, Any] = {"counts": {t: int(m.sum()) for t, m in masks.items()}}
    for k in hits:
        out[f"recall@{k}"] = {b: {t: float(h[m].double().mean()) for t, m in masks.items()}
                              for b, h in hits[k].items()}
        for family, at in classes.items():
            out[f"{family}@{k}"] = {t: {c: int((cm & m).sum()) for c, cm in at[k].items()}
                                    for t, m in masks.items()}
    return out


def choose_pair(names: list[str], modalities: tuple[str, ...] | None) -> tuple[str, str]:
    r"""The two modalities the partition compares: the model's two, or the ``modalities``
    chosen among more."""
    if modalities is None:
        if len(names) != 2:
            raise AnalysisError(f"the partition compares two modalities; the model has "
                                f"{names}: choose two with --modalities a,b")
        return names[0], names[1]
    if len(modalities) != 2 or len(set(modalities)) != 2 or set(modalities) - set(names):
        raise AnalysisError(f"--modalities must name two different modalities of the model "
                            f"({', '.join(names)}), got {','.join(modalities)}")
    return modalities[0], modalities[1]


def analyze_run(run_dir: Path, paths: Paths, ks: tuple[int, ...] = (10, 20),
                split: str = "test", plots: bool = True,
                modalities: tuple[str, ...] | None = None, pool_size: int = 10,
                seed: int = 0) -> dict:
    r"""Writes ``run_dir/analysis.json`` (and, with ``plots``, PNGs beside it) with the
    diagnostics of the module docstring, computed on CPU from the run's best-valid weights.

    Args:
        run_dir (Path): A finished run (``results.json`` and ``best.pt``).
        paths (Paths): Where the dataset and model cards are.
        ks (tuple, optional): Cut-offs :math:`K`. (default: :obj:`(10, 20)`)
        split (str, optional): ``"test"`` or ``"valid"``. (default: ``"test"``)
        plots (bool, optional): Also write PNG plots (needs matplotlib). (default: :obj:`True`)
        modalities (tuple, optional): The two modalities the partition compares, needed when
            the model has more than two. (default: :obj:`None`)
        pool_size (int, optional): Candidates per pair for the margins. (default: :obj:`10`)
        seed (int, optional): Seed of the candidate pools. (default: :obj:`0`)

    Returns:
        The report written to ``analysis.json``.
    """
    run_dir = Path(run_dir)
    if split not in SPLIT_LABELS or not ks or min(ks) < 1 or pool_size < 1:
        raise AnalysisError(f"need split in {tuple(SPLIT_LABELS)}, cut-offs >= 1 and a pool "
                            f"size >= 1; got split={split!r}, ks={ks}, pool_size={pool_size}")
    config, card, data, model = restore_run(run_dir, paths, device="cpu")
    branches = {b: (u.float(), i.float()) for b, (u, i) in branch_embeddings(model).items()}
    if len(branches) == 1:
        # a one-branch model: its ranking is all there is to analyse (recall, ranks and, on
        # synthetic data, recall per ground-truth type); nothing to partition or compare
        log.warning("model %r has no per-branch embeddings (branches()): no partition, "
                    "margins or confusion, only its own ranking", config.run.model)
    pair = (choose_pair([b for b in branches if b != FUSED], modalities)
            if len(branches) > 1 else None)
    report, margins = _report(data, branches, pair, sorted(set(ks)), split, pool_size, seed,
                              GroundTruthSource(data_dir_of(config, paths),
                                                tuple(m.name for m in card.modalities)))
    results = json.loads((run_dir / "results.json").read_text())
    report = {"run": str(run_dir), "dataset": config.run.dataset, "model": config.run.model,
              **report, "loss_terms": loss_terms(results.get("history", []),
                                                 results.get("config", {}),
                                                 results.get("best_epoch"))}
    if plots:
        from brmrs_pyg.analysis_plots import write_plots
        report["plots"] = write_plots(report, margins, run_dir)
    atomic_write_json(run_dir / "analysis.json", report)
    log.info("wrote %s", run_dir / "analysis.json")
    return report


#: The config key weighting each logged loss term of the BR-MRS objective (and its plug-in);
#: any other term is counted with weight 1, which :func:`loss_terms` checks against the
#: logged total.
TERM_WEIGHTS = {"bpr": "lambda_bpr", "chns": "lambda_h", "syn": "lambda_s", "reg": "reg_weight"}
#: The terms that ``balance_terms`` scales to the fused BPR (``bpr``).
BALANCED_TERMS = ("chns", "syn")
#: Share of the loss above which a term is reported as dominating it.
DOMINANT_SHARE = 0.5


def loss_terms(history: list[dict[str, float]], config: dict[str, Any],
               best_epoch: int | None) -> dict[str, Any]:
    r"""What each term of the training loss weighs, from a run's per-epoch ``history``: the
    weighted terms :math:`w_t \ell_t` (weights from :data:`TERM_WEIGHTS` and the run's
    ``config``, the synergy weight ramped over ``syn_warmup`` epochs, the terms scaled to the
    fused BPR with ``balance_terms``), their share of the logged loss at the best and the
    last epoch, and the term whose share at the best epoch is above :data:`DOMINANT_SHARE`
    (``dominant``, or ``None``). Shares are given only when the weighted terms add up to the
    logged loss at every epoch (``consistent``); a model whose loss has parts it does not log
    is reported with its raw terms alone."""
    terms = [k for k in (history[0] if history else {})
             if k not in ("epoch", "loss") and "@" not in k]
    weights = {t: float(config.get(TERM_WEIGHTS.get(t, ""), 1.0)) for t in terms}
    warmup = int(config.get("syn_warmup", 0) or 0)  # the synergy weight's ramp, if any
    # balance_terms: each step's CHNS and synergy terms are scaled to that step's fused BPR,
    # so their epoch means are their weights times the BPR's
    balanced = {t for t in BALANCED_TERMS if config.get("balance_terms") and "bpr" in terms}

    def weight(term: str, epoch: int) -> float:
        return weights[term] * (warmup_weight(epoch, warmup) if term == "syn" else 1.0)
    weighted = {t: [weight(t, int(row["epoch"])) * row["bpr" if t in balanced else t]
                    for row in history] for t in terms}
    totals = [row["loss"] for row in history]
    consistent = bool(history) and all(
        abs(sum(weighted[t][e] for t in terms) - total) <= 1e-3 * abs(total) + 1e-4
        for e, total in enumerate(totals))
    out: dict[str, Any] = {"terms": terms, "weights": weights, "consistent": consistent,
                           "epochs": [row["epoch"] for row in history],
                           "loss": totals, "raw": {t: [row[t] for row in history] for t in terms},
                           "weighted": weighted, "best_epoch": best_epoch, "dominant": None}
    if not consistent:
        return out
    epochs = out["epochs"]
    at = {"best": epochs.index(best_epoch) if best_epoch in epochs else len(epochs) - 1,
          "last": len(epochs) - 1}
    for name, e in at.items():
        out[f"share_at_{name}"] = {t: weighted[t][e] / totals[e] if totals[e] else 0.0
                                   for t in terms}
    top = max(terms, key=lambda t: out["share_at_best"][t], default=None)
    if top is not None and out["share_at_best"][top] > DOMINANT_SHARE:
        out["dominant"] = top
    return out


def _report(data: InteractionData, branches: dict[str, tuple[Tensor, Tensor]],
            pair: tuple[str, str] | None, ks: list[int], split: str, pool_size: int, seed: int,
            source: GroundTruthSource) -> tuple[dict[str, Any], dict[str, dict[str, Tensor]]]:
    r"""Every number of :func:`analyze_run`, as a JSON-ready dict, and the raw margins (for
    the histograms; the report keeps their summaries). Without a ``pair`` (a one-branch
    model) only the ranking's numbers."""
    train = PairIndex.from_edges(data.train, data.num_users, data.num_items)
    heldout = data.split(split)
    users, items = heldout_pairs(train, PairIndex.from_edges(heldout, data.num_users,
                                                             data.num_items))
    if users.numel() == 0:
        raise AnalysisError(f"the {split} split has no pair to analyse")
    rank = {b: ranks(u, i, users, items, train) for b, (u, i) in branches.items()}
    hits = {k: {b: r <= k for b, r in rank.items()} for k in ks}
    classes = {family: {k: masks(hits[k], pair) if pair else {} for k in ks}
               for family, masks in (("partition", partition), ("unique_split", unique_split))}
    n = users.numel()
    report: dict[str, Any] = {"split": split, "ks": ks, "modalities": list(pair or ()),
                              "branches": list(branches), "num_pairs": n,
                              "num_users": int(users.unique().numel())}
    for k in ks:
        if pair:
            for family, at in classes.items():
                report[f"{family}@{k}"] = {c: int(m.sum()) / n for c, m in at[k].items()}
                report[f"{family}_counts@{k}"] = {c: int(m.sum()) for c, m in at[k].items()}
        report[f"recall@{k}"] = {b: recall_from_ranks(r, users, k) for b, r in rank.items()}
    report["median_rank"] = {b: float(r.double().median()) for b, r in rank.items()}
    margins: dict[str, dict[str, Tensor]] = {}
    if pair:
        known = PairIndex.from_edges(torch.cat([data.train, heldout], 1), data.num_users,
                                     data.num_items)
        margins, confusion = pool_margins(branches, users, items, known, pair, pool_size,
                                          seed)
        report["pool"] = {"size": pool_size, "seed": seed}
        report["margins"] = {m: {kind: summary(v) for kind, v in d.items()}
                             for m, d in margins.items()}
        report["cross_modal_confusion"] = confusion
    truth = read_ground_truth(source.folder, source.modalities)
    if truth is not None:
        types = pair_types(truth, users, items, SPLIT_LABELS[split], data.num_items,
                           source.folder / "ground_truth.tsv")
        report["ground_truth"] = by_type(types, hits, classes, truth_types(source.modalities))
    return report, margins
