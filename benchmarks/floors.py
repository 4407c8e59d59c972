r"""The floor of a model's training step: the products the step cannot avoid, timed alone.

A model's step is its forward pass, the scores of the batch, and the backward pass. Of these,
the *unavoidable* work is a short list of products, fixed by the model's definition and the
data: its sparse products over the graphs it propagates over (forward :math:`AX` and
backward :math:`A^\top G`, once per layer), its dense feature products (forward
:math:`XW`, backward :math:`X^\top G` and, when the input is trained, :math:`GW^\top`), and
the scoring of its batch (a user against its positive and its pool of negatives, forward
and both backward products). Everything else a step does (element-wise work, gathers, the
optimiser, autograd's bookkeeping, Python) is overhead over this floor, so
``step time / floor`` says how close a model's implementation is to the arithmetic it must
do, on this machine, with these threads, in this process.

Each model's floor is declared in one place, a function registered with :func:`floor` under
the model's registry name, that reads the model's own graphs and tensors (so a change of
layers, widths or ``feature_dim`` changes the floor with it)::

    @floor("lightgcn")
    def _lightgcn(model, batch):
        d = model.embedding.embedding_dim
        return [*propagation("ui", model.adj_t, d, model.backbone.num_layers),
                pair_scores("bpr", batch, 1 + model.num_negatives, d)]

The floor is a lower bound of the *products*, not of the step: an element-wise operation a
model cannot skip (a normalisation, a softmax) is not counted, so a ratio of 1.0 is out of
reach and a ratio near 1.5 means little is left to gain. Contrastive terms over a batch's
unique rows are counted at the full batch size (an upper bound by the duplicates, under 3% on
Sports-size data). Work done once per epoch (LATTICE's learned kNN graph) is declared with
``per_epoch=True``.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor


@dataclass(frozen=True)
class Op:
    r"""One unavoidable product of a training step (or of an epoch, ``per_epoch``): ``run()``
    does its forward and backward arithmetic."""

    name: str
    run: Callable[[], object]
    per_epoch: bool = False


FloorFn = Callable[[Any, int], list[Op]]
FLOORS: dict[str, FloorFn] = {}


def floor(name: str) -> Callable[[FloorFn], FloorFn]:
    r"""Registers the floor of model ``name``: a function ``(model, batch_size) -> [Op]``."""
    def register(fn: FloorFn) -> FloorFn:
        if name in FLOORS:
            raise ValueError(f"floor of {name!r} declared twice")
        FLOORS[name] = fn
        return fn
    return register


def floor_ops(name: str, model: Any, batch_size: int) -> list[Op]:
    r"""The unavoidable products of model ``name`` (built, on its device) at ``batch_size``."""
    if name not in FLOORS:
        raise KeyError(f"no floor declared for model {name!r}; declared: "
                       f"{', '.join(sorted(FLOORS))}")
    return FLOORS[name](model, batch_size)


# ---------------------------------------------------------------- the primitive products

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _csr(adj: Tensor, num_nodes: int | None = None) -> Tensor:
    r"""``adj`` as sparse CSR: a CSR matrix as it is, an ``edge_index`` (backbones without
    edge weights) as the unweighted matrix."""
    if adj.layout == torch.sparse_csr:
        return adj
    if adj.is_sparse:
        return adj.to_sparse_csr()
    n = num_nodes if num_nodes is not None else int(adj.max()) + 1
    ones = torch.ones(adj.size(1), device=adj.device)
    return torch.sparse_coo_tensor(adj.flip(0), ones, (n, n)).coalesce().to_sparse_csr()


def propagation(name: str, adj: Tensor, width: int, layers: int = 1) -> list[Op]:
    r"""``layers`` propagations of a ``width``-wide table over the graph ``adj`` (sparse
    :math:`N \times M`): per layer the forward :math:`AX` and the backward :math:`A^\top G`
    (its transpose built once, outside the timing, as the models' ``spmm`` keeps it)."""
    if layers <= 0:
        return []
    adj = _csr(adj)
    adj_t = adj.t().to_sparse_csr()
    x = torch.randn(adj.size(1), width, device=adj.device)
    grad = torch.randn(adj.size(0), width, device=adj.device)

    def run() -> None:
        for _ in range(layers):
            torch.sparse.mm(adj, x)
            torch.sparse.mm(adj_t, grad)
    return [Op(f"{name}: {layers} x sparse {tuple(adj.shape)} nnz {adj._nnz()} x {width}", run)]


def matmul(name: str, rows: int, inner: int, cols: int, grad_left: bool, grad_right: bool = True,
           left: Tensor | None = None, device: torch.device | None = None,
           per_epoch: bool = False) -> Op:
    r"""A dense product :math:`L R` of :math:`(\text{rows} \times \text{inner})` by
    :math:`(\text{inner} \times \text{cols})` with the backward products of the operands
    that are trained. ``left`` (e.g. a model's feature table) is used when given."""
    device = left.device if left is not None else device or torch.device("cpu")
    a = left if left is not None else torch.randn(rows, inner, device=device)
    b = torch.randn(inner, cols, device=device)
    grad = torch.randn(rows, cols, device=device)

    def run() -> None:
        a @ b
        if grad_right:
            a.T @ grad
        if grad_left:
            grad @ b.T
    return Op(f"{name}: dense ({rows} x {inner}) @ ({inner} x {cols})", run, per_epoch)


def linear(name: str, lin: torch.nn.Module, x: Tensor | None = None, rows: int = 0,
           input_grad: bool | None = None, per_epoch: bool = False) -> Op:
    r"""A ``torch.nn.Linear`` (or a bare ``(in, out)`` weight) applied to ``x`` (a model's
    table) or to ``rows`` rows; the input's gradient when ``input_grad`` (default: when
    ``x`` requires grad, or for ``rows``)."""
    weight = lin.weight if isinstance(lin, torch.nn.Linear) else lin
    inner, cols = ((weight.size(1), weight.size(0)) if isinstance(lin, torch.nn.Linear)
                   else tuple(weight.shape))
    if input_grad is None:
        input_grad = bool(x.requires_grad) if x is not None else True
    n = x.size(0) if x is not None else rows
    return matmul(name, n, inner, cols, input_grad,
                  left=x.detach() if x is not None else None, device=weight.device,
                  per_epoch=per_epoch)


def mlp(name: str, seq: torch.nn.Module, x: Tensor) -> list[Op]:
    r"""The ``Linear`` layers of ``seq`` in order on ``x``'s rows; only the first layer's input
    is ``x`` itself (its gradient when ``x`` is trained), the others are activations."""
    layers = [m for m in seq.modules() if isinstance(m, torch.nn.Linear)]
    return [linear(f"{name}[{k}]", lin, x if k == 0 else None, rows=x.size(0))
            for k, lin in enumerate(layers)]


def pair_scores(name: str, batch: int, columns: int, width: int,
                device: torch.device | None = None, grad_columns: int | None = None) -> Op:
    r"""Scores of ``batch`` users against ``columns`` items each (the positive and the
    negatives or pool), forward, and their two backward products over the first
    ``grad_columns`` only when fewer carry gradient (a pool whose hard negatives are picked
    without gradient: only the picked columns reach the loss). Each is an element-wise
    product and a sum: on CPU a batched matrix product (``bmm``) of these thin shapes is
    4-8 times slower, which made the floor of every model that scores a batch too high."""
    device = device or torch.device("cpu")
    grad_columns = columns if grad_columns is None else grad_columns
    user = torch.randn(batch, 1, width, device=device)
    items = torch.randn(batch, columns, width, device=device)
    grad = torch.randn(batch, grad_columns, 1, device=device)
    trained = items[:, :grad_columns]

    def run() -> None:
        (items * user).sum(-1)
        (grad * trained).sum(1)
        grad * user
    backward = "" if grad_columns == columns else f", backward over {grad_columns}"
    return Op(f"{name}: scores {batch} x {columns} x {width}{backward}", run)


def edge_products(name: str, adj: Tensor, width: int, repeat: int = 1) -> Op:
    r"""Per-edge inner products :math:`\langle x_i, x_j \rangle` over the edges of ``adj``
    (attention logits), forward (a sampled product) and backward (two sparse products)."""
    adj = _csr(adj)
    x = torch.randn(adj.size(0), width, device=adj.device)
    adj_t = adj.t().to_sparse_csr()

    def run() -> None:
        for _ in range(repeat):
            torch.sparse.sampled_addmm(adj, x, x.T, beta=0.0)
            torch.sparse.mm(adj, x)
            torch.sparse.mm(adj_t, x)
    return Op(f"{name}: {repeat} x edge products nnz {adj._nnz()} x {width}", run)


# ---------------------------------------------------------------- timing

def time_op(op: Op, device: torch.device, min_seconds: float = 0.2, max_runs: int = 7,
            min_runs: int = 3, warmup: bool = True) -> tuple[float, float]:
    r"""Median wall and median process CPU seconds of ``op.run()`` after one warm-up run (when
    ``warmup``): at least ``min_runs`` runs, more (up to ``max_runs``) while they total under
    ``min_seconds``. The CPU time (all threads of this process) is the number that survives
    other jobs on the machine; it means little on a GPU, where the work is the device's."""
    if warmup:
        op.run()
        _sync(device)
    wall: list[float] = []
    cpu: list[float] = []
    while len(wall) < min_runs or (len(wall) < max_runs and sum(wall) < min_seconds):
        start, cpu_start = time.perf_counter(), time.process_time()
        op.run()
        _sync(device)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - cpu_start)
    return statistics.median(wall), statistics.median(cpu)


