r"""Decoupled: each modality's item representation split into a part shared across
modalities and a modality-specific part, aligned by InfoNCE and kept apart by an
orthogonality term (the shared/specific family of multimodal recommenders, e.g. DMRL, SAND,
DGMRec; DESIGN section 1's geometric decoupling baselines)."""
from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Any

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from brmrs_pyg.config import ConfigError, option
from brmrs_pyg.losses import bpr_loss, infonce_loss, l2_reg, orthogonality_loss
from brmrs_pyg.nn.backbones import BACKBONES
from brmrs_pyg.nn.features import prepare_features
from brmrs_pyg.nn.fusion import FUSIONS, Fusion
from brmrs_pyg.recommenders.base import MODELS, Batch, gather
from brmrs_pyg.recommenders.branched import FUSED, BranchedRecommender, Branches, branch_modalities
from brmrs_pyg.recommenders.channels import ModalityChannels


@dataclass(frozen=True)
class DecoupledParams:
    num_layers: int = option(3, "propagation layers over the user-item graph in each branch")
    ii_layers: int = option(0, "propagation layers over each branch's item-item kNN graph "
                               "(0: user-item graph only)")
    feature_dim: int = option(128, "principal components kept of each modality's features "
                                   "before the shared and specific projections (0: all)")
    fusion: str = option("mean", "fusion of the modality branches: mean, concat, gate, mlp, bilinear")
    lambda_nce: float = option(0.1, "weight of the InfoNCE alignment of the modalities' "
                                    "shared parts (0: off)")
    tau: float = option(0.2, "InfoNCE temperature")
    lambda_orth: float = option(0.1, "weight of the orthogonality of each modality's shared "
                                     "and specific parts (0: off)")
    branch_bpr: float = option(0.0, "weight of the mean BPR of the modality branches, added "
                                    "to the fused BPR (0: fused only)")
    reg_weight: float = option(1e-4, "weight of the L2 penalty on the batch's ID embeddings")
    backbone: str = option("lightgcn", "propagation backbone (registry name)")

    def __post_init__(self) -> None:
        for key in ("num_layers", "ii_layers", "feature_dim", "lambda_nce", "lambda_orth",
                    "branch_bpr", "reg_weight"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.tau <= 0:
            raise ConfigError(f"tau must be > 0, got {self.tau}")


@dataclass(frozen=True)
class DecoupledWeights:
    r"""Weights of :meth:`Decoupled.branch_loss`: ``nce`` (:math:`\lambda_{nce}`), ``tau``,
    ``orth`` (:math:`\lambda_{orth}`), ``branch_bpr`` (:math:`\lambda_b`) and ``reg``
    (:math:`\lambda`)."""

    nce: float
    tau: float
    orth: float
    branch_bpr: float
    reg: float


@MODELS.register("decoupled")
class Decoupled(BranchedRecommender):
    r"""Shared/specific decomposition per modality. Two linear maps split modality
    :math:`m`'s features into a shared part and a specific part,

    .. math::
        \mathbf{s}^{(m)}_i = \mathbf{S}_m \mathbf{x}^m_i, \qquad
        \mathbf{z}^{(m)}_i = \mathbf{P}_m \mathbf{x}^m_i,

    and branch :math:`m` propagates the ID embeddings (shared by the branches: the
    collaborative part) with both, as
    :class:`~brmrs_pyg.recommenders.channels.ModalityChannels`,

    .. math::
        \mathbf{p}^{(m,0)}_u = \mathbf{e}_u, \qquad
        \mathbf{q}^{(m,0)}_i = \mathbf{e}_i + \mathbf{s}^{(m)}_i + \mathbf{z}^{(m)}_i;

    the fused branch is :math:`\phi(\mathbf{p}^{(1)}, \dots)`, :math:`\phi(\mathbf{q}^{(1)},
    \dots)` with the ``fusion`` :math:`\phi` (mean by default). On the batch's unique
    positive items :math:`\mathcal{B}` the objective is

    .. math::
        \mathcal{L} = \mathcal{L}_{bpr}(s_f) + \lambda_b \frac{1}{M} \sum_m
        \mathcal{L}_{bpr}(s_m) + \lambda_{nce} \binom{M}{2}^{-1} \sum_{m < m'}
        \mathrm{InfoNCE}_\tau(\mathbf{S}^{(m)}_\mathcal{B}, \mathbf{S}^{(m')}_\mathcal{B})
        + \lambda_{orth} \frac{1}{M} \sum_m \mathcal{L}_{orth}(\mathbf{S}^{(m)}_\mathcal{B},
        \mathbf{Z}^{(m)}_\mathcal{B}) + \lambda \mathcal{R},

    with :func:`~brmrs_pyg.losses.infonce_loss` (symmetric) pulling the shared parts of the
    same item together across modalities, :func:`~brmrs_pyg.losses.orthogonality_loss`
    pushing each modality's shared and specific parts apart, and L2 on the batch's ID
    embeddings. The BPR terms use the uniform negative (column 0 of ``batch.neg``).

    Cold items (``split=cold_items``): :math:`\mathbf{e}_i = \mathbf{0}`, so
    :math:`\mathbf{q}^{(m,0)}_i = \mathbf{s}^{(m)}_i + \mathbf{z}^{(m)}_i` (zero rather than
    the untrained initial value, which would add noise to every score).

    Args:
        num_users (int): Number of users.
        embedding_dim (int): Width :math:`d` of every representation.
        features (dict): Prepared item features per modality, :math:`(|\mathcal{I}|, D_m)`.
        channels (ModalityChannels): The per-modality propagation.
        fusion (Fusion): :math:`\phi`, for users and items alike (one module each).
        weights (DecoupledWeights): Loss weights.
    """

    Params = DecoupledParams
    uses_item_graphs = True
    supports_cold_items = True

    def __init__(self, num_users: int, embedding_dim: int, features: dict[str, Tensor],
                 channels: ModalityChannels, fusion: type[Fusion],
                 weights: DecoupledWeights) -> None:
        super().__init__()
        self.modalities = branch_modalities(features, "decoupled")
        if weights.nce and len(self.modalities) < 2:
            raise ConfigError(f"decoupled: the InfoNCE alignment (lambda_nce > 0) needs at "
                              f"least two modalities, got {self.modalities}; set lambda_nce=0")
        self.num_users = num_users
        self.num_items = next(iter(features.values())).size(0)
        self.weights = weights
        self.user_emb = torch.nn.Embedding(num_users, embedding_dim)
        self.item_emb = torch.nn.Embedding(self.num_items, embedding_dim)
        self.shared = torch.nn.ModuleDict(
            {m: torch.nn.Linear(x.size(1), embedding_dim, bias=False) for m, x in features.items()})
        self.specific = torch.nn.ModuleDict(
            {m: torch.nn.Linear(x.size(1), embedding_dim, bias=False) for m, x in features.items()})
        for m, x in features.items():
            self.register_buffer(f"feat_{m}", x, persistent=False)
        self.channels = channels
        self.user_fusion = fusion(embedding_dim, len(self.modalities))
        self.item_fusion = fusion(embedding_dim, len(self.modalities))
        self.reset_parameters()

    @classmethod
    def from_data(cls, params: Any, graph: HeteroData, features: dict[str, Tensor],
                  embedding_dim: int) -> "Decoupled":
        modalities = list(features)
        channels = ModalityChannels.over_graph(graph, modalities,
                                               BACKBONES.get(params.backbone), embedding_dim,
                                               (params.num_layers, params.ii_layers))
        prepared = {m: prepare_features(x, params.feature_dim) for m, x in features.items()}
        weights = DecoupledWeights(params.lambda_nce, params.tau, params.lambda_orth,
                                   params.branch_bpr, params.reg_weight)
        return cls(graph["user"].num_nodes, embedding_dim, prepared, channels,
                   FUSIONS.get(params.fusion), weights)

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_uniform_(self.user_emb.weight)
        torch.nn.init.xavier_uniform_(self.item_emb.weight)
        for lin in [*self.shared.values(), *self.specific.values()]:
            lin.reset_parameters()  # type: ignore[operator]
        self.channels.reset_parameters()
        self.user_fusion.reset_parameters()
        self.item_fusion.reset_parameters()

    def parts(self, modality: str, items: Tensor | None = None) -> tuple[Tensor, Tensor]:
        r"""Shared and specific parts :math:`(\mathbf{S}^{(m)}, \mathbf{Z}^{(m)})` of
        ``modality`` for ``items`` (all items when ``None``), each :math:`(N, d)`."""
        x = getattr(self, f"feat_{modality}")
        if items is not None:
            x = gather(x, items)
        shared: torch.nn.Module = self.shared[modality]
        specific: torch.nn.Module = self.specific[modality]
        return shared(x), specific(x)

    def branches(self) -> dict[str, tuple[Tensor, Tensor]]:
        r"""Each modality's branch (ID + shared + specific parts, propagated), then
        ``"fused"`` (the fusion of the branches)."""
        out: dict[str, tuple[Tensor, Tensor]] = {}
        ids = self.without_cold_ids(self.item_emb.weight)
        for m in self.modalities:
            shared, specific = self.parts(m)
            out[m] = self.channels(m, self.user_emb.weight, ids + shared + specific)
        out[FUSED] = (self.user_fusion([out[m][0] for m in self.modalities]),
                      self.item_fusion([out[m][1] for m in self.modalities]))
        return out

    def branch_loss(self, batch: Batch, branches: Branches) -> tuple[Tensor, dict[str, Tensor]]:
        w, neg = self.weights, batch.neg[:, 0]

        def bpr(branch: str) -> Tensor:
            user, item = branches[branch]
            u = gather(user, batch.users)
            return bpr_loss((u * gather(item, batch.pos)).sum(-1), (u * gather(item, neg)).sum(-1))

        terms = {"bpr": bpr(FUSED)}
        total = terms["bpr"]
        if w.branch_bpr:
            terms["bpr_branches"] = torch.stack([bpr(m) for m in self.modalities]).mean()
            total = total + w.branch_bpr * terms["bpr_branches"]
        if w.nce or w.orth:
            # unique items: a repeated item would be its own negative in InfoNCE
            parts = {m: self.parts(m, batch.pos.unique()) for m in self.modalities}
            if w.nce:
                terms["nce"] = torch.stack([infonce_loss(parts[a][0], parts[b][0], w.tau)
                                            for a, b in combinations(self.modalities, 2)]).mean()
                total = total + w.nce * terms["nce"]
            if w.orth:
                terms["orth"] = torch.stack([orthogonality_loss(*parts[m])
                                             for m in self.modalities]).mean()
                total = total + w.orth * terms["orth"]
        terms["reg"] = l2_reg(self.user_emb(batch.users), self.item_emb(batch.pos),
                              self.item_emb(neg))
        total = total + w.reg * terms["reg"]
        return total, {k: v.detach() for k, v in terms.items()}

    def __repr__(self) -> str:
        return (f"Decoupled({self.num_users} users, {self.num_items} items, "
                f"modalities={self.modalities}, fusion={type(self.user_fusion).__name__}, "
                f"{self.channels})")
