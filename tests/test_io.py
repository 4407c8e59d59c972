import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from brmrs_pyg.io import (_host, atomic_open, atomic_save_npy, atomic_torch_save,
                          atomic_write_csv, atomic_write_json, atomic_write_text)


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


def dead_pid():
    r"""The id of a process that has ended (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_killed_writers_temporary_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "last.pt"
    atomic_write_text(target, "epoch 4")
    pid = os.fork()
    if pid == 0:  # the child dies in the middle of writing, as under SIGKILL
        with atomic_open(target) as handle:
            handle.write("half of epoch 6")
            handle.flush()
            os._exit(0)
    os.waitpid(pid, 0)
    (left,) = leftovers(tmp_path)
    assert left.startswith(f".last.pt.{_host()}.{pid}.")
    assert target.read_text() == "epoch 4"
    atomic_write_text(target, "epoch 8")
    assert target.read_text() == "epoch 8" and leftovers(tmp_path) == []


def test_only_the_targets_own_stale_temporaries_are_removed(tmp_path):
    dead, host = dead_pid(), _host()
    stale = f".last.pt.{host}.{dead}.0123abcd.tmp"
    kept = [
        f".last.pt.{host}.{os.getppid()}.0123abcd.tmp",  # a live writer of the same target
        f".last.pt.{host}.{os.getpid()}.0123abcd.tmp",  # this process: another thread's
        f".last.pt.other-machine.{dead}.0123abcd.tmp",  # a writer on another machine
        f".best.pt.{host}.{dead}.0123abcd.tmp",  # another target
        f".last.pt.{host}.{dead}.0123ABCD.tmp",  # not a name atomic_open makes
        f"last.pt.{host}.{dead}.0123abcd.tmp",
        f".last.pt.{host}.{dead}.0123abcd.tmp.bak",
        ".last.pt.tmp",
        "notes.tmp",
    ]
    for name in [stale, *kept]:
        (tmp_path / name).write_text("x")
    (tmp_path / "link").mkdir()
    (tmp_path / "link" / f".last.pt.{host}.{dead}.01234567.tmp").mkdir()  # a folder
    atomic_write_text(tmp_path / "last.pt", "new")
    assert not (tmp_path / stale).exists()
    assert all((tmp_path / name).read_text() == "x" for name in kept)
    os.symlink(tmp_path / "notes.tmp", tmp_path / f".t.{host}.{dead}.89abcdef.tmp")
    atomic_write_text(tmp_path / "t", "new")  # a symbolic link is never ours
    assert (tmp_path / f".t.{host}.{dead}.89abcdef.tmp").is_symlink()
    atomic_write_text(tmp_path / "link" / "last.pt", "new")
    assert (tmp_path / "link" / f".last.pt.{host}.{dead}.01234567.tmp").is_dir()
