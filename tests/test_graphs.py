import math
import struct
import zipfile

import pytest
import torch

from brmrs_pyg.data.mmrec import InteractionData
from brmrs_pyg.graphs import (
    IU,
    UI,
    UU,
    GraphSpec,
    bipartite_adj_t,
    build_graph,
    co_interaction_graph,
    graph_key,
    knn_edge_type,
    knn_graph,
    load_or_build_graph,
    mixed_item_graph,
    neighbour_softmax,
    sym_norm,
    to_adj_t,
)


def dense(edge_index, weight, n):
    a = torch.zeros(n, n)
    a[edge_index[1], edge_index[0]] = weight  # row = receiver
    return a


def test_sym_norm_matches_dense_symmetric():
    ei = torch.tensor([[0, 1, 1, 2, 0, 3], [1, 0, 2, 1, 3, 0]])
    a = dense(ei, torch.ones(6), 5)  # node 4 isolated
    deg = a.sum(1)
    inv = torch.where(deg > 0, deg.pow(-0.5), torch.zeros_like(deg))
    expected = inv[:, None] * a * inv[None, :]
    assert torch.allclose(dense(ei, sym_norm(ei, 5), 5), expected)


def test_sym_norm_weighted_hand_value():
    ei = torch.tensor([[0, 1], [1, 0]])
    w = sym_norm(ei, 2, torch.tensor([4.0, 4.0]))
    assert w.tolist() == [1.0, 1.0]  # 4 / (sqrt(4) * sqrt(4))


@pytest.mark.parametrize("chunk_size", [1, 4, None])
def test_knn_matches_brute_force(chunk_size):
    torch.manual_seed(0)
    x = torch.randn(11, 5)
    x[3] = 0.0  # zero row: similarity 0 to everything
    edge_index, sim = knn_graph(x, k=3, chunk_size=chunk_size)
    xn = torch.nn.functional.normalize(x, dim=1)
    full = xn @ xn.T
    full.fill_diagonal_(-float("inf"))
    for i in range(11):
        mask = edge_index[1] == i
        assert mask.sum() == 3
        expected = full[i].topk(3).values
        assert torch.allclose(sim[mask].sort(descending=True).values, expected, atol=1e-6)
        assert i not in edge_index[0, mask].tolist()
        assert torch.allclose(full[i, edge_index[0, mask]], sim[mask])


def test_knn_k_capped_by_size():
    edge_index, _ = knn_graph(torch.randn(3, 2), k=10)
    assert edge_index.size(1) == 3 * 2


def tiny_data(k_feat=4):
    gen = torch.Generator().manual_seed(1)
    train = torch.tensor([[0, 0, 1, 2, 2, 3], [0, 1, 1, 2, 3, 0]])
    return InteractionData(name="tiny", num_users=4, num_items=5, train=train,
                           valid=torch.tensor([[0], [2]]), test=torch.tensor([[1], [3]]),
                           features={"text": torch.randn(5, k_feat, generator=gen),
                                     "image": torch.randn(5, 3, generator=gen)})


def test_build_graph_structure():
    data = tiny_data()
    g = build_graph(data, GraphSpec(knn_k=2))
    assert g["user"].num_nodes == 4 and g["item"].num_nodes == 5
    assert torch.equal(g[UI].edge_index, data.train)
    assert torch.equal(g[IU].edge_index, data.train.flip(0))
    for m in ("text", "image"):
        store = g[knn_edge_type(m)]
        assert store.edge_index.shape == (2, 10)
        assert torch.allclose(store.edge_weight, sym_norm(store.edge_index, 5))


def test_bipartite_adjacency_is_lightgcn_normalisation():
    data = tiny_data()
    adj = bipartite_adj_t(build_graph(data, GraphSpec(knn_k=2))).to_dense()
    n = 9
    a = torch.zeros(n, n)
    a[data.train[0], data.train[1] + 4] = 1
    a[data.train[1] + 4, data.train[0]] = 1
    deg = a.sum(1)
    inv = torch.where(deg > 0, deg.pow(-0.5), torch.zeros_like(deg))
    assert torch.allclose(adj, inv[:, None] * a * inv[None, :])


def test_adj_t_propagates_to_receivers():
    ei = torch.tensor([[0], [1]])  # 0 -> 1
    out = to_adj_t(ei, torch.tensor([2.0]), 2) @ torch.tensor([[3.0], [5.0]])
    assert out.view(-1).tolist() == [0.0, 6.0]


