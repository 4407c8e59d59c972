"""``--executor ray`` (brmrs_pyg.experiments.ray_executor) on a local 2-CPU Ray instance: each
job in its own worker process, a dead worker or Ray worker reported, and a suite giving the
table of the sequential runner."""
import _thread
import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from brmrs_pyg.cli import main
from brmrs_pyg.experiments.ray_executor import RayError, capacity

from test_executor import FAST, metrics_of, run_suite

HERE = str(Path(__file__).resolve().parent)


def test_capacity_is_what_the_cluster_holds_capped_at_workers():
    assert capacity(16, 0, 1, 0, None) == 16
    assert capacity(16, 0, 3, 0, None) == 5
    assert capacity(16, 2, 1, 1, None) == 2  # GPUs are the limit
    assert capacity(16, 2, 1, 0.5, None) == 4  # two runs per GPU
    assert capacity(16, 2, 1, 1, 1) == 1
    with pytest.raises(RayError, match="cannot hold one run of 4 CPUs"):
        capacity(2, 0, 4, 0, None)
    with pytest.raises(RayError, match="cannot hold one run"):
        capacity(8, 0, 1, 1, None)  # a GPU per run on a cluster without GPUs


@pytest.fixture(scope="module")
def ray_instance():
    """A local Ray instance of 2 CPUs whose workers can import this test folder."""
    ray = pytest.importorskip("ray")
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([HERE, *sys.path])
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()
    if saved is None:
        del os.environ["PYTHONPATH"]
    else:
        os.environ["PYTHONPATH"] = saved


def where(tag):
    """A job: where it ran; ``die`` kills its own process, ``host`` the Ray worker above it."""
    if tag == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    if tag == "host":
        os.kill(os.getppid(), signal.SIGKILL)
        time.sleep(30)  # ended by SIGTERM from the parent's death (PR_SET_PDEATHSIG)
    return tag, os.getpid(), os.getppid()


@pytest.mark.needs_extra("ray")
def test_jobs_run_as_ray_tasks_each_in_its_own_worker_process(ray_instance):
    from brmrs_pyg.experiments.ray_executor import RayExecutor
    executor = RayExecutor()
    assert executor.workers == 2 and executor.threads == 1 and executor.gpus_per_run == 0
    assert executor.machines == 1
    outcomes = {o.index: o for o in executor.map(where, [lambda s, t=t: (t,)
                                                         for t in ("a", "die", "b", "host")])}
    assert [outcomes[i].value[0] for i in (0, 2)] == ["a", "b"]
    assert all(outcomes[i].ok for i in (0, 2))
    pids = {outcomes[i].value[1] for i in (0, 2)}
    assert len(pids) == 2 and os.getpid() not in pids
    assert outcomes[1].value is None and outcomes[1].why() == "killed by SIGKILL"
    # the Ray worker of the task died: Ray says so, and the job's own process was stopped
    assert not outcomes[3].ok and outcomes[3].why().startswith("lost by Ray")


def sleeper(folder):
    """A job that runs a minute unless stopped, leaving ``started`` and ``stopped`` marks."""
    (Path(folder) / "started").touch()
    try:
        time.sleep(60)
    except KeyboardInterrupt:
        (Path(folder) / "stopped").touch()
        raise


