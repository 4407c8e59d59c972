"""``--executor local --workers W`` (brmrs_pyg.experiments.executor): the slots, a worker that
dies, and suites and searches on two workers giving what one gives, on the tiny card of
conftest.py."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from brmrs_pyg import pipeline
from brmrs_pyg.cli import main
from brmrs_pyg.experiments.executor import LocalExecutor, Slot, plan
from brmrs_pyg.experiments.runner import Runner, RunnerSettings, Variant

FAST = {"threads": "1", "batch_size": "128", "checkpoint_every": "1"}
HERE = str(Path(__file__).resolve().parent)


@pytest.fixture
def importable(monkeypatch):
    """Workers can import this test module (its jobs are module-level functions)."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([HERE, *sys.path]))


# --- slots -------------------------------------------------------------------------------------

def test_cores_are_split_unless_threads_is_given_and_gpus_get_one_worker_each():
    assert plan(2, "cpu", False, cores=8, gpus=0) == [Slot(0, 4), Slot(1, 4)]
    assert [s.threads for s in plan(3, "auto", False, cores=2, gpus=0)] == [1, 1, 1]
    assert plan(2, "cpu", True, cores=8, gpus=0) == [Slot(0), Slot(1)]
    assert plan(None, "auto", False, cores=8, gpus=0) == [Slot(0)]  # today's behaviour
    assert plan(None, "cpu", False, cores=8, gpus=4) == [Slot(0)]  # device=cpu: no GPU
    assert plan(None, "auto", False, cores=8, gpus=2) == [Slot(0, 4, 0), Slot(1, 4, 1)]
    assert [s.gpu for s in plan(3, "cuda", True, cores=8, gpus=2)] == [0, 1, 0]
    assert Slot(1, 4, 1).environ()["CUDA_VISIBLE_DEVICES"] == "1"
    with pytest.raises(ValueError, match="at least 1"):
        plan(0, "cpu", False)


def visible_devices(tag):
    return tag, os.environ.get("CUDA_VISIBLE_DEVICES"), os.getpid()


def die_on(tag):
    if tag == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    return tag


def test_each_job_runs_in_its_own_process_with_its_slots_environment(importable):
    executor = LocalExecutor([Slot(0, gpu=3), Slot(1, gpu=5)])
    outcomes = list(executor.map(visible_devices, [lambda s, t=t: (t,) for t in "abc"]))
    values = sorted(o.value for o in outcomes)
    assert [v[0] for v in values] == ["a", "b", "c"] and all(o.ok for o in outcomes)
    assert {v[1] for v in values} <= {"3", "5"} and os.getpid() not in {v[2] for v in values}
    assert len({v[2] for v in values}) == 3


def test_a_killed_worker_is_an_outcome_and_the_others_go_on(importable):
    executor = LocalExecutor([Slot(0), Slot(1)])
    outcomes = {o.index: o for o in executor.map(die_on, [lambda s, t=t: (t,)
                                                          for t in ("a", "die", "b")])}
    assert [outcomes[i].value for i in (0, 2)] == ["a", "b"]
    assert outcomes[1].value is None and outcomes[1].exitcode == -signal.SIGKILL
    assert outcomes[1].why() == "killed by SIGKILL"


# --- suites ------------------------------------------------------------------------------------

def run_suite(project, out, *executor):
    r"""The tiny ablation suite into ``out``, with the ``--executor``/``--workers`` args."""
    return main(["suite", "ablation", "--dataset", "tiny", "--out", str(out), "--seeds", "3",
                 "--epochs", "2", *executor, *(f"{k}={v}" for k, v in FAST.items()),
                 f"cache_dir={project / 'cache'}"], root=project)


def metrics_of(out):
    runs = json.loads((out / "suite.json").read_text())["runs"]
    return {(r["label"], r["seed"]): {split: json.loads((out / r["folder"] / "results.json")
                                                        .read_text())[split]
                                      for split in ("valid", "test")} for r in runs}


@pytest.mark.needs_extra("plots")
def test_a_suite_on_two_workers_gives_the_metrics_of_one(project, tmp_path):
    assert run_suite(project, tmp_path / "one", "--workers", "1") == 0
    assert run_suite(project, tmp_path / "two", "--workers", "2") == 0
    assert metrics_of(tmp_path / "one") == metrics_of(tmp_path / "two")
    tables = [list(csv.DictReader((tmp_path / d / "table.csv").open())) for d in ("one", "two")]
    assert tables[0] == tables[1] and len(tables[0]) == 4


