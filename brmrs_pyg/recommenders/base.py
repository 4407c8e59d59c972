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


class _RowScores(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, user: Tensor, items: Tensor) -> Tensor:
        ctx.save_for_backward(user, items)
        return (user.unsqueeze(1) * items).sum(-1)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor]:
        user, items = ctx.saved_tensors
        # two batched products instead of autograd's broadcast multiplies and reductions
        grad_user = torch.bmm(grad.unsqueeze(1), items).squeeze(1)
        grad_items = torch.bmm(grad.unsqueeze(-1), user.unsqueeze(1))
        return grad_user, grad_items


def row_scores(user: Tensor, items: Tensor) -> Tensor:
    r"""Inner products of each user with its own candidate items,
    :math:`s_{bp} = \langle \mathbf{u}_b, \mathbf{v}_{bp} \rangle`, with a hand-written
    backward (two batched matrix products), about twice as fast on CPU as autograd's.

    Shapes:
        - **user**: :math:`(B, d)`; **items**: :math:`(B, P, d)`; **output**: :math:`(B, P)`.
    """
    return _RowScores.apply(user, items)


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

    #: Whether the model reads item features; a model that does not (BPR-MF, LightGCN) runs
    #: on a dataset of interactions only, and a run of it reads no feature file.
    uses_features: ClassVar[bool] = True

    #: Whether ``plugin=brmrs`` can attach to the model (multi-branch models, see
    #: :class:`~brmrs_pyg.recommenders.branched.BranchedRecommender`), and if not, why.
    supports_plugin: ClassVar[bool] = False
    plugin_refusal: ClassVar[str] = "it does not expose per-modality and fused scores"

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

    def start_epoch(self) -> None:
        r"""Called by the trainer before each training epoch, e.g. to re-sample a pruned
        graph (draw from torch's global generator, which the trainer seeds and
        checkpoints). Does nothing by default."""

    @torch.no_grad()
    def scorer(self) -> Scorer:
        r"""``users -> scores`` over all items, from embeddings computed once."""
        user, item = self()
        return lambda users: user[users] @ item.T

    def branch_scorers(self) -> dict[str, Scorer]:
        r"""A scorer per branch (each modality and ``fused``); empty for one-branch models."""
        return {}
