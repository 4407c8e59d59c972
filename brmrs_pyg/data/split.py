r"""MMRec's per-user split of interactions into train / valid / test."""
from __future__ import annotations

from typing import Literal

import numpy as np


def split_per_user(users: np.ndarray, seed: int, small_user: int = 10,
                   ratio: float = 0.1, rounding: Literal["each", "mmrec"] = "each",
                   order: np.ndarray | None = None) -> np.ndarray:
    r"""Assigns each interaction an ``x_label`` (0 train, 1 valid, 2 test), per user.

    A user with :math:`3 \le n <` ``small_user`` interactions gets :math:`n-2` train, 1 valid,
    1 test; a user with fewer than 3 keeps everything in train. A user with :math:`n \ge`
    ``small_user`` holds out, with ``rounding="each"``, :math:`\lfloor \rho n \rfloor` valid and
    as many test interactions; with ``rounding="mmrec"``, :math:`h = \lfloor 2 \rho n \rfloor`
    held-out interactions, :math:`\lfloor h/2 \rfloor` valid and the rest test, which is how
    MMRec's ``preprocessing/1splitting.ipynb`` built the Amazon sets (:math:`n = 15`: 12 / 1 /
    2 rather than 13 / 1 / 1). The held-out interactions are the last of the user's sequence:
    a shuffle by ``seed`` or, with ``order``, ascending ``order`` (e.g. timestamps, so the
    latest are held out) with ties shuffled by ``seed``.

    Args:
        users (np.ndarray): User id of each interaction, shape :math:`(N,)`.
        seed (int): Seed of the within-user shuffle.
        small_user (int, optional): Users below this count get one valid and one test
            interaction. (default: :obj:`10`)
        ratio (float, optional): Valid (and test) fraction :math:`\rho` of larger users.
            (default: :obj:`0.1`)
        rounding (str, optional): ``"each"`` or ``"mmrec"``, see above.
            (default: :obj:`"each"`)
        order (np.ndarray, optional): Sort key within a user, shape :math:`(N,)`
            (default: :obj:`None`, a random order).

    Shapes:
        - **output**: :math:`(N,)`, int64 in {0, 1, 2}.

    >>> split_per_user(np.zeros(10, dtype=np.int64), seed=0).tolist().count(0)
    8
    """
    users = np.asarray(users, dtype=np.int64)
    rng = np.random.default_rng(seed)
    keys: tuple[np.ndarray, ...] = (rng.random(users.size), users)
    if order is not None:
        keys = (keys[0], np.asarray(order), users)
    order_idx = np.lexsort(keys)  # by user, then by `order`, ties (or all) shuffled
    sorted_users = users[order_idx]
    counts = np.bincount(users)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(users.size) - starts[sorted_users]  # position within the user's sequence
    n = counts[sorted_users]
    if rounding == "mmrec":
        total = np.floor(2 * ratio * n).astype(np.int64)
        valid, test = total // 2, total - total // 2
    elif rounding == "each":
        valid = test = np.floor(ratio * n).astype(np.int64)
    else:
        raise ValueError(f"rounding must be 'each' or 'mmrec', got {rounding!r}")
    small = n < small_user
    valid = np.where(small, np.where(n >= 3, 1, 0), valid)
    test = np.where(small, np.where(n >= 3, 1, 0), test)
    labels_sorted = np.where(rank < n - valid - test, 0, np.where(rank < n - test, 1, 2))
    labels = np.empty_like(labels_sorted)
    labels[order_idx] = labels_sorted
    return labels
