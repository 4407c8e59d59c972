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
            self._store("ui", ui[modalities[0]].graph_input(*graphs.ui, num_users + num_items))
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

    def __repr__(self) -> str:
        first = next(iter(self.ui.values()), None)
        graphs = (["ui"] if self.ui else []) + (["uu"] if self.uu else [])
        graphs += [f"ii_{m}" for m in self.ii]
        return f"ModalityChannels({self.modalities}, graphs={graphs}, backbone={first})"
