import pytest
import torch
from torch_geometric.nn import LGConv, MessagePassing

from brmrs_pyg.graphs import sym_norm, to_adj_t
from brmrs_pyg.nn.backbones import BACKBONES, Backbone, LightGCNBackbone
from brmrs_pyg.registry import Registry

EDGES = torch.tensor([[0, 1, 1, 2, 2, 3], [1, 0, 2, 1, 3, 2]])


def dense_norm_adj():
    r"""The normalised weights of EDGES and their dense matrix (row = receiver)."""
    w = sym_norm(EDGES, 4)
    a = torch.zeros(4, 4)
    a[EDGES[1], EDGES[0]] = w
    return w, a


def test_lightgcn_backbone_matches_dense_mean_of_powers():
    torch.manual_seed(0)
    x = torch.randn(4, 3)
    w, a = dense_norm_adj()
    expected = (x + a @ x + a @ a @ x) / 3
    backbone = LightGCNBackbone(3, num_layers=2)
    assert torch.allclose(backbone(x, to_adj_t(EDGES, w, 4)), expected, atol=1e-6)
    assert torch.allclose(backbone(x, EDGES, w), expected, atol=1e-6)


def test_gradient_flows_and_repr():
    x = torch.randn(4, 3, requires_grad=True)
    backbone = LightGCNBackbone(3, num_layers=2, alpha=[0.0, 0.0, 1.0])
    backbone(x, EDGES, sym_norm(EDGES, 4)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert str(backbone) == "LightGCNBackbone(3, num_layers=2)"


def test_alpha_length_checked():
    with pytest.raises(ValueError, match="alpha needs 3"):
        LightGCNBackbone(3, num_layers=2, alpha=[1.0])


def test_backbone_without_edge_weights_refuses_them():
    class Unweighted(Backbone):
        supports_edge_weight = False

        def init_conv(self, layer: int) -> MessagePassing:
            return LGConv()

    backbone = Unweighted(3, num_layers=1)
    x = torch.randn(4, 3)
    assert backbone(x, EDGES).shape == (4, 3)
    with pytest.raises(ValueError, match="cannot use edge weights"):
        backbone(x, EDGES, torch.ones(6))


def test_registry():
    assert BACKBONES.get("Light-GCN") is LightGCNBackbone
    with pytest.raises(KeyError, match="choose one of: gat, gcn, lightgcn, sage"):
        BACKBONES.get("gcnn")
    reg = Registry("thing")
    reg.register("a")(int)
    with pytest.raises(KeyError, match="already registered"):
        reg.register("A")(float)


@pytest.mark.parametrize("name", ["lightgcn", "gcn", "sage", "gat"])
def test_every_backbone_runs_forward_and_backward(name, caplog):
    torch.manual_seed(0)
    backbone = BACKBONES.get(name)(3, num_layers=2)
    graph, weight = backbone.graph_input(EDGES, sym_norm(EDGES, 4), num_nodes=4)
    if not backbone.supports_edge_weight:
        # the weights are not silently dropped: the backbone says it does not use them
        assert "cannot use edge weights" in caplog.text
        assert weight is None and torch.equal(graph, EDGES)
    x = torch.randn(4, 3, requires_grad=True)
    out = backbone(x, graph, weight)
    assert out.shape == (4, 3)
    out.pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for param in backbone.parameters():
        assert param.grad is not None


@pytest.mark.parametrize("name", ["sage", "gat"])
def test_weightless_backbones_refuse_weights(name):
    backbone = BACKBONES.get(name)(3, num_layers=1)
    with pytest.raises(ValueError, match="cannot use edge weights"):
        backbone(torch.randn(4, 3), EDGES, torch.ones(6))


def test_gcn_backbone_matches_dense_formula():
    torch.manual_seed(0)
    x = torch.randn(4, 3)
    w, a = dense_norm_adj()
    backbone = BACKBONES.get("gcn")(3, num_layers=1)
    weight = backbone.convs[0].lin.weight.detach()
    expected = (x + a @ x @ weight.T) / 2
    adj, _ = backbone.graph_input(EDGES, w, 4)
    assert torch.allclose(backbone(x, adj), expected, atol=1e-6)
    assert torch.allclose(backbone(x, EDGES, w), expected, atol=1e-6)
