import pytest
import torch

from brmrs_pyg.nn.features import prepare_features


def test_full_width_is_centred_and_scaled():
    torch.manual_seed(0)
    x = torch.randn(20, 6) * 3 + 5
    out = prepare_features(x)
    centred = (x - x.mean(0)).double()
    assert torch.allclose(out.double(), centred / centred.norm(dim=1).mean(), atol=1e-6)
    assert out.norm(dim=1).mean().item() == pytest.approx(1.0, rel=1e-5)


def test_reduction_equals_projection_on_top_singular_vectors():
    torch.manual_seed(0)
    x = torch.randn(40, 10) @ torch.randn(10, 10)
    out = prepare_features(x, dim=3).double()
    centred = (x - x.mean(0)).double()
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    reference = centred @ vh[:3].T
    reference = reference / reference.norm(dim=1).mean()
    # equal up to the sign of each component
    for c in range(3):
        assert torch.allclose(out[:, c].abs(), reference[:, c].abs(), atol=1e-5)
    # and the signs are fixed deterministically
    assert torch.equal(out, prepare_features(x, dim=3).double())


def test_dim_at_least_width_keeps_everything():
    x = torch.randn(8, 4)
    assert prepare_features(x, dim=10).shape == (8, 4)
    with pytest.raises(ValueError):
        prepare_features(x, dim=-1)
