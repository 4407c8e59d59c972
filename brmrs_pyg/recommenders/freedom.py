r"""FREEDOM (Zhou & Shen, MM 2023, "A Tale of Two Graphs: Freezing and Denoising Graph
Structures for Multimodal Recommendation"): a frozen item-item graph from the raw features and
a user-item graph pruned afresh every epoch by degree-sensitive edge sampling."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from brmrs_pyg.config import ConfigError, option
from brmrs_pyg.graphs import (UI, degree_sensitive_sample, knn_adjacency, knn_k_of,
                              user_item_adj_t)
from brmrs_pyg.losses import bpr_loss, l2_reg
from brmrs_pyg.nn.backbones import LightGCNBackbone
from brmrs_pyg.nn.sparse import to_adj_t
from brmrs_pyg.recommenders.base import MODELS, Batch, gather
from brmrs_pyg.recommenders.branched import FUSED, BranchedRecommender, Branches, branch_modalities


@dataclass(frozen=True)
class FREEDOMParams:
    num_layers: int = option(2, "LightGCN layers over the (pruned) user-item graph")
    ii_layers: int = option(1, "propagation layers over the frozen item-item graph")
    mm_weights: str = option("text=0.9", "weights of the modalities' kNN graphs in the frozen "
                                         "item-item graph, 'name=w,...'; unnamed modalities "
                                         "share the rest equally, then weights are scaled to "
                                         "sum to 1 ('': equal)")
    dropout: float = option(0.8, "fraction of user-item edges pruned each epoch by "
                                 "degree-sensitive sampling (0: no pruning)")
    lambda_mm: float = option(1e-4, "weight of the BPR of users against each modality's "
                                    "projected features")
    reg_weight: float = option(0.0, "L2 weight on the batch's ID embeddings")
    train_features: bool = option(True, "the raw item features are trainable parameters")

    def __post_init__(self) -> None:
        if self.num_layers < 0 or self.ii_layers < 0:
            raise ConfigError("num_layers and ii_layers must be >= 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must lie in [0, 1), got {self.dropout}")
        if self.lambda_mm < 0 or self.reg_weight < 0:
            raise ConfigError("lambda_mm and reg_weight must be >= 0")


def modality_weights(spec: str, modalities: list[str]) -> dict[str, float]:
    r"""Parses ``mm_weights``: ``'name=w,...'``; modalities not named share
    :math:`\max(0, 1 - \sum w)` equally; the weights are then scaled to sum to 1.

    >>> {m: round(w, 4) for m, w in modality_weights("text=0.9", ["text", "image"]).items()}
    {'text': 0.9, 'image': 0.1}
    """
    named: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, value = part.partition("=")
        try:
            named[name.strip()] = float(value) if sep else float("nan")
        except ValueError:
            named[name.strip()] = float("nan")
        if not named[name.strip()] >= 0:
            raise ConfigError(f"mm_weights={spec!r}: expected 'name=weight,...' with weights "
                              f">= 0, got {part!r}")
    unknown = sorted(set(named) - set(modalities))
    if unknown:
        raise ConfigError(f"mm_weights={spec!r} names {unknown}, not among the run's modalities "
                          f"{modalities}; name only those, or set mm_weights='' for equal weights")
    rest = [m for m in modalities if m not in named]
    share = max(0.0, 1.0 - sum(named.values())) / len(rest) if rest else 0.0
    weights = {m: named.get(m, share) for m in modalities}
    total = sum(weights.values())
    if total <= 0:
        raise ConfigError(f"mm_weights={spec!r}: the weights sum to 0")
    return {m: w / total for m, w in weights.items()}


def frozen_item_graph(graph: HeteroData, features: dict[str, Tensor], mm_weights: str
                      ) -> tuple[Tensor, Tensor]:
    r"""The frozen item-item graph of FREEDOM (and DRAGON): the :func:`modality_weights`
    ``mm_weights``-weighted sum of each modality's binary top-:math:`k` cosine graph of the raw
    features (:func:`~brmrs_pyg.graphs.knn_adjacency`, each node among its own candidates,
    :math:`k` the run's ``knn_k``), each symmetrically normalised,

    .. math::
        \mathbf{S} = \sum_m w_m \mathbf{D}_m^{-1/2} \mathbf{A}_m \mathbf{D}_m^{-1/2}.

    Returns:
        ``(edge_index, edge_weight)``, the modalities' edges side by side (duplicates are
        summed when the graph becomes a sparse matrix), neighbours sending to the item.
    """
    weights = modality_weights(mm_weights, list(features))
    edges, values = [], []
    for m, x in features.items():
        edge_index, weight = knn_adjacency(x.float(), knn_k_of(graph, m), weighted=False)
        edges.append(edge_index)
        values.append(weights[m] * weight)
    return torch.cat(edges, 1), torch.cat(values)


@MODELS.register("freedom")
class FREEDOM(BranchedRecommender):
    r"""FREEDOM (Zhou & Shen, MM 2023). The item-item graph is frozen before training: a
    weighted sum of each modality's binary top-:math:`k` cosine graph of the raw features
    (each node among its own candidates, as in the reference code), symmetrically normalised,

    .. math::
        \mathbf{S} = \sum_m w_m \mathbf{D}_m^{-1/2} \mathbf{A}_m \mathbf{D}_m^{-1/2},
        \qquad \mathbf{h} = \mathbf{S}^{L_i} \mathbf{E}_I,

    and the user-item graph is denoised: before each training epoch :math:`(1 - \rho)|E|`
    edges are drawn without replacement with probability :math:`\propto 1/\sqrt{d_u d_i}`
    (:func:`~brmrs_pyg.graphs.degree_sensitive_sample`) and renormalised; LightGCN
    (:math:`L` layers, mean over layers) runs over that pruned graph in training and over the
    full graph in evaluation. Final embeddings and the loss:

    .. math::
        \mathbf{p}_u = \bar{\mathbf{e}}_u, \qquad \mathbf{q}_i = \bar{\mathbf{e}}_i +
        \mathbf{h}_i, \qquad \mathbf{f}^m_i = \mathbf{W}_m \mathbf{x}^m_i + \mathbf{b}_m,

        \mathcal{L} = \mathcal{L}_{bpr}(\mathbf{p}, \mathbf{q}) + \lambda \sum_m
        \mathcal{L}_{bpr}(\mathbf{p}, \mathbf{f}^m) + \lambda_{reg} \mathcal{R},

    where the second term ranks each modality's projected features with the final user
    embeddings (the reference code calls :math:`\lambda` ``reg_weight``),
    and :math:`\mathcal{R}` is L2 on the batch's ID embeddings (0 by default, as the
    reference code has none).

    Cold items (``split=cold_items``): their rows of :math:`\mathbf{E}_I` are zero (rather
    than the untrained initial value, which would add noise to every score), so
    :math:`\mathbf{q}_i = \mathbf{h}_i`, the ID embeddings of its feature neighbours in
    :math:`\mathbf{S}`.

    Branches (for ``plugin=brmrs``): modality :math:`m` is :math:`(\mathbf{p},
    \mathbf{f}^m)`, the scores its :math:`\lambda` term trains; ``fused`` is
    :math:`(\mathbf{p}, \mathbf{q})`.

    Args:
        num_users (int): Number of users.
        embedding_dim (int): Width :math:`d` of every embedding and projection.
        features (dict): Raw item features per modality, :math:`(|\mathcal{I}|, D_m)`.
        ui_pairs (Tensor): Training pairs, :math:`(2, E)` (user, item).
        ui_weight (Tensor): Their LightGCN weights :math:`1/\sqrt{d_u d_i}`, :math:`(E,)`.
        item_graph (tuple): The frozen :math:`\mathbf{S}` as ``(edge_index, edge_weight)``.
        params (FREEDOMParams): Layers, pruning ratio and loss weights.
    """

    Params = FREEDOMParams
    supports_cold_items = True

    def __init__(self, num_users: int, embedding_dim: int, features: dict[str, Tensor],
                 ui_pairs: Tensor, ui_weight: Tensor, item_graph: tuple[Tensor, Tensor],
                 params: FREEDOMParams) -> None:
        super().__init__()
        self.modalities = branch_modalities(features, "FREEDOM")
        num_items = next(iter(features.values())).size(0)
        self.num_users, self.num_items = num_users, num_items
        self.dropout, self.lambda_mm = params.dropout, params.lambda_mm
        self.reg_weight = params.reg_weight
        self.user_emb = torch.nn.Embedding(num_users, embedding_dim)
        self.item_emb = torch.nn.Embedding(num_items, embedding_dim)
        self.features = torch.nn.ParameterDict(
            {m: torch.nn.Parameter(x.float().clone(), requires_grad=params.train_features)
             for m, x in features.items()})
        self.proj = torch.nn.ModuleDict({m: torch.nn.Linear(x.size(1), embedding_dim)
                                         for m, x in features.items()})
        self.ui_gnn = LightGCNBackbone(embedding_dim, params.num_layers)
        # only the last item-graph layer, h = S^L E (no mean over layers)
        self.ii_gnn = LightGCNBackbone(embedding_dim, params.ii_layers,
                                       alpha=[0.0] * params.ii_layers + [1.0])
        self.ui_pairs: Tensor
        self.ui_weight: Tensor
        self.adj_full: Tensor
        self.register_buffer("ui_pairs", ui_pairs, persistent=False)
        self.register_buffer("ui_weight", ui_weight, persistent=False)
        self.register_buffer("adj_full", user_item_adj_t(ui_pairs, num_users, num_items),
                             persistent=False)
        self.register_buffer("adj_item", to_adj_t(*item_graph, num_items), persistent=False)
        #: The pruned graph of the current epoch (:meth:`start_epoch`); ``None`` before the
        #: first epoch, when training uses the full graph.
        self.adj_pruned: Tensor | None = None
        self.reset_parameters()

    @classmethod
    def from_data(cls, params: Any, graph: HeteroData, features: dict[str, Tensor],
                  embedding_dim: int) -> "FREEDOM":
        return cls(graph["user"].num_nodes, embedding_dim, features, graph[UI].edge_index,
                   graph[UI].edge_weight, frozen_item_graph(graph, features, params.mm_weights),
                   params)

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_uniform_(self.user_emb.weight)
        torch.nn.init.xavier_uniform_(self.item_emb.weight)
        for lin in self.proj.values():
            lin.reset_parameters()  # type: ignore[operator]

    def start_epoch(self) -> None:
        r"""Samples this epoch's pruned user-item graph (kept edges renormalised)."""
        if self.dropout <= 0:
            self.adj_pruned = None
            return
        keep = degree_sensitive_sample(self.ui_weight, 1.0 - self.dropout)
        self.adj_pruned = user_item_adj_t(self.ui_pairs[:, keep], self.num_users,
                                          self.num_items)

    def user_item_adj(self) -> Tensor:
        r"""The user-item adjacency in use: the epoch's pruned graph in training, the full
        graph in evaluation."""
        if self.training and self.adj_pruned is not None:
            return self.adj_pruned
        return self.adj_full

    def branches(self) -> dict[str, tuple[Tensor, Tensor]]:
        r"""``{m: (p, f^m) for each modality m, "fused": (p, q)}``, see the class docstring."""
        ids = self.without_cold_ids(self.item_emb.weight)
        ego = torch.cat([self.user_emb.weight, ids])
        users, items = self.ui_gnn(ego, self.user_item_adj()).split(
            [self.num_users, self.num_items])
        items = items + self.ii_gnn(ids, self.adj_item)
        out: dict[str, tuple[Tensor, Tensor]] = {}
        for m in self.modalities:
            projection: torch.nn.Module = self.proj[m]
            out[m] = (users, projection(self.features[m]))
        out[FUSED] = (users, items)
        return out

    def branch_loss(self, batch: Batch, branches: Branches) -> tuple[Tensor, dict[str, Tensor]]:
        neg = batch.neg[:, 0]

        def bpr(user: Tensor, item: Tensor) -> Tensor:
            u = gather(user, batch.users)
            return bpr_loss((u * gather(item, batch.pos)).sum(-1),
                            (u * gather(item, neg)).sum(-1))

        terms = {"bpr": bpr(*branches[FUSED])}
        total = terms["bpr"]
        if self.lambda_mm:
            terms["mm_bpr"] = torch.stack([bpr(*branches[m]) for m in self.modalities]).sum()
            total = total + self.lambda_mm * terms["mm_bpr"]
        if self.reg_weight:
            terms["reg"] = l2_reg(self.user_emb(batch.users), self.item_emb(batch.pos),
                                  self.item_emb(neg))
            total = total + self.reg_weight * terms["reg"]
        return total, {name: value.detach() for name, value in terms.items()}

    def __repr__(self) -> str:
        return (f"FREEDOM({self.num_users} users, {self.num_items} items, "
                f"modalities={self.modalities}, dim={self.user_emb.embedding_dim}, "
                f"dropout={self.dropout}, ui={self.ui_gnn}, ii={self.ii_gnn})")
