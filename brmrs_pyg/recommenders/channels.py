r"""Per-modality graph channels, shared by BR-MRS and the multi-branch baselines: each
modality propagates its own input embeddings over the user-item graph and, optionally, its
item-item kNN graph and the user-user graph, with backbones of its own and every graph
stored once."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from brmrs_pyg.config import ConfigError
from brmrs_pyg.graphs import UU, bipartite_edges, knn_edge_type
from brmrs_pyg.nn.backbones import Backbone
from brmrs_pyg.nn.sparse import bipartite_blocks, spmm


@dataclass
class ChannelGraphs:
    r"""The graphs a modality channel propagates over, each ``(edge_index, edge_weight)`` or
    ``None`` when switched off: the user-item graph over users-then-items node ids, each
    modality's item-item graph, and the user-user graph."""

    ui: tuple[Tensor, Tensor] | None
    ii: dict[str, tuple[Tensor, Tensor] | None]
    uu: tuple[Tensor, Tensor] | None

    @classmethod
    def from_graph(cls, graph: HeteroData, modalities: list[str], ui: bool,
                   ii_graphs: str) -> "ChannelGraphs":
        r"""Selects the graphs of ``graph`` that the ablation switches keep."""
        if ii_graphs == "all":
            keep = set(modalities)
        elif ii_graphs == "none":
            keep = set()
        else:
            keep = {m.strip() for m in ii_graphs.split(",") if m.strip()}
            if keep - set(modalities):
                raise ConfigError(f"ii_graphs={ii_graphs!r} names modalities "
                                  f"{sorted(keep - set(modalities))} not in the run's "
                                  f"modalities {modalities}")
        ii = {}
        for m in modalities:
            store = graph[knn_edge_type(m)]
            ii[m] = (store.edge_index, store.edge_weight) if m in keep else None
        uu = (graph[UU].edge_index, graph[UU].edge_weight) if UU in graph.edge_types else None
        return cls(bipartite_edges(graph) if ui else None, ii, uu)


