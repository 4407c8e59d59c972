r"""Graph backbones: stacks of PyG convolutions behind one contract, chosen by name.

Contract: ``forward(x, edge_index, edge_weight=None) -> Tensor`` with output of the same
shape as ``x``. ``edge_index`` is either a :math:`(2, E)` index (with optional
``edge_weight``) or a sparse ``adj_t`` matrix carrying its weights. The base class owns the
layer loop and the :math:`\alpha`-weighted combination of layer outputs; a backbone only
says how to build layer :math:`l` (``init_conv``) and whether it uses edge weights.
"""
from __future__ import annotations

from typing import Final, Sequence

import torch
from torch import Tensor
from torch_geometric.nn import LGConv, MessagePassing

from brmrs_pyg.nn.sparse import spmm
from brmrs_pyg.registry import Registry

BACKBONES: Registry[type["Backbone"]] = Registry("backbone")


class Backbone(torch.nn.Module):
    r"""Base of all backbones: :math:`L` layers and a weighted sum of their outputs,

    .. math::
        \mathbf{x}^{(l+1)} = \mathrm{conv}_l(\mathbf{x}^{(l)}), \qquad
        \mathbf{out} = \sum_{l=0}^{L} \alpha_l \mathbf{x}^{(l)}.

    Args:
        channels (int): Width of the node representations (input and output).
        num_layers (int): Number of layers :math:`L`.
        alpha (list of float, optional): Layer weights :math:`\alpha_0..\alpha_L`
            (default: :math:`1/(L+1)` each, LightGCN's mean).

    Shapes:
        - **x**: :math:`(N, \text{channels})`; **output**: :math:`(N, \text{channels})`.
    """

    #: Whether the convolutions use edge weights. A backbone that cannot raises when given
    #: weights instead of silently ignoring them.
    supports_edge_weight: Final[bool] = True

    def __init__(self, channels: int, num_layers: int,
                 alpha: Sequence[float] | None = None) -> None:
        super().__init__()
        if num_layers < 0:
            raise ValueError(f"num_layers must be >= 0, got {num_layers}")
        alpha = [1.0 / (num_layers + 1)] * (num_layers + 1) if alpha is None else list(alpha)
        if len(alpha) != num_layers + 1:
            raise ValueError(f"alpha needs {num_layers + 1} weights, got {len(alpha)}")
        self.channels = channels
        self.num_layers = num_layers
        self.alpha: Tensor
        self.register_buffer("alpha", torch.tensor(alpha, dtype=torch.float))
        self.convs = torch.nn.ModuleList(self.init_conv(layer) for layer in range(num_layers))

    def init_conv(self, layer: int) -> MessagePassing:
        r"""Builds the convolution of layer ``layer`` (0-based)."""
        raise NotImplementedError

    def reset_parameters(self) -> None:
        for conv in self.convs:
            conv.reset_parameters()  # type: ignore[operator]

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor | None = None) -> Tensor:
        if edge_weight is not None and not self.supports_edge_weight:
            raise ValueError(f"{type(self).__name__} cannot use edge weights; pass the graph "
                             "without them or choose a backbone that supports them")
        out = self.alpha[0] * x
        for layer, conv in enumerate(self.convs):
            x = conv(x, edge_index) if edge_weight is None else conv(x, edge_index, edge_weight)
            out = out + self.alpha[layer + 1] * x
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.channels}, num_layers={self.num_layers})"


class _LGConv(LGConv):
    r"""PyG's ``LGConv`` whose sparse-matrix path uses :func:`~brmrs_pyg.nn.sparse.spmm`
    (transpose computed once, not at every backward); identical results."""

    def message_and_aggregate(self, adj_t: Tensor, x: Tensor) -> Tensor:  # type: ignore[override]
        if isinstance(adj_t, Tensor) and adj_t.layout == torch.sparse_csr:
            return spmm(adj_t, x)
        return super().message_and_aggregate(adj_t, x)


@BACKBONES.register("lightgcn")
class LightGCNBackbone(Backbone):
    r"""LightGCN propagation (He et al., SIGIR 2020) with PyG's ``LGConv``,

    .. math::
        \mathbf{x}^{(l+1)}_i = \sum_{j \in \mathcal{N}(i)} \hat{a}_{ji} \mathbf{x}^{(l)}_j,

    where :math:`\hat{a}_{ji}` are the graph's (already normalised) edge weights; no
    parameters of its own.
    """

    def init_conv(self, layer: int) -> MessagePassing:
        return _LGConv(normalize=False)
