r"""Graph construction: the user-item graph, per-modality item-item kNN graphs, their
symmetric normalisation, and a disk cache keyed by a hash of every input and setting.

Edge direction follows PyG (``flow="source_to_target"``): ``edge_index[0]`` sends,
``edge_index[1]`` receives. In a kNN graph the ``k`` neighbours of item ``i`` send to ``i``.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor
from torch_geometric.data import HeteroData
from torch_geometric.utils import softmax as pyg_softmax

from brmrs_pyg.cache import read_entry, write_entry
from brmrs_pyg.config import II_RECIPES
from brmrs_pyg.data.mmrec import InteractionData
from brmrs_pyg.nn.sparse import to_adj_t, to_csr

log = logging.getLogger(__name__)

#: Bump when the construction changes, so that caches from older code are not used.
GRAPH_VERSION = 2
UI = ("user", "interacts", "item")
IU = ("item", "interacted_by", "user")


def knn_edge_type(modality: str) -> tuple[str, str, str]:
    r"""The edge type of modality ``modality``'s item-item kNN graph."""
    return ("item", f"knn_{modality}", "item")


def sym_norm(edge_index: Tensor, num_nodes: int, edge_weight: Tensor | None = None) -> Tensor:
    r"""Symmetric normalisation of LightGCN / GCN (without self-loops).

    .. math::
        \hat{a}_{ji} = \frac{a_{ji}}{\sqrt{d_j}\sqrt{d_i}}, \qquad d_i = \sum_j a_{ji},

    where :math:`a_{ji}` is the weight of edge :math:`j \to i` and :math:`d_i` the weighted
    in-degree. For a symmetric graph this is :math:`D^{-1/2} A D^{-1/2}`. Nodes of degree 0
    get no edges, so no division by zero occurs.

    Args:
        edge_index (Tensor): Edges, shape :math:`(2, E)`.
        num_nodes (int): Number of nodes.
        edge_weight (Tensor, optional): Weights :math:`a_{ji}`, shape :math:`(E,)`
            (default: ones).

    Shapes:
        - **output**: :math:`(E,)`.

    >>> ei = torch.tensor([[0, 1], [1, 0]])
    >>> sym_norm(ei, 2).tolist()
    [1.0, 1.0]
    """
    if edge_weight is None:
        edge_weight = torch.ones(edge_index.size(1), device=edge_index.device)
    deg = torch.zeros(num_nodes, dtype=edge_weight.dtype, device=edge_weight.device)
    deg.scatter_add_(0, edge_index[1], edge_weight)
    inv_sqrt = deg.pow(-0.5).masked_fill_(deg == 0, 0.0)
    return inv_sqrt[edge_index[0]] * edge_weight * inv_sqrt[edge_index[1]]


