r"""MGCN (Yu et al., MM 2023, "Multi-View Graph Convolutional Network for Multimedia
Recommendation"): modality features purified by the item ID embeddings, enriched on fixed
item-item graphs apart from the ID embeddings' user-item view, and fused per node by a
behaviour-aware attention, with a contrastive loss between the fused and the ID view."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from brmrs_pyg.config import ConfigError, option
from brmrs_pyg.graphs import UI, bipartite_adj_t, interaction_matrix, knn_adjacency, knn_k_of
from brmrs_pyg.losses import bpr_loss, infonce_loss, l2_reg
from brmrs_pyg.nn.backbones import LightGCNBackbone
from brmrs_pyg.nn.features import prepare_features
from brmrs_pyg.nn.sparse import spmm, to_adj_t
from brmrs_pyg.recommenders.base import MODELS, Batch, gather
from brmrs_pyg.recommenders.branched import (FUSED, BranchedRecommender, Branches,
                                             BranchesWithParts, branch_modalities,
                                             branch_parts)


@dataclass(frozen=True)
class MGCNParams:
    num_layers: int = option(2, "LightGCN layers of the user-item (ID) view")
    ii_layers: int = option(1, "propagation layers of the purified features over each "
                               "modality's item-item kNN graph")
    cl_weight: float = option(0.01, "weight of the contrastive loss between the fused "
                                    "modality features and the ID view")
    tau: float = option(0.2, "temperature of the contrastive loss")
    reg_weight: float = option(1e-4, "L2 weight on the batch's final embeddings")
    train_features: bool = option(True, "the raw item features are trainable parameters")
    feature_dim: int = option(0, "principal components kept of each modality's features "
                                 "before its projection (0: the raw features, as the sources; "
                                 "> 0: centred, reduced and rescaled, for speed; the kNN "
                                 "graphs stay on the raw features)")

    def __post_init__(self) -> None:
        if min(self.num_layers, self.ii_layers, self.feature_dim) < 0:
            raise ConfigError("num_layers, ii_layers and feature_dim must be >= 0")
        if self.cl_weight < 0 or self.reg_weight < 0:
            raise ConfigError("cl_weight and reg_weight must be >= 0")
        if self.tau <= 0:
            raise ConfigError(f"tau must be > 0, got {self.tau}")


class BehaviourAwareFuser(torch.nn.Module):
    r"""MGCN's behaviour-aware fuser. Per node, attention weights over the modality views
    :math:`\mathbf{E}_m` give the modality-shared part; each view minus it is the
    modality-specific part, gated by the node's preference for the modality computed from
    its ID-view embedding :math:`\bar{\mathbf{E}}`:

    .. math::
        \alpha_m = \operatorname{softmax}_m\big(\mathbf{q}^\top \tanh(\mathbf{W}_a
        \mathbf{E}_m + \mathbf{b}_a)\big), \qquad \mathbf{E}_s = \sum_m \alpha_m \mathbf{E}_m,

        \mathbf{P}_m = \sigma(\mathbf{W}_m \bar{\mathbf{E}} + \mathbf{b}_m), \qquad
        \mathbf{E}_{mul} = \frac{1}{|\mathcal{M}| + 1} \Big(\mathbf{E}_s + \sum_m
        \mathbf{P}_m \odot (\mathbf{E}_m - \mathbf{E}_s)\Big).

    The attention (:math:`\mathbf{W}_a, \mathbf{b}_a, \mathbf{q}`) is shared by the
    modalities; each has its own preference gate.

    Args:
        modalities (list of str): Modality names, in order.
        dim (int): Width :math:`d` of the views.

    Shapes:
        - **views**: per modality :math:`(N, d)`; **behaviour**: :math:`(N, d)`;
          **output**: :math:`(N, d)`.
    """

    def __init__(self, modalities: list[str], dim: int) -> None:
        super().__init__()
        self.modalities = list(modalities)
        self.attention = torch.nn.Sequential(torch.nn.Linear(dim, dim), torch.nn.Tanh(),
                                             torch.nn.Linear(dim, 1, bias=False))
        self.preference = torch.nn.ModuleDict({m: torch.nn.Linear(dim, dim)
                                               for m in modalities})

    def reset_parameters(self) -> None:
        for lin in [self.attention[0], self.attention[2], *self.preference.values()]:
            lin.reset_parameters()  # type: ignore[operator]

    def weights(self, views: dict[str, Tensor]) -> Tensor:
        r"""Attention weights :math:`\alpha`, shape :math:`(N, |\mathcal{M}|)`."""
        stacked = torch.stack([views[m] for m in self.modalities], 1)
        return torch.softmax(self.attention(stacked).squeeze(-1), dim=1)

    def forward(self, views: dict[str, Tensor], behaviour: Tensor) -> Tensor:
        alpha = self.weights(views)
        shared = sum(alpha[:, k:k + 1] * views[m] for k, m in enumerate(self.modalities))
        out = torch.as_tensor(shared)
        for m in self.modalities:
            out = out + torch.sigmoid(self.preference[m](behaviour)) * (views[m] - shared)
        return out / (len(self.modalities) + 1)


@MODELS.register("mgcn")
class MGCN(BranchedRecommender):
    r"""MGCN (Yu et al., MM 2023). Three steps.

    **Behaviour-guided purifier**: each modality's features are projected and gate the item
    ID embeddings, keeping the feature dimensions the behaviour supports,

    .. math::
        \dot{\mathbf{E}}_{i,m} = \mathbf{E}_{i} \odot \sigma\big(\mathbf{W}_{2,m}
        (\mathbf{W}_{1,m} \mathbf{X}_m + \mathbf{b}_{1,m}) + \mathbf{b}_{2,m}\big).

    **Views**: the ID view is LightGCN over the normalised user-item graph (:math:`L`
    layers, mean over layers), :math:`\bar{\mathbf{E}} = [\bar{\mathbf{E}}_u;
    \bar{\mathbf{E}}_i]`. Modality :math:`m`'s view propagates the purified features over
    its fixed item-item graph :math:`\mathbf{S}_m` (top-:math:`k` cosine graph of the raw
    features with similarity weights, each item among its own candidates, symmetrically
    normalised: :func:`~brmrs_pyg.graphs.knn_adjacency`) and aggregates them at users with
    LightGCN's weights,

    .. math::
        \mathbf{E}_{i,m} = \mathbf{S}_m^{L_i} \dot{\mathbf{E}}_{i,m}, \qquad
        \mathbf{E}_{u,m} = \mathbf{R} \mathbf{E}_{i,m}, \quad r_{ui} = 1/\sqrt{d_u d_i},
        \qquad \mathbf{E}_m = [\mathbf{E}_{u,m}; \mathbf{E}_{i,m}].

    **Behaviour-aware fuser** (:class:`BehaviourAwareFuser`): :math:`\mathbf{E}_{mul}`, and
    the final representation :math:`\mathbf{E} = \bar{\mathbf{E}} + \mathbf{E}_{mul}`
    scores by inner product. The loss, on column 0 of ``batch.neg``:

    .. math::
        \mathcal{L} = \mathcal{L}_{bpr}(\mathbf{E}) + \lambda_C \big(\ell(\mathbf{E}_{mul,U_b},
        \bar{\mathbf{E}}_{U_b}) + \ell(\mathbf{E}_{mul,I_b}, \bar{\mathbf{E}}_{I_b})\big)
        + \lambda \mathcal{R}(\mathbf{e}_u, \mathbf{e}_{i^+}, \mathbf{e}_{i^-}),

    :math:`\ell` the one-directional InfoNCE (:func:`~brmrs_pyg.losses.infonce_loss`,
    cosine, temperature :math:`\tau`; anchors the fused features, negatives the other rows'
    ID views) over the batch's distinct users :math:`U_b` and distinct positive items
    :math:`I_b`, and :math:`\mathcal{R}` the L2 of the batch's final embeddings
    (:func:`~brmrs_pyg.losses.l2_reg`).

    Against the reference code (MMRec ``src/models/mgcn.py``, which the paper's results
    come from): the contrastive loss uses the batch's *distinct* users and items (MMRec's
    rows repeat, so a repeated user is also its own negative); the kNN graph clamps negative
    similarities to 0 (MMRec keeps them; rare in a top-:math:`k`); MMRec decays the learning
    rate by :math:`0.96^{t/50}` (its ``learning_rate_scheduler``), the shared loop here
    does not; any number of modalities (MMRec: exactly image and text). The fuser's
    :math:`1/(|\mathcal{M}|+1)` average of the shared and the gated specific parts follows
    the reference code.

    Cold items (``split=cold_items``): their rows of :math:`\mathbf{E}_i` are zero (rather
    than the untrained initial value, which would add noise to every score), so a cold item's
    ID view and purified embedding are zero and it is represented by its modality views,
    :math:`\mathbf{S}_m^{L_i}` over its feature neighbours' purified embeddings.

    Branches (for ``plugin=brmrs``): modality :math:`m` is :math:`\bar{\mathbf{E}} +
    \mathbf{E}_m`, the ID view plus modality :math:`m`'s own view (what the model would
    score with :math:`m`'s view alone, without the fuser's averaging); ``fused`` is
    :math:`\mathbf{E}`.

    Args:
        num_users (int): Number of users.
        embedding_dim (int): Width :math:`d` of every embedding and projection.
        features (dict): Raw item features per modality, :math:`(|\mathcal{I}|, D_m)`.
        adj_t (Tensor): Normalised user-item adjacency (users first), sparse,
            :func:`~brmrs_pyg.graphs.bipartite_adj_t`.
        ui_matrix (Tensor): :math:`\mathbf{R}`, sparse :math:`(|\mathcal{U}|,
            |\mathcal{I}|)`, :func:`~brmrs_pyg.graphs.interaction_matrix`.
        item_graphs (dict): Per modality :math:`\mathbf{S}_m` as ``(edge_index,
            edge_weight)``.
        params (MGCNParams): Layers, loss weights and temperature.
    """

    Params = MGCNParams
    supports_cold_items = True

    def __init__(self, num_users: int, embedding_dim: int, features: dict[str, Tensor],
                 adj_t: Tensor, ui_matrix: Tensor,
                 item_graphs: dict[str, tuple[Tensor, Tensor]], params: MGCNParams) -> None:
        super().__init__()
        self.modalities = branch_modalities(features, "MGCN")
        num_items = next(iter(features.values())).size(0)
        self.num_users, self.num_items = num_users, num_items
        self.cl_weight, self.tau, self.reg_weight = params.cl_weight, params.tau, params.reg_weight
        self.user_emb = torch.nn.Embedding(num_users, embedding_dim)
        self.item_emb = torch.nn.Embedding(num_items, embedding_dim)
        self.features = torch.nn.ParameterDict(
            {m: torch.nn.Parameter(x.float().clone(), requires_grad=params.train_features)
             for m, x in features.items()})
        self._initial = {m: x.float().clone() for m, x in features.items()}
        self.proj = torch.nn.ModuleDict({m: torch.nn.Linear(x.size(1), embedding_dim)
                                         for m, x in features.items()})
        self.purifier = torch.nn.ModuleDict({m: torch.nn.Linear(embedding_dim, embedding_dim)
                                             for m in self.modalities})
        self.fuser = BehaviourAwareFuser(self.modalities, embedding_dim)
        self.ui_gnn = LightGCNBackbone(embedding_dim, params.num_layers)
        # only the last item-graph layer, S^L E (no mean over layers)
        self.ii_gnn = LightGCNBackbone(embedding_dim, params.ii_layers,
                                       alpha=[0.0] * params.ii_layers + [1.0])
        self.ui_matrix: Tensor
        self.register_buffer("adj_t", adj_t, persistent=False)
        self.register_buffer("ui_matrix", ui_matrix, persistent=False)
        for m, (edge_index, weight) in item_graphs.items():
            self.register_buffer(f"adj_item_{m}", to_adj_t(edge_index, weight, num_items),
                                 persistent=False)
        self.reset_parameters()

    @classmethod
    def from_data(cls, params: Any, graph: HeteroData, features: dict[str, Tensor],
                  embedding_dim: int) -> "MGCN":
        num_users, num_items = graph["user"].num_nodes, graph["item"].num_nodes
        item_graphs = {m: knn_adjacency(x.float(), knn_k_of(graph, m), weighted=True)
                       for m, x in features.items()}
        inputs = features  # 0: the raw features, untouched, as the sources feed them
        if params.feature_dim:
            inputs = {m: prepare_features(x, params.feature_dim, m) for m, x in features.items()}
        return cls(num_users, embedding_dim, inputs, bipartite_adj_t(graph),
                   interaction_matrix(graph[UI].edge_index, num_users, num_items), item_graphs,
                   params)

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_uniform_(self.user_emb.weight)
        torch.nn.init.xavier_uniform_(self.item_emb.weight)
        for lin in [*self.proj.values(), *self.purifier.values()]:
            lin.reset_parameters()  # type: ignore[operator]
        self.fuser.reset_parameters()
        with torch.no_grad():
            for m, x in self._initial.items():
                self.features[m].copy_(x)

    def purified(self, modality: str) -> Tensor:
        r""":math:`\dot{\mathbf{E}}_{i,m}`, the item ID embeddings gated by the modality's
        projected features, :math:`(|\mathcal{I}|, d)`."""
        projected = self.proj[modality](self.features[modality])
        ids = self.without_cold_ids(self.item_emb.weight)
        return ids * torch.sigmoid(self.purifier[modality](projected))

    def views(self) -> tuple[Tensor, dict[str, Tensor]]:
        r"""The ID view :math:`\bar{\mathbf{E}}` and every modality's view
        :math:`\mathbf{E}_m`, each :math:`(|\mathcal{U}| + |\mathcal{I}|, d)`, users first."""
        ego = torch.cat([self.user_emb.weight, self.without_cold_ids(self.item_emb.weight)])
        behaviour = self.ui_gnn(ego, self.adj_t)
        views = {}
        for m in self.modalities:
            items = self.ii_gnn(self.purified(m), getattr(self, f"adj_item_{m}"))
            views[m] = torch.cat([spmm(self.ui_matrix, items), items])
        return behaviour, views

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        users, items = x.split([self.num_users, self.num_items])
        return users, items

    def branches(self) -> dict[str, tuple[Tensor, Tensor]]:
        r"""``{m: E_bar + E_m for each modality m, "fused": E}`` (users, items), see the
        class docstring, with the parts of the contrastive loss, ``"mul"``
        (:math:`\mathbf{E}_{mul}`) and ``"id"`` (:math:`\bar{\mathbf{E}}`), users first
        (:class:`~brmrs_pyg.recommenders.branched.BranchesWithParts`)."""
        behaviour, views = self.views()
        fused = self.fuser(views, behaviour)
        out = {m: self._split(behaviour + views[m]) for m in self.modalities}
        out[FUSED] = self._split(behaviour + fused)
        return BranchesWithParts(out, {"mul": fused, "id": behaviour})

    def branch_loss(self, batch: Batch, branches: Branches) -> tuple[Tensor, dict[str, Tensor]]:
        user, item = branches[FUSED]
        u, pos, neg = gather(user, batch.users), gather(item, batch.pos), gather(
            item, batch.neg[:, 0])
        terms = {"bpr": bpr_loss((u * pos).sum(-1), (u * neg).sum(-1))}
        total = terms["bpr"]
        if self.cl_weight:
            # distinct rows: a repeated user or item would be its own negative
            parts = branch_parts(branches)
            users = batch.users.unique()
            items = batch.pos.unique() + self.num_users
            terms["cl"] = torch.stack([
                infonce_loss(gather(parts["mul"], rows), gather(parts["id"], rows), self.tau,
                             symmetric=False) for rows in (users, items)]).sum()
            total = total + self.cl_weight * terms["cl"]
        if self.reg_weight:
            terms["reg"] = l2_reg(u, pos, neg)
            total = total + self.reg_weight * terms["reg"]
        return total, {name: value.detach() for name, value in terms.items()}

    def __repr__(self) -> str:
        return (f"MGCN({self.num_users} users, {self.num_items} items, "
                f"modalities={self.modalities}, dim={self.user_emb.embedding_dim}, "
                f"ui={self.ui_gnn}, ii={self.ii_gnn})")
