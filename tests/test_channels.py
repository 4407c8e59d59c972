"""Per-modality channels: dense reference, item-item graphs per modality, one graph input."""
import torch

from brmrs_pyg.graphs import GraphSpec, bipartite_adj_t, build_graph, knn_edge_type
from brmrs_pyg.nn.backbones import LightGCNBackbone
from brmrs_pyg.recommenders.channels import ChannelGraphs, ModalityChannels
from tests.test_brmrs import dense_adj
from tests.tiny_models import tiny_data


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
    assert "graphs=['ui', 'ii_m1']" in str(module)


def test_zero_item_layers_and_the_user_graph():
    module, graph = channels("all", layers=(1, 0))
    assert len(module.ii) == 0 and len(module.uu) == 0
    # the user-user graph adds its propagation of the input users, once per modality
    graphs = ChannelGraphs.from_graph(graph, ["m0"], True, "none")
    uu_edges = torch.tensor([[0, 1, 2, 3], [1, 0, 3, 2]])
    graphs.uu = (uu_edges, torch.full((4,), 0.5))
    with_uu = ModalityChannels(["m0"], 5, 6, graphs, LightGCNBackbone, 3, (1, 1))
    plain = ModalityChannels(["m0"], 5, 6, ChannelGraphs.from_graph(graph, ["m0"], True, "none"),
                             LightGCNBackbone, 3, (1, 1))
    gen = torch.Generator().manual_seed(1)
    user0, item0 = torch.randn(5, 3, generator=gen), torch.randn(6, 3, generator=gen)
    uu = dense_adj(uu_edges, torch.full((4,), 0.5), 5)
    users, items = with_uu("m0", user0, item0)
    base_users, base_items = plain("m0", user0, item0)
    torch.testing.assert_close(items, base_items)
    torch.testing.assert_close(users, base_users + (user0 + uu @ user0) / 2)
    # without the user-item graph a channel starts from its input
    graphs.ui = None
    users, items = ModalityChannels(["m0"], 5, 6, graphs, LightGCNBackbone, 3, (1, 1))(
        "m0", user0, item0)
    torch.testing.assert_close(items, item0)
    torch.testing.assert_close(users, user0 + (user0 + uu @ user0) / 2)
