r"""DualGNN (Wang et al., IEEE TMM 2021, "DualGNN: Dual Graph Neural Network for Multimedia
Recommendation"): a graph convolution per modality over the user-item graph, the modalities
fused per user with learned weights, and the fused user representations refined over the
user co-occurrence graph. Its per-modality GCN and user-graph aggregation are shared with
DRAGON (:mod:`brmrs_pyg.recommenders.dragon`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from brmrs_pyg.config import ConfigError, option
from brmrs_pyg.graphs import UU, bipartite_adj_t, neighbour_softmax
from brmrs_pyg.losses import bpr_loss
from brmrs_pyg.nn.backbones import LightGCNBackbone
from brmrs_pyg.nn.features import prepare_features
from brmrs_pyg.nn.sparse import spmm, to_adj_t
from brmrs_pyg.recommenders.base import MODELS, Batch, gather
from brmrs_pyg.recommenders.branched import FUSED, BranchedRecommender, Branches, branch_modalities


class ModalityGCN(torch.nn.Module):
    r"""The single-modal representation learning of DualGNN (Wang et al., TMM 2021), reused by
    DRAGON's heterogeneous graph: per modality :math:`m`, a user preference table
    :math:`\mathbf{P}_m` and a two-layer projection of the item features, L2-normalised per
    row and propagated over the normalised user-item graph :math:`\hat{\mathbf{A}}`, the
    layers summed,

    .. math::
        \mathbf{X}_m = \operatorname{norm}\big([\mathbf{P}_m; \mathbf{W}^{(2)}_m
        \operatorname{LeakyReLU}(\mathbf{W}^{(1)}_m \mathbf{F}_m + \mathbf{b}^{(1)}_m) +
        \mathbf{b}^{(2)}_m]\big), \qquad
        [\mathbf{U}_m; \mathbf{I}_m] = \sum_{l=0}^{L} \hat{\mathbf{A}}^l \mathbf{X}_m,

    with :math:`\mathbf{W}^{(1)}_m \in \mathbb{R}^{4d \times D_m}`,
    :math:`\mathbf{W}^{(2)}_m \in \mathbb{R}^{d \times 4d}` and :math:`\hat{a}_{ui} =
    1/\sqrt{d_u d_i}`. The features are constants; all modalities propagate together, as one
    :math:`(|\mathcal{U}|+|\mathcal{I}|) \times Md` matrix (one sparse product per layer).

    Args:
        num_users (int): Number of users.
        embedding_dim (int): Width :math:`d` of every representation.
        features (dict): Item features per modality, :math:`(|\mathcal{I}|, D_m)`.
        ui_adj_t (Tensor): :math:`\hat{\mathbf{A}}`, sparse CSR over users then items.
        num_layers (int): :math:`L`.

    Shapes:
        - **output**: ``{m: (U_m, I_m)}``, :math:`(|\mathcal{U}|, d)` and
          :math:`(|\mathcal{I}|, d)`.
    """

    def __init__(self, num_users: int, embedding_dim: int, features: dict[str, Tensor],
                 ui_adj_t: Tensor, num_layers: int) -> None:
        super().__init__()
        self.modalities = list(features)
        self.num_users, self.dim = num_users, embedding_dim
        self.preference = torch.nn.ParameterDict(
            {m: torch.nn.Parameter(torch.empty(num_users, embedding_dim)) for m in features})
        self.mlp = torch.nn.ModuleDict({
            m: torch.nn.Sequential(torch.nn.Linear(x.size(1), 4 * embedding_dim),
                                   torch.nn.LeakyReLU(),
                                   torch.nn.Linear(4 * embedding_dim, embedding_dim))
            for m, x in features.items()})
        for m, x in features.items():
            self.register_buffer(f"feat_{m}", x.float().clone(), persistent=False)
        self.register_buffer("ui_adj_t", ui_adj_t, persistent=False)
        # the sum over layers (not LightGCN's mean): every alpha is 1
        self.gnn = LightGCNBackbone(len(features) * embedding_dim, num_layers,
                                    alpha=[1.0] * (num_layers + 1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for table in self.preference.values():
            torch.nn.init.xavier_normal_(table)
        for layer in self.mlp.modules():
            if isinstance(layer, torch.nn.Linear):
                layer.reset_parameters()

    def forward(self) -> dict[str, tuple[Tensor, Tensor]]:
        inputs = []
        for m in self.modalities:
            mlp: torch.nn.Module = self.mlp[m]
            x = torch.cat([self.preference[m], mlp(getattr(self, f"feat_{m}"))])
            inputs.append(torch.nn.functional.normalize(x, dim=1))
        h = self.gnn(torch.cat(inputs, 1), self.ui_adj_t)
        out = {}
        for m, part in zip(self.modalities, h.split(self.dim, dim=1)):
            users, items = part.split([self.num_users, part.size(0) - self.num_users])
            out[m] = (users, items)
        return out

    def __repr__(self) -> str:
        return (f"ModalityGCN({self.modalities}, dim={self.dim}, "
                f"num_layers={self.gnn.num_layers})")


class UserGraph(torch.nn.Module):
    r"""Aggregation over the user co-occurrence graph of DualGNN and DRAGON: each user's
    neighbours (the training graph's ``UU`` edges, the top-:math:`k` users by shared training
    items) weighted by the softmax of their counts (:func:`~brmrs_pyg.graphs.neighbour_softmax`),

    .. math::
        \mathbf{h}_u = \sum_{v \in \mathcal{N}(u)} w_{vu} \mathbf{x}_v, \qquad
        w_{vu} = \operatorname{softmax}_{v \in \mathcal{N}(u)}(c_{vu}).

    A user with fewer than :math:`k` neighbours takes the softmax over those it has (the
    reference code pads the list by re-drawing random neighbours every epoch, which
    double-counts them at random); a user without any gets :math:`\mathbf{h}_u = 0`, as there.
    The weights are fixed, stored once as a sparse matrix.

    Args:
        edge_index (Tensor): ``UU`` edges, :math:`(2, E)`, neighbour then user.
        count (Tensor): Their co-interaction counts :math:`c_{vu}`, :math:`(E,)`.
        num_users (int): Number of users.

    Shapes:
        - **x**: :math:`(|\mathcal{U}|, d)`; **output**: :math:`(|\mathcal{U}|, d)`.
    """

    def __init__(self, edge_index: Tensor, count: Tensor, num_users: int) -> None:
        super().__init__()
        weight = neighbour_softmax(edge_index, count, num_users)
        self.adj_t: Tensor
        self.register_buffer("adj_t", to_adj_t(edge_index, weight, num_users),
                             persistent=False)

    @classmethod
    def of(cls, graph: HeteroData, model: str) -> "UserGraph":
        r"""The aggregation over ``graph``'s user-user graph; a :class:`ConfigError` naming
        the run key when the graph was built without one (``uu_k=0``)."""
        if UU not in graph.edge_types:
            raise ConfigError(f"{model} needs the user-user co-interaction graph: set the run "
                              f"key uu_k > 0 (its model card sets the paper's k), got none")
        return cls(graph[UU].edge_index, graph[UU].edge_attr, graph["user"].num_nodes)

    def forward(self, x: Tensor) -> Tensor:
        return spmm(self.adj_t, x)

    def __repr__(self) -> str:
        return f"UserGraph({self.adj_t.size(0)} users, {self.adj_t.values().numel()} edges)"


def init_user_modality_weights(num_users: int, num_modalities: int) -> torch.nn.Parameter:
    r"""Per-user modality weights :math:`\boldsymbol{\alpha}_u`, initialised as in the
    reference code of DualGNN and DRAGON: a Xavier-normal draw of shape
    :math:`(|\mathcal{U}|, M, 1)`, softmax over the modalities; afterwards they are free
    parameters (not re-normalised during training).

    Shapes:
        - **output**: :math:`(|\mathcal{U}|, M)`.
    """
    draw = torch.nn.init.xavier_normal_(torch.empty(num_users, num_modalities, 1))
    return torch.nn.Parameter(torch.softmax(draw, dim=1).squeeze(-1))


def preference_penalty(gcn: ModalityGCN, alpha: Tensor, users: Tensor) -> Tensor:
    r"""The regulariser of DualGNN and DRAGON (reference code): mean squares of the batch's
    preference rows, summed over modalities, plus the mean square of all modality weights,

    .. math::
        \mathcal{R} = \sum_m \frac{1}{Bd} \sum_{b} \lVert \mathbf{P}_m[u_b] \rVert^2 +
        \frac{1}{|\mathcal{U}| M} \lVert \boldsymbol{\alpha} \rVert_F^2 .
    """
    terms = [gather(gcn.preference[m], users).pow(2).mean() for m in gcn.modalities]
    return torch.stack(terms).sum() + alpha.pow(2).mean()


def bpr_with_preference_penalty(gcn: ModalityGCN, alpha: Tensor, reg_weight: float,
                                batch: Batch, fused: tuple[Tensor, Tensor]
                                ) -> tuple[Tensor, dict[str, Tensor]]:
    r"""The objective of DualGNN and DRAGON: BPR of the fused scores with the uniform negative
    (column 0 of ``batch.neg``) plus :math:`\lambda` :func:`preference_penalty`; returns the
    total and its terms (detached)."""
    user, item = fused
    u = gather(user, batch.users)
    terms = {"bpr": bpr_loss((u * gather(item, batch.pos)).sum(-1),
                             (u * gather(item, batch.neg[:, 0])).sum(-1))}
    total = terms["bpr"]
    if reg_weight:
        terms["reg"] = preference_penalty(gcn, alpha, batch.users)
        total = total + reg_weight * terms["reg"]
    return total, {name: value.detach() for name, value in terms.items()}


@dataclass(frozen=True)
class DualGNNParams:
    num_layers: int = option(2, "propagation layers of each modality's GCN over the user-item "
                                "graph (their outputs are summed with the input)")
    reg_weight: float = option(0.1, "weight of the squared preference embeddings of the batch "
                                    "and the modality weights")
    feature_dim: int = option(0, "principal components kept of each modality's features "
                                 "before its projection (0: the raw features, as the sources; "
                                 "> 0: centred, reduced and rescaled, for speed)")

    def __post_init__(self) -> None:
        if self.num_layers < 0 or self.feature_dim < 0:
            raise ConfigError(f"num_layers and feature_dim must be >= 0, got {self.num_layers}, "
                              f"{self.feature_dim}")
        if not self.reg_weight >= 0:
            raise ConfigError(f"reg_weight must be >= 0, got {self.reg_weight}")


@MODELS.register("dualgnn")
class DualGNN(BranchedRecommender):
    r"""DualGNN (Wang et al., IEEE TMM 2021). Single-modal representations
    :math:`(\mathbf{U}_m, \mathbf{I}_m)` come from :class:`ModalityGCN`; the user side fuses
    them with learned per-user weights (the paper's and the reference code's default
    construction, *weighted sum*), the item side sums them, and the fused users are refined
    over the user co-occurrence graph (:class:`UserGraph`, one layer):

    .. math::
        \mathbf{u}_u = \sum_m \alpha_{um} \mathbf{U}_m[u], \qquad
        \hat{\mathbf{u}}_u = \mathbf{u}_u + \sum_{v \in \mathcal{N}(u)} w_{vu} \mathbf{u}_v,
        \qquad \mathbf{i}_i = \sum_m \mathbf{I}_m[i], \qquad
        s(u, i) = \hat{\mathbf{u}}_u^\top \mathbf{i}_i,

        \mathcal{L} = \mathcal{L}_{bpr} + \lambda \mathcal{R}

    with :math:`\mathcal{R}` from :func:`preference_penalty`.

    Branches (for ``plugin=brmrs``): modality :math:`m` is :math:`(\mathbf{U}_m,
    \mathbf{I}_m)`, its single-modal representations; ``fused`` is :math:`(\hat{\mathbf{u}},
    \mathbf{i})`.

    Differences from the reference code (MMRec ``src/models/dualgnn.py``): (1) BPR with the
    natural log, where it takes :math:`\log_2` (a constant factor :math:`1/\ln 2` on the BPR
    term, i.e. :math:`\lambda` scaled by :math:`\ln 2`); (2) the user fusion reads each
    modality's own representation, as the authors' code does, where MMRec's in-place ``+=``
    (building the item sum) turns its visual input into the sum of both, :math:`\alpha_{uv}
    (\mathbf{U}_v + \mathbf{U}_t) + \alpha_{ut} \mathbf{U}_t`; (3) short neighbour
    lists are not padded (see :class:`UserGraph`); (4) no penalty on the item modality weights,
    which the reference code creates and regularises but never uses. The edge dropping it
    prepares is unused in its forward pass, and absent here.

    Cold items (``split=cold_items``): items have no ID embedding, so a cold item (no edge in
    the training graph) is the sum of its modalities' normalised feature projections.

    Args:
        num_users (int): Number of users.
        embedding_dim (int): Width :math:`d`.
        features (dict): Item features per modality.
        ui_adj_t (Tensor): Normalised user-item adjacency (users then items), sparse CSR.
        user_graph (UserGraph): The co-occurrence aggregation.
        params (DualGNNParams): Layers and regularisation weight.
    """

    Params = DualGNNParams
    uses_user_graph = True
    supports_cold_items = True

    def __init__(self, num_users: int, embedding_dim: int, features: dict[str, Tensor],
                 ui_adj_t: Tensor, user_graph: UserGraph, params: DualGNNParams) -> None:
        super().__init__()
        self.modalities = branch_modalities(features, "DualGNN")
        self.reg_weight = params.reg_weight
        self.gcn = ModalityGCN(num_users, embedding_dim, features, ui_adj_t, params.num_layers)
        self.user_graph = user_graph
        self.alpha = init_user_modality_weights(num_users, len(self.modalities))

    @classmethod
    def from_data(cls, params: Any, graph: HeteroData, features: dict[str, Tensor],
                  embedding_dim: int) -> "DualGNN":
        if params.feature_dim:  # 0: the raw features, untouched, as the sources feed them
            features = {m: prepare_features(x, params.feature_dim, m)
                        for m, x in features.items()}
        return cls(graph["user"].num_nodes, embedding_dim, features, bipartite_adj_t(graph),
                   UserGraph.of(graph, "dualgnn"), params)

    def reset_parameters(self) -> None:
        self.gcn.reset_parameters()
        self.alpha.data.copy_(init_user_modality_weights(*self.alpha.shape))

    def branches(self) -> dict[str, tuple[Tensor, Tensor]]:
        r"""``{m: (U_m, I_m) for each modality m, "fused": (û, i)}``, see the class
        docstring."""
        reps = self.gcn()
        users = sum(self.alpha[:, k, None] * reps[m][0] for k, m in enumerate(self.modalities))
        items = sum(reps[m][1] for m in self.modalities)
        assert isinstance(users, Tensor) and isinstance(items, Tensor)
        out = dict(reps)
        out[FUSED] = (users + self.user_graph(users), items)
        return out

    def branch_loss(self, batch: Batch, branches: Branches) -> tuple[Tensor, dict[str, Tensor]]:
        return bpr_with_preference_penalty(self.gcn, self.alpha, self.reg_weight, batch,
                                           branches[FUSED])

    def __repr__(self) -> str:
        return (f"DualGNN(modalities={self.modalities}, gcn={self.gcn}, "
                f"user_graph={self.user_graph})")

