r"""Losses as plain functions over scores and embeddings; they never see a model."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from brmrs_pyg.sampling import hardest_in_pool


def bpr_loss(pos_scores: Tensor, neg_scores: Tensor) -> Tensor:
    r"""Bayesian Personalized Ranking (Rendle et al., UAI 2009), averaged over the batch.

    .. math::
        \mathcal{L}_{bpr} = -\frac{1}{B} \sum_{b} \log \sigma\big(s(u_b, i^+_b) -
        s(u_b, i^-_b)\big)

    ``neg_scores`` may carry extra trailing dimensions (several negatives per positive); the
    positive score is broadcast against them and the mean is over all pairs.

    Shapes:
        - **pos_scores**: :math:`(B,)` or :math:`(B, 1)`.
        - **neg_scores**: :math:`(B,)` or :math:`(B, N)`.
        - **output**: scalar.

    >>> round(bpr_loss(torch.tensor([0.0]), torch.tensor([0.0])).item(), 4)
    0.6931
    """
    if neg_scores.dim() > pos_scores.dim():
        pos_scores = pos_scores.unsqueeze(-1)
    return -F.logsigmoid(pos_scores - neg_scores).mean()


def l2_reg(*embeddings: Tensor) -> Tensor:
    r"""Squared L2 norm of the embeddings used in a batch, divided by the batch size.

    .. math::
        \mathcal{R} = \frac{1}{2B} \sum_{E \in \text{embeddings}} \lVert E \rVert_F^2

    Shapes:
        - **embeddings**: each :math:`(B, d)`, or :math:`(B, k, d)` for :math:`k` rows per
          example (the batch size is read from the first's first dimension).
        - **output**: scalar.
    """
    total = sum(e.pow(2).sum() for e in embeddings)
    return torch.as_tensor(total) / (2 * embeddings[0].size(0))


def norm_penalty(*tables: Tensor) -> Tensor:
    r"""Sum of the (unsquared) Frobenius norms of whole embedding tables, divided by the rows
    of the last one: the regulariser of BM3's reference code (MMRec's ``EmbLoss`` applied to
    the full online user and item tables),

    .. math::
        \mathcal{R} = \frac{1}{N_{last}} \sum_{E} \lVert E \rVert_F .

    Shapes:
        - **tables**: each :math:`(N_t, d)`; **output**: scalar.
    """
    return torch.stack([t.norm() for t in tables]).sum() / tables[-1].size(0)


def mean_square(*embeddings: Tensor) -> Tensor:
    r"""Sum over the given tensors of the mean of their squared entries: the penalty of the
    MMGCN and GRCN reference code (the batch's ID embeddings and user preferences),

    .. math::
        \mathcal{R} = \sum_{E} \frac{1}{|E|} \sum_{e \in E} e^2,

    where :math:`|E|` counts the entries of :math:`E`. Unlike :func:`l2_reg` every tensor is
    averaged over its own entries, so the width of the embedding does not scale it.

    Shapes:
        - **embeddings**: any shapes; **output**: scalar.

    >>> mean_square(torch.tensor([[1.0, 3.0]]), torch.tensor([2.0]))
    tensor(9.)
    """
    return torch.stack([e.pow(2).mean() for e in embeddings]).sum()


def bootstrap_loss(online: Tensor, target: Tensor) -> Tensor:
    r"""Negative-free bootstrap alignment (BYOL, Grill et al., NeurIPS 2020; used by BM3, Zhou
    et al., WWW 2023): one minus the mean cosine similarity between each online
    representation and its target, the target under stop-gradient,

    .. math::
        \mathcal{L} = 1 - \frac{1}{B} \sum_b \frac{\langle \mathbf{h}_b,
        \operatorname{sg}(\mathbf{z}_b) \rangle}{\lVert \mathbf{h}_b \rVert
        \lVert \mathbf{z}_b \rVert}.

    There are no negatives: collapse is prevented by the asymmetry (a predictor on the online
    side, stop-gradient on the target side), not by pushing pairs apart.

    Shapes:
        - **online**, **target**: :math:`(B, d)`.
        - **output**: scalar in :math:`[0, 2]`.

    >>> round(bootstrap_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])).item(), 4)
    1.0
    """
    return 1 - F.cosine_similarity(online, target.detach(), dim=-1).mean()


def chns_loss(pos: Mapping[str, Tensor], pool: Mapping[str, Tensor], k: int = 1) -> Tensor:
    r"""Cross-modal hard negative sampling (BR-MRS, DESIGN section 1).

    For each modality :math:`m'` the :math:`k` candidates of the pool that :math:`m'` scores
    highest are its hardest negatives :math:`J_{m'}` (selected without gradient); every
    modality :math:`m` is then trained with BPR against the hardest negatives of every *other*
    modality,

    .. math::
        \mathcal{L}_{chns} = \sum_m \frac{1}{M-1} \sum_{m' \ne m} \frac{1}{k}
        \sum_{j \in J_{m'}} -\log \sigma\big(s_m(u, i^+) - s_m(u, j)\big),

    averaged over the batch. With :math:`M = 2` and :math:`k = 1` this is the paper's
    :math:`-\log\sigma(s_t(u,i^+) - s_t(u,j_v)) - \log\sigma(s_v(u,i^+) - s_v(u,j_t))`.

    Args:
        pos (dict): Per modality, scores of the positives, shape :math:`(B,)`.
        pool (dict): Per modality (same keys), scores of the same candidate pool, shape
            :math:`(B, P)`; the pool must exclude the user's training items.
        k (int, optional): Hard negatives per modality. (default: :obj:`1`)
    """
    names = list(pool)
    if len(names) < 2 or set(names) != set(pos):
        raise ValueError(f"CHNS needs the same >= 2 modalities in pos and pool, got "
                         f"{sorted(pos)} and {names}")
    hard = {m: hardest_in_pool(pool[m], k) for m in names}
    total = pos[names[0]].new_zeros(())
    for m in names:
        per_other = [bpr_loss(pos[m], pool[m].gather(1, hard[o])) for o in names if o != m]
        total = total + torch.stack(per_other).mean()
    return total


#: Sources of hard negatives besides a modality's name (:func:`hard_negative_loss`).
NEGATIVE_SOURCES = ("chns", "fused", "uniform")


def hard_negative_loss(pos: Mapping[str, Tensor], pool: Mapping[str, Tensor],
                       source: str = "chns", k: int = 1, fused_pool: Tensor | None = None
                       ) -> Tensor:
    r"""The hard-negative term of BR-MRS with a choice of who picks the negatives, for the
    paper's comparison of negative samplers. Every modality :math:`m` is trained with BPR
    against negatives :math:`J_m` taken from the pool,

    .. math::
        \mathcal{L} = \sum_m \frac{1}{|J_m|} \sum_{j \in J_m}
        -\log \sigma\big(s_m(u, i^+) - s_m(u, j)\big),

    averaged over the batch, where :math:`J_m` is, by ``source``:

    - ``"chns"``: the :math:`k` hardest under every *other* modality (:func:`chns_loss`,
      which also averages over those modalities);
    - ``"fused"``: the :math:`k` hardest under the fused score, for every modality;
    - a modality's name :math:`x`: the :math:`k` hardest under :math:`s_x`, for every modality;
    - ``"uniform"``: the uniform negative (column 0 of the pool) alone, whatever :math:`k`.

    Args:
        pos (dict): Per modality, scores of the positives, :math:`(B,)`.
        pool (dict): Per modality (same keys), scores of the candidate pool, :math:`(B, P)`.
        source (str, optional): ``"chns"``, ``"fused"``, ``"uniform"`` or a key of ``pool``.
            (default: :obj:`"chns"`)
        k (int, optional): Hard negatives taken per row. (default: :obj:`1`)
        fused_pool (Tensor, optional): Fused scores of the same pool, :math:`(B, P)`; needed
            by ``source="fused"`` only.
    """
    if source == "chns":
        return chns_loss(pos, pool, k)
    names = list(pool)
    if not names or set(names) != set(pos):
        raise ValueError(f"hard negatives need the same modalities in pos and pool, got "
                         f"{sorted(pos)} and {names}")
    if source == "uniform":
        hard = torch.zeros_like(pos[names[0]], dtype=torch.long).unsqueeze(-1)
    elif source == "fused":
        if fused_pool is None or fused_pool.shape != pool[names[0]].shape:
            raise ValueError("source='fused' needs the fused scores of the whole pool, shape "
                             f"{tuple(pool[names[0]].shape)}")
        hard = hardest_in_pool(fused_pool, k)
    elif source in pool:
        hard = hardest_in_pool(pool[source], k)
    else:
        raise ValueError(f"unknown hard-negative source {source!r}; choose one of "
                         f"{', '.join(NEGATIVE_SOURCES + tuple(names))}")
    total = pos[names[0]].new_zeros(())
    for m in names:
        total = total + bpr_loss(pos[m], pool[m].gather(1, hard))
    return total


def synergy_loss(pos_fused: Tensor, neg_fused: Tensor, pos: Mapping[str, Tensor],
                 neg: Mapping[str, Tensor], theta: float, reference_grad: bool = False
                 ) -> Tensor:
    r"""Synergy-aware BPR (BR-MRS, DESIGN section 1): the fused margin must beat the best
    unimodal margin by :math:`\theta`,

    .. math::
        \Delta_b = s_b(u, i^+) - s_b(u, i^-), \qquad
        \mathcal{L}_{syn} = -\log \sigma\big(\Delta_f - \max_m \Delta_m - \theta\big),

    averaged over the batch.

    Args:
        pos_fused, neg_fused (Tensor): Fused scores of positives and negatives, :math:`(B,)`.
        pos, neg (dict): Per modality, the scores of the same triples, :math:`(B,)`.
        theta (float): The margin :math:`\theta`.
        reference_grad (bool, optional): Whether :math:`\max_m \Delta_m` receives gradient
            (the paper's "adaptive reference"); if not it is a constant target.
            (default: :obj:`False`)
    """
    if not pos or set(pos) != set(neg):
        raise ValueError(f"synergy needs the same modalities in pos and neg, got {sorted(pos)} "
                         f"and {sorted(neg)}")
    reference = torch.stack([pos[m] - neg[m] for m in pos]).max(0).values
    if not reference_grad:
        reference = reference.detach()
    return -F.logsigmoid(pos_fused - neg_fused - reference - theta).mean()


def warmup_weight(epoch: int, warmup: int) -> float:
    r"""The factor of a loss weight that rises linearly over the first ``warmup`` epochs,
    :math:`\min(1, e / (W + 1))` at (1-based) epoch :math:`e`: never zero, so the term is
    computed and logged from the first epoch, and whole from epoch :math:`W + 1`; 1 when
    ``warmup`` is 0.

    >>> [warmup_weight(e, 3) for e in range(1, 6)]
    [0.25, 0.5, 0.75, 1.0, 1.0]
    """
    return min(1.0, epoch / (warmup + 1)) if warmup > 0 else 1.0


@dataclass(frozen=True)
class CrossModalWeights:
    r"""Weights of the BR-MRS objective (:func:`cross_modal_objective`).

    Args:
        lambda_bpr (float): Weight of the fused BPR.
        lambda_h (float): Weight of CHNS.
        lambda_s (float): Weight of the synergy loss.
        theta (float): Synergy margin.
        hard_k (int): Hard negatives per modality in CHNS.
        reference_grad (bool): Whether the synergy reference margin receives gradient.
        hard_negatives (str): Who picks the hard negatives, see :func:`hard_negative_loss`
            (``"chns"``: the paper's cross-modal assignment).
        balance (bool): Whether CHNS and the synergy loss are scaled, each step, to the
            fused BPR's value (:func:`cross_modal_objective`).
    """

    lambda_bpr: float = 1.0
    lambda_h: float = 1.0
    lambda_s: float = 1.0
    theta: float = 0.1
    hard_k: int = 1
    reference_grad: bool = False
    hard_negatives: str = "chns"
    balance: bool = False


def cross_modal_objective(pos: Mapping[str, Tensor], pool: Mapping[str, Tensor],
                          weights: CrossModalWeights, fused: str = "fused"
                          ) -> tuple[Tensor, dict[str, Tensor]]:
    r"""The BR-MRS objective without the L2 term,

    .. math::
        \lambda_{bpr} \mathcal{L}_{bpr} + \lambda_h \mathcal{L}_{chns}
        + \lambda_s \mathcal{L}_{syn},

    from branch scores only, so it attaches to any model exposing per-modality and fused
    scores. Column 0 of every pool is the uniform negative of :math:`\mathcal{L}_{bpr}` and
    :math:`\mathcal{L}_{syn}` (a pool is a uniform sample, so any fixed column is one); the
    whole pool of each modality feeds CHNS. Terms of weight 0 are skipped.

    With ``weights.balance`` each auxiliary term :math:`\mathcal{L}_t` (CHNS, synergy) is
    scaled to the fused BPR's value of the same step by a constant (no gradient) factor,

    .. math::
        \lambda_t \, \frac{\mathrm{sg}(\mathcal{L}_{bpr})}{\mathrm{sg}(\mathcal{L}_t)}
        \, \mathcal{L}_t,

    so the term's value is :math:`\lambda_t \mathcal{L}_{bpr}` (its share of the loss is
    :math:`\lambda_t / \sum \lambda`, whatever its own magnitude) and its gradient is
    :math:`\lambda_t \mathcal{L}_{bpr} \nabla \log \mathcal{L}_t`. It needs
    ``lambda_bpr > 0``.

    Args:
        pos (dict): Per branch (every modality and ``fused``), positive scores :math:`(B,)`.
        pool (dict): Per branch, scores of the candidate pool :math:`(B, P)`; the fused
            branch needs only column 0, so its entry may be :math:`(B, 1)`, unless
            ``weights.hard_negatives`` is ``"fused"``.
        weights (CrossModalWeights): The weights.
        fused (str, optional): Name of the fused branch. (default: :obj:`"fused"`)

    Returns:
        ``(total, terms)``: the weighted sum and each computed term (detached).
    """
    if weights.balance and not weights.lambda_bpr:
        raise ValueError("balance scales the terms to the fused BPR, and lambda_bpr is 0")
    modal_pos = {m: v for m, v in pos.items() if m != fused}
    modal_pool = {m: v for m, v in pool.items() if m != fused}
    neg_fused = pool[fused][:, 0]
    terms: dict[str, Tensor] = {}
    total = neg_fused.new_zeros(())
    if weights.lambda_bpr:
        terms["bpr"] = bpr_loss(pos[fused], neg_fused)
        total = total + weights.lambda_bpr * terms["bpr"]

    def weighted(weight: float, term: Tensor) -> Tensor:
        if not weights.balance:
            return weight * term
        # a constant factor: the term's value becomes weight * L_bpr (a term that underflows
        # to 0 has no gradient either, so the floor only keeps 0/0 out)
        scale = terms["bpr"].detach() / term.detach().clamp_min(torch.finfo(term.dtype).tiny)
        return (weight * scale) * term
    if weights.lambda_h:
        terms["chns"] = hard_negative_loss(modal_pos, modal_pool, weights.hard_negatives,
                                           weights.hard_k, pool[fused])
        total = total + weighted(weights.lambda_h, terms["chns"])
    if weights.lambda_s:
        terms["syn"] = synergy_loss(pos[fused], neg_fused, modal_pos,
                                    {m: v[:, 0] for m, v in modal_pool.items()},
                                    weights.theta, weights.reference_grad)
        total = total + weighted(weights.lambda_s, terms["syn"])
    return total, {name: value.detach() for name, value in terms.items()}


def infonce_loss(a: Tensor, b: Tensor, tau: float, symmetric: bool = True,
                 index: Tensor | None = None, reduction: str = "mean") -> Tensor:
    r"""InfoNCE (van den Oord et al., 2018) between two views of the same rows: row
    :math:`b` of ``a`` and row :math:`b` of ``b`` are a positive pair, every other row of
    the other view is a negative. Cosine similarity with temperature :math:`\tau`,

    .. math::
        \ell(\mathbf{A}, \mathbf{B}) = -\frac{1}{B} \sum_{b} \log
        \frac{\exp(\cos(\mathbf{a}_b, \mathbf{b}_b) / \tau)}
             {\sum_{c} \exp(\cos(\mathbf{a}_b, \mathbf{b}_c) / \tau)},

    and with ``symmetric`` (the default, as in CLIP) the mean of both directions,
    :math:`\frac{1}{2}(\ell(\mathbf{A}, \mathbf{B}) + \ell(\mathbf{B}, \mathbf{A}))`.
    The one InfoNCE of the project: models pass the rows they align (e.g. the unique items
    of a batch, so that an item is never its own negative).

    With ``index``, ``b`` is a whole table of candidates instead (e.g. every user, as in
    LGMRec's hypergraph contrastive loss): the positive of anchor :math:`b` is row
    :math:`\text{index}_b` of ``b`` and every row of ``b`` is in the denominator,
    :math:`-\log \frac{\exp(\cos(\mathbf{a}_b, \mathbf{b}_{\text{index}_b}) / \tau)}
    {\sum_{c=1}^{N} \exp(\cos(\mathbf{a}_b, \mathbf{b}_c) / \tau)}` (one direction only).

    Args:
        a, b (Tensor): The two views, row-aligned (or ``b`` the candidate table, with
            ``index``).
        tau (float): Temperature :math:`\tau > 0`.
        symmetric (bool, optional): Average the two directions; otherwise only
            :math:`\ell(\mathbf{A}, \mathbf{B})` (``a`` are the anchors). Must be
            :obj:`False` with ``index``. (default: :obj:`True`)
        index (Tensor, optional): Row of ``b`` that is each anchor's positive.
            (default: :obj:`None`, row-aligned views)
        reduction (str, optional): ``"mean"`` or ``"sum"`` over the anchors, or ``"none"``
            (one loss per anchor; one direction only). (default: :obj:`"mean"`)

    Shapes:
        - **a**: :math:`(B, d)`; **b**: :math:`(B, d)`, or :math:`(N, d)` with **index**
          :math:`(B,)`; **output**: scalar, or :math:`(B,)` with ``reduction="none"``.

    >>> x = torch.eye(2)
    >>> round(infonce_loss(x, x, tau=1.0).item(), 4)  # -log(e / (e + 1))
    0.3133
    """
    if index is None and (a.shape != b.shape or a.dim() != 2):
        raise ValueError(f"infonce_loss needs two (B, d) views of the same shape, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    if index is not None and (a.dim() != 2 or b.dim() != 2 or a.size(1) != b.size(1)
                              or index.shape != (a.size(0),) or symmetric):
        raise ValueError(f"infonce_loss with index needs anchors (B, d), candidates (N, d), "
                         f"index (B,) and symmetric=False, got {tuple(a.shape)}, "
                         f"{tuple(b.shape)}, {tuple(index.shape)}, symmetric={symmetric}")
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    if reduction not in ("mean", "sum", "none") or (reduction == "none" and symmetric):
        raise ValueError(f"reduction must be 'mean', 'sum' or (one direction only) 'none', "
                         f"got {reduction!r} with symmetric={symmetric}")
    logits = F.normalize(a, dim=1) @ F.normalize(b, dim=1).T / tau
    target = torch.arange(a.size(0), device=a.device) if index is None else index
    loss = F.cross_entropy(logits, target, reduction=reduction)
    if symmetric:
        loss = (loss + F.cross_entropy(logits.T, target, reduction=reduction)) / 2
    return loss


def orthogonality_loss(shared: Tensor, specific: Tensor, eps: float = 1e-12) -> Tensor:
    r"""Orthogonality of a shared and a specific representation of the same rows, the
    "difference loss" of domain separation (Bousmalis et al., NeurIPS 2016) normalised to
    be scale-free,

    .. math::
        \mathcal{L}_{orth} = \frac{\lVert \mathbf{S}^\top \mathbf{P} \rVert_F^2}
        {\lVert \mathbf{S} \rVert_F^2 \, \lVert \mathbf{P} \rVert_F^2} \in [0, 1],

    zero exactly when every column of :math:`\mathbf{S}` is orthogonal to every column of
    :math:`\mathbf{P}` over the rows (no shared dimension correlates, uncentred, with a
    specific one), and 1 when both have rank one along the same direction. The
    normalisation keeps the loss from being lowered by shrinking the representations.

    Args:
        shared (Tensor): :math:`\mathbf{S}`, one row per sample.
        specific (Tensor): :math:`\mathbf{P}`, the same rows.
        eps (float, optional): Floor of the denominator. (default: :obj:`1e-12`)

    Shapes:
        - **shared**: :math:`(B, d_s)`; **specific**: :math:`(B, d_p)`; **output**: scalar.

    >>> s, p = torch.tensor([[1.0], [1.0]]), torch.tensor([[1.0], [-1.0]])
    >>> orthogonality_loss(s, p).item()
    0.0
    """
    if shared.dim() != 2 or specific.dim() != 2 or shared.size(0) != specific.size(0):
        raise ValueError(f"orthogonality_loss needs (B, d_s) and (B, d_p) with the same rows, "
                         f"got {tuple(shared.shape)} and {tuple(specific.shape)}")
    cross = (shared.T @ specific).pow(2).sum()
    return cross / (shared.pow(2).sum() * specific.pow(2).sum()).clamp_min(eps)
