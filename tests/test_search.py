"""``run.py search`` (brmrs_pyg.experiments.search): the space, trials as runs, pruning,
resuming a killed search, selection on valid only, the outputs and the folder's safety, on
the tiny synthetic card of conftest.py."""
import csv
import dataclasses
import json
import os
import subprocess
import sys

import pytest

from brmrs_pyg import pipeline
from brmrs_pyg.cli import main
from brmrs_pyg.config import ConfigError
from brmrs_pyg.experiments.grid import Range, card_grid, grid_points, parse_space
from brmrs_pyg.experiments.runner import Runner, RunnerSettings

FAST = {"threads": "1", "batch_size": "128", "checkpoint_every": "1"}


# --- the space: lists and ranges, parsed in one place (grid.py) -----------------------------

def test_a_space_takes_lists_and_ranges_and_checks_them():
    space = parse_space({"lr": {"low": "1e-4", "high": 1e-2, "log": True},
                         "num_layers": {"low": 1, "high": 4, "step": 1},
                         "fusion": ["mean", "gate"]}, "space.yaml")
    assert space == {"lr": Range(1e-4, 1e-2, log=True), "num_layers": Range(1, 4, step=1),
                     "fusion": ["mean", "gate"]}
    assert space["num_layers"].integer and not space["lr"].integer
    bad = {"high": ({"low": 2, "high": 1}, "below high"),
           "log and step": ({"low": 1e-3, "high": 1.0, "log": True, "step": 0.1}, "combined"),
           "log of 0": ({"low": 0, "high": 1, "log": True}, "low > 0"),
           "key": ({"low": 0, "high": 1, "steps": 2}, "a range is"),
           "number": ({"low": "small", "high": 1}, "expected a number"),
           "list": ([], "non-empty list")}
    for raw, match in bad.values():
        with pytest.raises(ConfigError, match=match):
            parse_space({"x": raw}, "space.yaml")


def test_a_grid_refuses_ranges(project):
    with pytest.raises(ConfigError, match="range .* cannot be enumerated"):
        grid_points({"lr": Range(1e-4, 1e-2, log=True), "k": [1, 2]})
    # the card's grid: block is read by the same parser (lists stay lists)
    assert card_grid("lightgcn", pipeline.Paths(project)) == {
        "num_layers": [1, 2, 3], "reg_weight": [1e-2, 1e-3, 1e-4]}


# --- the search --------------------------------------------------------------------------------

def settings_for(project, out, trials=3, space=None, seeds=(999,), epochs=2, overrides=(),
                 **kwargs):
    from brmrs_pyg.experiments.search import SearchSettings  # optuna is imported lazily
    runner = Runner(RunnerSettings(pipeline.Paths(project), "tiny", out / "best", epochs=epochs,
                                   overrides={**FAST, "cache_dir": str(project / "cache"),
                                              **dict(overrides)}))
    space = space or {"reg_weight": [1e-2, 1e-3, 1e-4], "num_layers": [1, 2]}
    return SearchSettings(runner, "lightgcn", space, trials, out, seeds, **kwargs)


@pytest.fixture
def runs(monkeypatch):
    r"""Counts pipeline.run calls by folder; ``runs.hook(fn)`` wraps each call's on_epoch."""
    class Calls(list):
        hook = None

    calls = Calls()
    real = pipeline.run

    def counted(config, paths, out_dir, resume=None, on_epoch=None):
        calls.append(out_dir)
        if calls.hook is not None and on_epoch is not None:
            on_epoch = calls.hook(out_dir, on_epoch)
        return real(config, paths, out_dir, resume=resume, on_epoch=on_epoch)

    monkeypatch.setattr(pipeline, "run", counted)
    return calls


def finished(content):
    return [t for t in content["trials"] if t["state"] in ("complete", "pruned", "failed")]