def test_cache_hit_and_rebuild_on_changed_setting(tmp_path, caplog):
    data = tiny_data()
    caplog.set_level("INFO")
    g1 = load_or_build_graph(data, GraphSpec(2), tmp_path)
    assert len(list((tmp_path / "graphs").glob("*.pt"))) == 1
    caplog.clear()
    g2 = load_or_build_graph(data, GraphSpec(2), tmp_path)
    assert "loaded from cache" in caplog.text
    for et in g1.edge_types:
        for key in ("edge_index", "edge_weight"):
            assert torch.equal(g1[et][key], g2[et][key])
    caplog.clear()
    g3 = load_or_build_graph(data, GraphSpec(3), tmp_path)  # changing knn_k must rebuild
    assert "building graph" in caplog.text
    assert g3[knn_edge_type("text")].edge_index.size(1) == 15
    assert len(list((tmp_path / "graphs").glob("*.pt"))) == 2
    data.features["text"][0, 0] += 1.0  # changed input file contents must rebuild too
    caplog.clear()
    load_or_build_graph(data, GraphSpec(2), tmp_path)
    assert "building graph" in caplog.text


def assert_same_graph(a, b):
    assert a.node_types == b.node_types and sorted(a.edge_types) == sorted(b.edge_types)
    for t in a.node_types:
        assert a[t].num_nodes == b[t].num_nodes
    for et in a.edge_types:
        assert sorted(a[et].keys()) == sorted(b[et].keys())
        for key, value in a[et].items():
            assert torch.equal(value, b[et][key]), (et, key)


def largest_record(path):
    r"""(offset, size) of the largest tensor record inside a torch.save zip archive."""
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename),
                   key=lambda i: i.file_size)
    with open(path, "rb") as handle:
        handle.seek(info.header_offset)
        name_len, extra_len = struct.unpack("<HH", handle.read(30)[26:30])
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def flip_tensor_byte(path):
    offset, size = largest_record(path)
    raw = bytearray(path.read_bytes())
    raw[offset + size // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def truncate(path):
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) * 2 // 3])


def garbage(path):
    path.write_bytes(b"not a checkpoint")


def retamper(path):
    r"""A readable entry whose tensor changed after the checksum was computed."""
    entry = torch.load(path, weights_only=True)
    name = next(k for k in entry["tensors"] if k.endswith("edge_weight"))
    entry["tensors"][name] = entry["tensors"][name] * 2
    torch.save(entry, path)


@pytest.mark.parametrize("corrupt", [flip_tensor_byte, truncate, garbage, retamper])
def test_corrupt_cache_is_rebuilt_with_a_warning(tmp_path, caplog, corrupt):
    data = tiny_data()
    original = load_or_build_graph(data, GraphSpec(2), tmp_path)
    (entry,) = (tmp_path / "graphs").glob("*.pt")
    corrupt(entry)
    caplog.set_level("INFO")
    rebuilt = load_or_build_graph(data, GraphSpec(2), tmp_path)
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "unreadable or corrupted" in warnings[0].getMessage()
    assert "building graph" in caplog.text
    if corrupt is retamper:
        assert "checksum mismatch" in warnings[0].getMessage()
    assert_same_graph(rebuilt, original)
    caplog.clear()  # the rewritten entry is sound again
    assert_same_graph(load_or_build_graph(data, GraphSpec(2), tmp_path), original)
    assert "loaded from cache" in caplog.text and "WARNING" not in caplog.text
    assert [p.name for p in (tmp_path / "graphs").iterdir()] == [entry.name]


def small_data():
    torch.manual_seed(0)
    train = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 3, 3, 3, 4],
                          [0, 1, 2, 1, 2, 0, 3, 1, 2, 4, 4]])
    return InteractionData(name="g", num_users=5, num_items=5, train=train,
                           valid=torch.tensor([[0], [3]]), test=torch.tensor([[1], [3]]),
                           features={"a": torch.randn(5, 3), "b": torch.randn(5, 4)})


def test_co_interaction_graph_matches_naive_counts():
    data = small_data()
    items_of = [set() for _ in range(5)]
    for u, i in data.train.T.tolist():
        items_of[u].add(i)
    edge_index, count = co_interaction_graph(data.train, 5, 5, k=2)
    by_user = {}
    for (v, u), c in zip(edge_index.T.tolist(), count.tolist()):
        assert c == len(items_of[u] & items_of[v]) > 0 and u != v
        by_user.setdefault(u, []).append(c)
    for u in range(5):
        naive = sorted((len(items_of[u] & items_of[v]) for v in range(5) if v != u),
                       reverse=True)[:2]
        assert sorted(by_user.get(u, []), reverse=True) == [c for c in naive if c > 0]


