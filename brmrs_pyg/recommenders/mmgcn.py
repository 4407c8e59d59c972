r"""MMGCN (Wei et al., MM 2019, "MMGCN: Multi-modal Graph Convolution Network for
Personalized Recommendation of Micro-video"): one graph convolution network per modality
over the user-item graph, each layer an aggregation of the neighbours' modal representations
combined with the node's own representation and its ID embedding."""
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
from brmrs_pyg.nn.sparse import spmm, to_adj_t
from brmrs_pyg.recommenders.base import MODELS
from brmrs_pyg.recommenders.branched import FUSED
from brmrs_pyg.recommenders.modal_gcn import ModalGCNRecommender

AGGREGATIONS = ("mean", "max")
FUSIONS = ("sum", "mean")


@dataclass(frozen=True)
class MMGCNParams:
    num_layers: int = option(3, "graph convolution layers per modality (MMRec's code runs 3 "
                                "whatever its n_layers says)")
    latent_dim: int = option(256, "width of the projected item features and the user "
                                  "preferences, the first layer's input")
    aggregation: str = option("mean", "neighbour aggregation: 'mean' or 'max'")
    concat: bool = option(True, "combination layer concatenates [h; x_hat] (paper Eq. 6) "
                                "instead of adding them (Eq. 7)")
    has_id: bool = option(True, "add the ID embedding in the combination layer")
    fusion: str = option("sum", "final representation over modalities: 'sum' (paper) or "
                                "'mean' (MMRec)")
    reg_weight: float = option(0.0, "weight of the mean-square penalty on the batch's ID "
                                    "embeddings and user preferences")
    feature_dim: int = option(0, "principal components kept of each modality's features "
                                 "before its projection (0: the raw features, as the sources; "
                                 "> 0: centred, reduced and rescaled, for speed)")

    def __post_init__(self) -> None:
        if self.num_layers < 1 or self.latent_dim < 1:
            raise ConfigError(f"num_layers and latent_dim must be >= 1, got {self.num_layers}, "
                              f"{self.latent_dim}")
        if self.aggregation not in AGGREGATIONS:
            raise ConfigError(f"aggregation must be one of {AGGREGATIONS}, got "
                              f"{self.aggregation!r}")
        if self.fusion not in FUSIONS:
            raise ConfigError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.reg_weight < 0 or self.feature_dim < 0:
            raise ConfigError(f"reg_weight and feature_dim must be >= 0, got {self.reg_weight}, "
                              f"{self.feature_dim}")


def mean_adj_t(edge_index: Tensor, num_nodes: int) -> Tensor:
    r"""The mean-aggregation matrix :math:`\mathbf{D}^{-1}\mathbf{A}` of a directed graph
    (row :math:`i` averages the nodes sending to :math:`i`), as a sparse CSR ``adj_t``.

    Shapes:
        - **edge_index**: :math:`(2, E)`; **output**: :math:`(N, N)`.
    """
    in_degree = torch.bincount(edge_index[1], minlength=num_nodes).float()
    return to_adj_t(edge_index, in_degree[edge_index[1]].reciprocal(), num_nodes)


