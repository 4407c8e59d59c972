r"""Fusion functions :math:`\phi`: combine per-modality representations of the same nodes
into one fused representation, chosen by name.

Contract: ``forward(xs) -> Tensor`` with ``xs`` a list of :math:`M` tensors of shape
:math:`(N, d)` (one per modality, in a fixed order) and an output of shape :math:`(N, d)`,
row by row: output row :math:`n` depends on row :math:`n` of the inputs only, so fusing some
rows equals taking those rows of the fused table (BR-MRS's loss fuses only a batch's rows).
"""
from __future__ import annotations

import torch
from torch import Tensor

from brmrs_pyg.registry import Registry

FUSIONS: Registry[type["Fusion"]] = Registry("fusion")


class Fusion(torch.nn.Module):
    r"""Base of the fusion functions.

    Args:
        channels (int): Width :math:`d` of each representation.
        num_modalities (int): :math:`M`.
    """

    def __init__(self, channels: int, num_modalities: int) -> None:
        super().__init__()
        if num_modalities < 1:
            raise ValueError(f"fusion needs at least one modality, got {num_modalities}")
        self.channels = channels
        self.num_modalities = num_modalities

    def reset_parameters(self) -> None:
        pass

    def forward(self, xs: list[Tensor]) -> Tensor:
        raise NotImplementedError

    def fuse_columns(self, x: Tensor) -> Tensor:
        r"""The fusion of representations stored side by side, modality :math:`m` in
        columns :math:`[md, (m+1)d)`: ``forward`` of the column blocks, whose gradients
        backward gathers into one tensor instead of one full-size tensor per block.

        Shapes:
            - **x**: :math:`(N, Md)`; **output**: :math:`(N, d)`.
        """
        return self(list(x.view(x.size(0), self.num_modalities, -1).unbind(1)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.channels}, num_modalities={self.num_modalities})"


def mean_of(xs: list[Tensor]) -> Tensor:
    r"""The mean of the representations, by a running sum: no stacked :math:`(M, N, d)` copy."""
    total = xs[0]
    for x in xs[1:]:
        total = total + x
    return total / len(xs)


@FUSIONS.register("mean")
class MeanFusion(Fusion):
    r""":math:`\phi(\mathbf{x}^{(1)}, \dots, \mathbf{x}^{(M)}) = \frac{1}{M} \sum_m
    \mathbf{x}^{(m)}`; no parameters."""

    def forward(self, xs: list[Tensor]) -> Tensor:
        return mean_of(xs)


