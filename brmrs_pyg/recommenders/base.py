r"""The contract every recommender follows."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from brmrs_pyg.config import ConfigError
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

    #: Whether the model can rank cold items (``split=cold_items``: items with features and
    #: no training interaction), i.e. represent an item from its features alone; if not, why.
    #: A model that can reads every item ID embedding through :meth:`without_cold_ids`.
    supports_cold_items: ClassVar[bool] = False
    cold_refusal: ClassVar[str] = ("it represents an item by its ID embedding alone, which "
                                   "an item without training interactions has never trained")

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

    def set_cold_items(self, cold: Tensor) -> None:
        r"""Marks the items where ``cold`` (boolean, :math:`(|\mathcal{I}|,)`) is true as cold:
        from then on :meth:`without_cold_ids` zeroes their ID embedding rows, so that a cold
        item is represented from its features alone, as an item the model has never seen
        would be (its ID row would otherwise keep its random initialisation, noise in every
        score, or be trained through a feature graph from its neighbours' interactions).

        Raises:
            ConfigError: The model cannot represent an item from its features
                (:attr:`supports_cold_items`).
        """
        if not self.supports_cold_items:
            raise ConfigError(f"model {type(self).__name__} cannot rank cold items: "
                              f"{self.cold_refusal}")
        device = next(self.parameters()).device
        keep = (~cold.bool()).to(device=device, dtype=torch.float).unsqueeze(1)
        if "warm_rows" in self._buffers:
            self.warm_rows = keep
        else:
            self.register_buffer("warm_rows", keep, persistent=False)

    def without_cold_ids(self, table: Tensor) -> Tensor:
        r"""``table`` with the rows of the cold items (:meth:`set_cold_items`) set to zero;
        ``table`` itself when there are none. Its last :math:`|\mathcal{I}|` rows are the
        items': an item ID table, or one over users then items.

        Shapes:
            - **table**: :math:`(N, d)` with :math:`N \ge |\mathcal{I}|`; **output**: the same.
        """
        keep: Tensor | None = self._buffers.get("warm_rows")
        if keep is None:
            return table
        users, items = table.split([table.size(0) - keep.size(0), keep.size(0)])
        return torch.cat([users, items * keep]) if users.numel() else items * keep

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