def epoch_floor(step_seconds: list[float], epoch_seconds: list[float], steps: int,
                epochs: float = 1.0) -> float:
    r"""Seconds of an epoch's floor: ``steps`` times the per-step products plus the per-epoch
    ones ``epochs`` times (more than once when an epoch is timed as a few steps scaled up,
    ``--steps``, which repeats the once-per-epoch work with the scale).

    >>> epoch_floor([0.1, 0.2], [1.0], 10)
    4.0
    """
    return steps * sum(step_seconds) + epochs * sum(epoch_seconds)


def floor_ratio(measured: float, floor_seconds: float) -> float:
    r"""How many floors the measured time is (``inf`` for an empty floor).

    >>> floor_ratio(3.0, 2.0)
    1.5
    """
    return measured / floor_seconds if floor_seconds > 0 else float("inf")


def measure_floor(ops: list[Op], device: torch.device, steps: int, epochs: float = 1.0
                  ) -> dict[str, Any]:
    r"""Times every op of a floor; returns the per-epoch floor in wall and in CPU seconds
    (``steps`` steps, per-epoch ops ``epochs`` times, :func:`epoch_floor`), the per-step
    floor and each op's seconds."""
    timed = [(op, *time_op(op, device)) for op in ops]
    out: dict[str, Any] = {}
    for key, column in (("floor", 1), ("floor_cpu", 2)):
        step = [t[column] for t in timed if not t[0].per_epoch]
        epoch = [t[column] for t in timed if t[0].per_epoch]
        out[f"{key}_epoch_s"] = epoch_floor(step, epoch, steps, epochs)
        out[f"{key}_step_s"] = sum(step)
    out["floor_ops"] = [{"op": op.name, "per_epoch": op.per_epoch, "seconds": wall,
                         "cpu_seconds": cpu} for op, wall, cpu in timed]
    return out


