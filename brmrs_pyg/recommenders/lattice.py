r"""LATTICE (Zhang et al., MM 2021, "Mining Latent Structures for Multimedia Recommendation"):
item-item graphs learned from projected features, mixed with the graphs of the raw features,
propagate item ID embeddings that are added to a LightGCN's."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import HeteroData

from brmrs_pyg.config import ConfigError, option
from brmrs_pyg.graphs import bipartite_adj_t, knn_adjacency, knn_k_of
from brmrs_pyg.losses import bpr_loss, l2_reg
from brmrs_pyg.nn.backbones import LightGCNBackbone
from brmrs_pyg.nn.sparse import to_adj_t
from brmrs_pyg.recommenders.base import MODELS, Batch, gather
from brmrs_pyg.recommenders.branched import FUSED, BranchedRecommender, Branches, branch_modalities

#: An item graph as backbone input: ``(edge_index, edge_weight)``, or ``(adj_t, None)`` for a
#: constant graph as a sparse matrix (faster to propagate over).
Graph = tuple[Tensor, Tensor | None]


@dataclass(frozen=True)
class LATTICEParams:
    num_layers: int = option(2, "LightGCN layers over the user-item graph")
    ii_layers: int = option(1, "propagation layers over the latent item-item graph")
    lambda_coeff: float = option(0.9, "skip connection: weight of the raw-feature kNN graph "
                                      "against the learned one")
    reg_weight: float = option(1e-5, "L2 weight on the batch's final embeddings")
    train_features: bool = option(True, "the raw item features are trainable parameters")

    def __post_init__(self) -> None:
        if self.num_layers < 0 or self.ii_layers < 0:
            raise ConfigError("num_layers and ii_layers must be >= 0")
        if not 0.0 <= self.lambda_coeff <= 1.0:
            raise ConfigError(f"lambda_coeff must lie in [0, 1], got {self.lambda_coeff}")
        if self.reg_weight < 0:
            raise ConfigError(f"reg_weight must be >= 0, got {self.reg_weight}")


@MODELS.register("lattice")
class LATTICE(BranchedRecommender):
    r"""LATTICE (Zhang et al., MM 2021). Per modality :math:`m`, a kNN graph of the raw
    features :math:`\tilde{\mathbf{S}}^m` (fixed) and one of the projected features
    :math:`\tilde{\mathbf{x}}^m_i = \mathbf{W}_m \mathbf{x}^m_i + \mathbf{b}_m`
    (:math:`\hat{\mathbf{A}}^m`, learned), both top-:math:`k` cosine graphs with their
    similarities as weights, each node among its own candidates, and symmetrically
    normalised (:func:`~brmrs_pyg.graphs.knn_adjacency`), are mixed and combined with
    softmax weights,

    .. math::
        \mathbf{A}^m = (1 - \lambda) \hat{\mathbf{A}}^m + \lambda \tilde{\mathbf{S}}^m,
        \qquad \mathbf{A} = \sum_m \operatorname{softmax}(\boldsymbol{\alpha})_m
        \mathbf{A}^m, \qquad \mathbf{h} = \mathbf{A}^{L_i} \mathbf{E}_I,

    and the item ID embeddings propagated over :math:`\mathbf{A}` are added, L2-normalised,
    to LightGCN's (:math:`L` layers over the normalised user-item graph, mean over layers):

    .. math::
        \mathbf{p}_u = \bar{\mathbf{e}}_u, \qquad
        \mathbf{q}_i = \bar{\mathbf{e}}_i + \mathbf{h}_i / \lVert \mathbf{h}_i \rVert,
        \qquad \mathcal{L} = \mathcal{L}_{bpr}(\mathbf{p}, \mathbf{q}) + \lambda_{reg}
        \mathcal{R}(\mathbf{p}_u, \mathbf{q}_{i^+}, \mathbf{q}_{i^-}).

    As in the reference code the learned graphs are rebuilt at the first training step of
    each epoch, which back-propagates into :math:`\mathbf{W}_m`, :math:`\mathbf{b}_m`,
    :math:`\boldsymbol{\alpha}` (and the features); later steps of the epoch reuse them
    detached; evaluation rebuilds them from the current weights. The paper normalises each
    modality's learned graph before mixing (done here); the reference code normalises their
    weighted sum.

    Cold items (``split=cold_items``): their rows of :math:`\mathbf{E}_I` are zero (rather
    than the untrained initial value, which would add noise to every score), so
    :math:`\mathbf{q}_i = \mathbf{h}_i / \lVert \mathbf{h}_i \rVert`: the ID embeddings of
    its feature neighbours, LATTICE's own cold-start mechanism.

    Branches (for ``plugin=brmrs``): modality :math:`m` is :math:`(\mathbf{p},
    \bar{\mathbf{e}}_I + \mathbf{h}^m / \lVert \mathbf{h}^m \rVert)` with
    :math:`\mathbf{h}^m = (\mathbf{A}^m)^{L_i} \mathbf{E}_I`, the item representation that
    uses only modality :math:`m`'s graph; ``fused`` is :math:`(\mathbf{p}, \mathbf{q})`.

    Args:
        num_users (int): Number of users.
        embedding_dim (int): Width :math:`d` of the embeddings and projections.
        features (dict): Raw item features per modality, :math:`(|\mathcal{I}|, D_m)`.
        adj_t (Tensor): Normalised user-item adjacency (users first), sparse,
            :func:`~brmrs_pyg.graphs.bipartite_adj_t`.
        knn_k (int): Neighbours :math:`k` per item in every item-item graph.
        params (LATTICEParams): Layers, :math:`\lambda` and L2 weight.
    """

    Params = LATTICEParams
    supports_cold_items = True

    def __init__(self, num_users: int, embedding_dim: int, features: dict[str, Tensor],
                 adj_t: Tensor, knn_k: int, params: LATTICEParams) -> None:
        super().__init__()
        self.modalities = branch_modalities(features, "LATTICE")
        num_items = next(iter(features.values())).size(0)
        self.num_users, self.num_items, self.knn_k = num_users, num_items, knn_k
        self.lambda_coeff, self.reg_weight = params.lambda_coeff, params.reg_weight
        self.user_emb = torch.nn.Embedding(num_users, embedding_dim)
        self.item_emb = torch.nn.Embedding(num_items, embedding_dim)
        self.features = torch.nn.ParameterDict(
            {m: torch.nn.Parameter(x.float().clone(), requires_grad=params.train_features)
             for m, x in features.items()})
        self.proj = torch.nn.ModuleDict({m: torch.nn.Linear(x.size(1), embedding_dim)
                                         for m, x in features.items()})
        self.modal_weight = torch.nn.Parameter(torch.empty(len(self.modalities)))
        self.ui_gnn = LightGCNBackbone(embedding_dim, params.num_layers)
        # only the last item-graph layer, h = A^L E (no mean over layers)
        self.ii_gnn = LightGCNBackbone(embedding_dim, params.ii_layers,
                                       alpha=[0.0] * params.ii_layers + [1.0])
        self.register_buffer("adj_t", adj_t, persistent=False)
        for m, x in features.items():
            edge_index, weight = knn_adjacency(x.float(), knn_k, weighted=True)
            self.register_buffer(f"raw_index_{m}", edge_index, persistent=False)
            self.register_buffer(f"raw_weight_{m}", weight, persistent=False)
        #: The item graphs of the current epoch, detached, as sparse matrices (rebuilt at the
        #: first training step after :meth:`start_epoch`).
        self.epoch_graphs: dict[str, Graph] | None = None
        self.reset_parameters()

    @classmethod
    def from_data(cls, params: Any, graph: HeteroData, features: dict[str, Tensor],
                  embedding_dim: int) -> "LATTICE":
        knn_k = knn_k_of(graph, next(iter(features))) if features else 0
        return cls(graph["user"].num_nodes, embedding_dim, features, bipartite_adj_t(graph),
                   knn_k, params)

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_uniform_(self.user_emb.weight)
        torch.nn.init.xavier_uniform_(self.item_emb.weight)
        for lin in self.proj.values():
            lin.reset_parameters()  # type: ignore[operator]
        torch.nn.init.constant_(self.modal_weight, 1.0 / len(self.modalities))
        self.epoch_graphs = None

    def start_epoch(self) -> None:
        r"""Marks the learned graphs for rebuilding at the epoch's first training step."""
        self.epoch_graphs = None

    def item_graphs(self) -> dict[str, Graph]:
        r""":math:`\mathbf{A}^m` for every modality and the combined :math:`\mathbf{A}` under
        ``"fused"``: built from the current weights (``(edge_index, edge_weight)``, with
        gradient) in evaluation and at the first training step of an epoch; at the epoch's
        later steps that build, detached, as sparse matrices ``(adj_t, None)``."""
        if self.training and self.epoch_graphs is not None:
            return self.epoch_graphs
        graphs: dict[str, tuple[Tensor, Tensor]] = {}
        for m in self.modalities:
            projection: torch.nn.Module = self.proj[m]
            learned_index, learned = knn_adjacency(projection(self.features[m]), self.knn_k,
                                                   weighted=True)
            graphs[m] = (torch.cat([learned_index, getattr(self, f"raw_index_{m}")], 1),
                         torch.cat([(1 - self.lambda_coeff) * learned,
                                    self.lambda_coeff * getattr(self, f"raw_weight_{m}")]))
        alpha = torch.softmax(self.modal_weight, 0)
        graphs[FUSED] = (torch.cat([graphs[m][0] for m in self.modalities], 1),
                         torch.cat([a * graphs[m][1] for a, m in zip(alpha, self.modalities)]))
        if self.training:
            self.epoch_graphs = {name: (to_adj_t(index, weight.detach(), self.num_items), None)
                                 for name, (index, weight) in graphs.items()}
        return dict(graphs)

    def branches(self) -> dict[str, tuple[Tensor, Tensor]]:
        r"""``{m: (p, e_I + h^m/|h^m|) for each modality m, "fused": (p, q)}``, see the class
        docstring."""
        ids = self.without_cold_ids(self.item_emb.weight)
        ego = torch.cat([self.user_emb.weight, ids])
        users, items = self.ui_gnn(ego, self.adj_t).split([self.num_users, self.num_items])
        out: dict[str, tuple[Tensor, Tensor]] = {}
        for name, (edge_index, weight) in self.item_graphs().items():
            h = self.ii_gnn(ids, edge_index, weight)
            out[name] = (users, items + F.normalize(h, dim=1))
        return out

    def branch_loss(self, batch: Batch, branches: Branches) -> tuple[Tensor, dict[str, Tensor]]:
        user, item = branches[FUSED]
        u, pos, neg = gather(user, batch.users), gather(item, batch.pos), gather(
            item, batch.neg[:, 0])
        bpr = bpr_loss((u * pos).sum(-1), (u * neg).sum(-1))
        terms = {"bpr": bpr.detach()}
        if not self.reg_weight:
            return bpr, terms
        reg = l2_reg(u, pos, neg)
        terms["reg"] = reg.detach()
        return bpr + self.reg_weight * reg, terms

    def __repr__(self) -> str:
        return (f"LATTICE({self.num_users} users, {self.num_items} items, "
                f"modalities={self.modalities}, dim={self.user_emb.embedding_dim}, "
                f"knn_k={self.knn_k}, lambda_coeff={self.lambda_coeff}, ui={self.ui_gnn}, "
                f"ii={self.ii_gnn})")
