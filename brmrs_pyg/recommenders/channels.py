r"""Per-modality graph channels shared by the multi-branch baselines: each modality
propagates its own input embeddings over the user-item graph and, optionally, its item-item
kNN graph, with backbones of its own and the graphs stored once."""
from __future__ import annotations

import torch
from torch import Tensor

from brmrs_pyg.nn.backbones import Backbone
from brmrs_pyg.recommenders.brmrs import ChannelGraphs


class ModalityChannels(torch.nn.Module):
    r"""One channel per modality :math:`m`, mapping input embeddings
    :math:`(\mathbf{P}^{(m,0)}, \mathbf{Q}^{(m,0)})` to

    .. math::
        [\mathbf{P}^{(m)}; \mathbf{Q}^{(m)}] = \mathrm{GNN}^{(m)}_{ui}
        ([\mathbf{P}^{(m,0)}; \mathbf{Q}^{(m,0)}]) + [\mathbf{0};
        \mathrm{GNN}^{(m)}_{ii}(\mathbf{Q}^{(m,0)})],

    the second term only when ``graphs.ii[m]`` is given and ``ii_layers > 0``. Every
    modality has its own backbones (parameter-free for LightGCN); the graph inputs are
    built once and shared.

    Args:
        modalities (list of str): Channel names, in order.
        num_users (int): Number of users.
        num_items (int): Number of items.
        graphs (ChannelGraphs): The user-item graph over users-then-items node ids (``ui``)
            and each modality's item-item graph (``ii``); ``uu`` must be ``None``.
        backbone (type): The :class:`~brmrs_pyg.nn.backbones.Backbone` class.
        channels (int): Width :math:`d` of the embeddings.
        layers (tuple of int): Layers over the user-item and over the item-item graphs.

    Shapes:
        - **user0**: :math:`(|\mathcal{U}|, d)`; **item0**: :math:`(|\mathcal{I}|, d)`;
          **output**: the same two shapes.
    """

    def __init__(self, modalities: list[str], num_users: int, num_items: int,
                 graphs: ChannelGraphs, backbone: type[Backbone], channels: int,
                 layers: tuple[int, int]) -> None:
        super().__init__()
        if graphs.ui is None or graphs.uu is not None:
            raise ValueError("ModalityChannels propagates over the user-item graph and, "
                             "per modality, an item-item graph; no user-user graph")
        self.modalities = list(modalities)
        self.num_users = num_users
        ui_layers, ii_layers = layers
        ui = {m: backbone(channels, ui_layers) for m in modalities}
        self._store("ui", ui[modalities[0]].graph_input(*graphs.ui, num_users + num_items))
        ii: dict[str, Backbone] = {}
        for m in modalities:
            edges = graphs.ii.get(m)
            if edges is not None and ii_layers > 0:
                ii[m] = backbone(channels, ii_layers)
                self._store(f"ii_{m}", ii[m].graph_input(*edges, num_items))
        self.ui = torch.nn.ModuleDict(ui)
        self.ii = torch.nn.ModuleDict(ii)

    def _store(self, name: str, graph_input: tuple[Tensor, Tensor | None]) -> None:
        structure, weight = graph_input
        self.register_buffer(f"graph_{name}", structure, persistent=False)
        self.register_buffer(f"weight_{name}", weight, persistent=False)

    def _run(self, module: torch.nn.Module, name: str, x: Tensor) -> Tensor:
        return module(x, getattr(self, f"graph_{name}"), getattr(self, f"weight_{name}"))

    def reset_parameters(self) -> None:
        for module in [*self.ui.values(), *self.ii.values()]:
            module.reset_parameters()  # type: ignore[operator]

    def forward(self, modality: str, user0: Tensor, item0: Tensor) -> tuple[Tensor, Tensor]:
        h = self._run(self.ui[modality], "ui", torch.cat([user0, item0]))
        # split, not slicing: its backward is one concatenation
        users, items = h.split([self.num_users, item0.size(0)])
        if modality in self.ii:
            items = items + self._run(self.ii[modality], f"ii_{modality}", item0)
        return users, items

    def __repr__(self) -> str:
        first = self.ui[self.modalities[0]]
        return (f"ModalityChannels({self.modalities}, backbone={first}, "
                f"item_graphs={list(self.ii)})")
