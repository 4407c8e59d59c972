import pytest
import torch

from brmrs_pyg.config import ConfigError, resolve
from brmrs_pyg.graphs import GraphSpec, bipartite_adj_t, build_graph, knn_edge_type
from brmrs_pyg.interactions import PairIndex
from brmrs_pyg.losses import CrossModalWeights, cross_modal_objective, l2_reg
from brmrs_pyg.nn.features import prepare_features
from brmrs_pyg.nn.fusion import FUSIONS
from brmrs_pyg.recommenders import MODELS, Batch
from brmrs_pyg.recommenders.brmrs import BRMRS
from brmrs_pyg.sampling import sample_negatives
from tests.tiny_models import build_model, tiny_data


def build(data=None, spec=None, **overrides):
    return build_model(BRMRS, data, spec, **overrides)[0]


def dense_adj(edge_index, weight, n):
    a = torch.zeros(n, n)
    a[edge_index[1], edge_index[0]] = weight
    return a


def test_branches_match_dense_reference():
    data = tiny_data()
    model = build(data, num_layers=1, ii_layers=1, feature_dim=0)
    graph = build_graph(data, GraphSpec(knn_k=2))
    ui = bipartite_adj_t(graph).to_dense()
    out = model.branches()
    assert list(out) == ["m0", "m1", "fused"]
    e_u, e_i = model.user_emb.weight.detach(), model.item_emb.weight.detach()
    for m in ("m0", "m1"):
        x = prepare_features(data.features[m])
        item0 = e_i + x @ model.proj[m].weight.detach().T
        h0 = torch.cat([e_u, item0])
        h = (h0 + ui @ h0) / 2
        store = graph[knn_edge_type(m)]
        ii = dense_adj(store.edge_index, store.edge_weight, 6)
        items = h[5:] + (item0 + ii @ item0) / 2
        assert torch.allclose(out[m][0], h[:5], atol=1e-5)
        assert torch.allclose(out[m][1], items, atol=1e-5)
    assert torch.allclose(out["fused"][0], (out["m0"][0] + out["m1"][0]) / 2, atol=1e-6)
    assert torch.allclose(out["fused"][1], (out["m0"][1] + out["m1"][1]) / 2, atol=1e-6)


def test_loss_is_the_objective_on_branch_scores_plus_l2():
    data = tiny_data()
    model = build(data, pool_size=3, hard_k=2, lambda_h=0.7, lambda_s=0.3, theta=0.2,
                  reg_weight=0.01)
    assert model.num_negatives == 3
    index = PairIndex.from_edges(data.train, 5, 6)
    users, pos = data.train
    neg = sample_negatives(users, index, 3, torch.Generator().manual_seed(1))
    total, terms = model.loss(Batch(users, pos, neg))
    out = model.branches()
    pos_s = {b: (u[users] * i[pos]).sum(-1) for b, (u, i) in out.items()}
    pool_s = {b: (u[users][:, None] * i[neg]).sum(-1) for b, (u, i) in out.items()}
    expected, _ = cross_modal_objective(pos_s, pool_s, CrossModalWeights(1.0, 0.7, 0.3, 0.2, 2))
    reg = l2_reg(model.user_emb.weight[users], model.item_emb.weight[pos],
                 model.item_emb.weight[neg[:, 0]])
    assert total.item() == pytest.approx((expected + 0.01 * reg).item(), rel=1e-5)
    assert set(terms) == {"bpr", "chns", "syn", "reg"}
    total.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name


@pytest.mark.parametrize("source", ["fused", "m1", "uniform"])
def test_hard_negative_source_reaches_the_objective(source):
    data = tiny_data()
    model = build(data, pool_size=3, hard_k=2, hard_negatives=source)
    index = PairIndex.from_edges(data.train, 5, 6)
    users, pos = data.train
    neg = sample_negatives(users, index, 3, torch.Generator().manual_seed(1))
    total, terms = model.loss(Batch(users, pos, neg))
    out = model.branches()
    pos_s = {b: (u[users] * i[pos]).sum(-1) for b, (u, i) in out.items()}
    pool_s = {b: (u[users][:, None] * i[neg]).sum(-1) for b, (u, i) in out.items()}
    weights = CrossModalWeights(1.0, 1.0, 1.0, 0.1, 2, True, source)
    expected, expected_terms = cross_modal_objective(pos_s, pool_s, weights)
    assert terms["chns"].item() == pytest.approx(expected_terms["chns"].item(), rel=1e-5)
    chns, _ = cross_modal_objective(pos_s, pool_s, CrossModalWeights(1.0, 1.0, 1.0, 0.1, 2,
                                                                     True))
    assert expected.item() != pytest.approx(chns.item(), rel=1e-6)  # the source matters
    with pytest.raises(ConfigError, match="choose one of chns, fused, uniform, m0, m1"):
        build(data, hard_negatives="m2")
    # without the cross-modal assignment one modality is enough
    build(tiny_data(num_modalities=1), hard_negatives="m0")