@pytest.mark.needs_extra("search")
def test_a_search_runs_its_trials_as_runs_and_writes_the_outputs(project, tmp_path, runs,
                                                                  extra_installed):
    from brmrs_pyg.experiments.search import search
    out = tmp_path / "search"
    content = search(settings_for(project, out, trials=3, seeds=(999, 1), pruner="none"))
    assert [t["number"] for t in content["trials"]] == [0, 1, 2]
    assert {t["state"] for t in content["trials"]} == {"complete"}
    for t in content["trials"]:  # each trial is an ordinary run folder with its valid score
        results = json.loads((out / "trials" / str(t["number"]) / "results.json").read_text())
        assert t["valid"] == results["valid"]["recall@20"]
        assert results["config"]["seed"] == 999 and results["epochs_run"] == 2
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [int(r["number"]) for r in rows] == [0, 1, 2]
    assert set(rows[0]) >= {"state", "valid", "reg_weight", "num_layers", "folder"}
    best = content["best"]
    top = max(content["trials"], key=lambda t: (t["valid"], -t["number"]))
    assert best["trial"] == top["number"] and best["params"] == top["params"]
    # the best point on both seeds: the trial itself stands for seed 999, one more run
    assert [s["seed"] for s in best["seeds"]] == [999, 1] and len(runs) == 4
    assert best["seeds"][0]["folder"] == str(out / "trials" / str(top["number"]))
    assert best["valid"]["recall@20"]["n"] == 2 and "recall@20" in best["test"]
    line = (out / "best.txt").read_text().strip()
    assert line == " ".join(f"{k}={v}" for k, v in best["params"].items())
    card = (out / "best_card.yaml").read_text()
    assert "defaults:" in card and "test metrics were not used" in card
    assert json.loads((out / "search.json").read_text())["best"]["trial"] == best["trial"]
    if extra_installed("plots"):
        assert content["plots"] == ["history.png", "importances.png"]
        assert (out / "history.png").stat().st_size > 0
    else:
        assert content["plots"] == [] and "matplotlib" in content["plots_note"]


@pytest.mark.needs_extra("search")
def test_a_killed_search_continues_without_losing_or_doubling_a_trial(project, tmp_path,
                                                                       runs):
    from brmrs_pyg.experiments.search import search
    out = tmp_path / "search"
    settings = settings_for(project, out, trials=3, pruner="none")

    def kill_trial_2(folder, on_epoch):  # Ctrl-C in trial 2's first epoch
        def hooked(epoch, score):
            if folder.name == "2":
                raise KeyboardInterrupt
            return on_epoch(epoch, score)
        return hooked

    runs.hook = kill_trial_2
    with pytest.raises(KeyboardInterrupt):
        search(settings)
    assert (out / "trials" / "2" / "train.log").is_file()  # its folder is kept
    runs.hook, runs[:] = None, []
    content = search(settings)  # the same command again
    states = {t["number"]: t["state"] for t in content["trials"]}
    assert states == {0: "complete", 1: "complete", 2: "interrupted", 3: "complete"}
    assert content["trials"][3]["retry_of"] == 2
    assert content["trials"][3]["params"] == content["trials"][2]["params"]
    assert len(finished(content)) == 3 and runs == [out / "trials" / "3"]
    # a complete study goes straight to the final step
    runs[:] = []
    assert len(search(settings)["trials"]) == 4 and runs == []


@pytest.mark.needs_extra("search")
def test_a_trial_left_running_by_a_dead_process_runs_again(project, tmp_path, runs):
    import optuna
    from brmrs_pyg.experiments.search import HOST, identity, open_study, search
    out = tmp_path / "search"
    settings = settings_for(project, out, trials=2, pruner="none")
    study = open_study(settings, identity(settings))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # SIGKILL mid-trial: the trial stays RUNNING with a pid that is gone
    study.enqueue_trial({"reg_weight": 1e-3, "num_layers": 2})
    trial = study.ask({k: optuna.distributions.CategoricalDistribution(v)
                       for k, v in settings.space.items()})
    trial.set_user_attr("host", HOST)
    trial.set_user_attr("pid", dead.pid)
    alive = study.ask()  # another live process of this host: left alone
    alive.set_user_attr("host", HOST)
    alive.set_user_attr("pid", 1)
    content = search(settings)
    states = [t["state"] for t in content["trials"]]
    assert states[:2] == ["interrupted", "running"] and states[2] == "complete"
    assert content["trials"][2]["params"] == {"reg_weight": 1e-3, "num_layers": 2}
    # one finished trial and one running elsewhere make the two trials wanted; the card's
    # point, which this study did not hold, runs on top of them
    assert runs == [out / "trials" / "2", out / "trials" / "3"]
    assert len(finished(content)) == 2 and content["trials"][3]["card"] is True
    assert content["trials"][3]["params"] == {"reg_weight": 1e-3, "num_layers": 1}


