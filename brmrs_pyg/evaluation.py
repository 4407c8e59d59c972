r"""Full-ranking evaluation with MMRec's protocol (DESIGN.md section 4).

Every eligible user is scored against every item; the user's training items are masked out
(for valid and for test); users with no training interaction or no held-out item in the split
are skipped. Metrics at :math:`K`, for a user with held-out set :math:`T` and top-:math:`K`
hits :math:`h_1..h_K \in \{0,1\}`:

.. math::
    \text{Recall@}K = \frac{\sum_r h_r}{|T|}, \quad
    \text{NDCG@}K = \frac{\sum_r h_r / \log_2(r+1)}{\sum_{r=1}^{\min(|T|,K)} 1/\log_2(r+1)},

.. math::
    \text{Precision@}K = \frac{\sum_r h_r}{K}, \quad
    \text{MAP@}K = \frac{1}{\min(|T|,K)} \sum_r h_r \cdot \text{Precision@}r,

each averaged over users. Users are scored in chunks, so memory is
:math:`O(\text{chunk} \times |\mathcal{I}|)` whatever the number of users.

With a candidate set (the cold-start protocol, ``split=cold_items``: the split's cold items)
every item outside it is masked as well, so a user's list ranks the candidates only; the
held-out items must all be candidates.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from brmrs_pyg.allocator import rows_per_block
from brmrs_pyg.config import METRIC_NAMES, TOPKS
from brmrs_pyg.interactions import PairIndex

#: ``scorer(users) -> scores`` of shape ``(len(users), num_items)``; higher ranks first.
Scorer = Callable[[Tensor], Tensor]


def recall_at_k(hits: Tensor, num_pos: Tensor, k: int) -> Tensor:
    r"""Per-user Recall@k from a hit matrix (see the module docstring)."""
    return hits[:, :k].sum(1) / num_pos


def precision_at_k(hits: Tensor, num_pos: Tensor, k: int) -> Tensor:
    r"""Per-user Precision@k."""
    return hits[:, :k].sum(1) / k


def ndcg_at_k(hits: Tensor, num_pos: Tensor, k: int) -> Tensor:
    r"""Per-user NDCG@k with IDCG over :math:`\min(|T|, k)` positions."""
    discount = 1.0 / torch.log2(torch.arange(2, k + 2, device=hits.device, dtype=torch.float))
    dcg = (hits[:, :k] * discount).sum(1)
    idcg = torch.cumsum(discount, 0)[(num_pos.clamp(max=k) - 1).long()]
    return dcg / idcg


def map_at_k(hits: Tensor, num_pos: Tensor, k: int) -> Tensor:
    r"""Per-user MAP@k normalised by :math:`\min(|T|, k)`."""
    h = hits[:, :k]
    prec = torch.cumsum(h, 1) / torch.arange(1, k + 1, device=hits.device)
    return (prec * h).sum(1) / num_pos.clamp(max=k)


METRICS: dict[str, Callable[[Tensor, Tensor, int], Tensor]] = {
    "recall": recall_at_k, "ndcg": ndcg_at_k, "precision": precision_at_k, "map": map_at_k}
assert tuple(METRICS) == METRIC_NAMES


@dataclass
class EvalResult:
    r"""Metrics averaged over evaluated users, and optionally every user's top list.

    Attributes:
        metrics (dict): ``"recall@20" -> value`` for every metric and :data:`TOPKS`.
        num_users (int): Users evaluated.
        tie_rate (float): Fraction of users whose scores at ranks ``max(TOPKS)`` and
            ``max(TOPKS)+1`` are equal, i.e. whose list is cut inside a tie (order then
            depends on item ids, not on the model).
        users (Tensor, optional): Evaluated user ids, in the row order of ``topk`` and
            ``per_user``.
        topk (Tensor, optional): :math:`(\text{num\_users}, \max K)` ranked item ids; ``-1``
            pads the lists of users with fewer unmasked items than :math:`\max K`.
        per_user (dict, optional): ``"recall@20" -> (num_users,)`` every user's value of every
            metric; ``metrics`` is their mean.
    """

    metrics: dict[str, float]
    num_users: int
    tie_rate: float
    users: Tensor | None = None
    topk: Tensor | None = None
    per_user: dict[str, Tensor] | None = None


class Evaluator:
    r"""Full-ranking evaluator of one held-out split.

    Args:
        train (PairIndex): Training interactions (masked from the ranking).
        heldout (PairIndex): The split's interactions (the relevant items).
        chunk_size (int, optional): Users scored at once, at most; on a CPU fewer where
            their scores would pass 32 MiB (:attr:`chunk_rows`,
            :func:`~brmrs_pyg.allocator.rows_per_block`). (default: :obj:`4096`)
        ks (tuple, optional): Cut-offs. (default: :obj:`(5, 10, 20, 50)`)
        candidates (Tensor, optional): The only items ranked, ids of shape :math:`(C,)`; every
            held-out item must be one. (default: :obj:`None`, all items)

    >>> train = PairIndex.from_edges(torch.tensor([[0], [0]]), num_users=1, num_items=4)
    >>> test = PairIndex.from_edges(torch.tensor([[0], [3]]), num_users=1, num_items=4)
    >>> ev = Evaluator(train, test, ks=(1,), candidates=torch.tensor([2, 3]))
    >>> ev.evaluate(lambda users: torch.tensor([[9.0, 8.0, 1.0, 2.0]])).metrics["recall@1"]
    1.0
    """

    def __init__(self, train: PairIndex, heldout: PairIndex, chunk_size: int = 4096,
                 ks: tuple[int, ...] = TOPKS, candidates: Tensor | None = None) -> None:
        self.train = train
        self.heldout = heldout
        self.chunk_size = chunk_size
        #: Users scored at once: ``chunk_size``, fewer on a CPU (a chunk's float scores
        #: at most 32 MiB, which the allocator reuses from chunk to chunk).
        self.chunk_rows = score_chunk_rows(chunk_size, train.num_items, heldout.col.device)
        self.ks = ks
        eligible = (heldout.degree() > 0) & (train.degree() > 0)
        self.users = torch.nonzero(eligible).view(-1)
        #: :math:`(|\mathcal{I}|,)` items masked for every user (outside ``candidates``), or
        #: :obj:`None`.
        self.excluded: Tensor | None = None
        if candidates is not None:
            excluded = outside(candidates, train.num_items, heldout.col.device)
            if bool(excluded[heldout.col].any()):
                item = int(heldout.col[excluded[heldout.col]][0])
                raise ValueError(f"held-out item {item} is not a candidate: every held-out "
                                 "item must be among the candidates, or it could never be hit")
            self.excluded = excluded

    @torch.no_grad()
    def evaluate(self, scorer: Scorer, return_topk: bool = False,
                 return_per_user: bool = False) -> EvalResult:
        r"""Scores every eligible user with ``scorer`` and averages the metrics; with
        ``return_topk`` / ``return_per_user`` also returns the users, their top lists /
        their values of every metric (for paired tests between runs)."""
        max_k = max(self.ks)
        num_items = self.train.num_items
        sums = {f"{m}@{k}": 0.0 for m in METRICS for k in self.ks}
        rows_of: dict[str, list[Tensor]] = {key: [] for key in sums}
        ties, tops = 0, []
        for start in range(0, self.users.numel(), self.chunk_rows):
            users = self.users[start:start + self.chunk_rows]
            scores = scorer(users).float()
            if scores.shape != (users.numel(), num_items):
                raise ValueError(f"scorer returned shape {tuple(scores.shape)}, expected "
                                 f"({users.numel()}, {num_items})")
            mask_scores(scores, users, self.train, self.excluded)
            rows, items = self.heldout.pairs_of(users)
            heldout = torch.zeros_like(scores, dtype=torch.bool)
            heldout[rows, items] = True
            num_pos = self.heldout.degree()[users].float()
            top_val, top = scores.topk(min(max_k + 1, num_items), dim=1)
            hits = heldout.gather(1, top[:, :max_k]).float()
            if hits.size(1) < max_k:  # fewer items than the largest cut-off
                hits = torch.nn.functional.pad(hits, (0, max_k - hits.size(1)))
            if top_val.size(1) > max_k:
                edge = top_val[:, max_k - 1]
                ties += int(((edge == top_val[:, max_k]) & edge.isfinite()).sum())
            for name, fn in METRICS.items():
                for k in self.ks:
                    values = fn(hits, num_pos, k)
                    sums[f"{name}@{k}"] += float(values.sum())
                    if return_per_user:
                        rows_of[f"{name}@{k}"].append(values)
            if return_topk:
                tops.append(ranked_lists(top[:, :max_k], top_val[:, :max_k]))
        n = max(self.users.numel(), 1)
        per_user = None
        if return_per_user:
            empty = torch.zeros(0, device=self.users.device)
            per_user = {key: torch.cat(rows) if rows else empty for key, rows in rows_of.items()}
        return EvalResult(metrics={key: value / n for key, value in sums.items()},
                          num_users=self.users.numel(), tie_rate=ties / n,
                          users=self.users if return_topk or return_per_user else None,
                          topk=torch.cat(tops) if return_topk and tops else None,
                          per_user=per_user)


def score_chunk_rows(chunk_size: int, num_items: int, device: torch.device) -> int:
    r"""Users to score at once against ``num_items`` items on ``device``: ``chunk_size``, and
    on a CPU no more than fit 32 MiB of float scores, so that each chunk reuses the memory
    the last one freed (:func:`~brmrs_pyg.allocator.rows_per_block`)."""
    return rows_per_block(chunk_size, 4 * num_items, cpu=device.type == "cpu")


def outside(candidates: Tensor, num_items: int, device: torch.device) -> Tensor:
    r"""The :math:`(|\mathcal{I}|,)` mask of the items that are not ``candidates``."""
    excluded = torch.ones(num_items, dtype=torch.bool, device=device)
    excluded[candidates.to(device)] = False
    return excluded


def mask_scores(scores: Tensor, users: Tensor, train: PairIndex | None,
                excluded: Tensor | None) -> Tensor:
    r"""Sets, in place, the scores of each user's training items (unless ``train`` is
    :obj:`None`) and of the ``excluded`` items to :math:`-\infty`, so a ranking never
    returns them; returns ``scores``. Columns past ``excluded``'s length (items appended
    after the dataset's) are left as they are.

    Shapes:
        - **scores**: :math:`(B, \geq |\mathcal{I}|)`, row ``b`` = user ``users[b]``.
    """
    if train is not None:
        rows, items = train.pairs_of(users)
        scores[rows, items] = -float("inf")
    if excluded is not None:
        scores[:, :excluded.numel()].masked_fill_(excluded, -float("inf"))
    return scores


def ranked_lists(top: Tensor, values: Tensor) -> Tensor:
    r"""``top`` (item ids, best first) with every masked entry (score :math:`-\infty`) set
    to ``-1``: a masked item never enters a list, ``-1`` pads it."""
    return top.masked_fill(values.isneginf(), -1)

