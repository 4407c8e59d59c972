r"""Sparse-dense products whose backward pass does not re-transpose the sparse matrix.

``torch.sparse.mm(A, X)`` differentiates with respect to ``X`` as :math:`A^\top G`, and
PyTorch builds :math:`A^\top` (a sort of all non-zeros) at *every* backward call. Propagation
matrices never change during training, so :func:`spmm` computes each transpose once and
keeps it while the matrix is alive and unmodified. On lfm2k-sized graphs this made three
LightGCN layers (forward and backward) many times faster on CPU.
"""
from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.weak import WeakTensorKeyDictionary
from torch_geometric.utils import softmax

_TRANSPOSES = WeakTensorKeyDictionary()


def to_csr(matrix: Tensor) -> Tensor:
    r"""``matrix.to_sparse_csr()`` without PyTorch's "CSR support is in beta" warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return matrix.to_sparse_csr()


def transpose_of(adj: Tensor) -> Tensor:
    r""":math:`A^\top` of a sparse CSR matrix, in CSR, computed once per matrix version."""
    hit = _TRANSPOSES.get(adj)
    if hit is None or hit[0] != adj._version:
        hit = (adj._version, to_csr(adj.t()))
        _TRANSPOSES[adj] = hit
    return hit[1]


def _scaled_mm(adj_t: Tensor, x: Tensor, scale: float) -> Tensor:
    out = x.new_empty(adj_t.size(0), x.size(1))
    if out.is_cuda:
        # the weight inside the product: no separate pass over the output
        return torch.addmm(out, adj_t, x, beta=0.0, alpha=scale)
    # on CPU written straight into the fresh table (``out=`` its own input, which beta=0
    # ignores): no zero-filled or copied output; on a 54k-node, 446k-edge graph, 64 wide,
    # one thread, 7.4 ms against 15.5 for ``torch.sparse.mm``
    return torch.addmm(out, adj_t, x, beta=0.0, alpha=scale, out=out)


class _SpMM(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, adj_t: Tensor, x: Tensor, scale: float) -> Tensor:
        ctx.adj_t, ctx.scale = adj_t, scale
        return _scaled_mm(adj_t, x, scale)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor, None]:
        return None, _scaled_mm(transpose_of(ctx.adj_t), grad, ctx.scale), None


def spmm(adj_t: Tensor, x: Tensor, scale: float = 1.0) -> Tensor:
    r"""``scale * (adj_t @ x)`` for a sparse CSR ``adj_t`` (constant) and a dense ``x``.

    Args:
        adj_t (Tensor): The sparse matrix.
        x (Tensor): The dense matrix.
        scale (float, optional): A weight applied inside the product (e.g. a layer's
            :math:`\alpha_l`), saving a pass over the output. (default: :obj:`1.0`)

    Shapes:
        - **adj_t**: :math:`(N, M)` sparse CSR; **x**: :math:`(M, d)`; **output**: :math:`(N, d)`.
    """
    if adj_t.requires_grad:
        raise ValueError("spmm treats the sparse matrix as a constant; its values require grad")
    return _SpMM.apply(adj_t, x, scale)


def linear_propagation(adj_t: Tensor, x: Tensor, alpha: Sequence[float]) -> Tensor:
    r"""LightGCN's layer combination :math:`\sum_{l=0}^{L} \alpha_l \hat{A}^l x`, with
    :math:`L` = ``len(alpha) - 1``, in the fewest passes over the node table: the last
    layer's weight inside its product (:func:`spmm`), layer 0's added by the same kernel as
    the sum (``torch.add(..., alpha=)``), so that the forward and backward passes each skip
    a scaling pass per layer. The same sums as weighting each layer's output, up to float
    rounding.

    Shapes:
        - **adj_t**: :math:`(N, N)` sparse CSR; **x**: :math:`(N, d)`; **output**: :math:`(N, d)`.
    """
    if len(alpha) == 1:
        return alpha[0] * x
    out: Tensor | None = None
    h = x
    for weight in alpha[1:-1]:  # the layers whose unweighted output the next one needs
        h = spmm(adj_t, h)
        out = weight * h if out is None else torch.add(out, h, alpha=weight)
    last = spmm(adj_t, h, alpha[-1])
    out = last if out is None else out + last
    return torch.add(out, x, alpha=alpha[0])


def to_adj_t(edge_index: Tensor, edge_weight: Tensor, num_nodes: int) -> Tensor:
    r"""Sparse CSR matrix :math:`M` with :math:`M_{ij}` = weight of edge :math:`j \to i`, so
    that ``M @ x`` aggregates messages at the receiving nodes (PyG's ``adj_t``)."""
    coo = torch.sparse_coo_tensor(edge_index.flip(0), edge_weight, (num_nodes, num_nodes),
                                  check_invariants=True)
    return to_csr(coo.coalesce())


def _csr(crow: Tensor, col: Tensor, values: Tensor, num_nodes: int,
         num_cols: int | None = None) -> Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, col, values, (num_nodes, num_cols or num_nodes),
                                       check_invariants=False)


