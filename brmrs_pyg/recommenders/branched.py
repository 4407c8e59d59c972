r"""Multi-branch models (one branch per modality plus a fused one) and the BR-MRS loss
plug-in that attaches CHNS and the synergy-aware BPR to any of them (DESIGN section 1,
"Plug-and-play")."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Mapping

import torch
from torch import Tensor

from brmrs_pyg.config import ConfigError, option
from brmrs_pyg.evaluation import Scorer
from brmrs_pyg.losses import CrossModalWeights, cross_modal_objective
from brmrs_pyg.nn.fusion import Fusion
from brmrs_pyg.nn.sparse import block_scores, sampled_block_scores, sampled_dot
from brmrs_pyg.recommenders.base import Batch, Recommender, gather, row_scores
from brmrs_pyg.sampling import hardest_in_pool

#: Name of the fused branch in :meth:`BranchedRecommender.branches`.
FUSED = "fused"

Branches = Mapping[str, tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class CrossModalParams:
    r"""The keys of the two BR-MRS losses, CHNS and the synergy-aware BPR: shared by the
    ``brmrs`` model and by ``plugin=brmrs`` (:class:`PluginParams`)."""

    lambda_h: float = option(1.0, "weight of cross-modal hard negative sampling (CHNS)")
    lambda_s: float = option(1.0, "weight of the synergy-aware BPR loss")
    theta: float = option(0.1, "synergy margin: fused margin must beat the best unimodal one")
    syn_ref_grad: bool = option(True, "whether the synergy reference (best unimodal margin) "
                                      "receives gradient")
    pool_size: int = option(10, "CHNS candidate pool size P per positive")
    hard_k: int = option(1, "hardest negatives taken per modality from the pool (1: paper)")

    def __post_init__(self) -> None:
        for key in ("lambda_h", "lambda_s", "theta"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be >= 0, got {getattr(self, key)}")
        if not 1 <= self.hard_k <= self.pool_size:
            raise ConfigError(f"need 1 <= hard_k <= pool_size, got hard_k={self.hard_k}, "
                              f"pool_size={self.pool_size}")


@dataclass(frozen=True)
class PluginParams(CrossModalParams):
    r"""Keys of ``plugin=brmrs``: the weights of the BR-MRS losses added to a model's own
    objective (same names and meaning as the keys of the ``brmrs`` model)."""

    def weights(self) -> CrossModalWeights:
        r"""The objective's weights, without a fused BPR (the host model has its own)."""
        return CrossModalWeights(lambda_bpr=0.0, lambda_h=self.lambda_h,
                                 lambda_s=self.lambda_s, theta=self.theta, hard_k=self.hard_k,
                                 reference_grad=self.syn_ref_grad)


class BranchesWithParts(dict[str, tuple[Tensor, Tensor]]):
    r"""The branches of one forward pass (its keys and values, as :meth:`BranchedRecommender.
    branches` returns them) plus named intermediate representations of the same pass that
    the model's own loss needs, e.g. the views a contrastive term aligns (:attr:`parts`).
    One forward then serves the loss and the plug-in; the parts are not keys, so the
    plug-in and the branch scorers see the branches alone.

    Args:
        branches (dict): The branches, ``{name: (user_emb, item_emb)}``.
        parts (dict): The intermediate representations, ``{name: tensor}``.
    """

    def __init__(self, branches: Mapping[str, tuple[Tensor, Tensor]],
                 parts: Mapping[str, Tensor]) -> None:
        super().__init__(branches)
        self.parts = dict(parts)


def branch_parts(branches: Branches) -> dict[str, Tensor]:
    r"""The :attr:`BranchesWithParts.parts` of ``branches``; raises ``TypeError`` for plain
    branches (not from a forward that kept its parts)."""
    if not isinstance(branches, BranchesWithParts):
        raise TypeError("these branches carry no intermediate parts: pass what the model's "
                        "branches() returned for this step")
    return branches.parts


def branch_modalities(features: Mapping[str, Tensor], model: str) -> list[str]:
    r"""The modality names of a branched ``model``'s ``features``, checked: at least one, and
    none named ``"fused"`` (the name of the fused branch)."""
    modalities = list(features)
    if not modalities or FUSED in modalities:
        raise ConfigError(f"{model} needs at least one modality not named {FUSED!r}, got "
                          f"{modalities}")
    return modalities