@pytest.mark.parametrize("mix", [0.0, 0.3, 1.0])
def test_mixed_item_graph_matches_dense_formula(mix):
    data = small_data()
    users_of = [set() for _ in range(5)]
    for u, i in data.train.T.tolist():
        users_of[i].add(u)
    expected = torch.zeros(5, 5)
    for i in range(5):
        for j in range(5):
            union = len(users_of[i] | users_of[j])
            jac = len(users_of[i] & users_of[j]) / union if union else 0.0
            cos = sum(torch.cosine_similarity(x[i], x[j], dim=0)
                      for x in data.features.values()) / 2
            expected[i, j] = mix * jac + (1 - mix) * cos
    edge_index, weight = mixed_item_graph(data.train, 5, data.features, k=2, mix=mix,
                                          chunk_size=2)
    for (j, i), w in zip(edge_index.T.tolist(), weight.tolist()):
        assert w == pytest.approx(expected[i, j].item(), abs=1e-5)
        row = expected[i].clone()
        row[i] = -float("inf")
        assert w >= row.topk(2).values[-1].item() - 1e-5


def test_graph_spec_recipes_and_user_graph():
    data = small_data()
    cosine = build_graph(data, GraphSpec(knn_k=2))
    assert UU not in cosine.edge_types
    mixed = build_graph(data, GraphSpec(knn_k=2, ii_recipe="mixed", ii_mix=0.5, uu_k=2))
    # the mixed recipe gives every modality the same (weighted) item-item graph
    a, b = mixed[knn_edge_type("a")], mixed[knn_edge_type("b")]
    assert torch.equal(a.edge_index, b.edge_index) and torch.equal(a.edge_attr, b.edge_attr)
    assert not torch.equal(a.edge_index, cosine[knn_edge_type("a")].edge_index)
    assert mixed[UU].edge_index.size(1) > 0
    with pytest.raises(ValueError, match="ii_recipe"):
        GraphSpec(ii_recipe="jaccard")


def test_cache_key_covers_every_graph_setting():
    data = small_data()
    keys = {graph_key(data, spec) for spec in
            [GraphSpec(), GraphSpec(knn_k=3), GraphSpec(ii_recipe="mixed"),
             GraphSpec(ii_recipe="mixed", ii_mix=0.2), GraphSpec(uu_k=2)]}
    assert len(keys) == 5


def test_neighbour_softmax_by_hand():
    # node 0 receives from 1 (score 2) and 2 (score 0); node 1 from 0 (score 3); node 2 nothing
    edge_index = torch.tensor([[1, 2, 0], [0, 0, 1]])
    w = neighbour_softmax(edge_index, torch.tensor([2.0, 0.0, 3.0]), 3)
    e2 = math.exp(2.0)
    torch.testing.assert_close(w, torch.tensor([e2 / (e2 + 1), 1 / (e2 + 1), 1.0]))


def test_interaction_matrix_weights_match_the_degrees():
    from brmrs_pyg.graphs import interaction_matrix
    pairs = torch.tensor([[0, 0, 1, 2, 2, 2], [0, 1, 1, 0, 1, 3]])
    dense = torch.zeros(3, 4)
    dense[pairs[0], pairs[1]] = 1.0
    deg_u, deg_i = dense.sum(1, keepdim=True), dense.sum(0, keepdim=True)
    sym = torch.where(dense > 0, dense / (deg_u * deg_i).sqrt(), torch.zeros(()))
    torch.testing.assert_close(interaction_matrix(pairs, 3, 4).to_dense(), sym)
    torch.testing.assert_close(interaction_matrix(pairs, 3, 4, "mean").to_dense(), dense / deg_u)
    torch.testing.assert_close(interaction_matrix(pairs, 3, 4, "none").to_dense(), dense)
    with pytest.raises(ValueError, match="norm"):
        interaction_matrix(pairs, 3, 4, "rw")


def test_weighted_knn_adjacency_in_edge_blocks_matches_one_block(monkeypatch):
    import brmrs_pyg.graphs as graphs
    x = torch.randn(30, 8, generator=torch.Generator().manual_seed(0), requires_grad=True)
    whole = graphs.knn_adjacency(x, 4, weighted=True)
    (grad_whole,) = torch.autograd.grad(whole[1].square().sum(), x)
    monkeypatch.setattr(graphs, "EDGE_BLOCK_FLOATS", 8 * 7)  # blocks of 7 edges
    blocks = graphs.knn_adjacency(x, 4, weighted=True)
    (grad_blocks,) = torch.autograd.grad(blocks[1].square().sum(), x)
    assert torch.equal(whole[0], blocks[0])
    torch.testing.assert_close(whole[1], blocks[1])
    torch.testing.assert_close(grad_whole, grad_blocks)
    # against the definition: clamped cosine, D^-1/2 A D^-1/2 over the same edges
    xn = torch.nn.functional.normalize(x.detach(), dim=1)
    sim = (xn[whole[0][0]] * xn[whole[0][1]]).sum(-1).clamp_min(0)
    deg = torch.zeros(30).index_add_(0, whole[0][1], sim)
    expected = sim / (deg[whole[0][0]] * deg[whole[0][1]]).sqrt()
    torch.testing.assert_close(blocks[1].detach(), expected)