def bipartite_blocks(adj_t: Tensor, num_users: int) -> tuple[Tensor, Tensor] | None:
    r"""The two off-diagonal blocks of a sparse CSR ``adj_t`` over users then items, when it
    has no other non-zero (a user-item graph): :math:`\hat{A}_{ui}` (rows the users, columns
    the items) and :math:`\hat{A}_{iu}`, so that ``adj_t @ [X_u; X_i]`` is
    ``[A_ui @ X_i; A_iu @ X_u]`` with the same sums; ``None`` otherwise.

    Shapes:
        - **adj_t**: :math:`(U + I, U + I)` sparse CSR; **output**: :math:`(U, I)` and
          :math:`(I, U)` sparse CSR.
    """
    crow, col, values = adj_t.crow_indices(), adj_t.col_indices(), adj_t.values()
    split = int(crow[num_users])
    num_nodes = adj_t.size(0)
    if bool((col[:split] < num_users).any()) or bool((col[split:] >= num_users).any()):
        return None
    users = _csr(crow[:num_users + 1], col[:split] - num_users, values[:split], num_users,
                 num_nodes - num_users)
    items = _csr(crow[num_users:] - split, col[split:], values[split:],
                 num_nodes - num_users, num_users)
    return users, items


def _can_sample(rows: Tensor, table: Tensor, index: Tensor) -> bool:
    r"""Whether ``torch.sparse.sampled_addmm`` can score ``index``: it refuses more pairs
    per row than the table has rows, and on a GPU (cuSPARSE) it is not known to accept
    repeated or unsorted columns (the gather is fast there)."""
    return index.size(1) <= table.size(0) and rows.device.type == "cpu"


@torch.no_grad()
def sampled_dot(rows: Tensor, table: Tensor, index: Tensor) -> Tensor:
    r"""Inner products of each row with its own candidates among the rows of a table,
    :math:`s_{bp} = \langle \mathbf{r}_b, \mathbf{t}_{\text{index}_{bp}} \rangle`, without
    gradient: on CPU one sampled dense-dense product (``torch.sparse.sampled_addmm``), several
    times faster than gathering the :math:`(B, P, d)` candidates and reducing them, as it
    never writes them out (elsewhere, that gather). A candidate may repeat within a row, and
    a row may have more candidates than the table has rows.

    Shapes:
        - **rows**: :math:`(B, d)`; **table**: :math:`(N, d)`; **index**: :math:`(B, P)`,
          in :math:`[0, N)`; **output**: :math:`(B, P)`.

    >>> sampled_dot(torch.ones(1, 2), torch.tensor([[1.0, 2.0], [3.0, 4.0]]),
    ...             torch.tensor([[1, 0, 1]])).tolist()
    [[7.0, 3.0, 7.0]]
    """
    num_rows, per_row = index.shape
    if not _can_sample(rows, table, index):
        return (rows.unsqueeze(1) * table[index]).sum(-1)
    crow = torch.arange(0, index.numel() + 1, per_row, device=index.device)
    pattern = _csr(crow, index.reshape(-1), rows.new_zeros(index.numel()), num_rows,
                   table.size(0))
    return torch.sparse.sampled_addmm(pattern, rows, table.T, beta=0.0).values().view(
        num_rows, per_row)


def block_scores(user: Tensor, items: Tensor, blocks: int) -> Tensor:
    r"""Per column block, inner products of each user row with its gathered candidates: user
    :math:`(B, Md)` and items :math:`(B, C, Md)` give :math:`(B, C, M)`, with gradient."""
    return _BlockScores.apply(user, items, blocks)