def chunked_topk(num_rows: int, k: int, similarity: Callable[[int, int], Tensor],
                 chunk_size: int | None = None, include_self: bool = False
                 ) -> tuple[Tensor, Tensor]:
    r"""The :math:`k` highest-scoring columns of every row of an implicit
    :math:`N \times N` similarity matrix, computed a block of rows at a time.

    The shared engine of every kNN graph here: memory stays
    :math:`O(N k + \text{chunk} \cdot N)`, the dense matrix is never formed.

    Args:
        num_rows (int): :math:`N`.
        k (int): Neighbours per row (capped at the number of candidates).
        similarity (callable): ``similarity(start, stop)`` returns rows ``start:stop`` of the
            matrix, shape :math:`(\text{stop} - \text{start}, N)`; it may be modified in place.
        chunk_size (int, optional): Rows per block (default: about 64M entries a block).
        include_self (bool, optional): Whether a row may select its own column.
            (default: :obj:`False`)

    Returns:
        ``(edge_index, score)``: ``edge_index[0]`` the neighbour (column), ``edge_index[1]``
        the row, shapes :math:`(2, N k)` and :math:`(N k,)`.
    """
    n = num_rows
    k = min(k, n if include_self else n - 1)
    if k <= 0:
        return torch.empty(2, 0, dtype=torch.long), torch.empty(0)
    chunk_size = chunk_size or max(1, 2**26 // max(n, 1))
    neighbours, scores = [], []
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        sim = similarity(start, stop)
        if not include_self:
            rows = torch.arange(stop - start, device=sim.device)
            sim[rows, rows + start] = -float("inf")
        val, idx = sim.topk(k, dim=1)
        neighbours.append(idx)
        scores.append(val)
    nbr = torch.cat(neighbours).reshape(-1)
    node = torch.arange(n, device=nbr.device).repeat_interleave(k)
    return torch.stack([nbr, node]), torch.cat(scores).reshape(-1)


def knn_graph(x: Tensor, k: int, chunk_size: int | None = None,
              include_self: bool = False) -> tuple[Tensor, Tensor]:
    r"""Top-:math:`k` cosine-similarity neighbours of every row of ``x``
    (:func:`chunked_topk` over :math:`\cos(\mathbf{x}_i, \mathbf{x}_j)`).

    Args:
        x (Tensor): Features, shape :math:`(N, d)`. Zero rows have similarity 0 to all.
        k (int): Neighbours per node (capped at the number of candidates).
        chunk_size (int, optional): Rows per chunk (default: about 64M similarities a chunk).
        include_self (bool, optional): Whether a node may be its own neighbour.
            (default: :obj:`False`)

    Returns:
        ``(edge_index, similarity)``: ``edge_index[0]`` the neighbour, ``edge_index[1]`` the
        node, shapes :math:`(2, N k)` and :math:`(N k,)`.
    """
    xn = torch.nn.functional.normalize(x.float(), dim=1)
    return chunked_topk(x.size(0), k, lambda a, b: xn[a:b] @ xn.T, chunk_size, include_self)


def _incidence(rows: Tensor, cols: Tensor, shape: tuple[int, int]) -> Tensor:
    r"""Binary sparse matrix with ones at ``(rows, cols)``, duplicates counted once."""
    coo = torch.sparse_coo_tensor(torch.stack([rows, cols]), torch.ones(rows.numel()), shape,
                                  check_invariants=True).coalesce()
    return torch.sparse_coo_tensor(coo.indices(), torch.ones(coo.indices().size(1)), shape,
                                   check_invariants=True).coalesce()


def _overlap_rows(incidence: Tensor, incidence_csr: Tensor, start: int, stop: int) -> Tensor:
    r"""Rows ``start:stop`` of :math:`M M^\top` for a binary sparse :math:`M` (given in COO
    and in CSR): how many columns each of those rows shares with every row, shape
    :math:`(\text{stop}-\text{start}, N)`, without forming the whole product."""
    block = incidence.index_select(0, torch.arange(start, stop)).to_dense()
    # the CSR product: about ten times faster on CPU than COO's (Amazon Sports' user graph:
    # some 25 s instead of 200 s on one thread), the same integer counts
    return (incidence_csr @ block.t()).t().contiguous()


def co_interaction_graph(train: Tensor, num_users: int, num_items: int, k: int,
                         chunk_size: int | None = None) -> tuple[Tensor, Tensor]:
    r"""User-user graph: the :math:`k` users sharing most training items with each user,

    .. math::
        c_{uv} = |\mathcal{O}_u \cap \mathcal{O}_v|,

    ties broken by ``topk``; pairs with :math:`c_{uv} = 0` are dropped.

    Returns:
        ``(edge_index, count)`` as :func:`chunked_topk`, neighbours sending to the user.
    """
    users, items = train
    ui = _incidence(users, items, (num_users, num_items))

    ui_csr = to_csr(ui)
    edge_index, count = chunked_topk(num_users, k,
                                     lambda a, b: _overlap_rows(ui, ui_csr, a, b), chunk_size)
    keep = count > 0
    return edge_index[:, keep], count[keep]


def neighbour_softmax(edge_index: Tensor, score: Tensor, num_nodes: int) -> Tensor:
    r"""Softmax of edge scores over each node's incoming edges, the user-graph weights of
    DualGNN and DRAGON (softmax of the co-interaction counts over a user's neighbours),

    .. math::
        w_{vu} = \frac{\exp(c_{vu})}{\sum_{v' \in \mathcal{N}(u)} \exp(c_{v'u})}.

    A node's weights sum to 1 when it has neighbours; a node without any has none (its
    aggregate is 0).

    Args:
        edge_index (Tensor): Edges, shape :math:`(2, E)`, ``edge_index[1]`` the receiver.
        score (Tensor): Edge scores :math:`c_{vu}`, shape :math:`(E,)`.
        num_nodes (int): Number of nodes.

    Shapes:
        - **output**: :math:`(E,)`.

    >>> ei = torch.tensor([[1, 2, 0], [0, 0, 1]])
    >>> [round(w, 4) for w in neighbour_softmax(ei, torch.tensor([2.0, 1.0, 5.0]), 3).tolist()]
    [0.7311, 0.2689, 1.0]
    """
    return pyg_softmax(score.float(), edge_index[1], num_nodes=num_nodes)


def mixed_item_graph(train: Tensor, num_users: int, features: dict[str, Tensor], k: int,
                     mix: float, chunk_size: int | None = None) -> tuple[Tensor, Tensor]:
    r"""One item-item graph mixing co-interaction overlap and modality similarity (the later
    draft of BR-MRS, DESIGN section 1),

    .. math::
        e_{ij} = a \, \frac{|\mathcal{N}_i \cap \mathcal{N}_j|}
        {|\mathcal{N}_i \cup \mathcal{N}_j|} + (1 - a) \sum_m b_m
        \cos(\mathbf{x}^m_i, \mathbf{x}^m_j), \qquad b_m = 1/M,

    with :math:`\mathcal{N}_i` the training users of item :math:`i` (overlap as Jaccard, so
    that both parts lie in :math:`[0, 1]`-comparable ranges), top-:math:`k` sparsified per item.

    Returns:
        ``(edge_index, weight)`` as :func:`chunked_topk`.
    """
    if not 0.0 <= mix <= 1.0:
        raise ValueError(f"mix must lie in [0, 1], got {mix}")
    users, items = train
    num_items = next(iter(features.values())).size(0)
    iu = _incidence(items, users, (num_items, num_users))
    iu_csr = to_csr(iu)
    degree = torch.sparse.sum(iu, dim=1).to_dense()
    normed = [torch.nn.functional.normalize(x.float(), dim=1) for x in features.values()]

    def score(start: int, stop: int) -> Tensor:
        common = _overlap_rows(iu, iu_csr, start, stop)  # (b, I)
        union = degree[start:stop, None] + degree[None, :] - common
        jaccard = torch.where(union > 0, common / union.clamp_min(1), torch.zeros(()))
        cos = sum(x[start:stop] @ x.T for x in normed) / len(normed)
        return mix * jaccard + (1 - mix) * torch.as_tensor(cos)

    return chunked_topk(num_items, k, score, chunk_size)


@dataclass(frozen=True)
class GraphSpec:
    r"""How the training graph is built (the graph keys of the run config).

    Args:
        knn_k (int): Neighbours per item in each item-item graph.
        ii_recipe (str): ``"cosine"``: one kNN graph per modality from that modality's cosine
            similarity (binary, symmetrically normalised); ``"mixed"``: one graph of
            :func:`mixed_item_graph` weights, used as every modality's item-item graph.
        ii_mix (float): :math:`a` of the mixed recipe (weight of the co-interaction overlap).
        uu_k (int): Neighbours per user in the user-user co-interaction graph (0: none).
    """

    knn_k: int = 10
    ii_recipe: str = "cosine"
    ii_mix: float = 0.5
    uu_k: int = 0

    def __post_init__(self) -> None:
        if self.ii_recipe not in II_RECIPES:
            raise ValueError(f"ii_recipe must be one of {II_RECIPES}, got {self.ii_recipe!r}")
        if not 0.0 <= self.ii_mix <= 1.0:
            raise ValueError(f"ii_mix must lie in [0, 1], got {self.ii_mix}")
        if self.knn_k < 1 or self.uu_k < 0:
            raise ValueError(f"knn_k must be >= 1 and uu_k >= 0, got {self.knn_k}, {self.uu_k}")


UU = ("user", "co_interacts", "user")


def build_graph(data: InteractionData, spec: GraphSpec) -> HeteroData:
    r"""Builds the training graph of a dataset.

    Node types ``user`` and ``item``; edge types ``(user, interacts, item)`` and its reverse
    from the *training* interactions, with LightGCN-normalised ``edge_weight``
    (:math:`1/\sqrt{d_u d_i}`); per modality ``m`` an ``(item, knn_m, item)`` graph
    (``spec.ii_recipe``) with its raw similarity in ``edge_attr`` and its symmetrically
    normalised adjacency in ``edge_weight`` (binary for ``cosine``, weighted for ``mixed``);
    with ``spec.uu_k > 0`` a ``(user, co_interacts, user)`` graph (co-interaction counts in
    ``edge_attr``, normalised binary adjacency in ``edge_weight``).
    """
    graph = HeteroData()
    graph["user"].num_nodes = data.num_users
    graph["item"].num_nodes = data.num_items
    users, items = data.train
    homo = torch.stack([torch.cat([users, items + data.num_users]),
                        torch.cat([items + data.num_users, users])])
    weight = sym_norm(homo, data.num_users + data.num_items)[: users.numel()]
    graph[UI].edge_index = data.train.clone()
    graph[UI].edge_weight = weight
    graph[IU].edge_index = data.train.flip(0)
    graph[IU].edge_weight = weight.clone()
    if spec.ii_recipe == "mixed" and data.features:
        mixed = mixed_item_graph(data.train, data.num_users, data.features, spec.knn_k,
                                 spec.ii_mix)
    for modality, x in data.features.items():
        if spec.ii_recipe == "mixed":
            edge_index, sim = mixed[0].clone(), mixed[1].clone()
            norm = sym_norm(edge_index, data.num_items, sim.clamp_min(0))
        else:
            edge_index, sim = knn_graph(x, spec.knn_k)
            norm = sym_norm(edge_index, data.num_items)
        store = graph[knn_edge_type(modality)]
        store.edge_index, store.edge_attr, store.edge_weight = edge_index, sim, norm
    if spec.uu_k > 0:
        edge_index, count = co_interaction_graph(data.train, data.num_users, data.num_items,
                                                 spec.uu_k)
        graph[UU].edge_index, graph[UU].edge_attr = edge_index, count
        graph[UU].edge_weight = sym_norm(edge_index, data.num_users)
    return graph


def graph_key(data: InteractionData, spec: GraphSpec) -> str:
    r"""Hex digest over the graph code version, every setting and every input tensor."""
    h = hashlib.sha256()
    h.update(f"v{GRAPH_VERSION}|{data.num_users}|{data.num_items}|{spec}".encode())
    h.update(data.train.contiguous().numpy().tobytes())
    for modality in sorted(data.features):
        x = data.features[modality].contiguous()
        h.update(f"|{modality}|{tuple(x.shape)}|".encode())
        h.update(x.numpy().tobytes())
    return h.hexdigest()


def load_or_build_graph(data: InteractionData, spec: GraphSpec,
                        cache_dir: Path | None) -> HeteroData:
    r"""Returns :func:`build_graph`'s result, from ``cache_dir`` when an entry with the same
    :func:`graph_key` exists there; builds and stores it otherwise. ``None`` disables the
    cache.

    An entry stores a SHA-256 checksum of its tensors and is verified on every load: an entry
    that cannot be read, fails its checksum (flipped or truncated bytes) or does not fit the
    dataset is rebuilt and rewritten with a warning, never used.
    """
    if cache_dir is None:
        return build_graph(data, spec)
    path = Path(cache_dir) / "graphs" / f"{data.name}-{graph_key(data, spec)[:24]}.pt"
    cached = read_entry(path, "graph", lambda tensors: _graph_of(tensors, data))
    if cached is not None:
        log.info("graph loaded from cache %s", path)
        return cached
    log.info("building graph (%s) for %s", spec, data.name)
    graph = build_graph(data, spec)
    write_entry(path, _to_tensors(graph))
    return graph


def _graph_of(tensors: dict[str, Tensor], data: InteractionData) -> HeteroData:
    r"""The graph of a verified cache entry; ``ValueError`` when it does not fit ``data``."""
    graph = _from_tensors(tensors)
    if (graph["user"].num_nodes, graph["item"].num_nodes) != (data.num_users, data.num_items):
        raise ValueError("node counts differ from the dataset")
    return graph


def _to_tensors(graph: HeteroData) -> dict[str, Tensor]:
    out = {f"{t}.num_nodes": torch.tensor(graph[t].num_nodes) for t in graph.node_types}
    for edge_type in graph.edge_types:
        for key, value in graph[edge_type].items():
            out["|".join(edge_type) + "." + key] = value
    return out


def _from_tensors(tensors: dict[str, Tensor]) -> HeteroData:
    graph = HeteroData()
    for name, value in tensors.items():
        owner, key = name.rsplit(".", 1)
        if key == "num_nodes":
            graph[owner].num_nodes = int(value)
        else:
            graph[tuple(owner.split("|"))][key] = value
    return graph


def bipartite_edges(graph: HeteroData) -> tuple[Tensor, Tensor]:
    r"""The user-item graph in both directions over the homogeneous node set (users, then
    items): ``(edge_index, edge_weight)``, shapes :math:`(2, 2E)` and :math:`(2E,)`."""
    num_users = graph["user"].num_nodes
    users, items = graph[UI].edge_index
    edge_index = torch.stack([torch.cat([users, items + num_users]),
                              torch.cat([items + num_users, users])])
    return edge_index, torch.cat([graph[UI].edge_weight, graph[IU].edge_weight])


def bipartite_adj_t(graph: HeteroData) -> Tensor:
    r"""The normalised user-item adjacency over the homogeneous node set (users, then items),
    as a sparse CSR tensor in PyG's ``adj_t`` layout (row = receiver), ready for ``LGConv``.

    Shapes:
        - **output**: :math:`(|\mathcal{U}|+|\mathcal{I}|, |\mathcal{U}|+|\mathcal{I}|)`.
    """
    n = graph["user"].num_nodes + graph["item"].num_nodes
    return to_adj_t(*bipartite_edges(graph), n)


def knn_k_of(graph: HeteroData, modality: str) -> int:
    r"""The :math:`k` the training graph's ``cosine`` kNN graph of ``modality`` was built with
    (every item receives exactly :math:`k` edges), for models that build their own kNN graphs
    from the features with the run's ``knn_k``.

    Raises:
        ValueError: The graph is not a ``cosine`` kNN graph (in-degrees differ).
    """
    store = graph[knn_edge_type(modality)]
    degree = torch.bincount(store.edge_index[1], minlength=graph["item"].num_nodes)
    if degree.numel() == 0 or bool((degree != degree[0]).any()):
        raise ValueError(f"the item-item graph of {modality!r} is not a top-k kNN graph (items "
                         "receive different numbers of edges); use ii_recipe=cosine")
    return int(degree[0])


#: Floats gathered at once per end when :func:`knn_adjacency` scores its edges.
EDGE_BLOCK_FLOATS = 2**24


def knn_adjacency(x: Tensor, k: int, weighted: bool) -> tuple[Tensor, Tensor]:
    r"""Symmetrically normalised top-:math:`k` cosine graph of the rows of ``x`` with each node
    among its own candidates (as LATTICE's and FREEDOM's reference code select them: the
    top-:math:`k` of a full similarity row, whose largest entry is the node itself),

    .. math::
        a_{ji} = \begin{cases} \max(\cos(\mathbf{x}_j, \mathbf{x}_i), 0) & \text{weighted}
        \\ 1 & \text{binary} \end{cases} \quad \text{for } j \in
        \operatorname{top-}k_j \cos(\mathbf{x}_i, \mathbf{x}_j), \qquad
        \hat{a}_{ji} = \frac{a_{ji}}{\sqrt{d_j d_i}}

    (:func:`knn_graph` with ``include_self=True``, then :func:`sym_norm`). Negative
    similarities, rare among a top-:math:`k`, are clamped to 0 so that degrees stay positive.
    Values carry gradient with respect to ``x`` when ``weighted``; the selection does not.

    Returns:
        ``(edge_index, edge_weight)``, shapes :math:`(2, N k)` and :math:`(N k,)`, neighbours
        sending to the node.

    >>> x = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]])
    >>> [round(w, 4) for w in knn_adjacency(x, 2, weighted=False)[1].tolist()]
    [0.5, 0.5, 0.5, 0.5, 0.5, 0.5]
    """
    edge_index, _ = knn_graph(x.detach(), k, include_self=True)
    if not weighted:
        return edge_index, sym_norm(edge_index, x.size(0))
    xn = torch.nn.functional.normalize(x, dim=1)
    # per-edge cosines a block of edges at a time: gathering all N k rows of both ends at once
    # would hold 2 N k D floats (6 GB for Amazon Sports' 4096-wide image features)
    block = max(1, EDGE_BLOCK_FLOATS // max(x.size(1), 1))
    sim = torch.cat([(xn[src] * xn[dst]).sum(-1)
                     for src, dst in zip(edge_index[0].split(block), edge_index[1].split(block))])
    return edge_index, sym_norm(edge_index, x.size(0), sim.clamp_min(0))


def user_item_adj_t(pairs: Tensor, num_users: int, num_items: int) -> Tensor:
    r"""The LightGCN-normalised adjacency of the user-item pairs ``pairs`` over the
    homogeneous node set (users, then items), :math:`\hat{a}_{ui} = 1/\sqrt{d_u d_i}` with the
    degrees counted in ``pairs``; sparse CSR in ``adj_t`` layout, as
    :func:`bipartite_adj_t` (which is this function on the training pairs).

    Shapes:
        - **pairs**: :math:`(2, E)`, rows user and item ids; **output**: :math:`(N, N)`,
          :math:`N = |\mathcal{U}| + |\mathcal{I}|`.
    """
    users, items = pairs
    n = num_users + num_items
    homo = torch.stack([torch.cat([users, items + num_users]),
                        torch.cat([items + num_users, users])])
    return to_adj_t(homo, sym_norm(homo, n), n)


def interaction_matrix(pairs: Tensor, num_users: int, num_items: int, norm: str = "sym"
                       ) -> Tensor:
    r"""The user-item interaction matrix :math:`\mathbf{R}` of ``pairs`` as a rectangular
    sparse CSR matrix (users as rows), for aggregating item representations at users
    (``spmm(R, x_items)``), with the degrees counted in ``pairs``:

    .. math::
        r_{ui} = \begin{cases} 1/\sqrt{d_u d_i} & \text{sym (LightGCN's weights)} \\
        1/d_u & \text{mean (average over the user's items)} \\ 1 & \text{none}
        \end{cases} \quad \text{for each pair } (u, i).

    Args:
        pairs (Tensor): Distinct training pairs, rows user and item ids.
        num_users (int): Number of users (rows).
        num_items (int): Number of items (columns).
        norm (str, optional): ``"sym"``, ``"mean"`` or ``"none"``. (default: ``"sym"``)

    Shapes:
        - **pairs**: :math:`(2, E)`; **output**: :math:`(|\mathcal{U}|, |\mathcal{I}|)`.

    >>> interaction_matrix(torch.tensor([[0, 0], [0, 1]]), 1, 2, "mean").to_dense().tolist()
    [[0.5, 0.5]]
    """
    users, items = pairs
    deg_u = torch.bincount(users, minlength=num_users).float()
    deg_i = torch.bincount(items, minlength=num_items).float()
    if norm == "sym":
        weight = (deg_u[users] * deg_i[items]).rsqrt()
    elif norm == "mean":
        weight = deg_u[users].reciprocal()
    elif norm == "none":
        weight = torch.ones(users.numel())
    else:
        raise ValueError(f"unknown norm {norm!r}; choose one of 'sym', 'mean', 'none'")
    coo = torch.sparse_coo_tensor(pairs, weight, (num_users, num_items), check_invariants=True)
    return to_csr(coo.coalesce())


def degree_sensitive_sample(edge_weight: Tensor, keep_ratio: float) -> Tensor:
    r"""Degree-sensitive edge pruning of FREEDOM (Zhou & Shen, MM 2023): draws
    :math:`\lfloor |E| \rho \rfloor` distinct edges without replacement, each draw picking an
    edge not yet drawn with probability proportional to its weight; with the LightGCN weight
    :math:`1/\sqrt{d_u d_i}` edges between high-degree nodes (likely noise) are dropped more
    often. Uses torch's global generator.

    Args:
        edge_weight (Tensor): Non-negative sampling weights, shape :math:`(E,)`.
        keep_ratio (float): :math:`\rho \in [0, 1]`, the fraction of edges kept.

    Returns:
        Indices of the kept edges, shape :math:`(\lfloor |E| \rho \rfloor,)`, distinct.
    """
    if not 0.0 <= keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio must lie in [0, 1], got {keep_ratio}")
    keep = int(edge_weight.numel() * keep_ratio)
    if keep == 0:
        return torch.empty(0, dtype=torch.long, device=edge_weight.device)
    return torch.multinomial(edge_weight, keep, replacement=False)