@pytest.mark.needs_extra("search")
def test_a_pruned_trial_stops_early_and_keeps_its_folder(project, tmp_path, runs):
    import optuna
    from brmrs_pyg.experiments.search import search

    class PruneAllButFirst(optuna.pruners.BasePruner):
        def prune(self, study, trial):  # every trial but trial 0, at its first report
            return trial.number > 0

    out = tmp_path / "search"
    content = search(settings_for(project, out, trials=3, epochs=4, pruner=PruneAllButFirst()))
    assert [t["state"] for t in content["trials"]] == ["complete", "pruned", "pruned"]
    assert [t["epochs"] for t in content["trials"]] == [4, 1, 1]
    pruned = json.loads((out / "trials" / "1" / "results.json").read_text())
    assert pruned["epochs_run"] == 1  # stopped by the callback, results written
    assert content["trials"][1]["valid"] == pruned["valid"]["recall@20"]
    assert content["best"]["trial"] == 0  # a pruned trial is never the best


@pytest.mark.needs_extra("search")
def test_the_best_point_is_chosen_on_valid_never_on_test(project, tmp_path, monkeypatch):
    from brmrs_pyg.experiments.search import search
    # reg_weight 1e-3 is best on valid, 1e-4 on test
    scores = {1e-2: (0.30, 0.30), 1e-3: (0.40, 0.10), 1e-4: (0.35, 0.90)}

    def fake_run(config, paths, out_dir, resume=None, on_epoch=None):
        valid, test = scores[config.model.reg_weight]
        on_epoch(1, valid) if on_epoch else None
        metrics = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")
        results = {"config": config.flat(), "valid": dict.fromkeys(metrics, valid),
                   "test": dict.fromkeys(metrics, test), "epochs_run": 1}
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "results.json").write_text(json.dumps(results))
        return results

    monkeypatch.setattr(pipeline, "run", fake_run)
    content = search(settings_for(project, tmp_path / "search", trials=3, sampler="grid",
                                  space={"reg_weight": [1e-2, 1e-3, 1e-4]}, seeds=(999, 1)))
    assert sorted(t["params"]["reg_weight"] for t in content["trials"]) == [1e-4, 1e-3, 1e-2]
    best = content["best"]
    assert best["params"] == {"reg_weight": 1e-3}
    assert best["test"]["recall@20"]["mean"] == pytest.approx(0.10)  # reported, not used


@pytest.mark.needs_extra("search")
def test_the_grid_sampler_refuses_ranges(project, tmp_path):
    from brmrs_pyg.experiments.search import search
    space = {"lr": Range(1e-4, 1e-2, log=True), "num_layers": [1, 2]}
    with pytest.raises(ConfigError, match="range .* cannot be enumerated"):
        search(settings_for(project, tmp_path / "search", space=space, sampler="grid"))
    assert not (tmp_path / "search").exists()


@pytest.mark.needs_extra("search")
def test_grid_workers_share_one_order_and_together_try_each_point_once(project, tmp_path):
    # each worker has its own sampler (TPE and random seeded apart, so that they propose
    # other points); the grid sampler gives trial n the n-th point of its shuffled grid, so
    # every worker must shuffle alike, or two workers repeat a point and skip another
    import optuna

    from brmrs_pyg.experiments.search import _sampler
    settings = settings_for(project, tmp_path / "search", sampler="grid")
    study = optuna.create_study(direction="maximize")
    points = []

    def objective(trial):
        points.append((trial.suggest_categorical("reg_weight", [1e-2, 1e-3, 1e-4]),
                       trial.suggest_categorical("num_layers", [1, 2])))
        return 0.0
    for number in range(len(grid_points(settings.space))):  # workers 0, 1, 0, ... in turn
        study.sampler = _sampler(optuna, dataclasses.replace(settings, worker=number % 2))
        study.optimize(objective, n_trials=1)
    assert sorted(points) == sorted((p["reg_weight"], p["num_layers"])
                                    for p in grid_points(settings.space))