def test_a_runner_on_two_workers_gives_the_results_of_one(project, tmp_path):
    variants = [Variant("lightgcn"), Variant.of("lightgcn", num_layers=1),
                Variant.of("lightgcn", label="same folder", num_layers=1)]
    records = {}
    for name, executor in (("one", None), ("two", LocalExecutor(plan(2, "cpu", True)))):
        settings = RunnerSettings(pipeline.Paths(project), "tiny", tmp_path / name, epochs=2,
                                  overrides={**FAST, "cache_dir": str(project / "cache")})
        records[name] = Runner(settings, executor).run(variants, [1, 2])
    for variant in variants:
        for one, two in zip(records["one"][variant], records["two"][variant]):
            assert one.variant == two.variant == variant and one.seed == two.seed
            assert one.folder.relative_to(tmp_path / "one") == \
                two.folder.relative_to(tmp_path / "two")
            assert {k: one.results[k] for k in ("valid", "test", "epochs_run", "best_epoch")} \
                == {k: two.results[k] for k in ("valid", "test", "epochs_run", "best_epoch")}
    # the configuration reached twice trains once and its record is shared
    assert records["two"][variants[1]][0].results == records["two"][variants[2]][0].results


def killed_at_epoch_2(settings, variant, seed):
    """A worker whose run is SIGKILLed after epoch 2 (last.pt written), for seed 5 only."""
    real = pipeline.run

    def run(config, paths, out_dir, resume=None, on_epoch=None):
        def die(epoch, score):
            if epoch == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            return False
        return real(config, paths, out_dir, resume=resume, on_epoch=die)

    if seed == 5:
        pipeline.run = run
    return Runner(settings).run_one(variant, seed)


def test_a_killed_run_is_reported_and_a_rerun_resumes_it(project, tmp_path, importable,
                                                         monkeypatch, caplog):
    from brmrs_pyg.experiments import runner as runner_module
    settings = RunnerSettings(pipeline.Paths(project), "tiny", tmp_path / "suite", epochs=4,
                              overrides={**FAST, "cache_dir": str(project / "cache")})
    runner = Runner(settings, LocalExecutor(plan(2, "cpu", True)))
    variant = Variant("lightgcn")
    with monkeypatch.context() as patch:
        patch.setattr(runner_module, "run_in_worker", killed_at_epoch_2)
        records = runner.run([variant], [4, 5])[variant]
    assert records[0].results is not None and records[1].results is None
    assert records[1].error == "worker killed by SIGKILL"
    assert "resume it from its last.pt" in caplog.text
    folder = records[1].folder
    assert (folder / "last.pt").is_file() and not (folder / "results.json").is_file()
    again = runner.run([variant], [4, 5])[variant]
    assert all(r.results is not None for r in again)
    assert again[0].results == records[0].results  # read back, not trained again
    assert "resumed after epoch" in (folder / "train.log").read_text()
    assert again[1].results["epochs_run"] == 4


@pytest.mark.needs_extra("search")
def test_ctrl_c_stops_the_workers_and_says_how_to_continue(project, tmp_path):
    import optuna
    out = tmp_path / "search"
    argv = ["search", "--dataset", "tiny", "--model", "lightgcn", "--trials", "4", "--out",
            str(out), "--pruner", "none", "--seeds", "999", "--workers", "2", "threads=1",
            "batch_size=128", "epochs=100000", "patience=100000",
            f"cache_dir={project / 'cache'}"]
    code = ("from pathlib import Path; from brmrs_pyg.cli import main; "
            f"raise SystemExit(main({argv!r}, root=Path({str(project)!r})))")
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(list(out.glob("trials/*/last.pt"))) < 2 and time.monotonic() < deadline \
            and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "SIGINT: search stopped" in err and "Continue with: python run.py search" in err
    study = optuna.load_study(study_name=optuna.get_all_study_names(
        f"sqlite:///{out / 'study.db'}")[0], storage=f"sqlite:///{out / 'study.db'}")
    states = [t.state.name for t in study.trials]
    assert states.count("FAIL") == 2 and "RUNNING" not in states  # both trials interrupted
    assert states.count("WAITING") == 2  # and queued again
