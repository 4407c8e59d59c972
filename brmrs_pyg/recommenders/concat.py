r"""Concat: late fusion of independent per-modality LightGCN branches whose scores are
summed (the "Concat" baseline of the BR-MRS paper's late-fusion family)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from brmrs_pyg.config import ConfigError, option
from brmrs_pyg.losses import bpr_loss, l2_reg
from brmrs_pyg.nn.backbones import BACKBONES
from brmrs_pyg.nn.features import prepare_features
from brmrs_pyg.recommenders.base import MODELS, Batch, gather
from brmrs_pyg.recommenders.branched import FUSED, BranchedRecommender, Branches, branch_modalities
from brmrs_pyg.recommenders.channels import ModalityChannels


@dataclass(frozen=True)
class ConcatParams:
    num_layers: int = option(3, "propagation layers over the user-item graph in each branch")
    ii_layers: int = option(0, "propagation layers over each branch's item-item kNN graph "
                               "(0: user-item graph only)")
    feature_dim: int = option(128, "principal components kept of each modality's features "
                                   "before the learned projection (0: all)")
    shared_ids: bool = option(False, "one set of user/item ID embeddings for all branches "
                                     "(false: each branch has its own, true late fusion)")
    reg_weight: float = option(1e-4, "weight of the L2 penalty on the batch's ID embeddings")
    backbone: str = option("lightgcn", "propagation backbone (registry name)")

    def __post_init__(self) -> None:
        if min(self.num_layers, self.ii_layers, self.feature_dim) < 0 or self.reg_weight < 0:
            raise ConfigError("num_layers, ii_layers, feature_dim and reg_weight must be >= 0")


@MODELS.register("concat")
class Concat(BranchedRecommender):
    r"""Late fusion by summed scores. Branch :math:`m` is a LightGCN over the user-item
    graph (plus, with ``ii_layers > 0``, the modality's item-item graph, as
    :class:`~brmrs_pyg.recommenders.channels.ModalityChannels`) whose inputs are its own ID
    embeddings and the modality's projected features,

    .. math::
        \mathbf{p}^{(m,0)}_u = \mathbf{e}^{(m)}_u, \qquad
        \mathbf{q}^{(m,0)}_i = \mathbf{e}^{(m)}_i + \mathbf{W}_m \mathbf{x}^{m}_i,
        \qquad s_m(u, i) = \langle \mathbf{p}^{(m)}_u, \mathbf{q}^{(m)}_i \rangle.

    Each branch is trained with its own BPR (on the uniform negative, column 0 of
    ``batch.neg``) and L2 on its batch ID embeddings,

    .. math::
        \mathcal{L} = \sum_m \big(\mathcal{L}_{bpr}(s_m) + \lambda \mathcal{R}_m\big),

    so no gradient crosses branches: the model is :math:`M` unimodal recommenders fused
    only at ranking time, :math:`s_f(u, i) = \sum_m s_m(u, i)`. The fused branch is the
    concatenation :math:`[\mathbf{p}^{(1)} \Vert \dots]`, :math:`[\mathbf{q}^{(1)} \Vert
    \dots]` (width :math:`Md`), whose inner product is that sum.

    The ID embeddings are per branch by default: shared IDs would couple the branches
    through common parameters (no longer late fusion) and count the collaborative part
    :math:`M` times in :math:`s_f`. ``shared_ids=True`` is that variant, for ablation.

    Cold items (``split=cold_items``): :math:`\mathbf{e}^{(m)}_i = \mathbf{0}`, so each branch
    starts from the projected features :math:`\mathbf{W}_m \mathbf{x}^m_i` (zero rather
    than the untrained initial value, which would add noise to every score).

    Args:
        num_users (int): Number of users.
        embedding_dim (int): Width :math:`d` of each branch.
        features (dict): Prepared item features per modality, :math:`(|\mathcal{I}|, D_m)`.
        channels (ModalityChannels): The per-modality propagation.
        shared_ids (bool): One ID table for all branches.
        reg_weight (float): :math:`\lambda`.
    """

    Params = ConcatParams
    uses_item_graphs = True
    supports_cold_items = True

    def __init__(self, num_users: int, embedding_dim: int, features: dict[str, Tensor],
                 channels: ModalityChannels, shared_ids: bool, reg_weight: float) -> None:
        super().__init__()
        self.modalities = branch_modalities(features, "concat")
        self.num_users = num_users
        self.num_items = next(iter(features.values())).size(0)
        self.reg_weight = reg_weight
        self.shared_ids = shared_ids
        tables = ["shared"] if shared_ids else self.modalities
        self.user_emb = torch.nn.ModuleDict(
            {t: torch.nn.Embedding(num_users, embedding_dim) for t in tables})
        self.item_emb = torch.nn.ModuleDict(
            {t: torch.nn.Embedding(self.num_items, embedding_dim) for t in tables})
        self.proj = torch.nn.ModuleDict({m: torch.nn.Linear(x.size(1), embedding_dim, bias=False)
                                         for m, x in features.items()})
        for m, x in features.items():
            self.register_buffer(f"feat_{m}", x, persistent=False)
        self.channels = channels
        self.reset_parameters()

    @classmethod
    def from_data(cls, params: Any, graph: HeteroData, features: dict[str, Tensor],
                  embedding_dim: int) -> "Concat":
        modalities = list(features)
        channels = ModalityChannels.over_graph(graph, modalities,
                                               BACKBONES.get(params.backbone), embedding_dim,
                                               (params.num_layers, params.ii_layers))
        prepared = {m: prepare_features(x, params.feature_dim) for m, x in features.items()}
        return cls(graph["user"].num_nodes, embedding_dim, prepared, channels,
                   params.shared_ids, params.reg_weight)

    def reset_parameters(self) -> None:
        for table in [*self.user_emb.values(), *self.item_emb.values()]:
            torch.nn.init.xavier_uniform_(table.weight)  # type: ignore[arg-type]
        for lin in self.proj.values():
            lin.reset_parameters()  # type: ignore[operator]
        self.channels.reset_parameters()

    def _table(self, modality: str) -> str:
        return "shared" if self.shared_ids else modality

    def branches(self) -> dict[str, tuple[Tensor, Tensor]]:
        r"""Each modality's branch, then ``"fused"``: the concatenation of the branches
        (so that the fused score is the sum of the branch scores)."""
        out: dict[str, tuple[Tensor, Tensor]] = {}
        for m in self.modalities:
            table = self._table(m)
            projection: torch.nn.Module = self.proj[m]
            user0 = self.user_emb[table].weight
            ids: torch.nn.Embedding = self.item_emb[table]  # type: ignore[assignment]
            item0 = self.without_cold_ids(ids.weight) + projection(getattr(self, f"feat_{m}"))
            out[m] = self.channels(m, user0, item0)
        out[FUSED] = (torch.cat([out[m][0] for m in self.modalities], 1),
                      torch.cat([out[m][1] for m in self.modalities], 1))
        return out

    def branch_loss(self, batch: Batch, branches: Branches) -> tuple[Tensor, dict[str, Tensor]]:
        neg = batch.neg[:, 0]
        terms: dict[str, Tensor] = {}
        for m in self.modalities:
            user, item = branches[m]
            u = gather(user, batch.users)
            terms[f"bpr_{m}"] = bpr_loss((u * gather(item, batch.pos)).sum(-1),
                                         (u * gather(item, neg)).sum(-1))
        bpr = torch.stack(list(terms.values())).sum()
        tables = sorted({self._table(m) for m in self.modalities})
        reg = torch.stack([l2_reg(self.user_emb[t](batch.users), self.item_emb[t](batch.pos),
                                  self.item_emb[t](neg)) for t in tables]).sum()
        terms = {"bpr": bpr, **terms, "reg": reg}
        return bpr + self.reg_weight * reg, {k: v.detach() for k, v in terms.items()}

    def __repr__(self) -> str:
        ids = "shared" if self.shared_ids else "per branch"
        return (f"Concat({self.num_users} users, {self.num_items} items, "
                f"modalities={self.modalities}, ids={ids}, {self.channels})")