@pytest.mark.needs_extra("search")
def test_run_py_search_takes_its_space_from_a_file(project, tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text("lr: {low: 1e-4, high: 1e-2, log: true}\nnum_layers: {low: 1, high: 3}\n")
    out = tmp_path / "search"
    argv = ["search", "--dataset", "tiny", "--model", "lightgcn", "--trials", "2", "--space",
            str(space), "--seeds", "999", "--out", str(out), "epochs=2",
            f"cache_dir={project / 'cache'}", *(f"{k}={v}" for k, v in FAST.items())]
    assert main(argv, root=project) == 0
    content = json.loads((out / "search.json").read_text())
    assert len(content["trials"]) == 2
    for t in content["trials"]:
        assert 1e-4 <= t["params"]["lr"] <= 1e-2 and t["params"]["num_layers"] in (1, 2, 3)
        results = json.loads((out / "trials" / str(t["number"]) / "results.json").read_text())
        assert results["config"]["lr"] == t["params"]["lr"]
    assert (out / "best.txt").read_text().startswith("lr=")
    # the grid sampler refuses this space on the command line too, in one line
    assert main([*argv[:-4], "--sampler", "grid", "--out", str(tmp_path / "grid")],
                root=project) == 2
    assert "cannot be enumerated" in capsys.readouterr().err


@pytest.mark.needs_extra("search")
def test_the_output_folder_is_new_empty_or_this_searchs_own(project, tmp_path, runs):
    from brmrs_pyg.experiments.search import SearchError, search
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("a user's file")
    with pytest.raises(SearchError, match="not a search's"):
        search(settings_for(project, foreign, trials=1))
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    out = tmp_path / "search"
    search(settings_for(project, out, trials=1))
    runs[:] = []
    other = {"reg_weight": [1e-2, 1e-3]}  # another space: another search
    with pytest.raises(SearchError, match="another search .*space"):
        search(settings_for(project, out, trials=1, space=other))
    with pytest.raises(SearchError, match="another search .*patience"):
        search(settings_for(project, out, trials=1, overrides={"patience": "3"}))
    assert runs == []
    # a second storage URL: one study shared by two folders (as by two machines)
    shared = f"sqlite:///{tmp_path / 'shared.db'}"
    search(settings_for(project, tmp_path / "a", trials=2, storage=shared))
    content = search(settings_for(project, tmp_path / "b", trials=3, storage=shared))
    # the second machine's sampler has the first one's seed, so it proposes the first
    # machine's points again: those are answered from the study, and it trains a third
    trained = [t for t in content["trials"] if t["state"] != "repeat"]
    assert len(trained) == 3 and len({str(t["params"]) for t in trained}) == 3
    assert trained[2]["folder"] == str(tmp_path / "b" / "trials" / str(trained[2]["number"]))
    assert not (tmp_path / "a" / "study.db").exists()


def test_run_py_search_without_optuna_names_the_extra(project, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError
    assert main(["search", "--dataset", "tiny", "--model", "lightgcn", "--trials", "1"],
                root=project) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'search'" in err and "pip install" in err


@pytest.mark.needs_extra("search")
def test_ctrl_c_says_in_one_line_how_to_continue(project, tmp_path, runs, capsys):
    def stop(folder, on_epoch):
        def hooked(epoch, score):
            raise KeyboardInterrupt
        return hooked

    runs.hook = stop
    argv = ["search", "--dataset", "tiny", "--model", "lightgcn", "--trials", "2", "--seeds",
            "999", "--out", str(tmp_path / "search"), "epochs=2",
            f"cache_dir={project / 'cache'}", *(f"{k}={v}" for k, v in FAST.items())]
    assert main(argv, root=project) == 130
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("SIGINT: search stopped") and "Continue with: python run.py " \
        f"search --dataset tiny" in err and f"--out {tmp_path / 'search'}" in err


@pytest.mark.needs_extra("search")
def test_a_search_on_two_workers_ends_with_exactly_its_trials(project, tmp_path):
    from brmrs_pyg.experiments.executor import LocalExecutor, plan
    from brmrs_pyg.experiments.search import search
    out = tmp_path / "search"
    settings = settings_for(project, out, trials=5, pruner="none",
                            space={"reg_weight": Range(1e-4, 1e-1, log=True),
                                   "num_layers": [1, 2]})
    runner = Runner(settings.runner.settings, LocalExecutor(plan(2, "cpu", True)))
    content = search(dataclasses.replace(settings, runner=runner))
    assert [t["state"] for t in content["trials"]] == ["complete"] * 5
    import optuna
    study = optuna.load_study(study_name=content["study"], storage=settings.storage_url)
    pids = {t.user_attrs["pid"] for t in study.trials}  # the workers', not this process's
    assert len(pids) <= 2 and os.getpid() not in pids
    points = [tuple(sorted(t["params"].items())) for t in content["trials"]]
    assert len(set(points)) == 5  # the workers' samplers do not propose the same points
    assert content["best"]["trial"] in range(5)


class ClusterOfTwo:
    """An executor on two machines whose workers run nothing."""
    workers, machines, inline = 2, 2, False

    def map(self, fn, jobs):
        return iter(())


@pytest.mark.needs_extra("search")
def test_an_sqlite_study_on_several_machines_is_warned_about(project, tmp_path, caplog):
    from brmrs_pyg.experiments.search import identity, open_study, optimize_on_workers
    settings = settings_for(project, tmp_path / "search")
    settings = dataclasses.replace(settings, runner=Runner(settings.runner.settings,
                                                           ClusterOfTwo()))
    optimize_on_workers(settings, open_study(settings, identity(settings)))
    assert "the workers run on 2 machines" in caplog.text and "postgresql" in caplog.text


@pytest.mark.needs_extra("search")
def test_an_added_key_at_its_former_value_leaves_a_search_identity_unchanged(project, tmp_path):
    from brmrs_pyg.experiments.search import SearchSettings, identity, study_name
    space = {"reg_weight": [1e-2, 1e-3]}

    def ident(**overrides):
        settings = settings_for(project, tmp_path / "s", space=space, overrides=overrides)
        return identity(SearchSettings(settings.runner, "brmrs", space, 2, settings.out,
                                       (999,)))
    default = ident()
    # syn_warmup (added later) at 0 is not in the identity: a study stored before it existed
    # keeps its name; any other value makes another search
    assert "syn_warmup" not in default["config"] and "lambda_s" in default["config"]
    assert ident(syn_warmup=0) == default
    assert ident(syn_warmup=5)["config"]["syn_warmup"] == 5
    assert study_name(ident(syn_warmup=5)) != study_name(default)
    assert "min_epochs" not in default["config"] and ident(min_epochs=0) == default
    assert study_name(ident(min_epochs=30)) != study_name(default)


@pytest.mark.needs_extra("search")
@pytest.mark.parametrize("min_epochs,earliest", [(0, 5), (12, 12)])
def test_the_median_pruner_waits_for_min_epochs(project, tmp_path, min_epochs, earliest):
    # early stopping does not end a run before min_epochs, and neither does the pruner: a trial
    # far below five finished ones is pruned first at epoch max(5, min_epochs)
    import optuna
    from brmrs_pyg.experiments.search import _pruner
    settings = settings_for(project, tmp_path / "s", pruner="median",
                            overrides={"min_epochs": str(min_epochs)})
    study = optuna.create_study(direction="maximize", pruner=_pruner(optuna, settings))
    for _ in range(5):
        done = study.ask()
        for epoch in range(1, 21):
            done.report(0.5, epoch)
        study.tell(done, 0.5)
    trial = study.ask()
    asked = []
    for epoch in range(1, 21):
        trial.report(0.1, epoch)
        asked.append(trial.should_prune())
    assert asked.index(True) + 1 == earliest


# --- repeated points: answered, not trained, not counted ---------------------------------------

def always(optuna, params):
    r"""A sampler that proposes ``params`` every time (TPE narrowed down to one point)."""
    class Always(optuna.samplers.BaseSampler):
        def infer_relative_search_space(self, study, trial):
            return {}

        def sample_relative(self, study, trial, search_space):
            return {}

        def sample_independent(self, study, trial, name, distribution):
            return params[name]
    return Always()


@pytest.mark.needs_extra("search")
def test_a_repeated_point_is_answered_without_training_and_an_untried_one_runs_next(
        project, tmp_path, runs, monkeypatch, caplog):
    import optuna
    caplog.set_level("INFO")

    from brmrs_pyg.experiments import search as search_module
    monkeypatch.setattr(search_module, "_sampler",
                        lambda optuna_, settings: always(optuna_, {"reg_weight": 1e-2}))
    out = tmp_path / "search"
    space = {"reg_weight": [1e-2, 1e-3, 1e-4]}
    # 5 trials asked of a 3-point space: it stops when each point has trained once
    content = search_module.search(settings_for(project, out, trials=5, space=space,
                                                pruner="none"))
    states = [t["state"] for t in content["trials"]]
    # the card's point (reg_weight=1e-3) first, then the sampler's 1e-2 twice: the second
    # time it is answered and the untried 1e-4 runs next
    assert states == ["complete", "complete", "repeat", "complete"]
    assert content["trials"][0]["params"] == {"reg_weight": 1e-3}
    trained = [t for t in content["trials"] if t["state"] == "complete"]
    assert [t["params"]["reg_weight"] for t in trained] == [1e-3, 1e-2, 1e-4]
    assert sorted(p.name for p in runs) == ["0", "1", "3"]
    repeat = content["trials"][2]  # trial 1's point and result, no folder of its own
    assert repeat["repeat_of"] == 1 and repeat["params"] == {"reg_weight": 1e-2}
    assert repeat["valid"] == content["trials"][1]["valid"] and repeat["folder"] is None
    assert not (out / "trials" / "2").exists()
    assert "the space has 3 points, fewer than --trials 5" in caplog.text
    assert "trial 2: the point of trial 1 (finished or running): not trained" in caplog.text
    assert content["best"]["trial"] in (0, 1, 3)
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [r["state"] for r in rows] == states
    # the same command trains nothing more
    study = optuna.load_study(study_name=content["study"],
                              storage=f"sqlite:///{out.resolve() / 'study.db'}")
    from brmrs_pyg.experiments.search import counts
    assert counts(study) == (3, 0)
    search_module.search(settings_for(project, out, trials=5, space=space, pruner="none"))
    assert len(runs) == 3


@pytest.mark.needs_extra("search")
def test_a_worker_stuck_on_held_points_of_a_range_space_stops(project, tmp_path, runs,
                                                               monkeypatch, caplog):
    from brmrs_pyg.experiments import search as search_module
    caplog.set_level("INFO")
    monkeypatch.setattr(search_module, "_sampler",
                        lambda optuna_, settings: always(optuna_, {"lr": 1e-3}))
    monkeypatch.setattr(search_module, "MAX_REPEATS", 3)
    space = {"lr": Range(1e-4, 1e-2, log=True)}  # untried points cannot be listed
    content = search_module.search(settings_for(project, tmp_path / "search", trials=4,
                                                space=space, pruner="none"))
    assert [t["state"] for t in content["trials"]] == ["complete"] + ["repeat"] * 3
    assert len(runs) == 1 and content["best"]["trial"] == 0
    assert "3 points in a row were ones the study holds: this worker stops with 1 of 4" \
        in caplog.text


@pytest.mark.needs_extra("search")
def test_a_point_another_trial_is_training_is_not_trained_twice(project, tmp_path):
    import optuna

    from brmrs_pyg.experiments.search import counts, run_trial
    settings = settings_for(project, tmp_path / "search", space={"reg_weight": [1e-2, 1e-3]})
    study = optuna.create_study(direction="maximize")
    running = study.ask()
    running.suggest_categorical("reg_weight", [1e-2, 1e-3])  # a worker trains it now
    running.report(0.25, 1)
    study.enqueue_trial(dict(running.params))
    second = study.ask()
    # ended as a pruned trial with the other's scores so far (the sampler sees no more)
    with pytest.raises(optuna.TrialPruned, match=f"the point of trial {running.number} "
                                                 r"\(running\)"):
        run_trial(second, settings)
    assert second.user_attrs == {"repeat_of": running.number}  # no folder, no host
    study.tell(second, state=optuna.trial.TrialState.PRUNED)
    assert study.trials[second.number].intermediate_values == {1: 0.25}
    # the other point is queued for the next trial
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    other = ({1e-2, 1e-3} - {running.params["reg_weight"]}).pop()
    assert [t.system_attrs["fixed_params"] for t in waiting] == [{"reg_weight": other}]
    assert counts(study) == (0, 1)  # the repeat is not a finished point


@pytest.mark.needs_extra("search")
def test_a_study_that_trained_a_point_twice_counts_and_lists_it_once():
    # studies from before repeats were answered: TPE had the same point trained again
    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import TrialState, create_trial

    from brmrs_pyg.experiments.search import counts
    from brmrs_pyg.experiments.search_report import trial_rows
    dist = {"a": CategoricalDistribution([1, 2, 3])}
    study = optuna.create_study(direction="maximize")
    for a, value in ((1, 0.5), (1, 0.5), (2, 0.7)):
        study.add_trial(create_trial(params={"a": a}, distributions=dist, value=value))
    study.add_trial(create_trial(params={"a": 2}, distributions=dist, state=TrialState.PRUNED,
                                 intermediate_values={1: 0.2}))
    study.add_trial(create_trial(params={"a": 3}, distributions=dist, state=TrialState.FAIL))
    assert counts(study) == (2, 0)  # points 1 and 2; point 3 was interrupted
    rows = trial_rows(study)
    assert [r["state"] for r in rows] == ["complete", "repeat", "complete", "repeat",
                                          "interrupted"]
    assert [r.get("repeat_of") for r in rows] == [None, 0, None, 2, None]


# --- the card's point: in every search, first, never pruned ------------------------------------

def prune_all():
    import optuna

    class PruneAll(optuna.pruners.BasePruner):
        def prune(self, study, trial):  # every trial it is asked about, at its first report
            return True
    return PruneAll()


@pytest.mark.needs_extra("search")
def test_the_card_point_runs_first_and_is_never_pruned(project, tmp_path, runs):
    from brmrs_pyg.experiments.search import card_point, search
    settings = settings_for(project, tmp_path / "search", trials=3, epochs=3,
                            space={"reg_weight": [1e-2, 1e-3, 1e-4], "num_layers": [1, 2]},
                            pruner=prune_all())
    # the tiny card's lightgcn: reg_weight 1e-3 and one layer
    assert card_point(settings) == {"reg_weight": 1e-3, "num_layers": 1}
    content = search(settings)
    first = content["trials"][0]
    assert first["params"] == card_point(settings) and first["card"] is True
    assert first["state"] == "complete" and first["epochs"] == 3  # the pruner was not asked
    assert [t["state"] for t in content["trials"][1:]] == ["pruned", "pruned"]
    assert content["best"]["trial"] == 0
    # a space without the card's value has no card point
    assert card_point(dataclasses.replace(settings, space={"reg_weight": [1e-2, 1e-4]})) is None


@pytest.mark.needs_extra("search")
def test_a_study_that_pruned_the_card_point_trains_it_again_on_top(project, tmp_path, runs):
    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import TrialState, create_trial

    from brmrs_pyg.experiments.search import counts, identity, open_study, search
    space = {"reg_weight": [1e-2, 1e-3, 1e-4]}
    out = tmp_path / "search"
    settings = settings_for(project, out, trials=2, space=space, pruner="none")
    study = open_study(settings, identity(settings))  # as searched before the rule
    dist = {"reg_weight": CategoricalDistribution(space["reg_weight"])}
    study.add_trial(create_trial(params={"reg_weight": 1e-3}, distributions=dist,
                                 state=TrialState.PRUNED, intermediate_values={1: 0.1}))
    study.add_trial(create_trial(params={"reg_weight": 1e-2}, distributions=dist, value=0.2))
    content = search(settings)
    assert runs == [out / "trials" / "2"]  # only the card's point, unpruned
    rows = content["trials"]
    assert [r["state"] for r in rows] == ["repeat", "complete", "complete"]
    assert rows[0]["repeat_of"] == 2 and rows[2]["card"] is True
    assert counts(optuna.load_study(study_name=content["study"],
                                    storage=settings.storage_url)) == (2, 0)
    search(settings)  # nothing more to train
    assert len(runs) == 1


@pytest.mark.needs_extra("search")
def test_the_progress_line_says_when_the_card_point_ran_on_top_of_the_budget():
    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import create_trial

    from brmrs_pyg.experiments.search import progress_line
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    dist = {"reg_weight": CategoricalDistribution([1e-2, 1e-3, 1e-4])}
    for value, reg in ((0.2, 1e-2), (0.3, 1e-3), (0.1, 1e-4)):
        study.add_trial(create_trial(params={"reg_weight": reg}, distributions=dist, value=value))
    line = progress_line(study, 2, [4.0], wanted=3)
    assert line.startswith("trial 2 (3/3): COMPLETE valid 0.1000 | best 0.3000 (trial 1) | 4s")
    assert progress_line(study, 2, [4.0], wanted=2).startswith("trial 2 (2/2 + 1 on top): ")
