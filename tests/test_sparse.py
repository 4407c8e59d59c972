import pytest
import torch

from brmrs_pyg.graphs import to_adj_t
from brmrs_pyg.nn.sparse import EdgeGraph, linear_propagation, spmm, transpose_of


def test_spmm_value_and_gradient_match_dense_for_a_non_symmetric_matrix():
    torch.manual_seed(0)
    ei = torch.tensor([[0, 1, 2, 2, 3], [1, 2, 0, 3, 1]])
    w = torch.rand(5)
    adj_t = to_adj_t(ei, w, 4)
    dense = adj_t.to_dense()
    x = torch.randn(4, 3, requires_grad=True)
    y = spmm(adj_t, spmm(adj_t, x))
    (y * torch.arange(12.0).view(4, 3)).sum().backward()
    grad = x.grad.clone()
    x.grad = None
    y_ref = dense @ (dense @ x)
    (y_ref * torch.arange(12.0).view(4, 3)).sum().backward()
    assert torch.allclose(y, y_ref, atol=1e-6)
    assert torch.allclose(grad, x.grad, atol=1e-6)


@pytest.mark.parametrize("alpha", [[0.5], [0.5, 0.5], [0.2, 0.0, 0.8], [0.1, 0.2, 0.3, 0.4],
                                   [0.0, 0.0, 1.0]])
def test_linear_propagation_matches_the_weighted_sum_of_dense_powers(alpha):
    torch.manual_seed(0)
    ei = torch.tensor([[0, 1, 2, 2, 3, 3], [1, 2, 0, 3, 1, 0]])
    adj_t = to_adj_t(ei, torch.rand(6), 4)
    dense = adj_t.to_dense()
    x = torch.randn(4, 3, requires_grad=True)
    weights = torch.arange(12.0).view(4, 3)
    (linear_propagation(adj_t, x, alpha) * weights).sum().backward()
    out, grad = linear_propagation(adj_t, x, alpha).detach(), x.grad.clone()
    x.grad = None
    ref, power = torch.zeros(4, 3), x
    for layer, a in enumerate(alpha):
        power = x if layer == 0 else dense @ power
        ref = ref + a * power
    (ref * weights).sum().backward()
    assert torch.allclose(out, ref, atol=1e-6)
    assert torch.allclose(grad, x.grad, atol=1e-6)


def test_spmm_output_ignores_the_fresh_memory_it_is_written_into():
    # spmm writes into an uninitialised table through addmm with beta=0, which must not
    # read it: a NaN there would otherwise survive as 0 * NaN
    ei = torch.tensor([[0, 1, 2], [1, 2, 0]])
    adj_t = to_adj_t(ei, torch.rand(3), 3)
    x = torch.randn(3, 2)
    table = torch.full((3, 2), float("nan"))
    out = torch.addmm(table, adj_t, x, beta=0.0, alpha=0.5, out=table)
    assert torch.allclose(out, 0.5 * adj_t.to_dense() @ x, atol=1e-6)
    assert torch.allclose(spmm(adj_t, x, 0.5), out, atol=1e-6)


def test_transpose_is_reused_and_refreshed_after_in_place_change():
    adj_t = to_adj_t(torch.tensor([[0], [1]]), torch.tensor([2.0]), 2)
    first = transpose_of(adj_t)
    assert transpose_of(adj_t) is first
    assert torch.equal(first.to_dense(), adj_t.to_dense().T)
    adj_t.values().mul_(3.0)
    assert torch.equal(transpose_of(adj_t).to_dense(), adj_t.to_dense().T)


def edge_graph_case():
    g = torch.Generator().manual_seed(0)
    edge_index = torch.tensor([[0, 1, 2, 2, 3, 0], [1, 1, 0, 3, 0, 2]])
    return EdgeGraph(edge_index, 4), edge_index, g


def test_edge_graph_orders_edges_by_receiver_and_rejects_duplicates():
    graph, edge_index, _ = edge_graph_case()
    assert graph.edge_index.tolist() == [[2, 3, 0, 1, 0, 2], [0, 0, 1, 1, 2, 3]]
    assert sorted(zip(*graph.edge_index.tolist())) == sorted(zip(*edge_index.tolist()))
    assert str(graph) == "EdgeGraph(4 nodes, 6 edges)"
    with pytest.raises(ValueError, match="duplicate"):
        EdgeGraph(torch.tensor([[0, 0], [1, 1]]), 2)


def test_edge_graph_aggregate_dot_and_softmax_match_dense_and_naive_references():
    graph, _, g = edge_graph_case()
    senders, receivers = graph.edge_index
    weight = torch.randn(6, generator=g, dtype=torch.double, requires_grad=True)
    x = torch.randn(4, 3, generator=g, dtype=torch.double, requires_grad=True)
    y = torch.randn(4, 3, generator=g, dtype=torch.double, requires_grad=True)
    dense = torch.zeros(4, 4, dtype=torch.double)
    dense = dense.index_put((receivers, senders), weight)      # row = receiver
    torch.testing.assert_close(graph.aggregate(x, weight), dense @ x)
    # node 3 receives one edge, from node 2
    torch.testing.assert_close(graph.aggregate(x, weight)[3], weight[5] * x[2])
    torch.testing.assert_close(graph.dot(x, y), (x[receivers] * y[senders]).sum(-1))
    score = torch.randn(6, generator=g, dtype=torch.double, requires_grad=True)
    naive = torch.stack([score[e].exp() / score[receivers == receivers[e]].exp().sum()
                         for e in range(6)])
    torch.testing.assert_close(graph.softmax(score), naive)
    # hand-written backward passes against autograd's numerical gradients
    assert torch.autograd.gradcheck(graph.aggregate, (x, weight))
    assert torch.autograd.gradcheck(graph.dot, (x, y))
    assert torch.autograd.gradcheck(graph.softmax, (score,))