class MMGCNLayer(torch.nn.Module):
    r"""One MMGCN layer (Wei et al., MM 2019, Section 3): the aggregation layer (Eq. 1-3)
    and the combination layer (Eq. 5-7) of one modality,

    .. math::
        \mathbf{h}_v = \phi\big(f_{v' \in \mathcal{N}(v)}(\mathbf{W}_1 \mathbf{x}_{v'})\big),
        \qquad \hat{\mathbf{x}}_v = \phi(\mathbf{W}_2 \mathbf{x}_v + \mathbf{b}_2)
        + \mathbf{e}_v,

        \mathbf{x}'_v = \phi\big(\mathbf{W}_3 [\mathbf{h}_v; \hat{\mathbf{x}}_v]
        + \mathbf{b}_3\big) \;\text{(concat)} \quad\text{or}\quad
        \phi\big(\mathbf{W}_3 \mathbf{h}_v + \mathbf{b}_3 + \hat{\mathbf{x}}_v\big),

    with :math:`\phi` the LeakyReLU, :math:`f` the mean or the element-wise max over the
    neighbours (users' neighbours are items and vice versa) and :math:`\mathbf{e}_v` the
    node's ID embedding (dropped without ``has_id``).

    Args:
        in_dim (int): Width of the input :math:`\mathbf{x}`.
        dim (int): Width of the output and of the ID embedding.
        concat (bool): Concatenate (Eq. 6) instead of adding (Eq. 7).

    Shapes:
        - **x**: :math:`(N, D_{in})`; **id_emb**: :math:`(N, d)` or ``None``;
          **output**: :math:`(N, d)`.
    """

    def __init__(self, in_dim: int, dim: int, concat: bool) -> None:
        super().__init__()
        self.concat = concat
        self.conv = torch.nn.Linear(in_dim, in_dim, bias=False)
        self.self_proj = torch.nn.Linear(in_dim, dim)
        self.combine = torch.nn.Linear(in_dim + dim if concat else in_dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for lin in (self.conv, self.self_proj, self.combine):
            lin.reset_parameters()
            torch.nn.init.xavier_normal_(lin.weight)

    def forward(self, x: Tensor, aggregate: Any, id_emb: Tensor | None) -> Tensor:
        h = F.leaky_relu(aggregate(self.conv(x)))
        x_hat = F.leaky_relu(self.self_proj(x))
        if id_emb is not None:
            x_hat = x_hat + id_emb
        if self.concat:
            return F.leaky_relu(self.combine(torch.cat([h, x_hat], 1)))
        return F.leaky_relu(self.combine(h) + x_hat)


@MODELS.register("mmgcn")
class MMGCN(ModalGCNRecommender):
    r"""MMGCN (Wei et al., MM 2019). Per modality :math:`m` a graph over users and items
    whose input is the row-normalised user preference and projected item features,

    .. math::
        \mathbf{x}^{(m,0)} = \operatorname{normalize}\big([\mathbf{P}^{(m)};
        \mathbf{W}_m \mathbf{X}^{(m)} + \mathbf{b}_m]\big),

    runs :math:`L` :class:`MMGCNLayer` s (weights of its own, the ID embeddings
    :math:`\mathbf{E}` shared by all modalities) to :math:`[\mathbf{U}^{(m)};
    \mathbf{I}^{(m)}] = \mathbf{x}^{(m,L)}`. The prediction (paper Eq. 8) sums the
    modalities, :math:`\mathbf{u}^* = \sum_m \mathbf{u}^{(m)}`, :math:`\mathbf{i}^* =
    \sum_m \mathbf{i}^{(m)}`, :math:`s(u, i) = \langle \mathbf{u}^*, \mathbf{i}^* \rangle`;
    ``fusion='mean'`` divides both by the number of modalities, as MMRec does. Trained with
    BPR and a mean-square penalty (:class:`~brmrs_pyg.recommenders.modal_gcn.
    ModalGCNRecommender`).

    Branches (for ``plugin=brmrs``): modality :math:`m` is
    :math:`(\mathbf{U}^{(m)}, \mathbf{I}^{(m)})`, the output of its own graph network;
    ``fused`` is :math:`(\mathbf{u}^*, \mathbf{i}^*)`.

    Differences from MMRec (``src/models/mmgcn.py``), following the paper: the ID
    embeddings and user preferences are trained (MMRec creates them as plain tensors outside
    the module's parameters, so they stay at their random initialisation); every modality
    is projected to ``latent_dim`` (MMRec projects the visual features to 256 and feeds the
    text features raw); the penalty covers every modality's preferences of the batch's users
    (MMRec: the visual preferences of all users); the modalities are summed (MMRec averages).
    MMRec's effective defaults are kept: mean aggregation, concatenation (its ``concate`` is
    the string ``'False'``, which is true), three layers and ID embeddings.

    Cold items (``split=cold_items``): their rows of :math:`\mathbf{E}` are zero, so a cold
    item (which has no neighbour in the training graph) is its projected features passed
    through each layer's self and combination maps (zero rather than the untrained initial
    value, which would add noise to every score).

    Args:
        num_users (int): Number of users.
        embedding_dim (int): Width :math:`d` of the ID embeddings and layer outputs.
        features (dict): Item features per modality, :math:`(|\mathcal{I}|, D_m)`.
        edge_index (Tensor): The user-item graph in both directions over users then items,
            :math:`(2, 2E)`.
        params (MMGCNParams): Layers, widths, aggregation, combination, fusion and penalty.
    """

    Params = MMGCNParams
    supports_cold_items = True

    def __init__(self, num_users: int, embedding_dim: int, features: dict[str, Tensor],
                 edge_index: Tensor, params: MMGCNParams) -> None:
        super().__init__()
        self._setup(num_users, features, "MMGCN", embedding_dim, params.latent_dim,
                    params.reg_weight)
        self.params = params
        dims = [params.latent_dim] + [embedding_dim] * params.num_layers
        self.gcns = torch.nn.ModuleDict({m: torch.nn.ModuleList(
            [MMGCNLayer(dims[k], embedding_dim, params.concat) for k in range(params.num_layers)])
            for m in self.modalities})
        num_nodes = num_users + self.num_items
        self.edge_index: Tensor
        self.adj_mean: Tensor
        self.register_buffer("edge_index", edge_index, persistent=False)
        self.register_buffer("adj_mean", mean_adj_t(edge_index, num_nodes), persistent=False)
        self.reset_parameters()

    @classmethod
    def from_data(cls, params: Any, graph: HeteroData, features: dict[str, Tensor],
                  embedding_dim: int) -> "MMGCN":
        if params.feature_dim:  # 0: the raw features, untouched, as the sources feed them
            features = {m: prepare_features(x, params.feature_dim, m)
                        for m, x in features.items()}
        return cls(graph["user"].num_nodes, embedding_dim, features, bipartite_edges(graph)[0],
                   params)

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_normal_(self.id_emb)
        self.inputs.reset_parameters()
        for layers in self.gcns.values():
            for layer in layers:  # type: ignore[attr-defined]
                layer.reset_parameters()

    def aggregate(self, x: Tensor) -> Tensor:
        r"""The mean or element-wise max of each node's neighbours' rows of ``x`` (zero for
        a node without neighbours)."""
        if self.params.aggregation == "mean":
            return spmm(self.adj_mean, x)
        source, target = self.edge_index
        index = target.unsqueeze(1).expand(-1, x.size(1))
        return x.new_zeros(x.shape).scatter_reduce(0, index, x[source], "amax",
                                                   include_self=False)

    def modality(self, m: str) -> Tensor:
        r"""The output :math:`\mathbf{x}^{(m,L)}` of modality ``m``'s network, users then
        items."""
        pref, content = self.inputs(m)
        x = F.normalize(torch.cat([pref, content]))
        id_emb = self.without_cold_ids(self.id_emb) if self.params.has_id else None
        for layer in self.gcns[m]:  # type: ignore[attr-defined]
            x = layer(x, self.aggregate, id_emb)
        return x

    def branches(self) -> dict[str, tuple[Tensor, Tensor]]:
        r"""``{m: (U^(m), I^(m)) for each modality m, "fused": (u*, i*)}``."""
        reps = {m: self.modality(m) for m in self.modalities}
        fused = torch.stack(list(reps.values())).sum(0)
        if self.params.fusion == "mean":
            fused = fused / len(reps)
        out = {m: self.split(x) for m, x in reps.items()}
        out[FUSED] = self.split(fused)
        return out

    def __repr__(self) -> str:
        p = self.params
        return (f"MMGCN({self.num_users} users, {self.num_items} items, "
                f"modalities={self.modalities}, dim={self.id_emb.size(1)}, "
                f"latent={p.latent_dim}, layers={p.num_layers}, aggregation={p.aggregation}, "
                f"concat={p.concat}, fusion={p.fusion})")