class ModalityChannels(torch.nn.Module):
    r"""One channel per modality :math:`m`, mapping input embeddings
    :math:`(\mathbf{P}^{(m,0)}, \mathbf{Q}^{(m,0)})` to

    .. math::
        [\mathbf{P}^{(m)}; \mathbf{Q}^{(m)}] = \mathrm{GNN}^{(m)}_{ui}
        ([\mathbf{P}^{(m,0)}; \mathbf{Q}^{(m,0)}]) + [\mathrm{GNN}^{(m)}_{uu}
        (\mathbf{P}^{(m,0)}); \mathrm{GNN}^{(m)}_{ii}(\mathbf{Q}^{(m,0)})].

    A graph that is ``None`` in ``graphs`` (or has 0 layers) drops its term; without the
    user-item graph the first term is the input itself. The item-item and user-user graphs
    share the second layer count. Every modality has its own backbone per graph
    (parameter-free for LightGCN); each graph's input is built once and shared.

    Args:
        modalities (list of str): Channel names, in order.
        num_users (int): Number of users.
        num_items (int): Number of items.
        graphs (ChannelGraphs): The user-item graph over users-then-items node ids (``ui``),
            each modality's item-item graph (``ii``) and the user-user graph (``uu``).
        backbone (type): The :class:`~brmrs_pyg.nn.backbones.Backbone` class.
        channels (int): Width :math:`d` of the embeddings.
        layers (tuple of int): Layers over the user-item graph, and over the item-item and
            user-user graphs.

    Shapes:
        - **user0**: :math:`(|\mathcal{U}|, d)`; **item0**: :math:`(|\mathcal{I}|, d)`;
          **output**: the same two shapes.
    """

    #: The blocks of the user-item graph (:func:`~brmrs_pyg.nn.sparse.bipartite_blocks`) and
    #: the backbone's layer weights, when the channels propagate over it block by block.
    ui_users: Tensor
    ui_items: Tensor
    ui_alpha: tuple[float, ...]

    def __init__(self, modalities: list[str], num_users: int, num_items: int,
                 graphs: ChannelGraphs, backbone: type[Backbone], channels: int,
                 layers: tuple[int, int]) -> None:
        super().__init__()
        self.modalities = list(modalities)
        self.num_users = num_users
        ui_layers, ii_layers = layers
        ui: dict[str, Backbone] = {}
        if graphs.ui is not None and ui_layers > 0:
            ui = {m: backbone(channels, ui_layers) for m in modalities}
            structure = ui[modalities[0]].graph_input(*graphs.ui, num_users + num_items)
            self._store("ui", structure)
            adj = structure[0]
            blocks = (bipartite_blocks(adj, num_users)
                      if backbone.linear_propagation and adj.layout == torch.sparse_csr else None)
            if blocks is not None:
                self.register_buffer("ui_users", blocks[0], persistent=False)
                self.register_buffer("ui_items", blocks[1], persistent=False)
                self.ui_alpha = ui[modalities[0]].alpha_host
        ii: dict[str, Backbone] = {}
        for m in modalities:
            edges = graphs.ii.get(m)
            if edges is not None and ii_layers > 0:
                ii[m] = backbone(channels, ii_layers)
                self._store(f"ii_{m}", ii[m].graph_input(*edges, num_items))
        uu: dict[str, Backbone] = {}
        if graphs.uu is not None and ii_layers > 0:
            uu = {m: backbone(channels, ii_layers) for m in modalities}
            self._store("uu", uu[modalities[0]].graph_input(*graphs.uu, num_users))
        self.ui = torch.nn.ModuleDict(ui)
        self.ii = torch.nn.ModuleDict(ii)
        self.uu = torch.nn.ModuleDict(uu)

    @classmethod
    def over_graph(cls, graph: HeteroData, modalities: list[str], backbone: type[Backbone],
                   channels: int, layers: tuple[int, int]) -> "ModalityChannels":
        r"""Channels over the training ``graph``'s user-item graph and, when the second
        layer count is positive, every modality's item-item graph (no user-user graph)."""
        graphs = ChannelGraphs.from_graph(graph, modalities, True,
                                          "all" if layers[1] else "none")
        graphs.uu = None
        return cls(modalities, graph["user"].num_nodes, graph["item"].num_nodes, graphs,
                   backbone, channels, layers)

    def _store(self, name: str, graph_input: tuple[Tensor, Tensor | None]) -> None:
        structure, weight = graph_input
        self.register_buffer(f"graph_{name}", structure, persistent=False)
        self.register_buffer(f"weight_{name}", weight, persistent=False)

    def _run(self, module: torch.nn.Module, name: str, x: Tensor) -> Tensor:
        return module(x, getattr(self, f"graph_{name}"), getattr(self, f"weight_{name}"))

    def reset_parameters(self) -> None:
        for module in [*self.ui.values(), *self.uu.values(), *self.ii.values()]:
            module.reset_parameters()  # type: ignore[operator]

    def forward(self, modality: str, user0: Tensor, item0: Tensor) -> tuple[Tensor, Tensor]:
        users, items = user0, item0
        if modality in self.ui:
            h = self._run(self.ui[modality], "ui", torch.cat([user0, item0]))
            # split, not slicing: its backward is one concatenation instead of two
            # zero-filled full-size gradients
            users, items = h.split([self.num_users, item0.size(0)])
        if modality in self.ii:
            items = items + self._run(self.ii[modality], f"ii_{modality}", item0)
        if modality in self.uu:
            users = users + self._run(self.uu[modality], "uu", user0)
        return users, items

    def side_by_side(self, user0: Tensor, items0: list[Tensor]) -> tuple[Tensor, Tensor]:
        r"""Every channel, with the shared user input ``user0`` and channel :math:`m`'s item
        input ``items0[m]``: the outputs of :meth:`forward` side by side, channel :math:`m`
        in columns :math:`[md, (m+1)d)`.

        With a :attr:`~brmrs_pyg.nn.backbones.Backbone.linear_propagation` backbone the
        channels propagate together (same sums, fewer and larger kernels): over the
        user-item graph block by block (:meth:`_bipartite`), over the others :math:`Md`
        columns wide; otherwise each channel runs :meth:`forward` on its own.

        Shapes:
            - **user0**: :math:`(|\mathcal{U}|, d)`; **items0**: :math:`M` tensors
              :math:`(|\mathcal{I}|, d)`; **output**: :math:`(|\mathcal{U}|, Md)` and
              :math:`(|\mathcal{I}|, Md)`.
        """
        backbones = [*self.ui.values(), *self.ii.values(), *self.uu.values()]
        if (not all(b.linear_propagation for b in backbones)  # type: ignore[union-attr]
                or (self.ui and "ui_users" not in self._buffers)):
            outs = [self(m, user0, x) for m, x in zip(self.modalities, items0)]
            return torch.cat([u for u, _ in outs], 1), torch.cat([i for _, i in outs], 1)
        num = len(self.modalities)
        if self.ui:
            users, items = self._bipartite(user0, torch.cat(items0, 1), num)
        else:
            users, items = user0.repeat(1, num), torch.cat(items0, 1)
        if self.ii:
            items = items + torch.cat([self._run(self.ii[m], f"ii_{m}", x) if m in self.ii
                                       else torch.zeros_like(x)
                                       for m, x in zip(self.modalities, items0)], 1)
        if self.uu:  # every channel propagates the same user input over the same graph
            users = _widen(users, self._run(self.uu[self.modalities[0]], "uu", user0), num)
        return users, items

    def _bipartite(self, user0: Tensor, items0: Tensor, num: int) -> tuple[Tensor, Tensor]:
        r"""The user-item propagation :math:`\sum_l \alpha_l \hat{A}^l` of every channel,
        block by block: layer :math:`l` maps the items' rows to the users' and back, and
        the side that started from the shared user input (every other layer) is the same
        for all channels, so it is propagated once, :math:`d` wide, not :math:`M` times."""
        alpha = self.ui_alpha
        to_users, to_items = self.ui_users, self.ui_items
        out_u, out_i = alpha[0] * user0, alpha[0] * items0
        x_u, x_i = user0, items0
        for layer in range(1, len(alpha)):
            if layer + 1 < len(alpha):  # the next layer needs the unweighted outputs
                x_u, x_i = spmm(to_users, x_i), spmm(to_items, x_u)
                x_u_weighted, x_i_weighted = alpha[layer] * x_u, alpha[layer] * x_i
            else:
                x_u_weighted = spmm(to_users, x_i, alpha[layer])
                x_i_weighted = spmm(to_items, x_u, alpha[layer])
            out_u = _widen(out_u, x_u_weighted, num)
            out_i = _widen(out_i, x_i_weighted, num)
        return out_u, out_i

    def __repr__(self) -> str:
        first = next(iter(self.ui.values()), None)
        graphs = (["ui"] if self.ui else []) + (["uu"] if self.uu else [])
        graphs += [f"ii_{m}" for m in self.ii]
        return f"ModalityChannels({self.modalities}, graphs={graphs}, backbone={first})"


def _widen(a: Tensor, b: Tensor, num: int) -> Tensor:
    r"""``a + b`` where each is either :math:`M` blocks side by side, :math:`(N, Md)`, or one
    block shared by all :math:`M`, :math:`(N, d)`; wide unless both are shared. The shared
    one is broadcast over the blocks, not repeated: on CPU (torch 2.13, one thread) the
    broadcast add is 4x faster than a repeat and an add on lfm2k's users (1858 x 2 x 64),
    8x on Sports-size data's (35598 x 2 x 64), where the repeat's fresh copy dominates."""
    if a.size(1) == b.size(1):
        return a + b
    wide, shared = (a, b) if a.size(1) > b.size(1) else (b, a)
    rows = wide.size(0)
    return (wide.view(rows, num, -1) + shared.unsqueeze(1)).view(rows, -1)
