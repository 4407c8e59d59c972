r"""Pieces shared by MMGCN (Wei et al., MM 2019) and GRCN (Wei et al., MM 2020), two models of
the same group that run one graph convolution per modality over the user-item graph, with a
per-modality user preference table as the user nodes' input and the item's projected content
features as the item nodes' input."""
from __future__ import annotations

import torch
from torch import Tensor

from brmrs_pyg.losses import bpr_loss, mean_square
from brmrs_pyg.recommenders.base import Batch, gather
from brmrs_pyg.recommenders.branched import FUSED, BranchedRecommender, Branches, branch_modalities


class ModalityInputs(torch.nn.Module):
    r"""The inputs of the per-modality graphs: a learned user preference table
    :math:`\mathbf{P}^{(m)}` and a learned linear projection of the item features,

    .. math::
        \mathbf{c}^{(m)}_i = \mathbf{W}_m \mathbf{x}^{(m)}_i + \mathbf{b}_m,

    both of width ``dim``. The features are stored as constant buffers.

    Args:
        num_users (int): Number of users.
        features (dict): Item features per modality, :math:`(|\mathcal{I}|, D_m)`.
        dim (int): Width of the preferences and projections.

    Shapes:
        - **output** of ``forward(m)``: :math:`(|\mathcal{U}|, d)`, :math:`(|\mathcal{I}|, d)`.
    """

    def __init__(self, num_users: int, features: dict[str, Tensor], dim: int) -> None:
        super().__init__()
        self.preference = torch.nn.ParameterDict(
            {m: torch.nn.Parameter(torch.empty(num_users, dim)) for m in features})
        self.proj = torch.nn.ModuleDict(
            {m: torch.nn.Linear(x.size(1), dim) for m, x in features.items()})
        for m, x in features.items():
            self.register_buffer(f"feat_{m}", x.float(), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m, pref in self.preference.items():
            torch.nn.init.xavier_normal_(pref)
            proj: torch.nn.Linear = self.proj[m]  # type: ignore[assignment]
            proj.reset_parameters()
            torch.nn.init.xavier_normal_(proj.weight)

    def forward(self, modality: str) -> tuple[Tensor, Tensor]:
        projection: torch.nn.Module = self.proj[modality]
        return self.preference[modality], projection(getattr(self, f"feat_{modality}"))


class ModalGCNRecommender(BranchedRecommender):
    r"""Base of MMGCN and GRCN: an ID embedding table over users then items, the modalities'
    :class:`ModalityInputs`, and their shared objective (both reference implementations use
    it): BPR of the fused branch on the uniform negative (column 0 of ``batch.neg``) plus a
    mean-square penalty on the batch's ID embeddings and its users' preferences,

    .. math::
        \mathcal{L} = \mathcal{L}_{bpr} + \lambda \Big(
        \overline{\mathbf{e}_u^2} + \overline{[\mathbf{e}_{i^+}; \mathbf{e}_{i^-}]^2}
        + \sum_m \overline{(\mathbf{p}^{(m)}_u)^2} \Big),

    where :math:`\overline{\cdot}` is the mean over the batch's entries
    (:func:`~brmrs_pyg.losses.mean_square`). Subclasses build ``id_emb`` and ``inputs`` and
    implement :meth:`branches`.
    """

    num_users: int
    num_items: int
    reg_weight: float
    id_emb: torch.nn.Parameter
    inputs: ModalityInputs

    def _setup(self, num_users: int, features: dict[str, Tensor], model: str,
               id_dim: int, modal_dim: int, reg_weight: float) -> None:
        self.modalities = branch_modalities(features, model)
        self.num_users = num_users
        self.num_items = next(iter(features.values())).size(0)
        self.reg_weight = reg_weight
        self.id_emb = torch.nn.Parameter(torch.empty(num_users + self.num_items, id_dim))
        self.inputs = ModalityInputs(num_users, features, modal_dim)

    def split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        r"""Rows of users, then of items, of a node table over users then items."""
        users, items = x.split([self.num_users, self.num_items])
        return users, items

    def branch_loss(self, batch: Batch, branches: Branches) -> tuple[Tensor, dict[str, Tensor]]:
        user, item = branches[FUSED]
        neg = batch.neg[:, 0]  # a uniform negative, also when the plug-in draws a pool
        u = gather(user, batch.users)
        bpr = bpr_loss((u * gather(item, batch.pos)).sum(-1), (u * gather(item, neg)).sum(-1))
        items = torch.cat([batch.pos, neg]) + self.num_users
        reg = mean_square(gather(self.id_emb, batch.users), gather(self.id_emb, items),
                          *(gather(self.inputs.preference[m], batch.users)
                            for m in self.modalities))
        return bpr + self.reg_weight * reg, {"bpr": bpr.detach(), "reg": reg.detach()}