def eval_floor(user: Tensor, item: Tensor, num_users: int, chunk: int, k: int) -> Op:
    r"""The floor of a full-ranking evaluation: for each chunk of ``chunk`` of the
    ``num_users`` evaluated users, the dense scores against every item and their top
    ``k`` (the evaluator takes one more, for its tie check)."""
    users = torch.arange(num_users, device=user.device) % user.size(0)

    def run() -> None:
        for start in range(0, num_users, chunk):
            scores = user[users[start:start + chunk]] @ item.T
            scores.topk(min(k, item.size(0)), dim=1)
    return Op(f"eval: {num_users} x {item.size(0)} x {item.size(1)} scores + top-{k}", run)


# ---------------------------------------------------------------- the floors of the models

def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _feat(model: Any, m: str) -> Tensor:
    return getattr(model, f"feat_{m}")


def bipartite_propagation(name: str, to_users: Tensor, to_items: Tensor, wide: int,
                          narrow: int, layers: int) -> list[Op]:
    r"""``layers`` propagations over a user-item graph stored as its two blocks
    (:func:`~brmrs_pyg.nn.sparse.bipartite_blocks`, :math:`U \times I` and
    :math:`I \times U`) of a table whose user side is ``narrow`` wide and whose item side is
    ``wide``: per layer one product of each block, one ``wide`` and one ``narrow`` (which
    block gets which alternates with the layer, at the same cost: the blocks are each other's
    transpose), each forward and backward."""
    if layers <= 0:
        return []
    blocks = [(b, b.t().to_sparse_csr()) for b in (_csr(to_users), _csr(to_items))]
    tables = [(torch.randn(b.size(1), w, device=b.device), torch.randn(b.size(0), w,
                                                                      device=b.device))
              for (b, _), w in zip(blocks, (wide, narrow))]

    def run() -> None:
        for _ in range(layers):
            for (block, block_t), (x, grad) in zip(blocks, tables):
                torch.sparse.mm(block, x)
                torch.sparse.mm(block_t, grad)
    return [Op(f"{name}: {layers} x blocks {tuple(to_users.shape)} nnz {to_users._nnz()} "
               f"x ({wide} + {narrow})", run)]