class _BlockScores(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, user: Tensor, items: Tensor, blocks: int) -> Tensor:
        ctx.save_for_backward(user, items)
        batch, columns, width = items.shape
        ctx.shape = (batch, columns, blocks, width // blocks)
        return (items.view(ctx.shape) * user.view(batch, 1, blocks, -1)).sum(-1)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        user, items = ctx.saved_tensors
        batch, columns, blocks, _ = ctx.shape
        grad = grad.unsqueeze(-1)
        # one product each instead of autograd's broadcast products, sums and expansion
        grad_user = (grad * items.view(ctx.shape)).sum(1).view(user.shape)
        grad_items = (grad * user.view(batch, 1, blocks, -1)).view(items.shape)
        return grad_user, grad_items, None


def sampled_block_scores(rows: Tensor, table: Tensor, index: Tensor, blocks: int) -> Tensor:
    r"""Per column block :math:`k`, inner products of each row with its own candidates among
    the rows of a table, :math:`s_{bck} = \langle \mathbf{r}^{(k)}_b,
    \mathbf{t}^{(k)}_{\text{index}_{bc}} \rangle`, with gradient to ``rows`` and ``table``:
    :func:`sampled_dot` per block, differentiable. On CPU the forward is one sampled product
    per block and the backward two sparse products per block (with the sampling pattern and
    with its transpose), so the :math:`(B, C, Md)` candidates are never written out, nor
    their gradient (on lfm2k this took a quarter of a BR-MRS step, memory-bound); elsewhere
    (cuSPARSE's constraints, see :func:`sampled_dot`) it gathers them and uses
    :func:`block_scores`. A candidate may repeat within a row.

    Shapes:
        - **rows**: :math:`(B, Md)`; **table**: :math:`(N, Md)`; **index**: :math:`(B, C)`,
          in :math:`[0, N)`; **output**: :math:`(B, C, M)`.
    """
    if not _can_sample(rows, table, index):
        return block_scores(rows, table[index], blocks)
    return _SampledBlockScores.apply(rows, table, index, blocks)


def _column_blocks(x: Tensor, blocks: int) -> list[Tensor]:
    return list(x.view(x.size(0), blocks, -1).unbind(1))


def _stable_order(keys: Tensor, bound: int) -> Tensor:
    r"""``torch.argsort(keys, stable=True)`` for keys in :math:`[0, \text{bound})`. On CPU
    with keys that fit in 16 bits, NumPy's stable sort of ``int16`` (a radix sort): on
    lfm2k's BR-MRS batches (8,192 keys below 1,425; torch 2.13, one thread) 32 µs against
    300 µs for torch's stable sort, which is a comparison sort whatever the key type."""
    if keys.device.type != "cpu" or bound > 2**15:
        return torch.argsort(keys, stable=True)
    order = np.argsort(keys.numpy().astype(np.int16), kind="stable")
    return torch.from_numpy(order).to(keys.dtype)


class _SampledBlockScores(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, rows: Tensor, table: Tensor, index: Tensor, blocks: int) -> Tensor:
        num_rows, per_row = index.shape
        # each row's candidates in ascending order, as a CSR matrix's columns should be
        cols, order = index.sort(1)
        crow = torch.arange(0, index.numel() + 1, per_row, device=index.device)
        cols = cols.reshape(-1)
        pattern = _csr(crow, cols, rows.new_zeros(index.numel()), num_rows, table.size(0))
        scores = torch.stack([torch.sparse.sampled_addmm(pattern, r, t.T, beta=0.0).values()
                              for r, t in zip(_column_blocks(rows, blocks),
                                              _column_blocks(table, blocks))], 1)
        ctx.save_for_backward(rows, table, crow, cols, order)
        ctx.blocks = blocks
        # back to the caller's column order
        order = order.unsqueeze(-1).expand(-1, -1, blocks)
        return torch.empty_like(scores).view(num_rows, per_row, blocks).scatter_(
            1, order, scores.view(num_rows, per_row, blocks))

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        rows, table, crow, cols, order = ctx.saved_tensors
        blocks = ctx.blocks
        num_rows, per_row = order.shape
        num_cols = table.size(0)
        grad = grad.gather(1, order.unsqueeze(-1).expand(-1, -1, blocks)).view(-1, blocks)
        grad_rows = grad_table = None
        if ctx.needs_input_grad[0]:
            grad_rows = torch.cat([torch.sparse.mm(_csr(crow, cols, g, num_rows, num_cols), t)
                                   for g, t in zip(grad.T.contiguous(),
                                                   _column_blocks(table, blocks))], 1)
        if ctx.needs_input_grad[1]:
            # the transposed pattern: entries by candidate, then by row (a stable sort)
            by_col = _stable_order(cols, num_cols)
            counts = torch.bincount(cols, minlength=num_cols)
            crow_t = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
            col_t = torch.div(by_col, per_row, rounding_mode="floor")
            grad_t = grad[by_col].T.contiguous()
            grad_table = torch.cat([torch.sparse.mm(_csr(crow_t, col_t, g, num_cols, num_rows),
                                                    r)
                                    for g, r in zip(grad_t, _column_blocks(rows, blocks))], 1)
        return grad_rows, grad_table, None, None


class EdgeGraph(torch.nn.Module):
    r"""A fixed directed graph whose edge *weights* are computed afresh each step (attention,
    learned pruning), with the per-edge operations such models need done as sparse kernels
    instead of gathers and scatters of :math:`E \times d` message tensors (about 20 times
    faster on CPU): weighted aggregation :meth:`aggregate`, per-edge inner products
    :meth:`dot` and the softmax over each node's incoming edges :meth:`softmax`, all
    differentiable in the node features and in the edge values.

    The edges are kept sorted by receiver, then sender (the CSR order of ``adj_t``);
    :attr:`edge_index` gives them in that order, the order of every per-edge tensor.
    Duplicate edges are not allowed.

    Args:
        edge_index (Tensor): Edges :math:`j \to i` as ``(sender, receiver)`` columns,
            :math:`(2, E)`.
        num_nodes (int): Number of nodes :math:`N`.
    """

    crow: Tensor
    col: Tensor
    row: Tensor
    perm_t: Tensor
    crow_t: Tensor
    col_t: Tensor

    def __init__(self, edge_index: Tensor, num_nodes: int) -> None:
        super().__init__()
        source, target = edge_index
        order = torch.argsort(target * num_nodes + source)
        source, target = source[order], target[order]
        key = target * num_nodes + source
        if key.numel() and bool((key[1:] == key[:-1]).any()):
            raise ValueError("EdgeGraph: duplicate edges")
        self.num_nodes = num_nodes
        self.register_buffer("row", target, persistent=False)
        self.register_buffer("col", source, persistent=False)
        self.register_buffer("crow", self._pointers(target), persistent=False)
        # the transpose (rows = senders), as a permutation of the edges
        perm_t = torch.argsort(source * num_nodes + target)
        self.register_buffer("perm_t", perm_t, persistent=False)
        self.register_buffer("crow_t", self._pointers(source[perm_t]), persistent=False)
        self.register_buffer("col_t", target[perm_t], persistent=False)

    def _pointers(self, sorted_rows: Tensor) -> Tensor:
        counts = torch.bincount(sorted_rows, minlength=self.num_nodes)
        return torch.cat([counts.new_zeros(1), counts.cumsum(0)])

    @property
    def edge_index(self) -> Tensor:
        r"""The edges in this graph's order, ``(sender, receiver)``, :math:`(2, E)`."""
        return torch.stack([self.col, self.row])

    def matrix(self, values: Tensor) -> Tensor:
        r"""The sparse CSR ``adj_t`` with ``values`` on the edges (row = receiver)."""
        return _csr(self.crow, self.col, values, self.num_nodes)

    def matrix_t(self, values: Tensor) -> Tensor:
        r"""Its transpose (row = sender), ``values`` given in this graph's edge order."""
        return _csr(self.crow_t, self.col_t, values[self.perm_t], self.num_nodes)

    def aggregate(self, x: Tensor, weight: Tensor) -> Tensor:
        r""":math:`\mathbf{h}_i = \sum_{(j \to i)} w_{ji} \mathbf{x}_j`.

        Shapes:
            - **x**: :math:`(N, d)`; **weight**: :math:`(E,)`; **output**: :math:`(N, d)`.
        """
        return _WeightedSpMM.apply(x, weight, self)

    def dot(self, a: Tensor, b: Tensor) -> Tensor:
        r"""Per edge :math:`j \to i`, :math:`\langle \mathbf{a}_i, \mathbf{b}_j \rangle`.

        Shapes:
            - **a**, **b**: :math:`(N, d)`; **output**: :math:`(E,)`.
        """
        return _EdgeDot.apply(a, b, self)

    def softmax(self, score: Tensor) -> Tensor:
        r"""Softmax of ``score`` over the edges each node receives.

        Shapes:
            - **score**: :math:`(E,)`; **output**: :math:`(E,)`.
        """
        return softmax(score, ptr=self.crow)

    def sampled(self, a: Tensor, b: Tensor) -> Tensor:
        r"""Per edge :math:`\langle \mathbf{a}_i, \mathbf{b}_j \rangle` without gradient."""
        pattern = self.matrix(a.new_zeros(self.col.numel()))
        return torch.sparse.sampled_addmm(pattern, a, b.T, beta=0.0).values()

    def __repr__(self) -> str:
        return f"EdgeGraph({self.num_nodes} nodes, {self.col.numel()} edges)"


class _WeightedSpMM(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, graph: EdgeGraph) -> Tensor:
        ctx.graph = graph
        ctx.save_for_backward(x, weight)
        return torch.sparse.mm(graph.matrix(weight), x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        x, weight = ctx.saved_tensors
        graph: EdgeGraph = ctx.graph
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.sparse.mm(graph.matrix_t(weight), grad)
        if ctx.needs_input_grad[1]:
            grad_w = graph.sampled(grad, x)
        return grad_x, grad_w, None


class _EdgeDot(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, a: Tensor, b: Tensor, graph: EdgeGraph) -> Tensor:
        ctx.graph = graph
        ctx.save_for_backward(a, b)
        return graph.sampled(a, b)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        a, b = ctx.saved_tensors
        graph: EdgeGraph = ctx.graph
        grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_a = torch.sparse.mm(graph.matrix(grad), b)
        if ctx.needs_input_grad[1]:
            grad_b = torch.sparse.mm(graph.matrix_t(grad), a)
        return grad_a, grad_b, None
