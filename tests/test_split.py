r"""MMRec's per-user split (``brmrs_pyg.data.split.split_per_user``)."""
from __future__ import annotations

import numpy as np

from brmrs_pyg.data.split import split_per_user

# user size -> (train, valid, test) under the MMRec rule:
# n >= 10: floor(0.1 n) valid and test; 3 <= n < 10: 1 and 1; n < 3: all train
RULE = {1: (1, 0, 0), 2: (2, 0, 0), 3: (1, 1, 1), 9: (7, 1, 1), 10: (8, 1, 1),
        25: (21, 2, 2)}


def interleaved_users(sizes: dict[int, int], seed: int = 0) -> np.ndarray:
    r"""User ids, user ``u`` repeated ``sizes[u]`` times, in a random order (not grouped)."""
    users = np.repeat(np.array(list(sizes), dtype=np.int64), list(sizes.values()))
    return np.random.default_rng(seed).permutation(users)


def counts_per_user(users: np.ndarray, labels: np.ndarray) -> dict[int, tuple[int, ...]]:
    return {int(u): tuple(int((labels[users == u] == k).sum()) for k in range(3))
            for u in np.unique(users)}


def test_exact_counts_per_user_size():
    sizes = {u: n for u, n in enumerate(RULE)}  # user 0 has 1 row, user 1 has 2, ...
    users = interleaved_users(sizes)
    labels = split_per_user(users, seed=0)
    assert labels.shape == users.shape and labels.dtype == np.int64
    assert set(np.unique(labels).tolist()) <= {0, 1, 2}
    assert counts_per_user(users, labels) == {u: RULE[n] for u, n in sizes.items()}


def test_rule_for_every_size_up_to_120():
    sizes = {u: u + 1 for u in range(120)}
    users = interleaved_users(sizes, seed=3)
    labels = split_per_user(users, seed=7)
    for u, (train, valid, test) in counts_per_user(users, labels).items():
        n = sizes[u]
        held = n // 10 if n >= 10 else (1 if n >= 3 else 0)
        assert (train, valid, test) == (n - 2 * held, held, held), n


def test_non_contiguous_user_ids():
    users = np.array([7] * 12 + [3] * 4 + [100] * 2, dtype=np.int64)
    labels = split_per_user(users, seed=1)
    assert counts_per_user(users, labels) == {3: (2, 1, 1), 7: (10, 1, 1), 100: (2, 0, 0)}


def test_custom_threshold_and_ratio():
    users = interleaved_users({0: 4, 1: 5, 2: 20})
    labels = split_per_user(users, seed=0, small_user=5, ratio=0.2)
    assert counts_per_user(users, labels) == {0: (2, 1, 1), 1: (3, 1, 1), 2: (12, 4, 4)}


def test_deterministic_for_a_seed():
    users = interleaved_users({u: n for u, n in enumerate([1, 3, 9, 10, 25, 40])})
    first = split_per_user(users, seed=42)
    assert np.array_equal(first, split_per_user(users, seed=42))
    assert np.array_equal(first, split_per_user(users.tolist(), seed=42))  # list input too


def test_different_seeds_shuffle_differently():
    users = np.zeros(50, dtype=np.int64)  # one user, 40 train / 5 valid / 5 test
    labels = {seed: split_per_user(users, seed=seed) for seed in range(5)}
    for lab in labels.values():
        assert np.bincount(lab).tolist() == [40, 5, 5]
    # the held-out rows are a seed-dependent choice, not the last rows of the user
    held = {seed: tuple(np.flatnonzero(lab == 2)) for seed, lab in labels.items()}
    assert len(set(held.values())) == 5
    assert held[0] != tuple(range(45, 50))


def test_docstring_example():
    assert split_per_user(np.zeros(10, dtype=np.int64), seed=0).tolist().count(0) == 8


def test_empty_input():
    labels = split_per_user(np.zeros(0, dtype=np.int64), seed=0)
    assert labels.shape == (0,)