def channel_ops(channels: Any, width: int, side_by_side: bool = False) -> list[Op]:
    r"""The propagations of a :class:`~brmrs_pyg.recommenders.channels.ModalityChannels`:
    per modality its user-item, item-item and user-user graphs, with their layer counts.

    With ``side_by_side`` (a model that calls
    :meth:`~brmrs_pyg.recommenders.channels.ModalityChannels.side_by_side`) and linear
    backbones, the channels share their user input: the user-user graph propagates it once,
    and the user-item graph, block by block, propagates the users' side once (``width``
    wide) and the items' side of all :math:`M` channels together (:math:`Md` wide)."""
    backbones = [*channels.ui.values(), *channels.ii.values(), *channels.uu.values()]
    together = (side_by_side and all(b.linear_propagation for b in backbones)
                and (not channels.ui or "ui_users" in channels._buffers))
    ops = []
    if together and channels.ui:
        ops += bipartite_propagation("ui (all channels)", channels.ui_users, channels.ui_items,
                                     len(channels.modalities) * width, width,
                                     channels.ui[channels.modalities[0]].num_layers)
    for m in channels.modalities:
        if m in channels.ui and not together:
            ops += propagation(f"ui[{m}]", channels.graph_ui, width, channels.ui[m].num_layers)
        if m in channels.ii:
            ops += propagation(f"ii[{m}]", getattr(channels, f"graph_ii_{m}"), width,
                               channels.ii[m].num_layers)
        if m in channels.uu and not (together and m != channels.modalities[0]):
            ops += propagation(f"uu[{m}]", channels.graph_uu, width, channels.uu[m].num_layers)
    return ops


@floor("bpr")
def _bpr(model: Any, batch: int) -> list[Op]:
    return [pair_scores("bpr", batch, 1 + model.num_negatives, model.user_emb.embedding_dim,
                        _device(model))]


@floor("lightgcn")
def _lightgcn(model: Any, batch: int) -> list[Op]:
    d = model.embedding.embedding_dim
    return [*propagation("ui", model.adj_t, d, model.backbone.num_layers),
            pair_scores("bpr", batch, 1 + model.num_negatives, d, _device(model))]


@floor("vbpr")
def _vbpr(model: Any, batch: int) -> list[Op]:
    ops = [linear(f"proj[{m}]", model.proj[m], _feat(model, m)) for m in model.modalities]
    if model.feature_bias is not None:
        ops += [linear(f"bias[{m}]", model.feature_bias[m], _feat(model, m))
                for m in model.modalities]
    # fused: [gamma; theta] plus the bias coordinate
    width = 2 * model.item_gamma.embedding_dim + (model.item_bias is not None)
    return ops + [pair_scores("bpr", batch, 2, width, _device(model))]


@floor("concat")
def _concat(model: Any, batch: int) -> list[Op]:
    d = model.proj[model.modalities[0]].out_features
    return [*(linear(f"proj[{m}]", model.proj[m], _feat(model, m)) for m in model.modalities),
            *channel_ops(model.channels, d),
            *(pair_scores(f"bpr[{m}]", batch, 2, d, _device(model)) for m in model.modalities)]


@floor("decoupled")
def _decoupled(model: Any, batch: int) -> list[Op]:
    d, dev = model.user_emb.embedding_dim, _device(model)
    ops = []
    for m in model.modalities:
        x = _feat(model, m)
        ops += [linear(f"shared[{m}]", model.shared[m], x),
                linear(f"specific[{m}]", model.specific[m], x)]
        if model.weights.nce or model.weights.orth:  # the parts again, for the batch's items
            ops += [linear(f"parts[{m}]", model.shared[m], x[:batch]),
                    linear(f"parts[{m}]", model.specific[m], x[:batch])]
    ops += channel_ops(model.channels, d)
    if model.weights.nce:
        pairs = len(model.modalities) * (len(model.modalities) - 1) // 2
        ops += [matmul("infonce", batch, d, batch, True, device=dev) for _ in range(pairs)]
    return ops + [pair_scores("bpr", batch, 2, d, dev)]


