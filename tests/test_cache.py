import pytest
import torch

from brmrs_pyg.cache import read_entry, tensor_checksum, write_entry


def test_checksum_covers_name_dtype_shape_and_bytes():
    base = {"a": torch.arange(6.0)}
    digest = tensor_checksum(base)
    assert digest == tensor_checksum({"a": torch.arange(6.0)})
    changed = [{"b": torch.arange(6.0)}, {"a": torch.arange(6.0).double()},
               {"a": torch.arange(6.0).view(2, 3)}, {"a": torch.arange(1.0, 7.0)}]
    assert len({digest, *(tensor_checksum(t) for t in changed)}) == 5


def test_entry_round_trip_and_refusals(tmp_path, caplog):
    path = tmp_path / "sub" / "entry.pt"
    assert read_entry(path, "thing", dict) is None  # no entry: no warning
    write_entry(path, {"a": torch.ones(3)})
    assert torch.equal(read_entry(path, "thing", dict)["a"], torch.ones(3))

    def refuse(tensors):
        raise ValueError("does not fit")

    assert read_entry(path, "thing", refuse) is None
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning.startswith("thing cache") and "(does not fit)" in warning
    assert [p.name for p in path.parent.iterdir()] == ["entry.pt"]  # no temporary left


@pytest.mark.parametrize("content", [b"", b"not a checkpoint"])
def test_unreadable_entry_is_none(tmp_path, content):
    path = tmp_path / "entry.pt"
    path.write_bytes(content)
    assert read_entry(path, "thing", dict) is None
