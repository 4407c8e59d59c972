import json
import os

import numpy as np
import pytest
import torch

from brmrs_pyg.io import (atomic_open, atomic_save_npy, atomic_torch_save, atomic_write_csv,
                          atomic_write_json, atomic_write_text)


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_helpers_write_complete_files(tmp_path):
    atomic_write_text(tmp_path / "a" / "t.txt", "hello\n")
    atomic_write_json(tmp_path / "r.json", {"x": [1, 2]})
    atomic_write_csv(tmp_path / "t.csv", ["model", "recall@20"], [["bpr", 0.5], ["a,b", 1]])
    atomic_write_csv(tmp_path / "t.tsv", ["a", "b"], [[1, 2]], delimiter="\t")
    atomic_torch_save({"w": torch.arange(3)}, tmp_path / "c.pt")
    atomic_save_npy(tmp_path / "f.npy", np.eye(2, dtype=np.float32))
    assert (tmp_path / "a" / "t.txt").read_text() == "hello\n"
    assert json.loads((tmp_path / "r.json").read_text()) == {"x": [1, 2]}
    assert (tmp_path / "t.csv").read_text() == 'model,recall@20\nbpr,0.5\n"a,b",1\n'
    assert (tmp_path / "t.tsv").read_text() == "a\tb\n1\t2\n"
    assert torch.equal(torch.load(tmp_path / "c.pt")["w"], torch.arange(3))
    assert np.array_equal(np.load(tmp_path / "f.npy"), np.eye(2))
    assert leftovers(tmp_path) == []


def test_permissions_follow_the_umask(tmp_path):
    atomic_write_text(tmp_path / "t.txt", "x")
    old = os.umask(0o022)
    os.umask(old)
    assert (tmp_path / "t.txt").stat().st_mode & 0o777 == 0o666 & ~old


@pytest.mark.parametrize("fail", ["serialise", "disk full"])
def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch, fail):
    target = tmp_path / "best.pt"
    atomic_torch_save({"epoch": 1}, target)
    if fail == "serialise":
        obj = {"epoch": 2, "bad": lambda: None}  # a lambda cannot be pickled
        with pytest.raises(Exception):
            atomic_torch_save(obj, target)
    else:
        def full(*args, **kwargs):
            raise OSError(28, "No space left on device")
        monkeypatch.setattr(os, "fsync", full)
        with pytest.raises(OSError, match="No space"):
            atomic_torch_save({"epoch": 2}, target)
    assert torch.load(target)["epoch"] == 1
    assert leftovers(tmp_path) == []


def test_exception_inside_the_block_discards_the_write(tmp_path):
    target = tmp_path / "results.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_open(target) as handle:
            handle.write("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old" and leftovers(tmp_path) == []


def test_atomic_open_refuses_append(tmp_path):
    with pytest.raises(ValueError, match="whole files"):
        with atomic_open(tmp_path / "x", "a"):
            pass
