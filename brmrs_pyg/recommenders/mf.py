r"""BPR-MF: matrix factorisation trained with BPR (Rendle et al., UAI 2009)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from brmrs_pyg.config import option
from brmrs_pyg.losses import bpr_loss, l2_reg
from brmrs_pyg.recommenders.base import MODELS, Batch, Recommender


@dataclass(frozen=True)
class MFParams:
    reg_weight: float = option(1e-4, "weight of the L2 penalty on the batch's embeddings")


@MODELS.register("bpr")
class MF(Recommender):
    r"""Matrix factorisation, :math:`s(u, i) = \langle \mathbf{p}_u, \mathbf{q}_i \rangle`,

    trained with :math:`\mathcal{L}_{bpr} + \lambda \mathcal{R}` (:func:`bpr_loss`,
    :func:`l2_reg` on the batch's embeddings).

    Args:
        num_users (int): Number of users.
        num_items (int): Number of items.
        embedding_dim (int): Embedding size :math:`d`.
        reg_weight (float): :math:`\lambda`.
    """

    Params = MFParams
    uses_features = False

    def __init__(self, num_users: int, num_items: int, embedding_dim: int,
                 reg_weight: float) -> None:
        super().__init__()
        self.user_emb = torch.nn.Embedding(num_users, embedding_dim)
        self.item_emb = torch.nn.Embedding(num_items, embedding_dim)
        self.reg_weight = reg_weight
        self.reset_parameters()

    @classmethod
    def from_data(cls, params: Any, graph: HeteroData, features: dict[str, Tensor],
                  embedding_dim: int) -> "MF":
        return cls(graph["user"].num_nodes, graph["item"].num_nodes, embedding_dim,
                   params.reg_weight)

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_normal_(self.user_emb.weight)
        torch.nn.init.xavier_normal_(self.item_emb.weight)

    def forward(self) -> tuple[Tensor, Tensor]:
        return self.user_emb.weight, self.item_emb.weight

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        u = self.user_emb(batch.users)
        pos, neg = self.item_emb(batch.pos), self.item_emb(batch.neg)
        bpr = bpr_loss((u * pos).sum(-1), (u[:, None] * neg).sum(-1))
        reg = l2_reg(u, pos, neg.flatten(0, 1))
        return bpr + self.reg_weight * reg, {"bpr": bpr.detach(), "reg": reg.detach()}

    def __repr__(self) -> str:
        return (f"MF({self.user_emb.num_embeddings} users, {self.item_emb.num_embeddings} "
                f"items, dim={self.user_emb.embedding_dim})")