def branch_scores(branches: Branches, batch: Batch, pool_columns: int, fused_columns: int = 1,
                  fused: str = FUSED) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    r"""Scores of a batch under every branch, as :func:`cross_modal_objective` takes them.

    Every branch scores the positives and the first ``pool_columns`` columns of
    ``batch.neg`` (the candidate pool); the fused branch only the first ``fused_columns``
    (column 0, the uniform negative, is all the objective uses of it unless hard negatives
    are picked under the fused score).

    Returns:
        ``(pos, pool)``: per branch, scores :math:`(B,)` and :math:`(B, P)` (:math:`(B, 1)`
        for the fused branch).
    """
    pos: dict[str, Tensor] = {}
    pool: dict[str, Tensor] = {}
    for name, (user, item) in branches.items():
        u = gather(user, batch.users)
        pos[name] = (u * gather(item, batch.pos)).sum(-1)
        columns = fused_columns if name == fused else pool_columns
        pool[name] = row_scores(u, gather(item, batch.neg[:, :columns]))
    return pos, pool


def side_by_side_scores(users: Tensor, items: Tensor, fusions: tuple[Fusion, Fusion],
                        names: list[str], batch: Batch, pool_columns: int, hard_k: int,
                        fused_pool: bool = False) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    r"""The scores of :func:`branch_scores` (same values, same gradients) for modality
    branches kept side by side, modality ``names[m]`` in columns :math:`[md, (m+1)d)` of
    ``users`` and ``items``, and a fused branch that ``fusions`` (user, item) make of them.

    The modalities are scored by sampled products (:func:`~brmrs_pyg.nn.sparse.
    sampled_block_scores`), without writing out their candidates' rows; the fused branch
    fuses the rows it scores only (a fusion acts row by row), or the whole item table when
    it has fewer rows; and the pool is scored without gradient: :func:`cross_modal_objective`
    takes gradient from a pool at column 0 (the uniform negative) and at the ``hard_k``
    hardest candidates of some branch only, so just those columns (and the positives) are scored
    again with gradient, and added to the pool as exact zeros that carry it. The pool's
    values are those scored without gradient, so the hard negatives the objective picks
    are the ones that carry gradient.

    Args:
        users, items (Tensor): The modalities' tables side by side.
        fusions (tuple of Fusion): The fusions of the user and of the item rows.
        names (list of str): The modalities, in column order.
        batch (Batch): The triples; the pool is the first ``pool_columns`` of ``batch.neg``.
        pool_columns (int): Pool size :math:`P`.
        hard_k (int): Hard negatives per branch the objective may pick.
        fused_pool (bool, optional): Score the whole pool under the fused branch too (hard
            negatives picked by the fused score); otherwise its column 0 only.
            (default: :obj:`False`)

    Shapes:
        - **users**: :math:`(|\mathcal{U}|, Md)`; **items**: :math:`(|\mathcal{I}|, Md)`.
        - **output**: per branch, :math:`(B,)` and :math:`(B, P)` (:math:`(B, 1)` for the
          fused branch unless ``fused_pool``).
    """
    neg = batch.neg[:, :pool_columns]
    u = gather(users, batch.users)
    fused_u = fusions[0].fuse_columns(u)
    d = fused_u.size(1)
    with torch.no_grad():
        pool = tuple(sampled_dot(u[:, k * d:(k + 1) * d], items[:, k * d:(k + 1) * d], neg)
                     for k in range(len(names)))
        if fused_pool:
            pool += (sampled_dot(fused_u, fusions[1].fuse_columns(items), neg),)
        columns = torch.cat([neg.new_zeros(neg.size(0), 1),
                             *(hardest_in_pool(p, hard_k) for p in pool)], 1)
        # a column picked twice carries its gradient once
        same = columns.unsqueeze(2) == columns.unsqueeze(1)
        first = ~(same & same.new_ones(same.shape[1:]).tril(-1)).any(2)
    index = torch.cat([batch.pos.unsqueeze(1), neg.gather(1, columns)], 1)
    scored = sampled_block_scores(u, items, index, len(names)).unbind(-1)
    # the fused branch needs the positive and column 0 only, unless fused_pool
    fused_index = index if fused_pool else index[:, :2]
    if items.size(0) <= fused_index.numel():  # fusing the table is less work than the rows
        fused = sampled_block_scores(fused_u, fusions[1].fuse_columns(items), fused_index, 1)
    else:
        rows = gather(items, fused_index)
        fused_i = fusions[1].fuse_columns(rows.view(-1, users.size(1)))
        fused = block_scores(fused_u, fused_i.view(*rows.shape[:2], d), 1)
    fused = fused.squeeze(-1)
    pos = {name: s[:, 0] for name, s in zip(names, scored)}
    pos[FUSED] = fused[:, 0]
    out = {name: _carry_gradient(p, columns, s[:, 1:], first)
           for name, p, s in zip(names, pool, scored)}
    out[FUSED] = (_carry_gradient(pool[-1], columns, fused[:, 1:], first) if fused_pool
                  else fused[:, 1:2])
    return pos, out