@floor("brmrs")
def _brmrs(model: Any, batch: int) -> list[Op]:
    d, dev = model.user_emb.embedding_dim, _device(model)
    # the gradient reaches the positive, the uniform negative and each modality's picks
    trained = min(1 + model.num_negatives, 2 + len(model.modalities) * model.weights.hard_k)
    return [*(linear(f"proj[{m}]", model.proj[m], _feat(model, m)) for m in model.modalities),
            *channel_ops(model.channels, d, side_by_side=True),
            *(pair_scores(f"pool[{m}]", batch, 1 + model.num_negatives, d, dev, trained)
              for m in model.modalities),
            pair_scores("fused", batch, 2, d, dev)]


@floor("bm3")
def _bm3(model: Any, batch: int) -> list[Op]:
    d = model.user_emb.embedding_dim
    ops = [*propagation("ui", model.adj_t, d, model.backbone.num_layers),
           linear("predictor[u,i]", model.predictor, rows=2 * batch)]
    for m in model.modalities:
        rows = model.features[m][:batch]  # the batch's positives' features, trained
        ops += [linear(f"proj[{m}]", model.proj[m], rows, input_grad=True),
                linear(f"predictor[{m}]", model.predictor, rows=batch)]
    return ops


@floor("freedom")
def _freedom(model: Any, batch: int) -> list[Op]:
    d, dev = model.user_emb.embedding_dim, _device(model)
    adj = model.adj_pruned if model.adj_pruned is not None else model.adj_full
    ops = [*propagation("ui (pruned)", adj, d, model.ui_gnn.num_layers),
           *propagation("ii (frozen)", model.adj_item, d, model.ii_gnn.num_layers),
           pair_scores("bpr", batch, 2, d, dev)]
    for m in model.modalities:
        ops.append(linear(f"proj[{m}]", model.proj[m], model.features[m]))
        if model.lambda_mm:
            ops.append(pair_scores(f"bpr[{m}]", batch, 2, d, dev))
    return ops


@floor("lattice")
def _lattice(model: Any, batch: int) -> list[Op]:
    d, dev, n = model.user_emb.embedding_dim, _device(model), model.num_items
    ops = [*propagation("ui", model.adj_t, d, model.ui_gnn.num_layers)]
    graphs = model.epoch_graphs or {}
    for name, (adj, _) in graphs.items():
        ops += propagation(f"ii[{name}]", adj, d, model.ii_gnn.num_layers)
    for m in model.modalities:  # the learned kNN graph, rebuilt once per epoch
        ops += [linear(f"proj[{m}] (per epoch)", model.proj[m], model.features[m],
                       per_epoch=True),
                matmul(f"knn[{m}] (per epoch)", n, d, n, False, False, device=dev,
                       per_epoch=True)]
    return ops + [pair_scores("bpr", batch, 2, d, dev)]


@floor("mmgcn")
def _mmgcn(model: Any, batch: int) -> list[Op]:
    d, dev = model.id_emb.size(1), _device(model)
    ops = []
    for m in model.modalities:
        ops.append(linear(f"proj[{m}]", model.inputs.proj[m], _feat(model.inputs, m)))
        for k, layer in enumerate(model.gcns[m]):
            width, rows = layer.conv.in_features, model.id_emb.size(0)
            ops += [linear(f"conv[{m}][{k}]", layer.conv, rows=rows),
                    *propagation(f"aggregate[{m}][{k}]", model.adj_mean, width),
                    linear(f"self[{m}][{k}]", layer.self_proj, rows=rows),
                    linear(f"combine[{m}][{k}]", layer.combine, rows=rows)]
    return ops + [pair_scores("bpr", batch, 2, d, dev)]


@floor("grcn")
def _grcn(model: Any, batch: int) -> list[Op]:
    p, dev = model.params, _device(model)
    to_users = model.to_users.matrix(torch.ones_like(model.to_users.col, dtype=torch.float))
    graph = model.graph.matrix(torch.ones_like(model.graph.col, dtype=torch.float))
    ops = []
    for m in model.modalities:
        ops += [linear(f"proj[{m}]", model.inputs.proj[m], _feat(model.inputs, m)),
                edge_products(f"routing[{m}]", to_users, p.latent_dim, p.num_routing),
                *propagation(f"routing[{m}]", to_users, p.latent_dim, p.num_routing),
                edge_products(f"attention[{m}]", graph, p.latent_dim),
                *propagation(f"refine[{m}]", graph, p.latent_dim)]
    ops += propagation("id", graph, model.id_emb.size(1), p.id_layers)
    width = model.id_emb.size(1) + len(model.modalities) * p.latent_dim
    return ops + [pair_scores("bpr", batch, 2, width, dev)]


