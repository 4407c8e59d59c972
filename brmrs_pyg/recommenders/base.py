r"""The contract every recommender follows."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from brmrs_pyg.evaluation import Scorer
from brmrs_pyg.registry import Registry

MODELS: Registry[type["Recommender"]] = Registry("model")


def gather(table: Tensor, index: Tensor) -> Tensor:
    r"""Rows ``table[index]`` for an index of any shape, via ``F.embedding``: same values,
    but its backward is a dense row accumulation that on CPU is several times faster than
    the sort-based ``index_put_`` that backs ``table[index]``'s gradient.

    Shapes:
        - **table**: :math:`(N, d)`; **index**: any shape :math:`S`; **output**: :math:`(*S, d)`.
    """
    return torch.nn.functional.embedding(index, table)


@dataclass
class Batch:
    r"""A training batch of triples.

    Shapes:
        - **users**, **pos**: :math:`(B,)`.
        - **neg**: :math:`(B, N)`, :math:`N` negatives per positive.
    """

    users: Tensor
    pos: Tensor
    neg: Tensor


class Recommender(torch.nn.Module):
    r"""Base class of the models.

    A model is built by :meth:`from_data` from its hyperparameters (an instance of its
    ``Params`` dataclass), the training graph and the item features; it keeps no reference
    to files or to the config. :meth:`forward` returns the final user and item embeddings
    (with gradient); :meth:`loss` the training objective of a batch with its terms;
    :meth:`scorer` a full-ranking score function computed once, without gradient.
    Models with several branches (one per modality plus a fused one) also return a scorer
    per branch from :meth:`branch_scorers`.
    """

    #: The model's hyperparameter dataclass; its fields are config keys.
    Params: ClassVar[type]

    #: Negatives the trainer samples per positive (``Batch.neg`` has this many columns);
    #: models that pick hard negatives from a candidate pool ask for the pool size.
    num_negatives: int = 1

    #: Which optional graphs the model propagates over; the pipeline refuses graph settings
    #: (``uu_k``, ``ii_recipe``) that the chosen model would ignore.
    uses_item_graphs: ClassVar[bool] = False
    uses_user_graph: ClassVar[bool] = False

    @classmethod
    def from_data(cls, params: Any, graph: HeteroData, features: dict[str, Tensor],
                  embedding_dim: int) -> "Recommender":
        r"""Builds the model from hyperparameters, the training graph and item features."""
        raise NotImplementedError

    def forward(self) -> tuple[Tensor, Tensor]:
        r"""Final user and item embeddings, shapes :math:`(|\mathcal{U}|, d)`,
        :math:`(|\mathcal{I}|, d)`."""
        raise NotImplementedError

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        r"""The objective of a batch and its terms (detached, for logging)."""
        raise NotImplementedError

    @torch.no_grad()
    def scorer(self) -> Scorer:
        r"""``users -> scores`` over all items, from embeddings computed once."""
        user, item = self()
        return lambda users: user[users] @ item.T

    def branch_scorers(self) -> dict[str, Scorer]:
        r"""A scorer per branch (each modality and ``fused``); empty for one-branch models."""
        return {}
