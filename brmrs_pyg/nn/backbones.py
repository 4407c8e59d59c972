r"""Graph backbones: stacks of PyG convolutions behind one contract, chosen by name.

Contract: ``forward(x, edge_index, edge_weight=None) -> Tensor`` with output of the same
shape as ``x``. ``edge_index`` is either a :math:`(2, E)` index (with optional
``edge_weight``) or a sparse ``adj_t`` matrix carrying its weights. The base class owns the
layer loop and the :math:`\alpha`-weighted combination of layer outputs; a backbone only
says how to build layer :math:`l` (``init_conv``) and whether it uses edge weights.
"""
from __future__ import annotations

import logging
from typing import Any, ClassVar, Sequence

import torch
from torch import Tensor
from torch_geometric.nn import GATConv, GCNConv, LGConv, MessagePassing, SAGEConv

from brmrs_pyg.nn.sparse import linear_propagation, spmm, to_adj_t
from brmrs_pyg.registry import Registry

log = logging.getLogger(__name__)

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
    supports_edge_weight: ClassVar[bool] = True

    #: Whether the backbone is LightGCN's parameter-free propagation,
    #: :math:`\sum_l \alpha_l \hat{A}^l \mathbf{x}` with the weights :attr:`alpha`: a caller
    #: may then compute it in any equivalent way, e.g. several inputs over the same graph
    #: side by side in the columns of one wider input, or a bipartite graph block by block.
    linear_propagation: ClassVar[bool] = False

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
        #: :attr:`alpha` on the host, read by the sparse path of :func:`linear_propagation`
        #: (reading the buffer each step would synchronise a GPU). The weights are fixed
        #: at construction; the buffer only moves them with the model.
        self.alpha_host = tuple(float(a) for a in alpha)
        self.convs = torch.nn.ModuleList(self.init_conv(layer) for layer in range(num_layers))

    def init_conv(self, layer: int) -> MessagePassing:
        r"""Builds the convolution of layer ``layer`` (0-based)."""
        raise NotImplementedError

    def graph_input(self, edge_index: Tensor, edge_weight: Tensor, num_nodes: int
                    ) -> tuple[Tensor, Tensor | None]:
        r"""The ``(edge_index, edge_weight)`` arguments of :meth:`forward` for a weighted
        graph: a sparse CSR ``adj_t`` carrying the weights when the backbone uses them;
        otherwise the bare :math:`(2, E)` structure, and a log line saying the weights are
        not used (never a silent drop)."""
        if self.supports_edge_weight:
            return to_adj_t(edge_index, edge_weight, num_nodes), None
        log.warning("%s cannot use edge weights: it propagates over the unweighted graph with "
                    "its own aggregation", type(self).__name__)
        return edge_index, None

    def reset_parameters(self) -> None:
        for conv in self.convs:
            conv.reset_parameters()  # type: ignore[operator]

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor | None = None) -> Tensor:
        if edge_weight is not None and not self.supports_edge_weight:
            raise ValueError(f"{type(self).__name__} cannot use edge weights; pass the graph "
                             "without them or choose a backbone that supports them")
        if (self.linear_propagation and edge_weight is None and isinstance(edge_index, Tensor)
                and edge_index.layout == torch.sparse_csr):
            # the same sums in fewer passes over the node table than the layer loop
            return linear_propagation(edge_index, x, self.alpha_host)
        out = self.alpha[0] * x
        for layer, conv in enumerate(self.convs):
            x = conv(x, edge_index) if edge_weight is None else conv(x, edge_index, edge_weight)
            out = out + self.alpha[layer + 1] * x
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.channels}, num_layers={self.num_layers})"


class _FastSparse:
    r"""Mixin for convolutions whose aggregation is a weighted sum: their sparse-matrix path
    uses :func:`~brmrs_pyg.nn.sparse.spmm` (transpose computed once, not at every backward);
    identical results."""

    def message_and_aggregate(self, adj_t: Tensor, x: Tensor) -> Tensor:
        if isinstance(adj_t, Tensor) and adj_t.layout == torch.sparse_csr:
            return spmm(adj_t, x)
        parent: Any = super()
        return parent.message_and_aggregate(adj_t, x)


class _LGConv(_FastSparse, LGConv):
    pass


class _GCNConv(_FastSparse, GCNConv):
    pass


@BACKBONES.register("lightgcn")
class LightGCNBackbone(Backbone):
    r"""LightGCN propagation (He et al., SIGIR 2020) with PyG's ``LGConv``,

    .. math::
        \mathbf{x}^{(l+1)}_i = \sum_{j \in \mathcal{N}(i)} \hat{a}_{ji} \mathbf{x}^{(l)}_j,

    where :math:`\hat{a}_{ji}` are the graph's (already normalised) edge weights; no
    parameters of its own.
    """

    linear_propagation: ClassVar[bool] = True

    def init_conv(self, layer: int) -> MessagePassing:
        return _LGConv(normalize=False)


@BACKBONES.register("gcn")
class GCNBackbone(Backbone):
    r"""Graph convolution (Kipf & Welling, ICLR 2017) with PyG's ``GCNConv`` on the
    already-normalised graph, one weight matrix per layer and no non-linearity (as in
    LightGCN's finding that activations hurt collaborative filtering),

    .. math::
        \mathbf{x}^{(l+1)}_i = \mathbf{W}^{(l)} \sum_{j \in \mathcal{N}(i)} \hat{a}_{ji}
        \mathbf{x}^{(l)}_j.
    """

    def init_conv(self, layer: int) -> MessagePassing:
        return _GCNConv(self.channels, self.channels, normalize=False, add_self_loops=False,
                        bias=False)


@BACKBONES.register("sage")
class SAGEBackbone(Backbone):
    r"""GraphSAGE (Hamilton et al., NeurIPS 2017) with PyG's ``SAGEConv``, mean aggregation,

    .. math::
        \mathbf{x}^{(l+1)}_i = \mathbf{W}_1 \mathbf{x}^{(l)}_i + \mathbf{W}_2
        \operatorname{mean}_{j \in \mathcal{N}(i)} \mathbf{x}^{(l)}_j;

    it has no use for edge weights.
    """

    supports_edge_weight: ClassVar[bool] = False

    def init_conv(self, layer: int) -> MessagePassing:
        return SAGEConv(self.channels, self.channels, aggr="mean")


@BACKBONES.register("gat")
class GATBackbone(Backbone):
    r"""Graph attention (Veličković et al., ICLR 2018) with PyG's ``GATConv``, one head,
    self-loops added,

    .. math::
        \mathbf{x}^{(l+1)}_i = \sum_{j \in \mathcal{N}(i) \cup \{i\}} \alpha_{ij}
        \mathbf{W} \mathbf{x}^{(l)}_j;

    the attention :math:`\alpha_{ij}` replaces edge weights, which it cannot use.
    """

    supports_edge_weight: ClassVar[bool] = False

    def init_conv(self, layer: int) -> MessagePassing:
        return GATConv(self.channels, self.channels, heads=1)
