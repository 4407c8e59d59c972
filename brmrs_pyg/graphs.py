r"""Graph construction: the user-item graph, per-modality item-item kNN graphs, their
symmetric normalisation, and a disk cache keyed by a hash of every input and setting.

Edge direction follows PyG (``flow="source_to_target"``): ``edge_index[0]`` sends,
``edge_index[1]`` receives. In a kNN graph the ``k`` neighbours of item ``i`` send to ``i``.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from brmrs_pyg.data.mmrec import InteractionData
from brmrs_pyg.io import atomic_torch_save
from brmrs_pyg.nn.sparse import to_csr

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


def knn_graph(x: Tensor, k: int, chunk_size: int | None = None,
              include_self: bool = False) -> tuple[Tensor, Tensor]:
    r"""Top-:math:`k` cosine-similarity neighbours of every row of ``x``.

    Computed in chunks of rows, so memory stays :math:`O(N k + \text{chunk} \cdot N)`; the
    dense :math:`N \times N` similarity matrix is never formed.

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
    n = x.size(0)
    k = min(k, n if include_self else n - 1)
    if k <= 0:
        return torch.empty(2, 0, dtype=torch.long), torch.empty(0)
    chunk_size = chunk_size or max(1, 2**26 // max(n, 1))
    xn = torch.nn.functional.normalize(x.float(), dim=1)
    neighbours, sims = [], []
    for start in range(0, n, chunk_size):
        sim = xn[start:start + chunk_size] @ xn.T
        if not include_self:
            rows = torch.arange(sim.size(0), device=sim.device)
            sim[rows, rows + start] = -float("inf")
        val, idx = sim.topk(k, dim=1)
        neighbours.append(idx)
        sims.append(val)
    nbr = torch.cat(neighbours).reshape(-1)
    node = torch.arange(n, device=x.device).repeat_interleave(k)
    return torch.stack([nbr, node]), torch.cat(sims).reshape(-1)


def build_graph(data: InteractionData, knn_k: int) -> HeteroData:
    r"""Builds the training graph of a dataset.

    Node types ``user`` and ``item``; edge types ``(user, interacts, item)`` and its reverse
    from the *training* interactions, with LightGCN-normalised ``edge_weight``
    (:math:`1/\sqrt{d_u d_i}`); and per modality ``m`` an ``(item, knn_m, item)`` graph with
    the cosine similarity in ``edge_attr`` and the symmetrically normalised binary adjacency
    in ``edge_weight``.
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
    for modality, x in data.features.items():
        edge_index, sim = knn_graph(x, knn_k)
        store = graph[knn_edge_type(modality)]
        store.edge_index = edge_index
        store.edge_attr = sim
        store.edge_weight = sym_norm(edge_index, data.num_items)
    return graph


def graph_key(data: InteractionData, knn_k: int) -> str:
    r"""Hex digest over the graph code version, every setting and every input tensor."""
    h = hashlib.sha256()
    h.update(f"v{GRAPH_VERSION}|{data.num_users}|{data.num_items}|k={knn_k}".encode())
    h.update(data.train.contiguous().numpy().tobytes())
    for modality in sorted(data.features):
        x = data.features[modality].contiguous()
        h.update(f"|{modality}|{tuple(x.shape)}|".encode())
        h.update(x.numpy().tobytes())
    return h.hexdigest()


def load_or_build_graph(data: InteractionData, knn_k: int, cache_dir: Path | None) -> HeteroData:
    r"""Returns :func:`build_graph`'s result, from ``cache_dir`` when an entry with the same
    :func:`graph_key` exists there; builds and stores it otherwise. ``None`` disables the
    cache.

    An entry stores a SHA-256 checksum of its tensors and is verified on every load: an entry
    that cannot be read, fails its checksum (flipped or truncated bytes) or does not fit the
    dataset is rebuilt and rewritten with a warning, never used.
    """
    if cache_dir is None:
        return build_graph(data, knn_k)
    path = Path(cache_dir) / "graphs" / f"{data.name}-{graph_key(data, knn_k)[:24]}.pt"
    if path.is_file():
        try:
            graph = _read_entry(path, data)
            log.info("graph loaded from cache %s", path)
            return graph
        except Exception as exc:  # any unreadable or corrupted entry is rebuilt, never trusted
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            log.warning("graph cache %s is unreadable or corrupted (%s); rebuilding it",
                        path, reason)
    log.info("building graph (knn_k=%d) for %s", knn_k, data.name)
    graph = build_graph(data, knn_k)
    tensors = _to_tensors(graph)
    atomic_torch_save({"tensors": tensors, "sha256": _checksum(tensors)}, path)
    return graph


def _read_entry(path: Path, data: InteractionData) -> HeteroData:
    r"""Loads and verifies a cache entry; raises ``ValueError`` (or torch's error for a file
    that is not a readable archive) when it cannot be trusted."""
    entry = torch.load(path, weights_only=True)
    if not isinstance(entry, dict) or set(entry) != {"tensors", "sha256"}:
        raise ValueError("not a graph cache entry")
    if _checksum(entry["tensors"]) != entry["sha256"]:
        raise ValueError("checksum mismatch: the file's contents changed after it was written")
    graph = _from_tensors(entry["tensors"])
    if (graph["user"].num_nodes, graph["item"].num_nodes) != (data.num_users, data.num_items):
        raise ValueError("node counts differ from the dataset")
    return graph


def _checksum(tensors: dict[str, Tensor]) -> str:
    r"""SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        value = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        h.update(value.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


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


def bipartite_adj_t(graph: HeteroData) -> Tensor:
    r"""The normalised user-item adjacency over the homogeneous node set (users, then items),
    as a sparse CSR tensor in PyG's ``adj_t`` layout (row = receiver), ready for ``LGConv``.

    Shapes:
        - **output**: :math:`(|\mathcal{U}|+|\mathcal{I}|, |\mathcal{U}|+|\mathcal{I}|)`.
    """
    num_users = graph["user"].num_nodes
    n = num_users + graph["item"].num_nodes
    users, items = graph[UI].edge_index
    edge_index = torch.stack([torch.cat([users, items + num_users]),
                              torch.cat([items + num_users, users])])
    weight = torch.cat([graph[UI].edge_weight, graph[IU].edge_weight])
    return to_adj_t(edge_index, weight, n)


def to_adj_t(edge_index: Tensor, edge_weight: Tensor, num_nodes: int) -> Tensor:
    r"""Sparse CSR matrix :math:`M` with :math:`M_{ij}` = weight of edge :math:`j \to i`, so
    that ``M @ x`` aggregates messages at the receiving nodes (PyG's ``adj_t``)."""
    coo = torch.sparse_coo_tensor(edge_index.flip(0), edge_weight, (num_nodes, num_nodes),
                                  check_invariants=True)
    return to_csr(coo.coalesce())
