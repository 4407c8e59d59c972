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


@FUSIONS.register("mean")
class MeanFusion(Fusion):
    r""":math:`\phi(\mathbf{x}^{(1)}, \dots, \mathbf{x}^{(M)}) = \frac{1}{M} \sum_m
    \mathbf{x}^{(m)}`; no parameters."""

    def forward(self, xs: list[Tensor]) -> Tensor:
        total = xs[0]
        for x in xs[1:]:  # a running sum: no stacked (M, N, d) copy
            total = total + x
        return total / len(xs)


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
