import pytest
import torch

from brmrs_pyg.cache import write_entry
from brmrs_pyg.nn.features import (basis_cache, load_or_compute_basis, prepare_features,
                                     principal_basis)


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


def centred(x):
    x = x.double()
    return x - x.mean(0, keepdim=True)


def files_under(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_cached_basis_is_the_computed_one_bit_for_bit(tmp_path, caplog):
    torch.manual_seed(0)
    x = torch.randn(30, 8) @ torch.randn(8, 8)
    exact = principal_basis(centred(x), 3)
    caplog.set_level("INFO")
    first, source = load_or_compute_basis(centred(x), 3, tmp_path)
    assert source is None and torch.equal(first, exact)
    second, source = load_or_compute_basis(centred(x), 3, tmp_path)
    assert source is not None and source.parent == tmp_path / "bases"
    assert torch.equal(second, exact)
    # prepared features: no cache, a first cached run and a second one agree to the bit
    uncached = prepare_features(x, dim=3)
    with basis_cache(tmp_path / "other"):
        assert torch.equal(prepare_features(x, dim=3, name="image"), uncached)
        assert torch.equal(prepare_features(x, dim=3, name="image"), uncached)
    messages = [r.getMessage() for r in caplog.records if "feature projection" in r.getMessage()]
    assert messages[-3].startswith("feature projection features: 8 -> 3 dims in ")
    assert messages[-2].startswith("feature projection image: 8 -> 3 dims in ")
    assert messages[-3].endswith("basis computed") and messages[-2].endswith("basis computed")
    assert f"basis from cache {tmp_path / 'other' / 'bases'}" in messages[-1]


def test_second_call_reads_the_cache(tmp_path, monkeypatch):
    x = centred(torch.randn(20, 6))
    first, _ = load_or_compute_basis(x, 2, tmp_path)

    def no_eigh(*args, **kwargs):
        raise AssertionError("eigh called although the basis is cached")

    monkeypatch.setattr(torch.linalg, "eigh", no_eigh)
    second, source = load_or_compute_basis(x, 2, tmp_path)
    assert source is not None and torch.equal(first, second)
    with pytest.raises(AssertionError, match="eigh called"):
        load_or_compute_basis(x, 3, tmp_path)  # another dim is another entry


def test_cache_key_covers_features_and_dim(tmp_path):
    x = centred(torch.randn(20, 6))
    load_or_compute_basis(x, 2, tmp_path)
    load_or_compute_basis(x, 3, tmp_path)
    changed = x.clone()
    changed[0, 0] += 1e-9
    load_or_compute_basis(changed, 2, tmp_path)
    load_or_compute_basis(x, 2, tmp_path)  # a hit: no new entry
    assert len(files_under(tmp_path / "bases")) == 3


def garbage(path):
    path.write_bytes(b"not a checkpoint")


def tampered(path):
    entry = torch.load(path, weights_only=True)
    entry["tensors"]["basis"] = entry["tensors"]["basis"] * 2
    torch.save(entry, path)


def wrong_shape(path):
    write_entry(path, {"basis": torch.zeros(6, 1, dtype=torch.float64)})


@pytest.mark.parametrize("corrupt", [garbage, tampered, wrong_shape])
def test_corrupt_entry_is_recomputed_with_a_warning(tmp_path, caplog, corrupt):
    x = centred(torch.randn(20, 6))
    exact, _ = load_or_compute_basis(x, 2, tmp_path)
    (entry,) = (tmp_path / "bases").iterdir()
    corrupt(entry)
    caplog.set_level("INFO")
    basis, source = load_or_compute_basis(x, 2, tmp_path)
    assert source is None and torch.equal(basis, exact)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "basis cache" in warnings[0]
    assert torch.equal(load_or_compute_basis(x, 2, tmp_path)[0], exact)  # rewritten, sound
    assert [p.name for p in (tmp_path / "bases").iterdir()] == [entry.name]


def test_nothing_is_written_outside_the_cache_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with basis_cache(tmp_path / "cache"):
        prepare_features(torch.randn(20, 6), dim=2)
        prepare_features(torch.randn(20, 6), dim=0)  # no reduction, nothing to cache
    prepare_features(torch.randn(20, 6), dim=2)  # outside a block: no cache at all
    assert len(files_under(tmp_path)) == 1
    (entry,) = files_under(tmp_path)
    assert entry.startswith("cache/bases/pca-6x2-") and entry.endswith(".pt")
