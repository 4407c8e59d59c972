r"""VBPR: Visual Bayesian Personalized Ranking (He & McAuley, AAAI 2016), generalised to any
number of modalities."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from brmrs_pyg.config import ConfigError, option
from brmrs_pyg.losses import bpr_loss, l2_reg, norm_penalty
from brmrs_pyg.nn.features import prepare_features
from brmrs_pyg.recommenders.base import MODELS, Batch, gather
from brmrs_pyg.recommenders.branched import FUSED, BranchedRecommender, Branches, branch_modalities


@dataclass(frozen=True)
class VBPRParams:
    reg_weight: float = option(1e-2, "weight of the L2 penalty on the batch's user and item "
                                     "factors and item biases (not on E and beta')")
    content_reg: float = option(0.0, "weight of the L2 penalty on the batch items' content "
                                     "vectors E f_i (MMRec's VBPR regularises them with the "
                                     "item vector; 0: the paper's Theta only)")
    reg_norm: bool = option(False, "regularise as MMRec's VBPR does: reg_weight times the "
                                   "unsquared norms of the batch's [gamma_u; theta_u] and "
                                   "[gamma_i; E f_i] over the batch size (content_reg unused)")
    item_bias: bool = option(True, "keep the paper's item bias beta_i and content bias "
                                   "beta'^T f_i (MMRec's VBPR has neither)")
    feature_dim: int = option(0, "principal components kept of each modality's features "
                                 "before the projection E (0: all, as in the paper)")

    def __post_init__(self) -> None:
        if self.reg_weight < 0 or self.content_reg < 0 or self.feature_dim < 0:
            raise ConfigError(f"reg_weight, content_reg and feature_dim must be >= 0, got "
                              f"{self.reg_weight}, {self.content_reg}, {self.feature_dim}")


@MODELS.register("vbpr")
class VBPR(BranchedRecommender):
    r"""VBPR (He & McAuley, AAAI 2016): matrix factorisation plus a user preference over a
    learned linear embedding of the item's content features,

    .. math::
        s(u, i) = \beta_i + \langle \boldsymbol{\gamma}_u, \boldsymbol{\gamma}_i \rangle
        + \langle \boldsymbol{\theta}_u, \mathbf{E} \mathbf{f}_i \rangle
        + \boldsymbol{\beta}'^\top \mathbf{f}_i

    (the global and user biases of the paper cancel in every ranking and in BPR). With several
    modalities :math:`\mathbf{f}_i = [\mathbf{f}^{(1)}_i; \dots; \mathbf{f}^{(M)}_i]` is their
    concatenation, as in MMRec's VBPR; a linear map of a concatenation is the sum of one map
    per block, :math:`\mathbf{E}\mathbf{f}_i = \sum_m \mathbf{E}_m \mathbf{f}^{(m)}_i` and
    :math:`\boldsymbol{\beta}'^\top \mathbf{f}_i = \sum_m \boldsymbol{\beta}_m'^\top
    \mathbf{f}^{(m)}_i`, which is how it is computed here. Trained with BPR plus L2 on the
    batch's :math:`\boldsymbol{\gamma}_u, \boldsymbol{\theta}_u, \boldsymbol{\gamma}_i,
    \beta_i` (the paper leaves :math:`\mathbf{E}` and :math:`\boldsymbol{\beta}'` unregularised).

    Branches (each scores by inner product): modality :math:`m` is the content part of the
    score that comes from :math:`m`,

    .. math::
        \mathbf{p}^{(m)}_u = [\boldsymbol{\theta}_u; 1], \qquad
        \mathbf{q}^{(m)}_i = [\mathbf{E}_m \mathbf{f}^{(m)}_i;
        \boldsymbol{\beta}_m'^\top \mathbf{f}^{(m)}_i],

    and the fused branch is the whole score, the item biases folded in as a coordinate that
    every user multiplies by 1:

    .. math::
        \mathbf{p}^{(f)}_u = [\boldsymbol{\gamma}_u; \boldsymbol{\theta}_u; 1], \qquad
        \mathbf{q}^{(f)}_i = [\boldsymbol{\gamma}_i; \textstyle\sum_m \mathbf{E}_m
        \mathbf{f}^{(m)}_i; \beta_i + \sum_m \boldsymbol{\beta}_m'^\top \mathbf{f}^{(m)}_i].

    So :math:`s_f = \langle \boldsymbol{\gamma}_u, \boldsymbol{\gamma}_i \rangle + \beta_i +
    \sum_m s_m`, and ``plugin=brmrs`` trains each modality's share of the score with CHNS and
    asks the whole score to beat the best single share.

    With ``item_bias=False`` (MMRec's VBPR) there are no :math:`\beta_i` and
    :math:`\boldsymbol{\beta}'`, and the bias coordinate is dropped from every branch.

    Cold items (``split=cold_items``): :math:`\boldsymbol{\gamma}_i = \mathbf{0}` and
    :math:`\beta_i = 0`, so :math:`s(u, i) = \langle \boldsymbol{\theta}_u, \mathbf{E}
    \mathbf{f}_i \rangle + \boldsymbol{\beta}'^\top \mathbf{f}_i`, the paper's cold-start
    score (zero rather than the untrained random :math:`\boldsymbol{\gamma}_i`, which would add
    noise to every score).

    Args:
        num_users (int): Number of users.
        embedding_dim (int): Size :math:`d` of both :math:`\boldsymbol{\gamma}` and
            :math:`\boldsymbol{\theta}` (MMRec's choice; the paper's :math:`K` and :math:`K'`).
        features (dict): Item features per modality, :math:`(|\mathcal{I}|, D_m)`.
        reg_weight (float): L2 weight.
        content_reg (float, optional): L2 weight on the batch items' content vectors
            :math:`\mathbf{E}\mathbf{f}_i`. (default: :obj:`0.0`)
        reg_norm (bool, optional): Use MMRec's penalty instead,
            :func:`~brmrs_pyg.losses.norm_penalty` of the batch's user vectors
            :math:`[\boldsymbol{\gamma}_u; \boldsymbol{\theta}_u]` and item vectors
            :math:`[\boldsymbol{\gamma}_i; \mathbf{E}\mathbf{f}_i]`. (default: :obj:`False`)
        item_bias (bool, optional): Keep :math:`\beta_i` and :math:`\boldsymbol{\beta}'`.
            (default: :obj:`True`)

    Shapes:
        - **branches**: modality :math:`(|\mathcal{U}|, d+1), (|\mathcal{I}|, d+1)`;
          fused :math:`(|\mathcal{U}|, 2d+1), (|\mathcal{I}|, 2d+1)` (:math:`d` and
          :math:`2d` without item biases).
    """

    Params = VBPRParams
    supports_cold_items = True

    def __init__(self, num_users: int, embedding_dim: int, features: dict[str, Tensor],
                 reg_weight: float, content_reg: float = 0.0, reg_norm: bool = False,
                 item_bias: bool = True) -> None:
        super().__init__()
        self.modalities = branch_modalities(features, "VBPR")
        num_items = next(iter(features.values())).size(0)
        self.user_gamma = torch.nn.Embedding(num_users, embedding_dim)
        self.user_theta = torch.nn.Embedding(num_users, embedding_dim)
        self.item_gamma = torch.nn.Embedding(num_items, embedding_dim)
        self.proj = torch.nn.ModuleDict({m: torch.nn.Linear(x.size(1), embedding_dim, bias=False)
                                         for m, x in features.items()})
        self.item_bias: torch.nn.Embedding | None = None
        self.feature_bias: torch.nn.ModuleDict | None = None
        if item_bias:
            self.item_bias = torch.nn.Embedding(num_items, 1)
            self.feature_bias = torch.nn.ModuleDict({
                m: torch.nn.Linear(x.size(1), 1, bias=False) for m, x in features.items()})
        for m, x in features.items():
            self.register_buffer(f"feat_{m}", x, persistent=False)
        self.reg_weight = reg_weight
        self.content_reg = content_reg
        self.reg_norm = reg_norm
        self.reset_parameters()

    @classmethod
    def from_data(cls, params: Any, graph: HeteroData, features: dict[str, Tensor],
                  embedding_dim: int) -> "VBPR":
        # centring and rescaling change no ranking: E's and beta''s shifts are per-user
        # constants and the scale is absorbed by E and beta'
        prepared = {m: prepare_features(x, params.feature_dim) for m, x in features.items()}
        return cls(graph["user"].num_nodes, embedding_dim, prepared, params.reg_weight,
                   params.content_reg, params.reg_norm, params.item_bias)

    def reset_parameters(self) -> None:
        for emb in (self.user_gamma, self.user_theta, self.item_gamma):
            torch.nn.init.xavier_normal_(emb.weight)
        for proj in self.proj.values():
            torch.nn.init.xavier_normal_(proj.weight)  # type: ignore[arg-type]
        if self.item_bias is not None and self.feature_bias is not None:
            torch.nn.init.zeros_(self.item_bias.weight)
            for bias in self.feature_bias.values():
                torch.nn.init.zeros_(bias.weight)  # type: ignore[arg-type]

    def branches(self) -> dict[str, tuple[Tensor, Tensor]]:
        r"""Each modality's share of the score, then the whole score (see the class)."""
        theta = self.user_theta.weight
        item_bias, feature_bias = self.item_bias, self.feature_bias
        modal_user = theta
        if feature_bias is not None:  # the bias coordinate, multiplied by 1 for every user
            modal_user = torch.cat([theta, theta.new_ones(theta.size(0), 1)], 1)
        out: dict[str, tuple[Tensor, Tensor]] = {}
        for m in self.modalities:
            x = getattr(self, f"feat_{m}")
            content_m = self.proj[m](x)
            if feature_bias is not None:
                content_m = torch.cat([content_m, feature_bias[m](x)], 1)
            out[m] = (modal_user, content_m)
        content = torch.stack([out[m][1] for m in self.modalities]).sum(0)
        if item_bias is not None:  # add beta_i to the summed content bias, the last column
            visual, bias = content.split([content.size(1) - 1, 1], 1)
            content = torch.cat([visual, bias + self.without_cold_ids(item_bias.weight)], 1)
        out[FUSED] = (torch.cat([self.user_gamma.weight, modal_user], 1),
                      torch.cat([self.without_cold_ids(self.item_gamma.weight), content], 1))
        return out

    def branch_loss(self, batch: Batch, branches: Branches) -> tuple[Tensor, dict[str, Tensor]]:
        user, item = branches[FUSED]
        neg = batch.neg[:, 0]  # a uniform negative, also when the plug-in draws a pool
        u, pos, negative = gather(user, batch.users), gather(item, batch.pos), gather(item, neg)
        bpr = bpr_loss((u * pos).sum(-1), (u * negative).sum(-1))
        if self.reg_norm:  # MMRec's EmbLoss on its user and item vectors
            d = 2 * self.item_gamma.embedding_dim
            reg = norm_penalty(u[:, :d], pos[:, :d], negative[:, :d])
            return bpr + self.reg_weight * reg, {"bpr": bpr.detach(), "reg": reg.detach()}
        factors = [self.user_gamma(batch.users), self.user_theta(batch.users),
                   self.item_gamma(batch.pos), self.item_gamma(neg)]
        if self.item_bias is not None:
            factors += [self.item_bias(batch.pos), self.item_bias(neg)]
        reg = l2_reg(*factors)
        total = bpr + self.reg_weight * reg
        terms = {"bpr": bpr.detach(), "reg": reg.detach()}
        if self.content_reg:
            d = self.item_gamma.embedding_dim
            content_reg = l2_reg(pos[:, d:2 * d], negative[:, d:2 * d])
            terms["content_reg"] = content_reg.detach()
            total = total + self.content_reg * content_reg
        return total, terms

    def __repr__(self) -> str:
        return (f"VBPR({self.user_gamma.num_embeddings} users, "
                f"{self.item_gamma.num_embeddings} items, dim={self.user_gamma.embedding_dim}, "
                f"modalities={self.modalities})")
