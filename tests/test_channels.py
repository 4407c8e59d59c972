"""Per-modality channels: dense reference, item-item graphs per modality, one graph input."""
import pytest
import torch

from brmrs_pyg.graphs import GraphSpec, bipartite_adj_t, build_graph, knn_edge_type
from brmrs_pyg.nn.backbones import LightGCNBackbone
from brmrs_pyg.recommenders.brmrs import ChannelGraphs
from brmrs_pyg.recommenders.channels import ModalityChannels
from tests.test_brmrs import dense_adj, tiny_data


def channels(ii_graphs, layers=(2, 1)):
    data = tiny_data()
    graph = build_graph(data, GraphSpec(knn_k=2))
    graphs = ChannelGraphs.from_graph(graph, ["m0", "m1"], True, ii_graphs)
    return ModalityChannels(["m0", "m1"], 5, 6, graphs, LightGCNBackbone, 3, layers), graph


def test_matches_dense_propagation_and_item_graph_only_where_selected():
    module, graph = channels("m1")
    assert list(module.ii) == ["m1"]
    ui = bipartite_adj_t(graph).to_dense()
    gen = torch.Generator().manual_seed(0)
    user0, item0 = torch.randn(5, 3, generator=gen), torch.randn(6, 3, generator=gen)
    h0 = torch.cat([user0, item0])
    h = (h0 + ui @ h0 + ui @ ui @ h0) / 3
    users, items = module("m0", user0, item0)
    torch.testing.assert_close(users, h[:5])
    torch.testing.assert_close(items, h[5:])
    store = graph[knn_edge_type("m1")]
    ii = dense_adj(store.edge_index, store.edge_weight, 6)
    _, items = module("m1", user0, item0)
    torch.testing.assert_close(items, h[5:] + (item0 + ii @ item0) / 2)
    assert "item_graphs=['m1']" in str(module)


def test_zero_item_layers_and_user_graph_refusal():
    module, graph = channels("all", layers=(1, 0))
    assert len(module.ii) == 0
    graphs = ChannelGraphs.from_graph(graph, ["m0"], True, "all")
    graphs.uu = graphs.ui
    with pytest.raises(ValueError, match="no user-user graph"):
        ModalityChannels(["m0"], 5, 6, graphs, LightGCNBackbone, 3, (1, 1))
