r"""Item features as model inputs: centring, optional reduction to principal components, and
a common scale across modalities."""
from __future__ import annotations

import torch
from torch import Tensor


def prepare_features(x: Tensor, dim: int = 0) -> Tensor:
    r"""Centres the columns of ``x``, keeps its top-``dim`` principal components (all columns
    when ``dim`` is 0 or not smaller than the width) and rescales so that the mean row norm
    is 1, so that modalities of different widths and scales enter a model alike.

    A linear layer on the ``dim`` components equals a linear layer on the full features
    restricted to their top-``dim`` principal subspace, at a fraction of the cost per step
    (a 4096-wide image matrix of 18k items costs about 5 GFLOP per forward pass, its 128
    components 0.15).

    The components come from the eigendecomposition of the covariance (in float64), so the
    result is deterministic up to the sign of each component.

    Shapes:
        - **x**: :math:`(N, D)`; **output**: :math:`(N, \min(D, \text{dim}))` (or
          :math:`(N, D)` when ``dim`` is 0).
    """
    if dim < 0:
        raise ValueError(f"dim must be >= 0, got {dim}")
    x = x.double()
    x = x - x.mean(0, keepdim=True)
    if 0 < dim < x.size(1):
        _, vectors = torch.linalg.eigh(x.T @ x)  # ascending eigenvalues
        basis = vectors[:, -dim:].flip(1)
        # fix each component's sign (largest-magnitude loading positive) for reproducibility
        sign = basis.gather(0, basis.abs().argmax(0, keepdim=True)).sign()
        x = x @ (basis * sign)
    scale = x.norm(dim=1).mean().clamp_min(1e-12)
    return (x / scale).float()
