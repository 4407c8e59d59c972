import torch

from brmrs_pyg.graphs import to_adj_t
from brmrs_pyg.nn.sparse import spmm, transpose_of


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


def test_transpose_is_reused_and_refreshed_after_in_place_change():
    adj_t = to_adj_t(torch.tensor([[0], [1]]), torch.tensor([2.0]), 2)
    first = transpose_of(adj_t)
    assert transpose_of(adj_t) is first
    assert torch.equal(first.to_dense(), adj_t.to_dense().T)
    adj_t.values().mul_(3.0)
    assert torch.equal(transpose_of(adj_t).to_dense(), adj_t.to_dense().T)
