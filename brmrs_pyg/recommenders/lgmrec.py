r"""LGMRec (Guo et al., AAAI 2024, "LGMRec: Local and Global Graph Learning for Multimodal
Recommendation"): local embeddings from the user-item graph (collaborative ID embeddings and
per-modality feature embeddings) plus global embeddings from per-modality hypergraphs whose
hyperedges are learned, with a contrastive loss between the modalities' hypergraph
embeddings."""
from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import HeteroData

from brmrs_pyg.config import ConfigError, option
from brmrs_pyg.graphs import UI, bipartite_adj_t, interaction_matrix
from brmrs_pyg.losses import bpr_loss, infonce_loss, norm_penalty
from brmrs_pyg.nn.backbones import LightGCNBackbone
from brmrs_pyg.nn.features import prepare_features
from brmrs_pyg.nn.sparse import spmm
from brmrs_pyg.recommenders.base import MODELS, Batch, gather
from brmrs_pyg.recommenders.branched import (FUSED, BranchedRecommender, Branches,
                                             BranchesWithParts, branch_modalities,
                                             branch_parts)


@dataclass(frozen=True)
class LGMRecParams:
    num_layers: int = option(2, "LightGCN layers of the collaborative graph embedding")
    mm_layers: int = option(2, "user-item graph layers of the modality graph embeddings")
    hyper_layers: int = option(1, "hypergraph propagation layers")
    num_hyperedges: int = option(4, "learnable hyperedges per modality")
    keep_rate: float = option(0.5, "keep probability of the dropout on the item- and "
                                   "user-hyperedge dependencies")
    alpha: float = option(0.3, "weight of the global (hypergraph) embeddings")
    tau: float = option(0.2, "Gumbel-softmax temperature of the dependencies and temperature "
                             "of the hypergraph contrastive loss")
    cl_weight: float = option(1e-4, "weight of the hypergraph contrastive loss")
    reg_weight: float = option(1e-6, "weight of the norm penalty on the batch's final "
                                     "embeddings")
    feature_dim: int = option(0, "principal components kept of each modality's features "
                                 "before its projection and hyperedges (0: the raw features, "
                                 "as the sources; > 0: centred, reduced and rescaled, for "
                                 "speed)")

    def __post_init__(self) -> None:
        if min(self.num_layers, self.mm_layers, self.feature_dim) < 0:
            raise ConfigError("num_layers, mm_layers and feature_dim must be >= 0")
        if self.hyper_layers < 1 or self.num_hyperedges < 1:
            raise ConfigError("hyper_layers and num_hyperedges must be >= 1")
        if not 0.0 < self.keep_rate <= 1.0:
            raise ConfigError(f"keep_rate must lie in (0, 1], got {self.keep_rate}")
        if self.tau <= 0:
            raise ConfigError(f"tau must be > 0, got {self.tau}")
        for key in ("alpha", "cl_weight", "reg_weight"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be >= 0, got {getattr(self, key)}")


def hyperedge_dependencies(logits: Tensor, tau: float, sample: bool) -> Tensor:
    r"""Soft node-hyperedge assignments from their logits: a Gumbel-softmax sample
    (Jang et al., ICLR 2017) in training, the noise-free softmax otherwise,

    .. math::
        h_{na} = \frac{\exp((z_{na} + g_{na}) / \tau)}{\sum_{a'} \exp((z_{na'} + g_{na'})
        / \tau)}, \qquad g_{na} \sim \mathrm{Gumbel}(0, 1) \text{ (0 if not sampling)}.

    Shapes:
        - **logits**: :math:`(N, A)`; **output**: :math:`(N, A)`, rows summing to 1.
    """
    if sample:
        return F.gumbel_softmax(logits, tau=tau, hard=False, dim=1)
    return torch.softmax(logits / tau, dim=1)


def hypergraph_propagate(item_dep: Tensor, user_dep: Tensor, items: Tensor, num_layers: int
                         ) -> tuple[Tensor, Tensor]:
    r"""Propagation over a hypergraph given by soft dependencies: items send to hyperedges,
    hyperedges send back to items and users,

    .. math::
        \mathbf{Z}^{(l)} = \mathbf{H}_I^\top \mathbf{E}_I^{(l)}, \qquad
        \mathbf{E}_I^{(l+1)} = \mathbf{H}_I \mathbf{Z}^{(l)}, \qquad
        \mathbf{E}_U^{(l+1)} = \mathbf{H}_U \mathbf{Z}^{(l)},

    returning the last layer's :math:`(\mathbf{E}_U^{(L)}, \mathbf{E}_I^{(L)})`. The
    matrices are :math:`|\mathcal{I}| \times A` and :math:`|\mathcal{U}| \times A` with few
    hyperedges :math:`A`: no node-by-node matrix is formed.

    Shapes:
        - **item_dep**: :math:`(|\mathcal{I}|, A)`; **user_dep**: :math:`(|\mathcal{U}|, A)`;
          **items**: :math:`(|\mathcal{I}|, d)`; **output**: :math:`(|\mathcal{U}|, d)`,
          :math:`(|\mathcal{I}|, d)`.
    """
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    users = items
    for _ in range(num_layers):
        hyper = item_dep.T @ items
        items, users = item_dep @ hyper, user_dep @ hyper
    return users, items


@MODELS.register("lgmrec")
class LGMRec(BranchedRecommender):
    r"""LGMRec (Guo et al., AAAI 2024).

    **Local graph embeddings.** Collaborative: LightGCN on the ID embeddings over the
    normalised user-item graph :math:`\hat{\mathbf{A}}` (:math:`L` layers, mean over layers),
    :math:`\mathbf{E}^{c} = [\mathbf{E}^c_U; \mathbf{E}^c_I]`. Per modality :math:`m`, the
    frozen features are projected (:math:`\mathbf{W}_m`, no bias), users start from the mean
    of their items' and both propagate :math:`L_m` layers, keeping the last,

    .. math::
        \mathbf{F}^m_I = \mathbf{X}_m \mathbf{W}_m, \qquad \mathbf{F}^m_U =
        \mathbf{D}_U^{-1} \mathbf{R} \mathbf{F}^m_I, \qquad \mathbf{E}^m =
        \hat{\mathbf{A}}^{L_m} [\mathbf{F}^m_U; \mathbf{F}^m_I], \qquad
        \mathbf{E}^{local} = \mathbf{E}^c + \sum_m \operatorname{norm}(\mathbf{E}^m),

    with :math:`\operatorname{norm}` row-wise L2 normalisation.

    **Global hypergraph embeddings.** Each modality has :math:`A` learnable hyperedge
    embeddings :math:`\mathbf{V}_m` (:math:`D_m \times A`); item and user dependencies are
    (:func:`hyperedge_dependencies`, dropout with keep probability :math:`\rho` in training)

    .. math::
        \mathbf{H}^m_I = \operatorname{GS}_\tau(\mathbf{X}_m \mathbf{V}_m), \qquad
        \mathbf{H}^m_U = \operatorname{GS}_\tau(\mathbf{R} \mathbf{X}_m \mathbf{V}_m),

    (:math:`\mathbf{R}` the binary interaction matrix), and the collaborative item
    embeddings propagate over them (:func:`hypergraph_propagate`, :math:`L_h` layers),
    :math:`\mathbf{G}^m = [\mathbf{G}^m_U; \mathbf{G}^m_I]`. The final representation is

    .. math::
        \mathbf{E} = \mathbf{E}^{local} + \alpha \operatorname{norm}\Big(\sum_m
        \mathbf{G}^m\Big).

    **Loss** (column 0 of ``batch.neg``): BPR on :math:`\mathbf{E}`, the hypergraph
    contrastive loss between every pair of modalities :math:`(m, m')` (the batch's users
    against all users, its positive items against all items; one-directional InfoNCE
    summed over the batch, :func:`~brmrs_pyg.losses.infonce_loss` with ``index``), and the
    reference code's norm penalty (:func:`~brmrs_pyg.losses.norm_penalty`) on the batch's
    final embeddings:

    .. math::
        \mathcal{L} = \mathcal{L}_{bpr} + \lambda_1 \sum_{m < m'} \big(
        \ell(\mathbf{G}^m_{U_b}, \mathbf{G}^{m'}_U) + \ell(\mathbf{G}^m_{I_b},
        \mathbf{G}^{m'}_I)\big) + \lambda_2 \frac{\lVert \mathbf{e}_u \rVert +
        \lVert \mathbf{e}_{i^+} \rVert + \lVert \mathbf{e}_{i^-} \rVert}{B}.

    Against the reference code (MMRec ``src/models/lgmrec.py``): evaluation uses the
    noise-free softmax dependencies (MMRec draws Gumbel noise at evaluation too, so its
    rankings are random); any number of modalities, the contrastive loss over every pair
    (MMRec: exactly image and text, one pair; with one modality it falls back to the
    collaborative embedding alone, here the formula above with no contrastive term); one
    temperature :math:`\tau` for the Gumbel-softmax and the contrastive loss, as in MMRec.

    Branches (for ``plugin=brmrs``): modality :math:`m` is :math:`\mathbf{E}^c +
    \operatorname{norm}(\mathbf{E}^m) + \alpha \operatorname{norm}(\mathbf{G}^m)`, the
    representation built from modality :math:`m`'s local and global embeddings only;
    ``fused`` is :math:`\mathbf{E}`.

    Cold items (``split=cold_items``): their rows of :math:`\mathbf{E}_I` are zero (rather
    than the untrained initial value, which would add noise to every score). A cold item has
    no edge in the training graph, so :math:`\mathbf{E}^c_i = \mathbf{0}`, and
    :math:`\mathbf{E}^m_i = \mathbf{0}` unless :math:`L_m = 0`: it is represented by its
    hypergraph embeddings, the warm items' collaborative embeddings gathered through the
    hyperedges its features depend on.

    Args:
        num_users (int): Number of users.
        embedding_dim (int): Width :math:`d` of the embeddings and projections.
        features (dict): Raw item features per modality, :math:`(|\mathcal{I}|, D_m)`.
        adj_t (Tensor): Normalised user-item adjacency (users first), sparse,
            :func:`~brmrs_pyg.graphs.bipartite_adj_t`.
        ui_pairs (Tensor): Training pairs, :math:`(2, E)` (user, item).
        params (LGMRecParams): Layers, hyperedges, dropout, weights.
    """

    Params = LGMRecParams
    supports_cold_items = True

    def __init__(self, num_users: int, embedding_dim: int, features: dict[str, Tensor],
                 adj_t: Tensor, ui_pairs: Tensor, params: LGMRecParams) -> None:
        super().__init__()
        self.modalities = branch_modalities(features, "LGMRec")
        num_items = next(iter(features.values())).size(0)
        self.num_users, self.num_items = num_users, num_items
        self.params = params
        self.user_emb = torch.nn.Embedding(num_users, embedding_dim)
        self.item_emb = torch.nn.Embedding(num_items, embedding_dim)
        self.proj = torch.nn.ParameterDict(
            {m: torch.nn.Parameter(torch.empty(x.size(1), embedding_dim))
             for m, x in features.items()})
        self.hyperedges = torch.nn.ParameterDict(
            {m: torch.nn.Parameter(torch.empty(x.size(1), params.num_hyperedges))
             for m, x in features.items()})
        for m, x in features.items():
            self.register_buffer(f"feat_{m}", x.float(), persistent=False)
        self.ui_gnn = LightGCNBackbone(embedding_dim, params.num_layers)
        # only the last layer of the modality propagation (no mean over layers)
        self.mm_gnn = LightGCNBackbone(embedding_dim, params.mm_layers,
                                       alpha=[0.0] * params.mm_layers + [1.0])
        self.ui_mean: Tensor
        self.ui_binary: Tensor
        self.register_buffer("adj_t", adj_t, persistent=False)
        self.register_buffer("ui_mean", interaction_matrix(ui_pairs, num_users, num_items,
                                                           "mean"), persistent=False)
        self.register_buffer("ui_binary", interaction_matrix(ui_pairs, num_users, num_items,
                                                             "none"), persistent=False)
        self.reset_parameters()

    @classmethod
    def from_data(cls, params: Any, graph: HeteroData, features: dict[str, Tensor],
                  embedding_dim: int) -> "LGMRec":
        if params.feature_dim:  # 0: the raw features, untouched, as the sources feed them
            features = {m: prepare_features(x, params.feature_dim, m)
                        for m, x in features.items()}
        return cls(graph["user"].num_nodes, embedding_dim, features, bipartite_adj_t(graph),
                   graph[UI].edge_index, params)

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_uniform_(self.user_emb.weight)
        torch.nn.init.xavier_uniform_(self.item_emb.weight)
        for weight in [*self.proj.values(), *self.hyperedges.values()]:
            torch.nn.init.xavier_uniform_(weight)

    def dependencies(self, modality: str) -> tuple[Tensor, Tensor]:
        r"""Item and user hyperedge dependencies :math:`(\mathbf{H}^m_I, \mathbf{H}^m_U)`
        of ``modality``, sampled and dropped out in training."""
        logits = getattr(self, f"feat_{modality}") @ self.hyperedges[modality]
        sample, p = self.training, 1.0 - self.params.keep_rate
        item_dep = hyperedge_dependencies(logits, self.params.tau, sample)
        user_dep = hyperedge_dependencies(spmm(self.ui_binary, logits), self.params.tau, sample)
        return (F.dropout(item_dep, p, self.training), F.dropout(user_dep, p, self.training))

    def modality_embedding(self, modality: str) -> Tensor:
        r""":math:`\mathbf{E}^m`, users first, :math:`(|\mathcal{U}| + |\mathcal{I}|, d)`."""
        items = getattr(self, f"feat_{modality}") @ self.proj[modality]
        return self.mm_gnn(torch.cat([spmm(self.ui_mean, items), items]), self.adj_t)

    def embeddings(self) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        r""":math:`\mathbf{E}^c`, and per modality :math:`\mathbf{E}^m` and
        :math:`\mathbf{G}^m`, each :math:`(|\mathcal{U}| + |\mathcal{I}|, d)`, users first."""
        ego = torch.cat([self.user_emb.weight, self.without_cold_ids(self.item_emb.weight)])
        collab = self.ui_gnn(ego, self.adj_t)
        items = collab[self.num_users:]
        local, hyper = {}, {}
        for m in self.modalities:
            local[m] = self.modality_embedding(m)
            users_g, items_g = hypergraph_propagate(*self.dependencies(m), items,
                                                    self.params.hyper_layers)
            hyper[m] = torch.cat([users_g, items_g])
        return collab, local, hyper

    def branches(self) -> dict[str, tuple[Tensor, Tensor]]:
        r"""``{m: E^c + norm(E^m) + alpha norm(G^m) for each m, "fused": E}`` (users,
        items), see the class docstring, with every :math:`\mathbf{G}^m` as part
        ``"hyper_<m>"`` (:class:`~brmrs_pyg.recommenders.branched.BranchesWithParts`)."""
        collab, local, hyper = self.embeddings()
        alpha = self.params.alpha
        out: dict[str, tuple[Tensor, Tensor]] = {}
        for m in self.modalities:
            branch = collab + F.normalize(local[m]) + alpha * F.normalize(hyper[m])
            out[m] = self._split(branch)
        final = (collab + torch.stack([F.normalize(local[m]) for m in self.modalities]).sum(0)
                 + alpha * F.normalize(torch.stack(list(hyper.values())).sum(0)))
        out[FUSED] = self._split(final)
        return BranchesWithParts(out, {f"hyper_{m}": g for m, g in hyper.items()})

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        users, items = x.split([self.num_users, self.num_items])
        return users, items

    def branch_loss(self, batch: Batch, branches: Branches) -> tuple[Tensor, dict[str, Tensor]]:
        p = self.params
        user, item = branches[FUSED]
        u, pos, neg = gather(user, batch.users), gather(item, batch.pos), gather(
            item, batch.neg[:, 0])
        terms = {"bpr": bpr_loss((u * pos).sum(-1), (u * neg).sum(-1))}
        total = terms["bpr"]
        if p.cl_weight and len(self.modalities) > 1:
            terms["hcl"] = self.hypergraph_contrast(batch, branch_parts(branches))
            total = total + p.cl_weight * terms["hcl"]
        if p.reg_weight:
            terms["reg"] = norm_penalty(u, pos, neg)
            total = total + p.reg_weight * terms["reg"]
        return total, {name: value.detach() for name, value in terms.items()}

    def hypergraph_contrast(self, batch: Batch, parts: dict[str, Tensor]) -> Tensor:
        r"""The hypergraph contrastive loss of ``batch`` (class docstring), summed over its
        rows: each distinct user (positive item) is scored once and weighted by its count in
        the batch, which gives the same sum with fewer rows against the whole table."""
        users, user_count = batch.users.unique(return_counts=True)
        items, item_count = batch.pos.unique(return_counts=True)
        total = []
        for a, b in combinations(self.modalities, 2):
            (ua, ia), (ub, ib) = (self._split(parts[f"hyper_{a}"]),
                                  self._split(parts[f"hyper_{b}"]))
            for rows, count, anchors, table in ((users, user_count, ua, ub),
                                                (items, item_count, ia, ib)):
                loss = infonce_loss(gather(anchors, rows), table, self.params.tau,
                                    symmetric=False, index=rows, reduction="none")
                total.append((loss * count).sum())
        return torch.stack(total).sum()

    def __repr__(self) -> str:
        return (f"LGMRec({self.num_users} users, {self.num_items} items, "
                f"modalities={self.modalities}, dim={self.user_emb.embedding_dim}, "
                f"hyperedges={self.params.num_hyperedges}, ui={self.ui_gnn}, mm={self.mm_gnn})")
