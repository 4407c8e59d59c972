import pytest
import torch

from brmrs_pyg.nn.fusion import FUSIONS


def inputs(requires_grad=False):
    torch.manual_seed(0)
    return [torch.randn(5, 4, requires_grad=requires_grad) for _ in range(3)]


def test_mean_fusion():
    xs = inputs()
    assert torch.allclose(FUSIONS.get("mean")(4, 3)(xs), (xs[0] + xs[1] + xs[2]) / 3)


@pytest.mark.parametrize("name", ["concat", "gate", "mlp", "bilinear"])
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


@pytest.mark.parametrize("name", FUSIONS.names())
def test_fusion_gradients(name):
    xs = inputs(requires_grad=True)
    fusion = FUSIONS.get(name)(4, 3)
    for param in fusion.parameters():  # off the starting point, where some gradients are 0
        torch.nn.init.normal_(param)
    fusion(xs).pow(2).sum().backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in xs)
    for param in fusion.parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0


def test_mlp_fusion_formula():
    xs = inputs()
    fusion = FUSIONS.get("mlp")(4, 3)
    torch.nn.init.normal_(fusion.out.weight)
    out = fusion(xs)
    for n in range(5):
        x = [xm[n] for xm in xs]
        z = torch.cat([x[0], x[1], x[2], x[0] * x[1], x[0] * x[2], x[1] * x[2]])
        hidden = torch.relu(fusion.hidden.weight @ z + fusion.hidden.bias)
        expected = (x[0] + x[1] + x[2]) / 3 + fusion.out.weight @ hidden
        assert torch.allclose(out[n], expected, atol=1e-5)


def test_bilinear_fusion_formula():
    xs = inputs()
    fusion = FUSIONS.get("bilinear")(4, 3)
    torch.nn.init.normal_(fusion.out.weight)
    out = fusion(xs)
    for n in range(5):
        product = torch.ones(4)
        for lin, x in zip(fusion.factors, xs):
            product = product * (lin.weight @ x[n] + lin.bias)
        expected = sum(x[n] for x in xs) / 3 + fusion.out.weight @ product
        assert torch.allclose(out[n], expected, atol=1e-5)


@pytest.mark.parametrize("name", FUSIONS.names())
def test_fusions_act_row_by_row(name):
    """The contract BR-MRS's loss relies on: fusing some rows = those rows of the fusion."""
    xs = inputs()
    fusion = FUSIONS.get(name)(4, 3)
    for param in fusion.parameters():
        torch.nn.init.normal_(param)
    rows = torch.tensor([4, 0, 2])
    assert torch.allclose(fusion([x[rows] for x in xs]), fusion(xs)[rows], atol=1e-6)


# A score that is a product of one factor of each modality: what a synergistic preference
# is in the synthetic generator's synergy regime. Each modality is seen through a learned
# projection (as a channel's W_m), then fused and read out by a learned user vector.
def product_task(n=1024, dim=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x1, x2 = torch.randn(n, dim, generator=g), torch.randn(n, dim, generator=g)
    a, b = torch.randn(dim, generator=g), torch.randn(dim, generator=g)
    return x1, x2, (x1 @ a) * (x2 @ b)


def r2(pred, target):
    return 1 - ((pred - target) ** 2).mean() / target.var(unbiased=False)


def fit(name, x1, x2, y, steps=800, channels=8):
    torch.manual_seed(0)
    proj = torch.nn.ModuleList(torch.nn.Linear(x1.size(1), channels) for _ in range(2))
    fusion = FUSIONS.get(name)(channels, 2)
    user = torch.nn.Parameter(torch.randn(channels) / channels ** 0.5)
    params = [*proj.parameters(), *fusion.parameters(), user]
    opt = torch.optim.Adam(params, lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        pred = fusion([proj[0](x1), proj[1](x2)]) @ user
        loss = ((pred - y) ** 2).mean()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float(r2(fusion([proj[0](x1), proj[1](x2)]) @ user, y))


def test_no_fusion_linear_in_its_inputs_can_fit_a_product_of_modality_factors():
    """The best of every affine map of (x1, x2), which contains mean and concat fusion of any
    projections, by least squares: a product of independent zero-mean factors is
    uncorrelated with every linear term, so it explains (next to) nothing."""
    x1, x2, y = product_task()
    design = torch.cat([x1, x2, torch.ones(len(y), 1)], 1).double()
    coef = torch.linalg.lstsq(design, y.double().unsqueeze(1)).solution
    assert r2((design @ coef).squeeze(1), y.double()) < 0.05
    assert fit("mean", x1, x2, y, steps=300) < 0.05  # and training finds no more


@pytest.mark.parametrize("name", ["mlp", "bilinear"])
def test_fusions_with_products_fit_a_product_of_modality_factors(name):
    x1, x2, y = product_task()
    assert fit(name, x1, x2, y) > 0.9
