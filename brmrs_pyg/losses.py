r"""Losses as plain functions over scores and embeddings; they never see a model."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


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
        - **embeddings**: each :math:`(B, d)` (the batch size is read from the first).
        - **output**: scalar.
    """
    total = sum(e.pow(2).sum() for e in embeddings)
    return torch.as_tensor(total) / (2 * embeddings[0].size(0))