@pytest.mark.needs_extra("ray")
def test_ctrl_c_reaches_the_runs_of_the_tasks_in_flight(ray_instance, tmp_path):
    # Ray's workers block SIGINT and their children inherit the mask: the worker process
    # unblocks it, or a cancelled task's run would train on to its end
    from brmrs_pyg.experiments.ray_executor import RayExecutor
    folders = [tmp_path / "a", tmp_path / "b"]
    for folder in folders:
        folder.mkdir()

    interrupted = []

    def interrupt_once_started():
        deadline = time.monotonic() + 120
        while not all((f / "started").exists() for f in folders) and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        interrupted.append(time.monotonic())
        _thread.interrupt_main()

    threading.Thread(target=interrupt_once_started, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        list(RayExecutor().map(sleeper, [lambda s, f=f: (str(f),) for f in folders]))
    assert time.monotonic() - interrupted[0] < 40  # the jobs would sleep on for 60 s
    assert all((f / "stopped").exists() for f in folders)


@pytest.mark.needs_extra("ray")
def test_an_executor_asking_more_than_the_cluster_has_is_refused(ray_instance):
    from brmrs_pyg.experiments.ray_executor import RayExecutor
    with pytest.raises(RayError, match=r"\(2 CPUs, 0 GPUs\) cannot hold one run"):
        RayExecutor(cpus_per_run=3)
    assert RayExecutor(workers=1).workers == 1


@pytest.mark.needs_extra("ray", "plots")
def test_a_suite_on_ray_gives_the_table_of_the_sequential_runner(ray_instance, project,
                                                                   tmp_path):
    assert run_suite(project, tmp_path / "one") == 0
    assert run_suite(project, tmp_path / "ray", "--executor", "ray") == 0
    assert metrics_of(tmp_path / "one") == metrics_of(tmp_path / "ray")
    tables = [(tmp_path / d / "table.csv").read_text() for d in ("one", "ray")]
    assert tables[0] == tables[1] and len(list(csv.DictReader(tables[0].splitlines()))) == 4


@pytest.mark.needs_extra("ray", "search")
def test_a_search_on_ray_ends_with_exactly_its_trials(ray_instance, project, tmp_path):
    out = tmp_path / "search"
    assert main(["search", "--dataset", "tiny", "--model", "lightgcn", "--trials", "4",
                 "--out", str(out), "--pruner", "none", "--seeds", "999", "--executor", "ray",
                 "--epochs", "2", *(f"{k}={v}" for k, v in FAST.items()),
                 f"cache_dir={project / 'cache'}"], root=project) == 0
    content = json.loads((out / "search.json").read_text())
    # a point proposed again (the card's, or another worker's) is answered, not trained
    trained = [t for t in content["trials"] if t["state"] != "repeat"]
    assert [t["state"] for t in trained] == ["complete"] * 4
    assert len({t["folder"] for t in trained}) == 4
    assert len({str(t["params"]) for t in trained}) == 4
    assert all(t["folder"] is None for t in content["trials"] if t["state"] == "repeat")
    # seed 999 is the trial itself: no rerun
    assert content["best"]["trial"] in {t["number"] for t in trained}


def test_ray_options_without_ray_are_refused(project, capsys):
    assert main(["suite", "ablation", "--dataset", "tiny", "--address", "auto"],
                root=project) == 2
    assert "options of --executor ray" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.needs_extra("ray", "plots")
def test_a_ray_suite_stopped_by_ctrl_c_saves_its_runs_and_a_rerun_resumes_them(project,
                                                                                tmp_path):
    """The command line as a user runs it: Ctrl-C during the first epochs, then again."""
    out = tmp_path / "suite"
    run_py = ("import sys; from pathlib import Path; from brmrs_pyg.cli import main; "
              f"sys.exit(main(sys.argv[1:], root=Path({str(project)!r})))")
    command = [sys.executable, "-c", run_py, "suite", "ablation", "--dataset", "tiny",
               "--out", str(out), "--seeds", "3", "--epochs", "400", "--executor", "ray",
               "threads=1", "batch_size=64", "checkpoint_every=1", "patience=1000",
               f"cache_dir={project / 'cache'}"]
    proc = subprocess.Popen(command, cwd=project, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 240
    while len(list(out.glob("**/last.pt"))) < 2 and time.monotonic() < deadline \
            and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    stopped = [p.parent for p in out.glob("**/last.pt")
               if not (p.parent / "results.json").is_file()]
    assert stopped, err
    again = subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    for folder in stopped:
        assert "resumed after epoch" in (folder / "train.log").read_text()
    runs = json.loads((out / "suite.json").read_text())["runs"]
    assert all((out / r["folder"] / "results.json").is_file() for r in runs)
