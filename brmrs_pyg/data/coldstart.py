r"""The cold-start item protocol (``split=cold_items``): items that have features but no
training interaction, the case multimodal recommenders exist for.

A random share of the items is drawn and held out of training with *all* their interactions:
half of the drawn items form the valid set, the other half the test set, and each cold item's
interactions all go to the split of its set. Every other (warm) item's interactions are
training interactions, including those the dataset's ``x_label`` held out. The cold items
keep their features, so the item-item kNN graphs still reach them; the user-item graph, the
user-user graph and the negative sampler are built from the training interactions, which hold
no cold item.

A user whose every interaction was with cold items has no training interaction left: an ID
embedding trained from nothing cannot represent them, so they are cold users, left out of the
evaluation (the evaluator skips users without training interactions) and isolated in the
graphs. :meth:`~brmrs_pyg.data.InteractionData.stats` counts them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from brmrs_pyg.data.errors import DataError

if TYPE_CHECKING:
    from brmrs_pyg.data.mmrec import InteractionData


@dataclass(frozen=True)
class ColdItems:
    r"""The cold items of a cold-item split (:func:`cold_item_split`).

    Attributes:
        valid (Tensor): Ids of the valid split's cold items, ascending.
        test (Tensor): Ids of the test split's cold items, ascending (disjoint from
            ``valid``).

    Shapes:
        - **valid**: :math:`(|C_{valid}|,)`; **test**: :math:`(|C_{test}|,)`, int64.
    """

    valid: Tensor
    test: Tensor

    def of(self, split: str) -> Tensor:
        r"""The cold items of ``"valid"`` or ``"test"``: the candidates its ranking holds."""
        if split not in ("valid", "test"):
            raise KeyError(f"cold items belong to 'valid' or 'test', not {split!r}")
        return self.valid if split == "valid" else self.test

    def mask(self, num_items: int) -> Tensor:
        r"""Boolean :math:`(|\mathcal{I}|,)`: whether each item is cold (valid or test)."""
        mask = torch.zeros(num_items, dtype=torch.bool)
        mask[self.valid] = True
        mask[self.test] = True
        return mask


def draw_cold_items(num_items: int, ratio: float, seed: int) -> ColdItems:
    r"""Draws :math:`n = \operatorname{round}(\rho |\mathcal{I}|)` distinct items uniformly at
    random with ``seed`` (NumPy's PCG64, the same on every platform): the first
    :math:`\lfloor n/2 \rfloor` of the draw are the valid cold items, the rest the test cold
    items.

    >>> cold = draw_cold_items(10, 0.4, seed=0)
    >>> cold.valid.numel(), cold.test.numel()
    (2, 2)
    """
    count = round(ratio * num_items)
    half = count // 2
    if half < 1:
        raise DataError(f"cold_ratio={ratio} of {num_items} items holds out {count} item(s); "
                        "the cold-item split needs at least one valid and one test item: "
                        "raise cold_ratio")
    drawn = torch.from_numpy(np.random.default_rng(seed).permutation(num_items)[:count])
    return ColdItems(valid=drawn[:half].sort().values, test=drawn[half:].sort().values)


def cold_item_split(data: InteractionData, ratio: float, seed: int) -> InteractionData:
    r"""The dataset re-split for cold-start items (see the module docstring): the items of
    :func:`draw_cold_items` and all their interactions go to valid or test, every other
    interaction to train. Deterministic given ``seed``; the features are unchanged and the
    order of the interactions within each split is the dataset's.

    Args:
        data (InteractionData): A validated dataset with its given split.
        ratio (float): Share :math:`\rho` of the items held out, in :math:`(0, 1)`.
        seed (int): Seed of the draw.

    Raises:
        DataError: Too few items for one valid and one test item, a split left without
            interactions (the draw hit only items nobody interacted with), or a user whose
            training interactions cover every warm item (no negative to sample).
    """
    if data.cold is not None:
        raise ValueError(f"dataset {data.name!r} is already split into cold items")
    cold = draw_cold_items(data.num_items, ratio, seed)
    edges = torch.cat([data.train, data.valid, data.test], 1)
    label = torch.zeros(data.num_items, dtype=torch.long)
    label[cold.valid], label[cold.test] = 1, 2
    which = label[edges[1]]
    train, valid, test = (edges[:, which == k] for k in range(3))
    for name, split in (("train", train), ("valid", valid), ("test", test)):
        if split.size(1) == 0:
            raise DataError(f"the cold-item split (cold_ratio={ratio}, split_seed={seed}) of "
                            f"dataset {data.name!r} leaves no {name} interaction: choose "
                            f"another split_seed or cold_ratio")
    warm = data.num_items - cold.valid.numel() - cold.test.numel()
    degree = torch.bincount(train[0], minlength=data.num_users)
    if int(degree.max()) >= warm:
        user = int(degree.argmax())
        raise DataError(f"after the cold-item split (split_seed={seed}) user {user} has "
                        f"interacted with every one of the {warm} warm items in training; no "
                        f"negative item can be sampled for that user: lower cold_ratio")
    return dataclasses.replace(data, train=train, valid=valid, test=test, cold=cold)


def users_without_training(data: InteractionData) -> int:
    r"""Number of users with no training interaction (cold users, left out of the
    evaluation)."""
    return data.num_users - int(torch.unique(data.train[0]).numel())
