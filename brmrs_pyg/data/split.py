r"""MMRec's per-user split of interactions into train / valid / test."""
from __future__ import annotations

import numpy as np


def split_per_user(users: np.ndarray, seed: int, small_user: int = 10,
                   ratio: float = 0.1) -> np.ndarray:
    r"""Assigns each interaction an ``x_label`` (0 train, 1 valid, 2 test), per user.

    A user with :math:`n \ge` ``small_user`` interactions gets :math:`\lfloor 0.1 n \rfloor`
    valid and as many test interactions (80/10/10 for ``ratio=0.1``); a user with
    :math:`3 \le n <` ``small_user`` gets :math:`n-2` train, 1 valid, 1 test; a user with fewer
    than 3 keeps everything in train. The order within a user is shuffled by ``seed``.

    Args:
        users (np.ndarray): User id of each interaction, shape :math:`(N,)`.
        seed (int): Seed of the within-user shuffle.
        small_user (int, optional): Users below this count get one valid and one test
            interaction. (default: :obj:`10`)
        ratio (float, optional): Valid (and test) fraction of larger users.
            (default: :obj:`0.1`)

    Shapes:
        - **output**: :math:`(N,)`, int64 in {0, 1, 2}.

    >>> split_per_user(np.zeros(10, dtype=np.int64), seed=0).tolist().count(0)
    8
    """
    users = np.asarray(users, dtype=np.int64)
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(users.size), users))  # by user, shuffled within user
    sorted_users = users[order]
    counts = np.bincount(users)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(users.size) - starts[sorted_users]  # position within the user's shuffle
    n = counts[sorted_users]
    held = np.where(n >= small_user, np.floor(ratio * n).astype(np.int64),
                    np.where(n >= 3, 1, 0))
    labels_sorted = np.where(rank < n - 2 * held, 0, np.where(rank < n - held, 1, 2))
    labels = np.empty_like(labels_sorted)
    labels[order] = labels_sorted
    return labels
