import pytest
import torch

from brmrs_pyg.nn.fusion import FUSIONS


def inputs(requires_grad=False):
    torch.manual_seed(0)
    return [torch.randn(5, 4, requires_grad=requires_grad) for _ in range(3)]


def test_mean_fusion():
    xs = inputs()
    assert torch.allclose(FUSIONS.get("mean")(4, 3)(xs), (xs[0] + xs[1] + xs[2]) / 3)


@pytest.mark.parametrize("name", ["concat", "gate"])
def test_learned_fusions_start_at_the_mean(name):
    xs = inputs()
    assert torch.allclose(FUSIONS.get(name)(4, 3)(xs), (xs[0] + xs[1] + xs[2]) / 3, atol=1e-6)


def test_concat_fusion_is_a_linear_map_of_the_concatenation():
    xs = inputs()
    fusion = FUSIONS.get("concat")(4, 3)
    torch.nn.init.normal_(fusion.lin.weight)
    expected = torch.cat(xs, dim=1) @ fusion.lin.weight.T
    assert torch.allclose(fusion(xs), expected, atol=1e-6)


def test_gate_fusion_formula():
    xs = inputs()
    fusion = FUSIONS.get("gate")(4, 3)
    torch.nn.init.normal_(fusion.query)
    out = fusion(xs)
    for n in range(5):
        logits = torch.stack([torch.tanh(fusion.proj(x[n])) @ fusion.query for x in xs])
        beta = logits.softmax(0)
        expected = sum(beta[m] * xs[m][n] for m in range(3))
        assert torch.allclose(out[n], expected, atol=1e-6)


@pytest.mark.parametrize("name", ["mean", "concat", "gate"])
def test_fusion_gradients(name):
    xs = inputs(requires_grad=True)
    fusion = FUSIONS.get(name)(4, 3)
    fusion(xs).pow(2).sum().backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in xs)
    for param in fusion.parameters():
        assert param.grad is not None
