r"""GRCN (Wei et al., MM 2020, "Graph-Refined Convolutional Network for Multimedia
Recommendation with Implicit Feedback"): a graph refining layer scores every user-item edge
by the affinity of the user's routed preference and the item's content in each modality and
prunes the edges softly; an ID graph convolution runs over the refined graph."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import HeteroData

from brmrs_pyg.config import ConfigError, option
from brmrs_pyg.graphs import bipartite_edges
from brmrs_pyg.nn.features import prepare_features
from brmrs_pyg.nn.sparse import EdgeGraph
from brmrs_pyg.recommenders.base import MODELS
from brmrs_pyg.recommenders.branched import FUSED
from brmrs_pyg.recommenders.modal_gcn import ModalGCNRecommender


@dataclass(frozen=True)
class GRCNParams:
    latent_dim: int = option(64, "width of each modality's user preferences and item content")
    num_routing: int = option(3, "routing iterations of the user preferences (MMRec n_layers)")
    id_layers: int = option(2, "graph convolution layers of the ID embeddings over the "
                               "refined graph")
    pruning: bool = option(True, "prune the edges whose refined weight is negative (ReLU, "
                                 "the paper's soft pruning)")
    reg_weight: float = option(1e-1, "weight of the mean-square penalty on the batch's ID "
                                     "embeddings and user preferences")
    feature_dim: int = option(0, "principal components kept of each modality's features "
                                 "before its projection (0: the raw features, as the sources; "
                                 "> 0: centred, reduced and rescaled, for speed)")

    def __post_init__(self) -> None:
        if self.latent_dim < 1 or self.num_routing < 0 or self.id_layers < 0:
            raise ConfigError(f"need latent_dim >= 1, num_routing >= 0 and id_layers >= 0, "
                              f"got {self.latent_dim}, {self.num_routing}, {self.id_layers}")
        if self.reg_weight < 0 or self.feature_dim < 0:
            raise ConfigError(f"reg_weight and feature_dim must be >= 0, got {self.reg_weight}, "
                              f"{self.feature_dim}")


def edge_attention(graph: EdgeGraph, x: Tensor) -> Tensor:
    r"""Affinity of every edge :math:`j \to i` of ``graph``, normalised over the edges
    :math:`i` receives,

    .. math::
        \alpha_{ji} = \frac{\exp \langle \mathbf{x}_i, \mathbf{x}_j \rangle}
        {\sum_{(k \to i)} \exp \langle \mathbf{x}_i, \mathbf{x}_k \rangle}.

    Shapes:
        - **x**: :math:`(N, d)`; **output**: :math:`(E,)`, in ``graph``'s edge order.
    """
    return graph.softmax(graph.dot(x, x))


@MODELS.register("grcn")
class GRCN(ModalGCNRecommender):
    r"""GRCN (Wei et al., MM 2020). Graph refining layer, per modality :math:`m`: item
    content :math:`\mathbf{c}_i = \operatorname{normalize}(\phi(\mathbf{W}_m
    \mathbf{x}^{(m)}_i + \mathbf{b}_m))` (:math:`\phi` the LeakyReLU) and a user prototype
    routed from the normalised preference :math:`\mathbf{p}_u` for :math:`T` iterations,

    .. math::
        \alpha_{iu} = \operatorname{softmax}_{i \in \mathcal{N}(u)} \langle \mathbf{p}_u,
        \mathbf{c}_i \rangle, \qquad \mathbf{p}_u \leftarrow \operatorname{normalize}
        \big(\mathbf{p}_u + \textstyle\sum_{i \in \mathcal{N}(u)} \alpha_{iu}
        \mathbf{c}_i\big);

    then, over the edges in both directions with :math:`\mathbf{x} = [\mathbf{p};
    \mathbf{c}]`, the affinity :math:`\alpha^{(m)}_{ji}` of :func:`edge_attention` (a
    softmax over the user's items on user nodes, over the item's users on item nodes) and
    the modality's representation :math:`\mathbf{x}^{(m)}_i = \mathbf{x}_i + \sum_j
    \alpha^{(m)}_{ji} \mathbf{x}_j`. The refined weight of edge :math:`j \to i` is the
    modality with the highest confidence-weighted affinity, softly pruned,

    .. math::
        w_{ji} = \operatorname{ReLU}\big(\max_m \alpha^{(m)}_{ji} \, \sigma_{j,m}\big),

    with :math:`\boldsymbol{\sigma}` a learned confidence per node and modality. Graph
    convolution: normalised ID embeddings :math:`\mathbf{e}^{(0)}` propagated by weighted
    sums, :math:`\mathbf{e}^{(l+1)}_i = \sum_j w_{ji} \mathbf{e}^{(l)}_j`, and
    :math:`\mathbf{x}^{id} = \sum_{l=0}^{L} \mathbf{e}^{(l)}`. Prediction: the concatenation
    :math:`[\mathbf{x}^{id}; \mathbf{x}^{(1)}; \dots; \mathbf{x}^{(M)}]`, so the score is the
    sum of the ID score and of every modality's score. Trained with BPR and a mean-square
    penalty (:class:`~brmrs_pyg.recommenders.modal_gcn.ModalGCNRecommender`).

    Branches (for ``plugin=brmrs``): modality :math:`m` is its representation
    :math:`\mathbf{x}^{(m)}` alone (the ID part belongs to no modality; with it in every
    branch, the branch margins would share the ID margin and CHNS would mostly train the ID
    embeddings); ``fused`` is the full concatenation, whose score is the ID score plus the
    branch scores.

    The defaults are MMRec's (``src/models/grcn.py``, a port of the authors' code):
    ``confid`` modality weighting, pruning, ``concat`` fusion, normalisation on, no
    activation after the convolutions, add aggregation, no edge dropout. Differences: the
    routing updates each user from its items, as in the paper (MMRec's attention runs over
    the user-to-item edges only, so users receive nothing and its routing leaves the
    preferences unchanged); the penalty omits MMRec's extra term on all users' visual
    preferences (it covers one hard-coded modality).

    Cold items (``split=cold_items``): their ID embeddings are zero, so :math:`\mathbf{x}^{id}_i
    = \mathbf{0}` and a cold item scores by its modality representations, its content
    :math:`\mathbf{c}_i` (it has no edge to refine); zero rather than the untrained initial
    value, which would add noise to every score.

    Args:
        num_users (int): Number of users.
        embedding_dim (int): Width :math:`d` of the ID embeddings.
        features (dict): Item features per modality, :math:`(|\mathcal{I}|, D_m)`.
        edge_index (Tensor): The user-item graph in both directions over users then items,
            :math:`(2, 2E)` (kept as an :class:`~brmrs_pyg.nn.sparse.EdgeGraph`, whose edge
            order every per-edge tensor follows).
        params (GRCNParams): Widths, routing and layers, pruning and penalty.

    Shapes:
        - **fused branch**: :math:`(|\mathcal{U}|, d + M d_c)`, :math:`(|\mathcal{I}|,
          d + M d_c)`; modality branches :math:`d_c` wide.
    """

    Params = GRCNParams
    supports_cold_items = True

    def __init__(self, num_users: int, embedding_dim: int, features: dict[str, Tensor],
                 edge_index: Tensor, params: GRCNParams) -> None:
        super().__init__()
        self._setup(num_users, features, "GRCN", embedding_dim, params.latent_dim,
                    params.reg_weight)
        self.params = params
        num_nodes = num_users + self.num_items
        self.confidence = torch.nn.Parameter(torch.empty(num_nodes, len(self.modalities)))
        self.graph = EdgeGraph(edge_index, num_nodes)
        # the item-to-user edges, along which the routing updates the users
        self.to_users = EdgeGraph(edge_index[:, edge_index[1] < num_users], num_nodes)
        self.reset_parameters()

    @classmethod
    def from_data(cls, params: Any, graph: HeteroData, features: dict[str, Tensor],
                  embedding_dim: int) -> "GRCN":
        if params.feature_dim:  # 0: the raw features, untouched, as the sources feed them
            features = {m: prepare_features(x, params.feature_dim, m)
                        for m, x in features.items()}
        return cls(graph["user"].num_nodes, embedding_dim, features, bipartite_edges(graph)[0],
                   params)

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_normal_(self.id_emb)
        torch.nn.init.xavier_normal_(self.confidence)
        self.inputs.reset_parameters()

    def refine(self, m: str) -> tuple[Tensor, Tensor]:
        r"""Modality ``m``'s representation :math:`\mathbf{x}^{(m)}` (users then items) and
        its edge affinities :math:`\alpha^{(m)}` in :attr:`graph`'s edge order."""
        pref, content = self.inputs(m)
        pref, content = F.normalize(pref), F.normalize(F.leaky_relu(content))
        for _ in range(self.params.num_routing):
            x = torch.cat([pref, content])
            routed = self.to_users.aggregate(x, edge_attention(self.to_users, x))
            pref = F.normalize(pref + routed[:self.num_users])
        x = torch.cat([pref, content])
        alpha = edge_attention(self.graph, x)
        return x + self.graph.aggregate(x, alpha), alpha

    def edge_weights(self, alphas: list[Tensor]) -> Tensor:
        r"""The refined weight :math:`w_{ji}` of every edge from the modalities' affinities
        (in the order of ``modalities``)."""
        confidence = self.confidence[self.graph.col]  # the sender's
        weight = (torch.stack(alphas, 1) * confidence).max(1).values
        return F.relu(weight) if self.params.pruning else weight

    def id_representation(self, weight: Tensor) -> Tensor:
        r""":math:`\mathbf{x}^{id}`: the normalised ID embeddings plus every layer of their
        propagation over the refined graph."""
        h = F.normalize(self.without_cold_ids(self.id_emb))
        out = h
        for _ in range(self.params.id_layers):
            h = self.graph.aggregate(h, weight)
            out = out + h
        return out

    def branches(self) -> dict[str, tuple[Tensor, Tensor]]:
        r"""``{m: x^(m) for each modality m, "fused": [x^id; x^(1); ...]}``, each split into
        users and items."""
        reps, alphas = {}, []
        for m in self.modalities:
            reps[m], alpha = self.refine(m)
            alphas.append(alpha)
        id_rep = self.id_representation(self.edge_weights(alphas))
        out = {m: self.split(x) for m, x in reps.items()}
        out[FUSED] = self.split(torch.cat([id_rep, *reps.values()], 1))
        return out

    def __repr__(self) -> str:
        p = self.params
        return (f"GRCN({self.num_users} users, {self.num_items} items, "
                f"modalities={self.modalities}, dim={self.id_emb.size(1)}, "
                f"latent={p.latent_dim}, routing={p.num_routing}, id_layers={p.id_layers}, "
                f"pruning={p.pruning})")