@FUSIONS.register("concat")
class ConcatFusion(Fusion):
    r"""Concatenation and a linear map,
    :math:`\phi = \mathbf{W} [\mathbf{x}^{(1)} \Vert \dots \Vert \mathbf{x}^{(M)}]`,
    :math:`\mathbf{W} \in \mathbb{R}^{d \times Md}`, initialised to the mean
    (:math:`\mathbf{W} = \frac{1}{M} [\mathbf{I} \dots \mathbf{I}]`) so that training starts
    from :class:`MeanFusion` instead of a random mixing of the modalities."""

    def __init__(self, channels: int, num_modalities: int) -> None:
        super().__init__(channels, num_modalities)
        self.lin = torch.nn.Linear(num_modalities * channels, channels, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            eye = torch.eye(self.channels) / self.num_modalities
            self.lin.weight.copy_(eye.repeat(1, self.num_modalities))

    def forward(self, xs: list[Tensor]) -> Tensor:
        return self.lin(torch.cat(xs, dim=-1))


@FUSIONS.register("gate")
class GateFusion(Fusion):
    r"""Attention over modalities, a learned gate per node,

    .. math::
        \phi = \sum_m \beta_m \mathbf{x}^{(m)}, \qquad
        \beta = \operatorname{softmax}_m \big(\mathbf{w}^\top
        \tanh(\mathbf{W} \mathbf{x}^{(m)} + \mathbf{b})\big),

    :math:`\mathbf{w}` initialised to zero so that training starts from the mean."""

    def __init__(self, channels: int, num_modalities: int) -> None:
        super().__init__(channels, num_modalities)
        self.proj = torch.nn.Linear(channels, channels)
        self.query = torch.nn.Parameter(torch.zeros(channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.proj.reset_parameters()
        torch.nn.init.zeros_(self.query)

    def forward(self, xs: list[Tensor]) -> Tensor:
        stacked = torch.stack(xs, dim=1)  # (N, M, d)
        beta = (torch.tanh(self.proj(stacked)) @ self.query).softmax(dim=1)  # (N, M)
        return (beta.unsqueeze(-1) * stacked).sum(1)


def pairwise_products(xs: list[Tensor]) -> list[Tensor]:
    r"""The element-wise products :math:`\mathbf{x}^{(m)} \odot \mathbf{x}^{(m')}` of every
    pair :math:`m < m'`, in the order (1, 2), (1, 3), ..., (2, 3), ..."""
    return [xs[a] * xs[b] for a in range(len(xs)) for b in range(a + 1, len(xs))]


@FUSIONS.register("mlp")
class MLPFusion(Fusion):
    r"""The mean plus a two-layer MLP over the representations and their pairwise
    element-wise products,

    .. math::
        \phi = \frac{1}{M} \sum_m \mathbf{x}^{(m)} + \mathbf{W}_2 \,\mathrm{ReLU}\big(
        \mathbf{W}_1 [\mathbf{x}^{(1)} \Vert \dots \Vert \mathbf{x}^{(M)} \Vert
        \mathbf{x}^{(1)} \odot \mathbf{x}^{(2)} \Vert \dots] + \mathbf{b}_1\big),

    :math:`\mathbf{W}_1 \in \mathbb{R}^{d \times (M + \binom{M}{2}) d}`,
    :math:`\mathbf{W}_2 \in \mathbb{R}^{d \times d}`. The products let the fused vector hold
    a product of what two modalities see (a non-additive, synergistic factor), which
    :class:`MeanFusion` and :class:`ConcatFusion`, linear in their inputs, cannot.
    :math:`\mathbf{W}_2` starts at zero, so training starts from the mean."""

    def __init__(self, channels: int, num_modalities: int) -> None:
        super().__init__(channels, num_modalities)
        width = (num_modalities + num_modalities * (num_modalities - 1) // 2) * channels
        self.hidden = torch.nn.Linear(width, channels)
        self.out = torch.nn.Linear(channels, channels, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.hidden.reset_parameters()
        torch.nn.init.zeros_(self.out.weight)

    def forward(self, xs: list[Tensor]) -> Tensor:
        z = torch.cat(xs + pairwise_products(xs), dim=-1)
        return mean_of(xs) + self.out(torch.relu(self.hidden(z)))


@FUSIONS.register("bilinear")
class BilinearFusion(Fusion):
    r"""The mean plus a low-rank multimodal tensor fusion (Liu et al., ACL 2018),

    .. math::
        \phi = \frac{1}{M} \sum_m \mathbf{x}^{(m)} + \mathbf{P} \Big(
        \bigodot_{m=1}^{M} (\mathbf{U}_m \mathbf{x}^{(m)} + \mathbf{c}_m)\Big),

    :math:`\mathbf{U}_m \in \mathbb{R}^{d \times d}`, :math:`\mathbf{c}_m` initialised to
    ones, :math:`\mathbf{P} \in \mathbb{R}^{d \times d}`: the product of the affine maps is a
    rank-:math:`d` factorisation of the full tensor product of the
    :math:`[\mathbf{x}^{(m)}; 1]`, so it holds every product of the modalities' projections
    (bilinear for two modalities) besides their linear terms. :math:`\mathbf{P}` starts at
    zero, so training starts from the mean."""

    def __init__(self, channels: int, num_modalities: int) -> None:
        super().__init__(channels, num_modalities)
        self.factors = torch.nn.ModuleList(torch.nn.Linear(channels, channels)
                                           for _ in range(num_modalities))
        self.out = torch.nn.Linear(channels, channels, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for lin in self.factors:
            lin.reset_parameters()  # type: ignore[operator]
            torch.nn.init.ones_(lin.bias)  # type: ignore[arg-type]
        torch.nn.init.zeros_(self.out.weight)

    def forward(self, xs: list[Tensor]) -> Tensor:
        product = self.factors[0](xs[0])
        for lin, x in zip(self.factors[1:], xs[1:]):
            product = product * lin(x)
        return mean_of(xs) + self.out(product)
