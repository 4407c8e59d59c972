r"""LightGCN (He et al., SIGIR 2020) with a swappable propagation backbone."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from brmrs_pyg.config import option
from brmrs_pyg.graphs import bipartite_adj_t
from brmrs_pyg.losses import bpr_loss, l2_reg
from brmrs_pyg.nn.backbones import BACKBONES, Backbone
from brmrs_pyg.recommenders.base import MODELS, Batch, Recommender, gather


@dataclass(frozen=True)
class LightGCNParams:
    num_layers: int = option(3, "propagation layers over the user-item graph")
    reg_weight: float = option(1e-4, "weight of the L2 penalty on the batch's layer-0 "
                                     "embeddings")
    backbone: str = option("lightgcn", "propagation backbone (registry name)")


@MODELS.register("lightgcn")
class LightGCN(Recommender):
    r"""LightGCN: ID embeddings propagated over the normalised user-item graph,

    .. math::
        \mathbf{E}^{(l+1)} = \hat{A} \mathbf{E}^{(l)}, \qquad
        \mathbf{E} = \sum_{l=0}^{L} \alpha_l \mathbf{E}^{(l)}, \qquad
        \hat{A} = D^{-1/2} A D^{-1/2},

    scored by inner product and trained with BPR plus L2 on the layer-0 embeddings of the
    batch. The propagation is the backbone (default: ``LGConv`` with
    :math:`\alpha_l = 1/(L+1)`).

    Args:
        num_users (int): Number of users.
        num_items (int): Number of items.
        embedding_dim (int): Embedding size.
        adj_t (Tensor): Normalised user-item adjacency (users first), sparse,
            :func:`~brmrs_pyg.graphs.bipartite_adj_t`.
        backbone (Backbone): The propagation.
        reg_weight (float): L2 weight.
    """

    Params = LightGCNParams
    uses_features = False

    def __init__(self, num_users: int, num_items: int, embedding_dim: int, adj_t: Tensor,
                 backbone: Backbone, reg_weight: float) -> None:
        super().__init__()
        self.num_users = num_users
        self.embedding = torch.nn.Embedding(num_users + num_items, embedding_dim)
        self.backbone = backbone
        self.reg_weight = reg_weight
        self.register_buffer("adj_t", adj_t, persistent=False)
        self.reset_parameters()

    @classmethod
    def from_data(cls, params: Any, graph: HeteroData, features: dict[str, Tensor],
                  embedding_dim: int) -> "LightGCN":
        backbone = BACKBONES.get(params.backbone)(embedding_dim, params.num_layers)
        return cls(graph["user"].num_nodes, graph["item"].num_nodes, embedding_dim,
                   bipartite_adj_t(graph), backbone, params.reg_weight)

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_uniform_(self.embedding.weight)
        self.backbone.reset_parameters()

    def forward(self) -> tuple[Tensor, Tensor]:
        out = self.backbone(self.embedding.weight, self.adj_t)
        # split, not slicing: its backward is one concatenation instead of two zero-filled
        # full-size gradients
        users, items = out.split([self.num_users, out.size(0) - self.num_users])
        return users, items

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        # the batch's items (positive, negatives) in one lookup of each table, the output
        # and the layer-0 one: each lookup's backward is a zero-filled table-sized gradient,
        # so four instead of six (and no split's concatenation)
        items = self.num_users + torch.cat([batch.pos.unsqueeze(1), batch.neg], 1)
        out = self.backbone(self.embedding.weight, self.adj_t)
        u = gather(out, batch.users)
        scores = (u.unsqueeze(1) * gather(out, items)).sum(-1)
        bpr = bpr_loss(scores[:, 0], scores[:, 1:])
        # the squared norm of all the rows over 2B, as l2_reg of the three parts
        ego = self.embedding.weight
        reg = l2_reg(gather(ego, batch.users), gather(ego, items).flatten(0, 1))
        return bpr + self.reg_weight * reg, {"bpr": bpr.detach(), "reg": reg.detach()}

    def __repr__(self) -> str:
        return (f"LightGCN({self.num_users} users, {self.embedding.num_embeddings - self.num_users}"
                f" items, dim={self.embedding.embedding_dim}, backbone={self.backbone})")