def test_three_modalities_train_and_score():
    data = tiny_data(num_modalities=3)
    model = build(data, pool_size=4, fusion="gate")
    assert list(model.branch_scorers()) == ["m0", "m1", "m2", "fused"]
    users, pos = data.train
    neg = sample_negatives(users, PairIndex.from_edges(data.train, 5, 6), 4)
    total, terms = model.loss(Batch(users, pos, neg))
    assert torch.isfinite(total) and "chns" in terms
    scores = model.scorer()(torch.tensor([0, 1]))
    assert scores.shape == (2, 6)


@pytest.mark.parametrize("backbone", ["lightgcn", "gcn", "sage", "gat"])
@pytest.mark.parametrize("fusion", FUSIONS.names())
def test_backbones_and_fusions_train_a_step(backbone, fusion):
    data = tiny_data()
    model = build(data, backbone=backbone, fusion=fusion, pool_size=3)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    users, pos = data.train
    neg = sample_negatives(users, PairIndex.from_edges(data.train, 5, 6), 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss, _ = model.loss(Batch(users, pos, neg))
    loss.backward()
    optimizer.step()
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_graph_ablation_switches():
    data = tiny_data()
    full = build(data)
    assert "ui" in repr(full) and "ii_m0" in repr(full) and "ii_m1" in repr(full)
    no_ui = build(data, ui_graph=False, ii_graphs="none")
    # without graphs a channel is its initial embedding: shared IDs plus projected features
    users, items = no_ui.branches()["m0"]
    assert torch.equal(users, no_ui.user_emb.weight)
    x = prepare_features(data.features["m0"], 128)
    assert torch.allclose(items, no_ui.item_emb.weight + no_ui.proj["m0"](x), atol=1e-6)
    only_m1 = build(data, ii_graphs="m1")
    assert list(only_m1.channels.ii) == ["m1"]
    with pytest.raises(ConfigError, match="not in the run's modalities"):
        build(data, ii_graphs="m7")
    with_uu = build(data, spec=GraphSpec(knn_k=2, uu_k=2))
    assert len(with_uu.channels.uu) == 2 and "'uu'" in repr(with_uu)
    # the user-user graph changes user embeddings, not the item side
    base = build(data)
    assert torch.allclose(with_uu.branches()["m0"][1], base.branches()["m0"][1])
    assert not torch.allclose(with_uu.branches()["m0"][0], base.branches()["m0"][0])
    # the ii_layers propagate the user-user graph: without them it would be built for nothing
    with pytest.raises(ConfigError, match="uu_k > 0 .* ii_layers=0: set ii_layers >= 1, or "
                                          "uu_k=0"):
        build(data, spec=GraphSpec(knn_k=2, uu_k=2), ii_layers=0)
    assert not build(data, ii_layers=0).channels.ii  # no user-user graph: ii_layers=0 is fine


def test_lambda_h_zero_needs_one_negative_and_one_modality_is_refused_for_chns():
    data = tiny_data()
    assert build(data, lambda_h=0.0).num_negatives == 1
    single = tiny_data(num_modalities=1)
    with pytest.raises(ConfigError, match="at least two modalities"):
        build(single)
    assert build(single, lambda_h=0.0).num_negatives == 1


def test_params_validation():
    for bad in ({"hard_k": 5, "pool_size": 3}, {"theta": -1.0}, {"lambda_h": -0.1}):
        with pytest.raises(ConfigError):
            resolve([("test", bad)], BRMRS.Params)
    assert MODELS.get("brmrs") is BRMRS


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_training_step_on_cuda_has_no_host_sync():
    r"""Pool sampling, hard-negative selection and all losses stay on the device: CUDA's
    sync debug mode turns any device-to-host synchronisation into an error."""
    data = tiny_data(num_modalities=3)
    model = build(data, pool_size=4, hard_k=2).to("cuda")
    index = PairIndex.from_edges(data.train, 5, 6, torch.device("cuda"))
    users, pos = data.train.to("cuda")

    def step():
        neg = sample_negatives(users, index, model.num_negatives)
        loss, _ = model.loss(Batch(users, pos, neg))
        loss.backward()
        return loss

    # warm-up: lazy CUDA initialisation, and the first backward builds each propagation
    # matrix's transpose once for all later steps (nn/sparse.py), which synchronises
    step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert loss.device.type == "cuda"


def test_pipeline_caches_the_feature_bases(project, tmp_path, monkeypatch):
    from brmrs_pyg import pipeline

    cli = {"dataset": "tiny", "model": "brmrs", "cache_dir": str(tmp_path / "cache"),
           "feature_dim": 2}
    config = pipeline.load_config(pipeline.Paths(project), [("cli", cli)])
    expected = {m: prepare_features(x, 2) for m, x in tiny_data().features.items()}
    first = pipeline.build_model(config, tiny_data(), torch.device("cpu"))
    assert len(list((tmp_path / "cache" / "bases").glob("pca-*x2-*.pt"))) == 2  # m0, m1
    monkeypatch.setattr(torch.linalg, "eigh", None)  # a second build must not compute them
    second = pipeline.build_model(config, tiny_data(), torch.device("cpu"))
    for m in ("m0", "m1"):
        assert torch.equal(getattr(first, f"feat_{m}"), expected[m])
        assert torch.equal(getattr(second, f"feat_{m}"), expected[m])


def whole_train_batch(data, negatives=10):
    # every training pair, with a seeded pool of uniform negatives
    train = PairIndex.from_edges(data.train, data.num_users, data.num_items)
    users, pos = data.train
    return Batch(users, pos, sample_negatives(users, train, negatives,
                                              torch.Generator().manual_seed(0)))


def test_synergy_warm_up_ramps_lambda_s_by_epoch_and_a_restored_model_goes_on_with_it():
    data = tiny_data()
    batch = whole_train_batch(data)
    model = build(data, syn_warmup=3, lambda_s=2.0)
    states = []
    for epoch, factor in enumerate([0.25, 0.5, 0.75, 1.0, 1.0], start=1):
        model.start_epoch()
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        assert int(model.epochs_started) == epoch
        assert model.weights.lambda_s == pytest.approx(2.0 * factor)
        # the same loss as a model without warm-up at this epoch's weight
        reference = build(data, lambda_s=2.0 * factor)
        reference.load_state_dict(model.state_dict(), strict=False)
        assert model.loss(batch)[0].item() == pytest.approx(reference.loss(batch)[0].item())
    assert model.full_weights.lambda_s == 2.0
    restored = build(data, syn_warmup=3, lambda_s=2.0)
    restored.load_state_dict(states[1])  # after epoch 2
    assert restored.weights.lambda_s == pytest.approx(1.0)
    restored.start_epoch()
    assert restored.weights.lambda_s == pytest.approx(1.5)
    # without a warm-up the state dict has no counter (checkpoints from before load as they did)
    assert "epochs_started" not in build(data).state_dict()


def test_balanced_terms_reach_the_objective():
    # balance_terms=true: the model's loss is the balanced objective on its branch scores,
    # whose value is (lambda_bpr + lambda_h + lambda_s) * bpr (plus L2)
    data = tiny_data()
    batch = whole_train_batch(data)
    model = build(data, balance_terms=True, lambda_h=0.5, lambda_s=2.0, reg_weight=0.0)
    plain = build(data, lambda_h=0.5, lambda_s=2.0, reg_weight=0.0)
    plain.load_state_dict(model.state_dict())
    total, terms = model.loss(batch)
    assert total.item() == pytest.approx(3.5 * terms["bpr"].item(), rel=1e-5)
    assert terms["syn"].item() == pytest.approx(plain.loss(batch)[1]["syn"].item(), rel=1e-5)
    assert total.item() != pytest.approx(plain.loss(batch)[0].item(), rel=1e-3)


@pytest.mark.parametrize("overrides, message", [
    ({"syn_warmup": -1}, "syn_warmup must be >= 0"),
    ({"syn_warmup": 2, "lambda_s": 0.0}, "lambda_s=0 turns it off"),
    ({"balance_terms": True, "lambda_bpr": 0.0}, "lambda_bpr=0 turns it off"),
])
def test_synergy_warm_up_refuses_meaningless_settings(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build(tiny_data(), **overrides)