def _carry_gradient(pool: Tensor, columns: Tensor, scores: Tensor, first: Tensor) -> Tensor:
    r"""``pool`` (no gradient) with the gradient of ``scores`` at ``columns``: it adds
    ``scores - scores`` there (exact zeros), once per column (``first``)."""
    zero = torch.where(first, scores - scores.detach(), scores.new_zeros(()))
    return pool.scatter_add(1, columns, zero)


class BranchedRecommender(Recommender):
    r"""A model with a branch per modality and a fused branch, each scoring by inner product.

    A subclass implements :meth:`branches` (training-mode embeddings of every branch) and
    :meth:`branch_loss` (its own objective, computed from those branches). The fused branch
    ranks. :meth:`loss` adds the BR-MRS plug-in's terms when one is attached
    (:meth:`attach_plugin`, the ``plugin=brmrs`` key); the trainer then samples a pool of
    ``pool_size`` uniform negatives per positive, so a model's own loss must use only column
    0 of ``batch.neg`` (a uniform negative whatever the pool size).

    A late-fusion model whose fused score is a sum of branch scores exposes it as the
    concatenation of the branches' embeddings, which has exactly that inner product.
    """

    supports_plugin: ClassVar[bool] = True

    #: Modality names, in order; the keys of :meth:`branches` besides :data:`FUSED`.
    modalities: list[str]
    #: The attached plug-in's weights, or ``None``.
    plugin: CrossModalWeights | None = None

    def branches(self) -> dict[str, tuple[Tensor, Tensor]]:
        r"""User and item embeddings of every branch: each modality, then ``"fused"``."""
        raise NotImplementedError

    def branch_loss(self, batch: Batch, branches: Branches) -> tuple[Tensor, dict[str, Tensor]]:
        r"""The model's own objective of ``batch`` and its terms (detached), from the
        ``branches`` computed for this step."""
        raise NotImplementedError

    def forward(self) -> tuple[Tensor, Tensor]:
        return self.branches()[FUSED]

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        branches = self.branches()
        total, terms = self.branch_loss(batch, branches)
        if self.plugin is not None:
            pos, pool = branch_scores(branches, batch, self.num_negatives)
            extra, extra_terms = cross_modal_objective(pos, pool, self.plugin, FUSED)
            clash = set(extra_terms) & set(terms)
            assert not clash, f"plug-in terms {sorted(clash)} clash with the model's"
            total = total + extra
            terms.update(extra_terms)
        return total, terms

    def attach_plugin(self, params: PluginParams) -> None:
        r"""Adds :math:`\lambda_h \mathcal{L}_{chns} + \lambda_s \mathcal{L}_{syn}` over this
        model's branches to its loss and makes the trainer sample ``pool_size`` negatives."""
        if params.lambda_h and len(self.modalities) < 2:
            raise ConfigError(f"plugin=brmrs: CHNS (lambda_h > 0) needs at least two "
                              f"modalities, the model has {self.modalities}")
        self.plugin = params.weights()
        self.num_negatives = max(self.num_negatives,
                                 params.pool_size if params.lambda_h else 1)

    @torch.no_grad()
    def branch_scorers(self) -> dict[str, Scorer]:
        def make(user: Tensor, item: Tensor) -> Scorer:
            return lambda users: user[users] @ item.T
        return {name: make(*emb) for name, emb in self.branches().items()}
