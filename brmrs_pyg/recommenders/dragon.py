r"""DRAGON (Zhou et al., ECAI 2023, "Enhancing Dyadic Relations with Homogeneous Graphs for
Multimodal Recommendation"): DualGNN's per-modality graph convolution over the user-item
(heterogeneous) graph, then two homogeneous graphs, the user co-occurrence graph and a frozen
item-item graph from the raw features, with the modalities fused by attentive concatenation."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from brmrs_pyg.config import ConfigError, option
from brmrs_pyg.graphs import bipartite_adj_t
from brmrs_pyg.nn.backbones import LightGCNBackbone
from brmrs_pyg.nn.features import prepare_features
from brmrs_pyg.nn.sparse import to_adj_t
from brmrs_pyg.recommenders.base import MODELS, Batch
from brmrs_pyg.recommenders.branched import FUSED, BranchedRecommender, Branches, branch_modalities
from brmrs_pyg.recommenders.dualgnn import (ModalityGCN, UserGraph, bpr_with_preference_penalty,
                                            init_user_modality_weights)
from brmrs_pyg.recommenders.freedom import frozen_item_graph


@dataclass(frozen=True)
class DRAGONParams:
    num_layers: int = option(2, "propagation layers of each modality's GCN over the user-item "
                                "graph (their outputs are summed with the input)")
    ii_layers: int = option(1, "propagation layers over the frozen item-item graph")
    mm_weights: str = option("text=0.9", "weights of the modalities' kNN graphs in the frozen "
                                         "item-item graph, 'name=w,...'; unnamed modalities "
                                         "share the rest equally, then weights are scaled to "
                                         "sum to 1 ('': equal)")
    reg_weight: float = option(1e-3, "weight of the squared preference embeddings of the "
                                     "batch and the modality weights")
    feature_dim: int = option(0, "principal components kept of each modality's features "
                                 "before its projection (0: the raw features, as the sources; "
                                 "> 0: centred, reduced and rescaled, for speed; the item-item "
                                 "graph stays on the raw features)")

    def __post_init__(self) -> None:
        if min(self.num_layers, self.ii_layers, self.feature_dim) < 0:
            raise ConfigError("num_layers, ii_layers and feature_dim must be >= 0")
        if not self.reg_weight >= 0:
            raise ConfigError(f"reg_weight must be >= 0, got {self.reg_weight}")


@MODELS.register("dragon")
class DRAGON(BranchedRecommender):
    r"""DRAGON (Zhou et al., ECAI 2023). The heterogeneous graph gives each modality's
    :math:`(\mathbf{U}_m, \mathbf{I}_m)` (:class:`~brmrs_pyg.recommenders.dualgnn.ModalityGCN`,
    shared with DualGNN). Users concatenate their modalities scaled by learned per-user weights
    (attentive concatenation), items concatenate theirs; the user co-occurrence graph
    (:class:`~brmrs_pyg.recommenders.dualgnn.UserGraph`) and the frozen item-item graph
    :math:`\mathbf{S}` (:func:`~brmrs_pyg.recommenders.freedom.frozen_item_graph`, the
    ``mm_weights`` sum of the modalities' kNN graphs on the raw features, as in FREEDOM) then
    add their aggregates:

    .. math::
        \mathbf{u}_u = \big\Vert_m\, \alpha_{um} \mathbf{U}_m[u], \qquad
        \hat{\mathbf{u}}_u = \mathbf{u}_u + \sum_{v \in \mathcal{N}(u)} w_{vu} \mathbf{u}_v,

        \mathbf{i} = \big\Vert_m\, \mathbf{I}_m, \qquad
        \hat{\mathbf{i}} = \mathbf{i} + \mathbf{S}^{L_i} \mathbf{i}, \qquad
        s(u, i) = \hat{\mathbf{u}}_u^\top \hat{\mathbf{i}}_i, \qquad
        \mathcal{L} = \mathcal{L}_{bpr} + \lambda \mathcal{R}

    with :math:`\mathcal{R}` from :func:`~brmrs_pyg.recommenders.dualgnn.preference_penalty`.
    Both homogeneous graphs act on each modality's block separately, so the fused score is the
    sum of the modalities' scores.

    Branches (for ``plugin=brmrs``): modality :math:`m` is its block of the final
    representations, :math:`(\alpha_{um}\mathbf{U}_m[u] + \sum_v w_{vu} \alpha_{vm}
    \mathbf{U}_m[v],\ \mathbf{I}_m + \mathbf{S}^{L_i} \mathbf{I}_m)`; ``fused`` is
    :math:`(\hat{\mathbf{u}}, \hat{\mathbf{i}})`, their concatenation.

    Differences from the reference code (MMRec ``src/models/dragon.py``, the same as the
    authors'): BPR with the natural log instead of :math:`\log_2`; short user-neighbour lists
    are not padded by random re-draws (see
    :class:`~brmrs_pyg.recommenders.dualgnn.UserGraph`); the unused item modality weights,
    trainable feature copies and edge-dropping masks of the reference code are absent.

    Cold items (``split=cold_items``): items have no ID embedding, so a cold item (no edge in
    the training graph) is its modalities' normalised feature projections plus their
    aggregation over the frozen item-item graph.

    Args:
        num_users (int): Number of users.
        embedding_dim (int): Width :math:`d` of each modality's block (the fused
            representations have :math:`Md`).
        features (dict): Item features per modality.
        ui_adj_t (Tensor): Normalised user-item adjacency (users then items), sparse CSR.
        user_graph (UserGraph): The co-occurrence aggregation.
        item_graph (tuple): The frozen :math:`\mathbf{S}` as ``(edge_index, edge_weight)``.
        params (DRAGONParams): Layers and regularisation weight.
    """

    Params = DRAGONParams
    uses_user_graph = True
    supports_cold_items = True

    def __init__(self, num_users: int, embedding_dim: int, features: dict[str, Tensor],
                 ui_adj_t: Tensor, user_graph: UserGraph, item_graph: tuple[Tensor, Tensor],
                 params: DRAGONParams) -> None:
        super().__init__()
        self.modalities = branch_modalities(features, "DRAGON")
        num_items = next(iter(features.values())).size(0)
        self.dim, self.reg_weight = embedding_dim, params.reg_weight
        self.gcn = ModalityGCN(num_users, embedding_dim, features, ui_adj_t, params.num_layers)
        self.user_graph = user_graph
        self.alpha = init_user_modality_weights(num_users, len(self.modalities))
        # S^L i only (no mean over layers), as FREEDOM's item graph
        self.ii_gnn = LightGCNBackbone(len(self.modalities) * embedding_dim, params.ii_layers,
                                       alpha=[0.0] * params.ii_layers + [1.0])
        self.adj_item: Tensor
        self.register_buffer("adj_item", to_adj_t(*item_graph, num_items), persistent=False)

    @classmethod
    def from_data(cls, params: Any, graph: HeteroData, features: dict[str, Tensor],
                  embedding_dim: int) -> "DRAGON":
        user_graph = UserGraph.of(graph, "dragon")
        inputs = features  # 0: the raw features, untouched, as the sources feed them
        if params.feature_dim:
            inputs = {m: prepare_features(x, params.feature_dim, m) for m, x in features.items()}
        return cls(graph["user"].num_nodes, embedding_dim, inputs, bipartite_adj_t(graph),
                   user_graph, frozen_item_graph(graph, features, params.mm_weights), params)

    def reset_parameters(self) -> None:
        self.gcn.reset_parameters()
        self.alpha.data.copy_(init_user_modality_weights(*self.alpha.shape))

    def branches(self) -> dict[str, tuple[Tensor, Tensor]]:
        r"""``{m: (m's block of û, m's block of î) for each modality m, "fused": (û, î)}``,
        see the class docstring."""
        reps = self.gcn()
        users = torch.cat([self.alpha[:, k, None] * reps[m][0]
                           for k, m in enumerate(self.modalities)], 1)
        items = torch.cat([reps[m][1] for m in self.modalities], 1)
        users = users + self.user_graph(users)
        items = items + self.ii_gnn(items, self.adj_item)
        out = {m: (u, i) for m, u, i in zip(self.modalities, users.split(self.dim, 1),
                                           items.split(self.dim, 1))}
        out[FUSED] = (users, items)
        return out

    def branch_loss(self, batch: Batch, branches: Branches) -> tuple[Tensor, dict[str, Tensor]]:
        return bpr_with_preference_penalty(self.gcn, self.alpha, self.reg_weight, batch,
                                           branches[FUSED])

    def __repr__(self) -> str:
        return (f"DRAGON(modalities={self.modalities}, gcn={self.gcn}, "
                f"user_graph={self.user_graph}, ii={self.ii_gnn})")
