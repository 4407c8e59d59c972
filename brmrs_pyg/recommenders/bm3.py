r"""BM3: Bootstrap Latent Representations for Multi-modal Recommendation (Zhou et al.,
WWW 2023)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import HeteroData

from brmrs_pyg.config import ConfigError, option
from brmrs_pyg.graphs import bipartite_adj_t
from brmrs_pyg.losses import bootstrap_loss, norm_penalty
from brmrs_pyg.nn.backbones import BACKBONES, Backbone
from brmrs_pyg.nn.features import prepare_features
from brmrs_pyg.recommenders.base import MODELS, Batch, Recommender, gather


@dataclass(frozen=True)
class BM3Params:
    num_layers: int = option(1, "LightGCN layers over the user-item graph")
    dropout: float = option(0.5, "dropout ratio that makes the target views (latent "
                                 "augmentation)")
    cl_weight: float = option(2.0, "weight of the inter- and intra-modality alignment losses")
    reg_weight: float = option(0.1, "weight of the norm penalty on the whole online user and "
                                    "item tables (the reference code's)")
    feature_dim: int = option(0, "principal components kept of each modality's features "
                                 "before its projection (0: all, as in the paper)")

    def __post_init__(self) -> None:
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        for key in ("num_layers", "cl_weight", "reg_weight", "feature_dim"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be >= 0, got {getattr(self, key)}")


@MODELS.register("bm3")
class BM3(Recommender):
    r"""BM3 (Zhou et al., WWW 2023): a LightGCN encoder trained without negative samples by
    bootstrapping (BYOL-style) views of its own representations.

    Online representations: LightGCN over the user-item graph on ID embeddings, the item side
    with a residual to its ID embedding, and per modality a one-layer projection of the
    features (trainable, as in the reference code):

    .. math::
        [\mathbf{h}_u; \mathbf{h}_i] = \mathrm{LightGCN}([\mathbf{e}_u; \mathbf{e}_i])
        + [\mathbf{0}; \mathbf{e}_i], \qquad
        \mathbf{h}^{(m)}_i = \mathbf{W}_m \mathbf{x}^{(m)}_i + \mathbf{b}_m.

    Targets are dropout copies without gradient, :math:`\dot{\mathbf{h}} =
    \operatorname{sg}(\mathrm{dropout}_p(\mathbf{h}))`; a predictor :math:`f_p` (one linear
    layer, shared by all views) maps online views, :math:`\tilde{\mathbf{h}} =
    f_p(\mathbf{h})`. With :math:`C(\mathbf{a}, \mathbf{b}) = 1 - \cos(\mathbf{a},
    \mathbf{b})` averaged over the batch's interactions :math:`(u, i)`
    (:func:`~brmrs_pyg.losses.bootstrap_loss`):

    .. math::
        \mathcal{L} = \underbrace{C(\tilde{\mathbf{h}}_u, \dot{\mathbf{h}}_i) +
        C(\tilde{\mathbf{h}}_i, \dot{\mathbf{h}}_u)}_{\text{graph reconstruction}}
        + \lambda_{cl} \sum_m \Big(\underbrace{C(\tilde{\mathbf{h}}^{(m)}_i,
        \dot{\mathbf{h}}_i)}_{\text{inter-modality}} + \underbrace{C(\tilde{\mathbf{h}}^{(m)}_i,
        \dot{\mathbf{h}}^{(m)}_i)}_{\text{intra-modality (masked)}}\Big)
        + \lambda \mathcal{R}(\mathbf{H}_U, \mathbf{H}_I),

    where :math:`\mathcal{R}` is the reference code's penalty on the whole online tables,
    :math:`(\lVert \mathbf{H}_U \rVert_F + \lVert \mathbf{H}_I \rVert_F) / |\mathcal{I}|`
    (:func:`~brmrs_pyg.losses.norm_penalty`).

    No term uses a negative item (the trainer is asked for none: ``num_negatives = 0``).
    Ranking scores are inner products of the online predictions, :math:`s(u, i) = \langle
    f_p(\mathbf{h}_u), f_p(\mathbf{h}_i) \rangle`.

    Args:
        num_users (int): Number of users.
        embedding_dim (int): Size :math:`d` of the ID embeddings, projections and predictor.
        adj_t (Tensor): Normalised user-item adjacency (users first),
            :func:`~brmrs_pyg.graphs.bipartite_adj_t`.
        backbone (Backbone): The LightGCN propagation.
        features (dict): Item features per modality, :math:`(|\mathcal{I}|, D_m)`.
        params (BM3Params): Dropout and loss weights.
    """

    Params = BM3Params
    num_negatives = 0
    supports_plugin: ClassVar[bool] = False
    plugin_refusal: ClassVar[str] = (
        "it ranks by one representation only: its modality projections are trained to align "
        "with item ID representations, never to score users, so it has no per-modality "
        "ranking scores for CHNS and the synergy loss to compare")
    cold_refusal: ClassVar[str] = (
        "it ranks by ID representations only: its feature projections are trained to align "
        "with them but never enter a score, so an item without training interactions has "
        "nothing but an untrained ID embedding")

    def __init__(self, num_users: int, embedding_dim: int, adj_t: Tensor, backbone: Backbone,
                 features: dict[str, Tensor], params: BM3Params) -> None:
        super().__init__()
        self.modalities = list(features)
        if not self.modalities:
            raise ConfigError("BM3 needs at least one modality")
        num_items = next(iter(features.values())).size(0)
        self.num_users = num_users
        self.user_emb = torch.nn.Embedding(num_users, embedding_dim)
        self.item_emb = torch.nn.Embedding(num_items, embedding_dim)
        self.backbone = backbone
        self.predictor = torch.nn.Linear(embedding_dim, embedding_dim)
        # the reference code fine-tunes the raw features (Embedding.from_pretrained, unfrozen)
        self.features = torch.nn.ParameterDict({m: torch.nn.Parameter(x.clone())
                                                for m, x in features.items()})
        self._initial = {m: x.clone() for m, x in features.items()}
        self.proj = torch.nn.ModuleDict({m: torch.nn.Linear(x.size(1), embedding_dim)
                                         for m, x in features.items()})
        self.register_buffer("adj_t", adj_t, persistent=False)
        self.dropout, self.cl_weight = params.dropout, params.cl_weight
        self.reg_weight = params.reg_weight
        self.reset_parameters()

    @classmethod
    def from_data(cls, params: Any, graph: HeteroData, features: dict[str, Tensor],
                  embedding_dim: int) -> "BM3":
        backbone = BACKBONES.get("lightgcn")(embedding_dim, params.num_layers)
        prepared = {m: prepare_features(x, params.feature_dim) for m, x in features.items()}
        return cls(graph["user"].num_nodes, embedding_dim, bipartite_adj_t(graph), backbone,
                   prepared, params)

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_uniform_(self.user_emb.weight)
        torch.nn.init.xavier_uniform_(self.item_emb.weight)
        self.backbone.reset_parameters()
        for lin in [self.predictor, *self.proj.values()]:
            torch.nn.init.xavier_normal_(lin.weight)  # type: ignore[arg-type]
            torch.nn.init.zeros_(lin.bias)  # type: ignore[arg-type]
        with torch.no_grad():
            for m, x in self._initial.items():
                self.features[m].copy_(x)

    def encode(self) -> tuple[Tensor, Tensor]:
        r"""Online user and item representations :math:`\mathbf{h}_u, \mathbf{h}_i` (before
        the predictor)."""
        out = self.backbone(torch.cat([self.user_emb.weight, self.item_emb.weight]), self.adj_t)
        users, items = out.split([self.num_users, out.size(0) - self.num_users])
        return users, items + self.item_emb.weight

    def forward(self) -> tuple[Tensor, Tensor]:
        r"""The ranking embeddings :math:`f_p(\mathbf{h}_u), f_p(\mathbf{h}_i)`."""
        users, items = self.encode()
        return self.predictor(users), self.predictor(items)

    def _target(self, x: Tensor) -> Tensor:
        return F.dropout(x.detach(), self.dropout, self.training)

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        users, items = self.encode()
        h_u, h_i = gather(users, batch.users), gather(items, batch.pos)
        t_u, t_i = self._target(h_u), self._target(h_i)
        rec = bootstrap_loss(self.predictor(h_u), t_i) + bootstrap_loss(self.predictor(h_i), t_u)
        align = h_u.new_zeros(())
        mask = h_u.new_zeros(())
        for m in self.modalities:
            h_m = self.proj[m](gather(self.features[m], batch.pos))
            online = self.predictor(h_m)
            align = align + bootstrap_loss(online, t_i)
            mask = mask + bootstrap_loss(online, self._target(h_m))
        # the reference code's regulariser: norms of the whole online tables / items
        reg = norm_penalty(users, items)
        total = rec + self.cl_weight * (align + mask) + self.reg_weight * reg
        terms = {"rec": rec, "align": align, "mask": mask, "reg": reg}
        return total, {name: value.detach() for name, value in terms.items()}

    def __repr__(self) -> str:
        return (f"BM3({self.num_users} users, {self.item_emb.num_embeddings} items, "
                f"dim={self.item_emb.embedding_dim}, modalities={self.modalities}, "
                f"backbone={self.backbone})")
