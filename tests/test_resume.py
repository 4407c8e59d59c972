"""Resuming a run: a training process killed by a signal and resumed with ``--resume`` ends
exactly as an uninterrupted run; a checkpoint that does not fit is refused with a clear error."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from brmrs_pyg import __version__
from brmrs_pyg.cli import main

from conftest import REPO

# the training process sleeps before every epoch: the numbers are unchanged, and the kill
# lands while training is still running, whatever the speed of the machine
SLOW_RUN = """
import sys, time
from pathlib import Path
import brmrs_pyg.train as train
epoch = train.train_epoch
def slow_epoch(*args, **kwargs):
    time.sleep(0.3)
    return epoch(*args, **kwargs)
train.train_epoch = slow_epoch
from brmrs_pyg.cli import main
raise SystemExit(main(sys.argv[1:], root=Path({root!r})))
"""

# BR-MRS with its synergy weight ramped over the first 6 epochs: a resumed run must go on
# with the ramp where it stopped
ARGS = ["--dataset", "tiny", "--model", "brmrs", "--seed", "5", "--epochs", "10",
        "batch_size=128", "patience=100", "checkpoint_every=2", "syn_warmup=6"]


def run_args(project, out):
    return [*ARGS, f"cache_dir={project / 'cache'}", "--out", str(out)]


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def comparable(results):
    r"""Everything in results.json but the timings and the output folder."""
    config = {k: v for k, v in results["config"].items() if k != "out"}
    return {**{k: v for k, v in results.items() if k != "timings"}, "config": config}


def wait_for_checkpoint(path, epoch, proc, timeout=120.0):
    deadline, seen = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the training process ended before it could be killed"
        stamp = path.stat().st_mtime_ns if path.is_file() else None
        if stamp != seen:  # loaded only when rewritten: polling must not slow the run down
            seen = stamp
            if load(path)["epoch"] >= epoch:
                return
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint of epoch {epoch} after {timeout}s")


def test_killed_run_resumes_to_the_same_results(project, tmp_path, caplog):
    caplog.set_level("INFO", logger="brmrs_pyg")
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert main(run_args(project, reference), root=project) == 0  # also generates the data
    expected = json.loads((reference / "results.json").read_text())

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_RUN.format(root=str(project)),
                             *run_args(project, killed)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        wait_for_checkpoint(killed / "last.pt", 4, proc)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "results.json").exists()
    cut = load(killed / "last.pt")["epoch"]
    assert 4 <= cut < 10

    assert main(["--resume", str(killed)], root=project) == 0
    got = json.loads((killed / "results.json").read_text())
    assert got["best_epoch"] == expected["best_epoch"]
    assert got["valid"] == expected["valid"] and got["test"] == expected["test"]
    assert comparable(got) == comparable(expected)  # history and losses too, bit for bit
    assert load(killed / "best.pt")["epoch"] == got["best_epoch"]
    assert load(killed / "last.pt")["epoch"] == 10
    assert f"resumed after epoch {cut}" in caplog.text


@pytest.fixture
def finished_run(project, tmp_path):
    out = tmp_path / "run"
    args = ["--dataset", "tiny", "--epochs", "2", f"cache_dir={project / 'cache'}", "--out",
            str(out)]
    assert main(args, root=project) == 0
    return out


def test_resume_refuses_a_changed_config(project, finished_run, capsys):
    assert main(["--resume", str(finished_run), "lr=0.01", "epochs=3"], root=project) == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and "lr: 0.001 in the checkpoint, 0.01 now" in err
    assert "epochs" not in err.split("(")[1].split(")")[0]  # epochs may change
    assert "Traceback" not in err


def test_resume_may_extend_the_epochs(project, finished_run):
    assert main(["--resume", str(finished_run), "--epochs", "3"], root=project) == 0
    results = json.loads((finished_run / "results.json").read_text())
    assert results["epochs_run"] == 3 and results["config"]["epochs"] == 3


def test_resume_refuses_other_data(project, finished_run, capsys):
    # LightGCN reads no features: the data it was trained on is the interactions file; one
    # valid pair moved to test is other data
    inter = project / "datasets" / "tiny" / "tiny.inter"
    header, *rows = inter.read_text().splitlines()
    label = header.split("\t").index("x_label")
    row = next(n for n, r in enumerate(rows) if r.split("\t")[label] == "1")
    fields = rows[row].split("\t")
    fields[label] = "2"
    rows[row] = "\t".join(fields)
    inter.write_text("\n".join([header, *rows]) + "\n")
    assert main(["--resume", str(finished_run)], root=project) == 2
    assert "dataset's files differ from those the run was trained on" in capsys.readouterr().err


def test_resume_refuses_another_version(project, finished_run, capsys, monkeypatch):
    monkeypatch.setattr("brmrs_pyg.checkpoint.__version__", "9.9.9")
    assert main(["--resume", str(finished_run)], root=project) == 2
    assert f"written by brmrs_pyg {__version__}, this is 9.9.9" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["missing", "garbage"])
def test_resume_without_a_usable_checkpoint(project, finished_run, capsys, damage):
    last = finished_run / "last.pt"
    if damage == "missing":
        last.unlink()
    else:
        last.write_bytes(b"\0" * 100)
    assert main(["--resume", str(finished_run)], root=project) == 2
    err = capsys.readouterr().err
    assert str(last) in err and "Traceback" not in err
    assert ("nothing to resume" if damage == "missing" else "is unreadable") in err


def test_resume_refuses_another_output_folder(project, finished_run, tmp_path, capsys):
    assert main(["--resume", str(finished_run), "--out", str(tmp_path / "x")],
                root=project) == 2
    assert "drop --out" in capsys.readouterr().err


def test_a_key_added_since_the_checkpoint_counts_as_its_former_value(tmp_path):
    from brmrs_pyg.checkpoint import ResumeError, check_config
    # a checkpoint written before syn_warmup existed
    payload = {"meta": {"config": {"model": "brmrs", "lambda_s": 1.0}}}
    check_config(payload, {"model": "brmrs", "lambda_s": 1.0, "syn_warmup": 0}, tmp_path)
    with pytest.raises(ResumeError, match="syn_warmup: 0 in the checkpoint, 5 now"):
        check_config(payload, {"model": "brmrs", "lambda_s": 1.0, "syn_warmup": 5}, tmp_path)
    with pytest.raises(ResumeError, match="lambda_s"):
        check_config(payload, {"model": "brmrs", "lambda_s": 0.5, "syn_warmup": 0}, tmp_path)
