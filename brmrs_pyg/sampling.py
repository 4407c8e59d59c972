r"""Negative sampling: plain functions on the model's device, vectorised, no Python loop over
samples and no device-to-host synchronisation."""
from __future__ import annotations

import torch
from torch import Tensor

from brmrs_pyg.interactions import PairIndex


def sample_negatives(users: Tensor, train: PairIndex, num_samples: int = 1,
                     generator: torch.Generator | None = None) -> Tensor:
    r"""Draws items uniformly from :math:`\mathcal{I} \setminus \mathcal{O}_u` for each user.

    Exact, without rejection: draw a rank :math:`r` uniform in
    :math:`[0, |\mathcal{I}| - |\mathcal{O}_u|)` and map it to the :math:`r`-th item the user
    has *not* interacted with. With the user's sorted positives :math:`p_0 < p_1 < \dots`, that
    item is :math:`r + c`, where :math:`c = |\{k : p_k - k \le r\}|` (:math:`p_k - k` counts the
    non-positives below :math:`p_k`), found by one ``searchsorted`` over ``train.gap_keys``.

    Args:
        users (Tensor): User ids, shape :math:`(B,)`, on the device of ``train``.
        train (PairIndex): The training interactions (positives to exclude).
        num_samples (int, optional): Negatives per user. (default: :obj:`1`)
        generator (torch.Generator, optional): Random generator on the same device.

    Shapes:
        - **output**: :math:`(B, \text{num\_samples})`, item ids.

    >>> idx = PairIndex.from_edges(torch.tensor([[0, 0], [1, 2]]), num_users=1, num_items=4)
    >>> sorted(set(sample_negatives(torch.zeros(100, dtype=torch.long), idx).view(-1).tolist()))
    [0, 3]
    """
    num_free = (train.num_items - train.degree()[users]).to(torch.float64)
    u = torch.rand(users.numel(), num_samples, generator=generator, device=users.device,
                   dtype=torch.float64)
    rank = torch.minimum((u * num_free[:, None]).long(), num_free[:, None].long() - 1)
    base = users[:, None] * train.num_items
    count = torch.searchsorted(train.gap_keys, base + rank, right=True) - train.rowptr[users, None]
    return rank + count


@torch.no_grad()
def hardest_in_pool(pool_scores: Tensor, k: int = 1) -> Tensor:
    r"""Positions of the :math:`k` highest-scoring candidates of each row of a negative pool:
    the hardest negatives under that score. Selection only, without gradient; gather the
    scores you train on with the returned positions.

    Args:
        pool_scores (Tensor): Scores of the candidates, shape :math:`(B, P)`.
        k (int, optional): Hard negatives per row, :math:`1 \le k \le P`. (default: :obj:`1`)

    Shapes:
        - **output**: :math:`(B, k)`, positions in :math:`[0, P)`.

    >>> hardest_in_pool(torch.tensor([[0.1, 0.9, 0.5]]), k=2).tolist()
    [[1, 2]]
    """
    if not 1 <= k <= pool_scores.size(-1):
        raise ValueError(f"k must lie in [1, pool size {pool_scores.size(-1)}], got {k}")
    return pool_scores.topk(k, dim=-1).indices