def _modality_gcn_ops(gcn: Any) -> list[Op]:
    r"""DualGNN's and DRAGON's per-modality MLPs and their joint user-item propagation."""
    ops = []
    for m in gcn.modalities:
        ops += mlp(f"mlp[{m}]", gcn.mlp[m], _feat(gcn, m))
    return ops + propagation("ui", gcn.ui_adj_t, len(gcn.modalities) * gcn.dim,
                             gcn.gnn.num_layers)


@floor("dualgnn")
def _dualgnn(model: Any, batch: int) -> list[Op]:
    d = model.gcn.dim
    return [*_modality_gcn_ops(model.gcn),
            *propagation("uu", model.user_graph.adj_t, d),
            pair_scores("bpr", batch, 2, d, _device(model))]


@floor("dragon")
def _dragon(model: Any, batch: int) -> list[Op]:
    width = len(model.modalities) * model.dim
    return [*_modality_gcn_ops(model.gcn),
            *propagation("uu", model.user_graph.adj_t, width),
            *propagation("ii (frozen)", model.adj_item, width, model.ii_gnn.num_layers),
            pair_scores("bpr", batch, 2, width, _device(model))]


@floor("mgcn")
def _mgcn(model: Any, batch: int) -> list[Op]:
    d, dev = model.user_emb.embedding_dim, _device(model)
    n_items, n_nodes = model.num_items, model.num_users + model.num_items
    ops = [*propagation("ui", model.adj_t, d, model.ui_gnn.num_layers)]
    for m in model.modalities:
        ops += [linear(f"proj[{m}]", model.proj[m], model.features[m]),
                linear(f"purifier[{m}]", model.purifier[m], rows=n_items),
                *propagation(f"ii[{m}]", getattr(model, f"adj_item_{m}"), d,
                             model.ii_gnn.num_layers),
                *propagation(f"users[{m}]", model.ui_matrix, d),
                linear(f"preference[{m}]", model.fuser.preference[m], rows=n_nodes)]
    views = torch.empty(n_nodes * len(model.modalities), d, device=dev, requires_grad=True)
    ops += mlp("attention", model.fuser.attention, views)
    if model.cl_weight:
        ops += [matmul("infonce[users]", batch, d, batch, True, device=dev),
                matmul("infonce[items]", batch, d, batch, True, device=dev)]
    return ops + [pair_scores("bpr", batch, 2, d, dev)]


@floor("lgmrec")
def _lgmrec(model: Any, batch: int) -> list[Op]:
    d, dev, p = model.user_emb.embedding_dim, _device(model), model.params
    n_users, n_items = model.num_users, model.num_items
    ops = [*propagation("ui", model.adj_t, d, model.ui_gnn.num_layers)]
    for m in model.modalities:
        x = _feat(model, m)
        ops += [linear(f"proj[{m}]", model.proj[m], x),
                linear(f"hyperedges[{m}]", model.hyperedges[m], x),
                *propagation(f"users[{m}] (hyperedges)", model.ui_binary, p.num_hyperedges),
                *propagation(f"users[{m}]", model.ui_mean, d),
                *propagation(f"mm[{m}]", model.adj_t, d, model.mm_gnn.num_layers)]
        for _ in range(p.hyper_layers):  # H_I^T E, then H_I Z and H_U Z
            ops += [matmul(f"hyper[{m}]", p.num_hyperedges, n_items, d, True, device=dev),
                    matmul(f"hyper[{m}]", n_items, p.num_hyperedges, d, True, device=dev),
                    matmul(f"hyper[{m}]", n_users, p.num_hyperedges, d, True, device=dev)]
    if p.cl_weight and len(model.modalities) > 1:
        pairs = len(model.modalities) * (len(model.modalities) - 1) // 2
        for _ in range(pairs):  # the batch's users against all users, items against items
            ops += [matmul("contrast[users]", batch, d, n_users, True, device=dev),
                    matmul("contrast[items]", batch, d, n_items, True, device=dev)]
    return ops + [pair_scores("bpr", batch, 2, d, dev)]
