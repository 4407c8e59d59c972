"""Interruptions: SIGINT or SIGTERM stops training at the end of the step or evaluation under
way, writes last.pt with the last completed epoch, and a run resumed from it ends exactly as an
uninterrupted one; a second signal aborts at once; the handlers live only while training."""
import dataclasses
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from brmrs_pyg.cli import main
from brmrs_pyg.interrupt import STOP_SIGNALS, TrainingInterrupted
from brmrs_pyg.train import Checkpointing, TrainSettings, train

from conftest import REPO
from test_resume import comparable
from test_train import fresh_model, tiny_problem

SETTINGS = TrainSettings(epochs=7, batch_size=5, lr=0.05, patience=100, valid_metric="ndcg@5",
                         progress=False)
STEPS = 8  # batches per epoch: 36 training pairs in batches of 5


def kill_at(model, calls, signals):
    r"""Makes ``model.loss`` send ``signals`` to this process during its ``calls``-th call
    (counted from 1 over all epochs): the signal lands in the middle of that step."""
    original, count = model.loss, [0]

    def loss(batch):
        count[0] += 1
        if count[0] == calls:
            for signum in signals:
                os.kill(os.getpid(), signum)
        return original(batch)

    model.loss = loss


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    r"""The run the interrupted ones must reproduce: its result and final model."""
    edges, index, evals = tiny_problem()
    model = fresh_model()
    result = train(model, edges, index, evals["valid"], evals["test"], SETTINGS,
                   Checkpointing(tmp_path_factory.mktemp("full"), every=3))
    return result, model


def resume_and_compare(folder, expected, model):
    edges, index, evals = tiny_problem()
    payload = torch.load(folder / "last.pt", weights_only=True)
    torch.manual_seed(12345)  # whatever ran in between, the checkpoint's RNG state wins
    resumed = fresh_model()
    got = train(resumed, edges, index, evals["valid"], evals["test"], SETTINGS,
                Checkpointing(folder, every=3), resume=payload)
    assert (got.best_epoch, got.valid, got.test) == (expected.best_epoch, expected.valid,
                                                     expected.test)
    assert got.history == expected.history and got.last_losses == expected.last_losses
    for key, value in model.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    return payload["epoch"]


# (global step the signal lands in, signal): the first step (last.pt then holds epoch 0,
# the start), an epoch's last step, a step right after a scheduled write (epoch 3), the middle
# of an epoch between writes, and a few random ones (a new draw each session)
_DRAW = random.Random()
MOMENTS = [(1, signal.SIGINT), (2 * STEPS, signal.SIGTERM), (3 * STEPS + 2, signal.SIGINT),
           (4 * STEPS + 5, signal.SIGTERM)] + [
    (_DRAW.randrange(1, SETTINGS.epochs * STEPS + 1), _DRAW.choice(STOP_SIGNALS))
    for _ in range(3)]


@pytest.mark.parametrize("step, signum", [
    pytest.param(step, signum, id=f"step{step}-{signal.Signals(signum).name}")
    for step, signum in MOMENTS])
def test_a_stop_in_a_training_step_resumes_to_the_same_results(uninterrupted, tmp_path, step,
                                                               signum):
    expected, model = uninterrupted
    edges, index, evals = tiny_problem()
    cut = fresh_model()
    kill_at(cut, step, [signum])
    with pytest.raises(TrainingInterrupted) as exc:
        train(cut, edges, index, evals["valid"], evals["test"], SETTINGS,
              Checkpointing(tmp_path / "cut", every=3))
    epoch, at = divmod(step - 1, STEPS)  # the stop comes in epoch epoch + 1, after step at + 1
    name = signal.Signals(signum).name
    folder = tmp_path / "cut"
    assert str(exc.value) == (f"{name}: training stopped in epoch {epoch + 1} (step {at + 1} "
                              f"of {STEPS}); {folder / 'last.pt'} holds epoch {epoch}, the "
                              f"last one completed. Resume with: python run.py --resume "
                              f"{folder}")
    assert exc.value.exit_code == 128 + signum and exc.value.epoch == epoch
    assert exc.value.run_dir == folder
    assert resume_and_compare(folder, expected, model) == epoch


@pytest.mark.parametrize("split", ["valid", "test"])
def test_a_stop_during_evaluation_ends_that_epoch(uninterrupted, tmp_path, split):
    expected, model = uninterrupted
    edges, index, evals = tiny_problem()
    evaluate, calls = evals[split].evaluate, [0]

    def signalling_evaluate(scorer, **kwargs):
        calls[0] += 1
        if calls[0] == 2:  # valid: epoch 2; test: the second epoch that improved
            os.kill(os.getpid(), signal.SIGINT)
        return evaluate(scorer, **kwargs)

    evals[split].evaluate = signalling_evaluate
    with pytest.raises(TrainingInterrupted) as exc:
        train(fresh_model(), edges, index, evals["valid"], evals["test"], SETTINGS,
              Checkpointing(tmp_path / "cut", every=3))
    stopped = exc.value.epoch
    improved = [h["epoch"] for n, h in enumerate(expected.history)
                if h["ndcg@5"] > max([-1.0] + [g["ndcg@5"] for g in expected.history[:n]])]
    assert stopped == (2 if split == "valid" else improved[1])
    assert f"SIGINT: training stopped after epoch {stopped}; " in str(exc.value)
    assert len(torch.load(tmp_path / "cut" / "last.pt")["state"]["history"]) == stopped
    assert resume_and_compare(tmp_path / "cut", expected, model) == stopped


