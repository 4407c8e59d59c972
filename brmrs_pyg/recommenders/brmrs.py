r"""BR-MRS: per-modality graph channels, a fused branch, and the two BPR reformulations
(cross-modal hard negative sampling and synergy-aware BPR), DESIGN section 1."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from brmrs_pyg.config import ConfigError, option
from brmrs_pyg.losses import (NEGATIVE_SOURCES, CrossModalWeights, cross_modal_objective,
                              l2_reg, warmup_weight)
from brmrs_pyg.nn.backbones import BACKBONES
from brmrs_pyg.nn.features import prepare_features
from brmrs_pyg.nn.fusion import FUSIONS
from brmrs_pyg.recommenders.base import MODELS, Batch
from brmrs_pyg.recommenders.branched import (FUSED, BranchedRecommender, Branches,
                                             BranchesWithParts, CrossModalParams,
                                             branch_modalities, branch_parts,
                                             side_by_side_scores)
from brmrs_pyg.recommenders.channels import ChannelGraphs, ModalityChannels


@dataclass(frozen=True)
class BRMRSParams(CrossModalParams):
    r"""The model's keys: the six loss keys of :class:`CrossModalParams` (the same keys that
    ``plugin=brmrs`` adds to other models), then these."""

    num_layers: int = option(1, "propagation layers over the user-item graph")
    ii_layers: int = option(1, "propagation layers over each item-item (and user-user) graph")
    backbone: str = option("lightgcn", "propagation backbone: lightgcn, gcn, sage, gat")
    fusion: str = option("mean", "fusion phi of the modality channels: mean, concat, gate, mlp, bilinear")
    feature_dim: int = option(128, "principal components kept of each modality's features "
                                   "before the learned projection (0: all)")
    ui_graph: bool = option(True, "propagate over the user-item graph (false: ablation)")
    ii_graphs: str = option("all", "modalities that propagate over their item-item graph: "
                                   "'all', 'none' or comma-separated names")
    lambda_bpr: float = option(1.0, "weight of the fused BPR loss")
    hard_negatives: str = option("chns", "who picks the hard negatives of every modality: "
                                         "'chns' (the other modalities), 'fused', a modality's "
                                         "name, or 'uniform' (no hard negatives)")
    reg_weight: float = option(1e-2, "weight of the L2 penalty on the batch's ID embeddings")
    syn_warmup: int = option(0, "epochs over which the synergy loss's weight rises linearly "
                                "to lambda_s (0: whole from the first epoch)")
    balance_terms: bool = option(False, "scale CHNS and the synergy loss to the fused BPR's "
                                        "value each step (no gradient through the factor), so "
                                        "each term's share of the loss is its weight's")

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("lambda_bpr", "reg_weight"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.num_layers < 0 or self.ii_layers < 0 or self.feature_dim < 0:
            raise ConfigError("num_layers, ii_layers and feature_dim must be >= 0")
        if self.syn_warmup < 0:
            raise ConfigError(f"syn_warmup must be >= 0, got {self.syn_warmup}")
        if self.syn_warmup and not self.lambda_s:
            raise ConfigError("syn_warmup ramps up the synergy loss, and lambda_s=0 turns it "
                              "off: set lambda_s > 0 or syn_warmup=0")
        if self.balance_terms and not self.lambda_bpr:
            raise ConfigError("balance_terms scales the terms to the fused BPR, and "
                              "lambda_bpr=0 turns it off: set lambda_bpr > 0")


@MODELS.register("brmrs")
class BRMRS(BranchedRecommender):
    r"""BR-MRS (DESIGN section 1). Channel :math:`m` starts from shared ID embeddings and the
    modality's projected features,

    .. math::
        \mathbf{p}^{(m,0)}_u = \mathbf{e}_u, \qquad
        \mathbf{q}^{(m,0)}_i = \mathbf{e}_i + \mathbf{W}_m \mathbf{x}^{m}_i,

    propagates them over the user-item graph with the backbone, and adds the propagation of
    :math:`\mathbf{q}^{(m,0)}` over the modality's item-item graph (and of
    :math:`\mathbf{e}_u` over the user-user graph when there is one):

    .. math::
        [\mathbf{p}^{(m)}; \mathbf{q}^{(m)}] = \mathrm{GNN}_{ui}([\mathbf{p}^{(m,0)};
        \mathbf{q}^{(m,0)}]) + [\mathrm{GNN}_{uu}(\mathbf{e}_u); \mathrm{GNN}_{ii}^{(m)}
        (\mathbf{q}^{(m,0)})].

    The fused branch is :math:`\mathbf{p}^{(f)} = \phi_U(\mathbf{p}^{(1)}, \dots)`,
    :math:`\mathbf{q}^{(f)} = \phi_I(\mathbf{q}^{(1)}, \dots)`; every branch scores by inner
    product and the fused score ranks. Sharing the ID embeddings makes each channel a full
    collaborative model that differs from the others only by its modality, which is what
    lets CHNS compare their confusions. The loss is :func:`cross_modal_objective` plus L2 on
    the batch's ID embeddings. With ``syn_warmup`` :math:`W > 0` the synergy weight at epoch
    :math:`e` is :math:`\lambda_s \min(1, e / (W + 1))`
    (:func:`~brmrs_pyg.losses.warmup_weight`).

    Cold items (``split=cold_items``): :math:`\mathbf{e}_i = \mathbf{0}`, so
    :math:`\mathbf{q}^{(m,0)}_i = \mathbf{W}_m \mathbf{x}^m_i`, which reaches the item's
    output directly and through its item-item kNN graph (zero rather than the untrained
    initial value, which would add noise to every score; see
    :meth:`~brmrs_pyg.recommenders.base.Recommender.set_cold_items`).

    Args:
        num_users (int): Number of users.
        embedding_dim (int): Width :math:`d` of every representation.
        features (dict): Prepared item features per modality, :math:`(|\mathcal{I}|, D_m)`.
        graphs (ChannelGraphs): The graphs to propagate over.
        params (BRMRSParams): Layers, backbone, fusion and loss settings.
    """

    Params = BRMRSParams
    #: Epochs begun (only with ``syn_warmup > 0``).
    epochs_started: Tensor
    uses_item_graphs = True
    uses_user_graph = True
    supports_cold_items = True
    supports_plugin = False
    plugin_refusal = "it trains with CHNS and the synergy loss already (keys lambda_h, lambda_s)"

    def __init__(self, num_users: int, embedding_dim: int, features: dict[str, Tensor],
                 graphs: ChannelGraphs, params: BRMRSParams) -> None:
        super().__init__()
        self.modalities = branch_modalities(features, "BR-MRS")
        sources = NEGATIVE_SOURCES + tuple(self.modalities)
        if params.hard_negatives not in sources:
            raise ConfigError(f"hard_negatives={params.hard_negatives!r}: choose one of "
                              f"{', '.join(sources)}")
        if len(self.modalities) < 2 and params.lambda_h and params.hard_negatives == "chns":
            raise ConfigError("CHNS (lambda_h > 0) needs at least two modalities")
        num_items = next(iter(features.values())).size(0)
        self.num_users, self.num_items = num_users, num_items
        self.weights = CrossModalWeights(params.lambda_bpr, params.lambda_h, params.lambda_s,
                                         params.theta, params.hard_k, params.syn_ref_grad,
                                         params.hard_negatives, params.balance_terms)
        #: The objective's weights once warmed up; :attr:`weights` are this epoch's.
        self.full_weights = self.weights
        self.syn_warmup = params.syn_warmup
        if self.syn_warmup:
            # epochs begun, checkpointed with the parameters: a resumed run goes on with the
            # ramp where it stopped (a buffer only with a warm-up, so that runs without one
            # keep their state dicts)
            self.register_buffer("epochs_started", torch.zeros((), dtype=torch.long))
            self._warm_up()
        self.reg_weight = params.reg_weight
        self.num_negatives = params.pool_size if params.lambda_h else 1
        self.user_emb = torch.nn.Embedding(num_users, embedding_dim)
        self.item_emb = torch.nn.Embedding(num_items, embedding_dim)
        self.proj = torch.nn.ModuleDict({m: torch.nn.Linear(x.size(1), embedding_dim, bias=False)
                                         for m, x in features.items()})
        for m, x in features.items():
            self.register_buffer(f"feat_{m}", x, persistent=False)
        self.channels = ModalityChannels(self.modalities, num_users, num_items, graphs,
                                         BACKBONES.get(params.backbone), embedding_dim,
                                         (params.num_layers, params.ii_layers))
        fusion = FUSIONS.get(params.fusion)
        self.user_fusion = fusion(embedding_dim, len(self.modalities))
        self.item_fusion = fusion(embedding_dim, len(self.modalities))
        self.reset_parameters()

    @classmethod
    def from_data(cls, params: Any, graph: HeteroData, features: dict[str, Tensor],
                  embedding_dim: int) -> "BRMRS":
        prepared = {m: prepare_features(x, params.feature_dim, name=m)
                    for m, x in features.items()}
        graphs = ChannelGraphs.from_graph(graph, list(features), params.ui_graph,
                                          params.ii_graphs)
        if graphs.uu is not None and params.ii_layers == 0:
            # the ii_layers propagate the user-user graph too: without them it would be unused
            raise ConfigError("uu_k > 0 builds a user-user graph that BR-MRS propagates with "
                              "ii_layers, and ii_layers=0: set ii_layers >= 1, or uu_k=0")
        return cls(graph["user"].num_nodes, embedding_dim, prepared, graphs, params)

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_uniform_(self.user_emb.weight)
        torch.nn.init.xavier_uniform_(self.item_emb.weight)
        for lin in self.proj.values():
            lin.reset_parameters()  # type: ignore[operator]
        self.channels.reset_parameters()
        self.user_fusion.reset_parameters()
        self.item_fusion.reset_parameters()

    def start_epoch(self) -> None:
        if self.syn_warmup:
            self.epochs_started += 1
            self._warm_up()

    def _warm_up(self) -> None:
        epoch = max(1, int(self.epochs_started))  # once per epoch: a GPU may synchronise
        self.weights = replace(self.full_weights, lambda_s=self.full_weights.lambda_s
                               * warmup_weight(epoch, self.syn_warmup))

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False
                        ) -> Any:
        out = super().load_state_dict(state_dict, strict, assign)
        if self.syn_warmup:
            self._warm_up()  # the weights of the restored epoch
        return out

    def channel_tables(self) -> tuple[Tensor, Tensor]:
        r"""User and item tables of every modality channel, side by side
        (:meth:`ModalityChannels.side_by_side`), :math:`(|\mathcal{U}|, Md)` and
        :math:`(|\mathcal{I}|, Md)`."""
        user0, id0 = self.user_emb.weight, self.without_cold_ids(self.item_emb.weight)
        items0 = [id0 + self.proj[m](getattr(self, f"feat_{m}")) for m in self.modalities]
        return self.channels.side_by_side(user0, items0)

    def branches(self) -> BranchesWithParts:
        r"""User and item embeddings of every branch: each modality, then ``"fused"``; the
        modalities' are column blocks of the :meth:`channel_tables`, kept as the parts
        ``"users"`` and ``"items"``."""
        users, items = self.channel_tables()
        d = self.user_emb.embedding_dim
        out = {m: (users[:, k * d:(k + 1) * d], items[:, k * d:(k + 1) * d])
               for k, m in enumerate(self.modalities)}
        out[FUSED] = (self.user_fusion.fuse_columns(users),
                      self.item_fusion.fuse_columns(items))
        return BranchesWithParts(out, {"users": users, "items": items})

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        # the fused branch of the batch's rows only: no fused tables
        return self._objective(batch, *self.channel_tables())

    def branch_loss(self, batch: Batch, branches: Branches) -> tuple[Tensor, dict[str, Tensor]]:
        parts = branch_parts(branches)
        return self._objective(batch, parts["users"], parts["items"])

    def _objective(self, batch: Batch, users: Tensor, items: Tensor
                   ) -> tuple[Tensor, dict[str, Tensor]]:
        pos, pool = side_by_side_scores(users, items, (self.user_fusion, self.item_fusion),
                                        self.modalities, batch, self.num_negatives,
                                        self.weights.hard_k,
                                        self.weights.hard_negatives == "fused")
        total, terms = cross_modal_objective(pos, pool, self.weights, FUSED)
        # the positive and the uniform negative in one lookup, penalised whole: the norm of
        # both, without the zero-filled gradients of two slices
        pos_neg = self.item_emb(torch.stack([batch.pos, batch.neg[:, 0]], 1))
        reg = l2_reg(self.user_emb(batch.users), pos_neg)
        terms["reg"] = reg.detach()
        return total + self.reg_weight * reg, terms

    def __repr__(self) -> str:
        return (f"BRMRS({self.num_users} users, {self.num_items} items, "
                f"modalities={self.modalities}, {self.channels}, "
                f"fusion={type(self.user_fusion).__name__})")