def test_a_second_signal_aborts_at_once(tmp_path):
    edges, index, evals = tiny_problem()
    model = fresh_model()
    kill_at(model, STEPS + 3, [signal.SIGINT, signal.SIGTERM])
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted, match="^SIGTERM again: training aborted at once; "
                                                  "the checkpoints already in") as exc:
        train(model, edges, index, evals["valid"], evals["test"], SETTINGS,
              Checkpointing(tmp_path, every=3))
    assert exc.value.exit_code == 143 and isinstance(exc.value, KeyboardInterrupt)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    assert not (tmp_path / "last.pt").exists()  # nothing is written after an abort
    assert torch.load(tmp_path / "best.pt", weights_only=True)["epoch"] == 1


@pytest.mark.parametrize("every", [0, None])
def test_a_run_without_last_pt_says_it_cannot_be_resumed(tmp_path, every):
    edges, index, evals = tiny_problem()
    model = fresh_model()
    kill_at(model, 2 * STEPS + 1, [signal.SIGTERM])
    checkpoints = None if every is None else Checkpointing(tmp_path, every=every)
    with pytest.raises(TrainingInterrupted) as exc:
        train(model, edges, index, evals["valid"], evals["test"], SETTINGS, checkpoints)
    why = ("no checkpoint was being written" if every is None
           else "checkpoint_every=0 writes no last.pt")
    assert str(exc.value) == (f"SIGTERM: training stopped in epoch 3 (step 1 of {STEPS}), 2 "
                              f"epoch(s) completed; the run cannot be resumed: {why}")
    assert exc.value.epoch is None and exc.value.run_dir is None
    assert not (tmp_path / "last.pt").exists()


def test_handlers_live_only_while_training_and_only_in_the_main_thread(tmp_path):
    edges, index, evals = tiny_problem()
    seen = []

    def custom(signum, frame):
        seen.append(signum)

    previous = signal.signal(signal.SIGTERM, custom), signal.signal(signal.SIGINT,
                                                                    signal.SIG_IGN)
    try:
        model = fresh_model()
        kill_at(model, 3, [signal.SIGINT])  # ignored before training: ignored during it
        short = dataclasses.replace(SETTINGS, epochs=2)
        train(model, edges, index, evals["valid"], evals["test"], short)
        assert signal.getsignal(signal.SIGTERM) is custom
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        installed = []
        model = fresh_model()
        model.start_epoch = lambda: installed.append(signal.getsignal(signal.SIGTERM))
        worker = threading.Thread(target=train, args=(model, edges, index, evals["valid"],
                                                      evals["test"], short))
        worker.start()
        worker.join()
        assert installed == [custom, custom]  # a thread cannot install handlers: none were
        os.kill(os.getpid(), signal.SIGTERM)
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])


# run.py on the tiny synthetic dataset, stopped by a real signal at a random moment of its
# training; the uninterrupted run is made once, in this process
RUN = ["--dataset", "synthetic_tiny", "--seed", "3", "--epochs", "40", "batch_size=32",
       "patience=100", "threads=1", "checkpoint_every=4"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("interrupt")
    common = [*RUN, "--data-dir", str(folder / "data"), f"cache_dir={folder / 'cache'}"]
    assert main([*common, "--out", str(folder / "reference")], root=REPO) == 0
    return common, json.loads((folder / "reference" / "results.json").read_text())


def started_training(log, proc, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        if log.is_file() and "INFO epoch    1 |" in log.read_text():
            return
        time.sleep(0.01)
    raise AssertionError(f"training did not start within {timeout}s")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_run_py_stops_on_a_signal_and_resumes_to_the_same_results(reference, tmp_path,
                                                                   signum):
    common, expected = reference
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(REPO / "run.py"), *common, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        started_training(out / "train.log", proc)
        time.sleep(random.uniform(0.0, 0.3))
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err
    line = err.rstrip("\n").splitlines()[-1]
    found = re.fullmatch(rf"{signal.Signals(signum).name}: training stopped (in|after) epoch "
                         rf"\d+.*; \S+ holds epoch (\d+), the last one completed\. Resume "
                         rf"with: python run\.py --resume (\S+)", line)
    assert found and found[3] == str(out), line
    assert sum("--resume" in text for text in err.splitlines()) == 1
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == int(found[2])
    assert not (out / "results.json").exists()

    assert main(["--resume", str(out)], root=REPO) == 0
    got = json.loads((out / "results.json").read_text())
    assert got["best_epoch"] == expected["best_epoch"] and got["test"] == expected["test"]
    assert comparable(got) == comparable(expected)  # history and losses too, bit for bit
