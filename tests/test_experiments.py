"""The experiment runner, grid search, per-user comparisons, tables and the suites
(brmrs_pyg.experiments), on the tiny synthetic card of conftest.py."""
import csv
import dataclasses
import json
import math
import sys

import numpy as np
import pytest

from brmrs_pyg import pipeline
from brmrs_pyg.cli import main
from brmrs_pyg.config import ConfigError
from brmrs_pyg.experiments import testbed
from brmrs_pyg.experiments.compare import compare_runs
from brmrs_pyg.experiments import diagnostics
from brmrs_pyg.experiments.diagnostics import has_ground_truth
from brmrs_pyg.experiments.grid import card_grid, grid_points, grid_search, select_best
from brmrs_pyg.experiments.report import TableRow, write_tables
from brmrs_pyg.experiments.runner import (RunRecord, Runner, RunnerSettings, SuiteError,
                                          Summary, Variant, summarize)
from brmrs_pyg.experiments.stats import paired_t_test, wilcoxon_signed_rank
from brmrs_pyg.experiments.suites import SuiteContext

FAST = {"threads": "1", "batch_size": "128", "checkpoint_every": "1"}


def make_runner(project, tmp_path, epochs=2, **overrides):
    settings = RunnerSettings(pipeline.Paths(project), "tiny", tmp_path / "suite",
                              epochs=epochs, overrides={**FAST, "cache_dir": str(
                                  project / "cache"), **overrides})
    return Runner(settings)


METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")


def fake_results(valid, test, metric="recall@20"):
    r"""A results.json with every table metric: recall equal to ``valid`` / ``test``, ndcg
    half of it."""
    return {"config": {"valid_metric": metric},
            "valid": {m: valid / (2 if m.startswith("ndcg") else 1) for m in METRICS},
            "test": {m: test / (2 if m.startswith("ndcg") else 1) for m in METRICS}}


@pytest.fixture
def count_runs(monkeypatch):
    r"""Counts pipeline.run calls (and whether each resumed)."""
    calls = []
    real = pipeline.run

    def counted(config, paths, out_dir, resume=None):
        calls.append((out_dir, resume is not None))
        return real(config, paths, out_dir, resume=resume)

    monkeypatch.setattr(pipeline, "run", counted)
    return calls


# --- grid search ---------------------------------------------------------------------------

def test_grid_points_are_the_cartesian_product_of_explicit_lists(project):
    assert grid_points({"a": [1, 2], "b": ["x", "y"]}) == [
        {"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 2, "b": "x"}, {"a": 2, "b": "y"}]
    for bad in ({"a": 1}, {"a": []}, {"a": "12"}):
        with pytest.raises(ConfigError, match="non-empty list"):
            grid_points(bad)
    assert card_grid("lightgcn", pipeline.Paths(project)) == {
        "num_layers": [1, 2, 3], "reg_weight": [1e-2, 1e-3, 1e-4]}


def test_selection_is_on_valid_never_on_test():
    a, b, c = Variant.of("m", x=1), Variant.of("m", x=2), Variant.of("m", x=3)
    # b is best on valid, c on test: b must win; a failed run never wins
    candidates = [(a, fake_results(0.30, 0.31)), (b, fake_results(0.35, 0.20)),
                  (c, fake_results(0.33, 0.50)), (Variant.of("m", x=4), None)]
    assert select_best(candidates) == b
    # the valid metric of the runs decides: on ndcg@20 (valid / 2) the order is the same,
    # with a tie the first point wins
    tie = [(a, fake_results(0.35, 0.9, "ndcg@20")), (b, fake_results(0.35, 0.1, "ndcg@20"))]
    assert select_best(tie) == a
    with pytest.raises(ConfigError, match="different metrics"):
        select_best([(a, fake_results(0.1, 0.1)), (b, fake_results(0.1, 0.1, "ndcg@20"))])
    with pytest.raises(ConfigError, match="every grid point failed"):
        select_best([(a, None)])


def test_grid_search_runs_each_point_on_one_seed_and_keeps_the_valid_best(tmp_path):
    valid = {"1": 0.2, "2": 0.4, "3": 0.3}
    test = {"1": 0.9, "2": 0.1, "3": 0.5}

    class FakeRunner:
        def __init__(self):
            self.calls = []

        def run(self, variants, seeds, stage=""):
            self.calls.append((list(variants), list(seeds)))
            return {v: [RunRecord(v, seeds[0], tmp_path,
                                  fake_results(valid[dict(v.overrides)["k"]],
                                               test[dict(v.overrides)["k"]]))]
                    for v in variants}

    runner = FakeRunner()
    outcome = grid_search(runner, Variant.of("m", "label", fixed="a"), {"k": [1, 2, 3]}, 7)
    assert runner.calls == [([Variant.of("m", fixed="a", k=k) for k in (1, 2, 3)], [7])]
    assert outcome.best == Variant.of("m", "label", fixed="a", k=2)
    assert outcome.as_dict()["best"] == {"fixed": "a", "k": "2"}
    assert [p["valid"] for p in outcome.as_dict()["points"]] == [0.2, 0.4, 0.3]


# --- runner --------------------------------------------------------------------------------

def test_folders_name_only_the_keys_that_differ_from_the_defaults(project, tmp_path):
    runner = make_runner(project, tmp_path)
    out = tmp_path / "suite"
    # num_layers=1 is the card's value: the same configuration as the defaults
    assert runner.folder(Variant.of("lightgcn", num_layers=1), 5) == \
        out / "lightgcn" / "defaults" / "s5"
    assert runner.folder(Variant.of("lightgcn", num_layers=2, reg_weight=0.1), 5) == \
        out / "lightgcn" / "num_layers=2,reg_weight=0.1" / "s5"
    with pytest.raises(ConfigError, match="sets seed itself"):
        make_runner(project, tmp_path, seed="3")


def test_runner_skips_finished_runs_and_resumes_an_interrupted_one(project, tmp_path,
                                                                   count_runs):
    runner = make_runner(project, tmp_path, epochs=3)
    variants = [Variant.of("lightgcn"), Variant.of("bpr")]
    first = runner.run(variants, [1, 2])
    assert len(count_runs) == 4 and not any(resumed for _, resumed in count_runs)
    again = runner.run(variants, [1, 2])
    assert len(count_runs) == 4  # nothing trained again
    assert again[variants[0]][1].results == first[variants[0]][1].results

    # an interrupted run: trained 1 of 3 epochs (last.pt at epoch 1), no results.json
    short = make_runner(project, tmp_path / "other", epochs=1)
    record, _ = short.run_one(Variant.of("lightgcn"), 7)
    interrupted = runner.folder(Variant.of("lightgcn"), 7)
    (record.folder / "results.json").unlink()
    record.folder.rename(interrupted)
    count_runs.clear()
    resumed = runner.run([Variant.of("lightgcn")], [7])[Variant.of("lightgcn")][0]
    assert count_runs == [(interrupted, True)]
    uninterrupted, _ = make_runner(project, tmp_path / "third", epochs=3).run_one(
        Variant.of("lightgcn"), 7)
    assert [h["epoch"] for h in resumed.results["history"]] == [1, 2, 3]
    assert resumed.results["history"] == uninterrupted.results["history"]
    assert resumed.results["test"] == uninterrupted.results["test"]


def test_a_finished_run_from_before_an_added_key_is_read_back(project, tmp_path, count_runs):
    runner = make_runner(project, tmp_path, epochs=1)
    record, _ = runner.run_one(Variant.of("brmrs"), 1)
    results = json.loads((record.folder / "results.json").read_text())
    del results["config"]["syn_warmup"]  # as written before syn_warmup existed
    (record.folder / "results.json").write_text(json.dumps(results))
    count_runs.clear()
    runner.run_one(Variant.of("brmrs"), 1)
    assert count_runs == []  # read back at its former value (0), not trained again
    results["config"]["syn_warmup"] = 3
    (record.folder / "results.json").write_text(json.dumps(results))
    with pytest.raises(SuiteError, match="syn_warmup: 3 there, 0 now"):
        runner.run_one(Variant.of("brmrs"), 1)


def test_a_finished_run_of_another_config_is_an_error(project, tmp_path):
    runner = make_runner(project, tmp_path, epochs=1)
    record, _ = runner.run_one(Variant.of("lightgcn"), 1)
    results = json.loads((record.folder / "results.json").read_text())
    results["config"]["lr"] = 0.5
    (record.folder / "results.json").write_text(json.dumps(results))
    with pytest.raises(SuiteError, match="lr: 0.5 there, 0.001 now"):
        runner.run_one(Variant.of("lightgcn"), 1)
    # keys that do not change what a run computes (epochs, threads, ...) may differ: the
    # finished run is read back, not trained again
    results["config"]["lr"] = 0.001
    (record.folder / "results.json").write_text(json.dumps(results))
    again, trained = make_runner(project, tmp_path, epochs=4, threads="2").run_one(
        Variant.of("lightgcn"), 1)
    assert not trained and again.results == results


def test_model_overrides_reach_only_their_model(project, tmp_path):
    settings = RunnerSettings(pipeline.Paths(project), "tiny", tmp_path,
                              overrides={"lr": "0.01"},
                              model_overrides={"lightgcn": {"num_layers": "3"}})
    runner = Runner(settings)
    assert runner.config(Variant.of("lightgcn"), 1).model.num_layers == 3
    assert runner.config(Variant.of("bpr"), 1).run.lr == 0.01
    # a variant's own override wins over the command line's
    assert runner.config(Variant.of("lightgcn", num_layers=2), 1).model.num_layers == 2


def test_summarize_is_mean_and_sample_std_over_finished_seeds(tmp_path):
    v = Variant.of("m")
    records = [RunRecord(v, s, tmp_path, fake_results(0.1, t))
               for s, t in enumerate((0.2, 0.4, 0.9))] + [RunRecord(v, 9, tmp_path, None, "x")]
    got = summarize(records, "test", ["recall@20"])["recall@20"]
    assert (got.mean, got.n) == (pytest.approx(0.5), 3)
    assert got.std == pytest.approx(math.sqrt((0.09 + 0.01 + 0.16) / 2))
    assert summarize(records[3:], "test", ["recall@20"]) == {}


# --- comparisons and tables ----------------------------------------------------------------

def write_per_user(folder, users, values):
    folder.mkdir(parents=True)
    np.savez(folder / "per_user.npz", test_users=np.array(users),
             **{"test_recall@20": np.array(values, dtype=float)})


def test_groups_are_compared_per_user_on_seed_averages(tmp_path):
    a1, a2, b1 = tmp_path / "a1", tmp_path / "a2", tmp_path / "b1"
    write_per_user(a1, [0, 1, 2, 3, 4], [1.0, 0.5, 0.0, 1.0, 0.5])
    write_per_user(a2, [0, 1, 2, 3, 4], [0.0, 0.5, 1.0, 1.0, 0.5])
    write_per_user(b1, [1, 2, 3, 4, 5], [0.0, 0.5, 0.5, 0.0, 1.0])  # user 0/5 not shared
    result = compare_runs([a1, a2], [b1], "recall@20")
    x, y = [0.5, 0.5, 1.0, 0.5], [0.0, 0.5, 0.5, 0.0]  # users 1..4
    assert result.num_users == 4
    assert (result.mean_a, result.mean_b) == (pytest.approx(0.625), pytest.approx(0.25))
    assert result.wilcoxon == wilcoxon_signed_rank(x, y)
    assert result.t_test == paired_t_test(x, y)
    with pytest.raises(SuiteError, match="per_user.npz is missing"):
        compare_runs([tmp_path], [b1], "recall@20")


def test_tables_mark_the_best_and_format_mean_std(tmp_path):
    rows = [TableRow("a", {"r": Summary(0.5, 0.01, 3), "n": Summary(0.2, math.nan, 1)}),
            TableRow("b", {"r": Summary(0.6, 0.02, 3), "n": Summary(0.1, math.nan, 1)},
                     {"value": "x"}),
            TableRow("c", {})]
    write_tables(tmp_path, rows, "T", metrics=["r", "n"])
    md = (tmp_path / "table.md").read_text()
    assert "| a |  | 3 | 0.5000 ± 0.0100 | **0.2000** |" in md
    assert "| b | x | 3 | **0.6000 ± 0.0200** | 0.1000 |" in md
    assert "| c |  | 0 | failed | failed |" in md
    table = list(csv.DictReader((tmp_path / "table.csv").open()))
    assert [r["best"] for r in table] == ["n", "r", ""]
    assert table[1]["r_mean"] == "0.600000" and table[0]["n_std"] == ""


# --- suites --------------------------------------------------------------------------------

def run_suite(project, tmp_path, *args):
    return main(["suite", *args, "--dataset", "tiny", "--out", str(tmp_path / "suite"),
                 "threads=1", "batch_size=128", f"cache_dir={project / 'cache'}"],
                root=project)


@pytest.mark.needs_extra("plots")
def test_ablation_suite_end_to_end_via_the_cli(project, tmp_path, count_runs):
    assert not has_ground_truth(make_runner(project, tmp_path), "brmrs", 3)  # not generated
    assert run_suite(project, tmp_path, "ablation", "--seeds", "3", "4", "--epochs", "1") == 0
    assert len(count_runs) == 8
    out = tmp_path / "suite"
    table = list(csv.DictReader((out / "table.csv").open()))
    assert [r["label"] for r in table] == ["BR-MRS", "w/o CHNS", "w/o synergy",
                                           "w/o CHNS, synergy"]
    assert all(r["n"] == "2" for r in table)
    summary = json.loads((out / "suite.json").read_text())
    assert summary["suite"] == "ablation" and summary["seeds"] == [3, 4]
    runs = {(r["label"], r["seed"]): r for r in summary["runs"]}
    for label in ("BR-MRS", "w/o CHNS"):  # the table's mean is that of the runs' results
        recalls = [json.loads((out / runs[label, s]["folder"] / "results.json").read_text())
                   ["test"]["recall@20"] for s in (3, 4)]
        row = next(r for r in table if r["label"] == label)
        assert float(row["recall@20_mean"]) == pytest.approx(np.mean(recalls), abs=1e-6)
        assert float(row["recall@20_std"]) == pytest.approx(np.std(recalls, ddof=1), abs=1e-6)
    assert runs["w/o CHNS", 3]["overrides"] == {"lambda_h": "0.0", "lambda_s": "1.0"}
    assert set(summary["significance"]) == {"BR-MRS vs w/o CHNS", "BR-MRS vs w/o synergy",
                                            "BR-MRS vs w/o CHNS, synergy"}
    md = (out / "table.md").read_text()
    assert "BR-MRS vs w/o CHNS: paired tests" in md and "Wilcoxon" in md
    assert (out / "test_metrics.png").read_bytes()[:4] == b"\x89PNG"
    # what each loss does per information type (the tiny card is synthetic: it has a ground
    # truth, generated by the suite's first run): the runs' analysis.json, mean over seeds
    assert set(summary["recall_by_type"]) == {r["label"] for r in table}
    for row in table:
        by_type = [json.loads((out / runs[row["label"], s]["folder"] / "analysis.json")
                              .read_text())["ground_truth"]["recall@20"]["fused"] for s in (3, 4)]
        assert {"synergy", "redundant", "text_unique", "image_unique"} <= set(by_type[0])
        for kind in by_type[0]:
            mean = np.mean([b[kind] for b in by_type])
            assert float(row[f"recall@20:{kind}_mean"]) == pytest.approx(mean, abs=1e-6)
            assert summary["recall_by_type"][row["label"]][kind]["mean"] == pytest.approx(mean)
    assert "recall@20:<type>: test recall@20 of the fused ranking" in md
    (out / "table.md").unlink()
    # a finished suite trains nothing and rebuilds its outputs
    assert run_suite(project, tmp_path, "ablation", "--seeds", "3", "4", "--epochs", "1") == 0
    assert len(count_runs) == 8 and (out / "table.md").read_text() == md


def test_suite_command_line_errors(project, tmp_path, capsys, monkeypatch):
    assert run_suite(project, tmp_path, "ablation", "--grid", "card") == 2
    assert "--grid and --models apply to the main suite only" in capsys.readouterr().err
    assert run_suite(project, tmp_path, "ablation", "seed=4") == 2
    assert "a suite sets seed itself" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert run_suite(project, tmp_path, "ablation") == 2
    assert "pip install -e .[plots]" in capsys.readouterr().err
    assert not (tmp_path / "suite").exists()  # refused before any training
    with pytest.raises(SystemExit):
        main(["suite", "nosuchsuite", "--dataset", "tiny"], root=project)
    assert "invalid choice" in capsys.readouterr().err


def fake_run(tmp_path, results_of):
    def run(self, variants, seeds, stage=""):
        return {v: [RunRecord(v, s, tmp_path / f"{v.name}-{s}", results_of(v, s))
                    for s in seeds] for v in dict.fromkeys(variants)}
    return run


@pytest.mark.needs_extra("plots")
def test_main_suite_compares_brmrs_with_the_best_other_model_by_valid(project, tmp_path,
                                                                      monkeypatch):
    scores = {"lightgcn": (0.5, 0.1), "bpr": (0.3, 0.9), "brmrs": (0.6, 0.6)}
    monkeypatch.setattr(Runner, "run", fake_run(tmp_path,
                                                lambda v, s: fake_results(*scores[v.model])))
    compared = []
    monkeypatch.setattr("brmrs_pyg.experiments.suites.compare_records",
                        lambda a, b, metrics: compared.append((a[0].variant.model,
                                                               b[0].variant.model)) or [])
    ctx = SuiteContext(make_runner(project, tmp_path), (1, 2),
                       models=("bpr", "no_such_model", "lightgcn", "brmrs"))
    from brmrs_pyg.experiments.suites import main_suite
    summary = main_suite(ctx)
    assert compared == [("brmrs", "lightgcn")]  # lightgcn is best on valid, bpr on test
    assert [r["label"] for r in summary["runs"]][::2] == ["bpr", "lightgcn", "brmrs"]
    assert "no_such_model" not in (tmp_path / "suite" / "table.md").read_text()


@pytest.mark.needs_extra("plots")
def test_testbed_suites_tabulate_and_plot_the_diagnostics(project, tmp_path, monkeypatch):
    monkeypatch.setattr(Runner, "run", fake_run(tmp_path,
                                                lambda v, s: fake_results(0.3, 0.2 + 0.01 * s)))
    classes = ("redundant", "degraded", "text_unique", "image_unique", "synergy", "all_fail")

    def analysis(record, paths):
        w = float(dict(record.variant.overrides).get("lambda_orth", 0.5))
        share = [1 + w, 1, 1, 1, 1 - w / 2, 1]
        split = [0.25, 0.75, 1, 0]  # of text_unique and image_unique, the fused share
        return {"partition@20": {c: x / sum(share) for c, x in zip(classes, share)},
                "unique_split@20": {f"{m}_unique_{part}": x / sum(share) for (m, part), x
                                    in zip([(m, p) for m in ("text", "image")
                                            for p in ("kept", "lost")], split)},
                "ground_truth": {"recall@20": {"fused": {"synergy": 0.1 + record.seed / 10,
                                                         "redundant": 0.5}}}}

    monkeypatch.setattr(testbed, "analyze", analysis)
    monkeypatch.setattr(diagnostics, "analyze", analysis)  # behind type_recalls
    monkeypatch.setattr(testbed, "MODELS", {"decoupled"})
    plotted, draw = {}, testbed.line_plot

    def line_plot(path, title, panels):
        plotted[path.name] = panels
        draw(path, title, panels)

    monkeypatch.setattr(testbed, "line_plot", line_plot)
    out = tmp_path / "suite"
    ctx = SuiteContext(make_runner(project, tmp_path), (1, 2))
    summary = testbed.empirical_suite(ctx)
    part = list(csv.DictReader((out / "partition.csv").open()))
    assert [r["label"] for r in part][:4] == [f"lambda_orth={w}" for w in (0.0, 0.01, 0.1, 1.0)]
    assert float(part[3]["redundant_mean"]) == pytest.approx(2 / 6.5)
    assert summary["partition"]["lambda_orth=1.0"]["synergy"]["mean"] == pytest.approx(0.5 / 6.5)
    # the unique classes split by the fused branch: table columns, and stacked in the plot
    assert float(part[3]["text_unique_lost_mean"]) == pytest.approx(0.75 / 6.5, abs=1e-6)
    assert float(part[3]["image_unique_kept_mean"]) == float(part[3]["image_unique_mean"])
    assert "`<m>_unique_lost`" in (out / "partition.md").read_text()
    stacked = plotted["partition.png"][0]
    assert stacked.stacked and [s.label for s in stacked.series] == [
        "redundant", "degraded", "text_unique_kept", "text_unique_lost", "image_unique_kept",
        "image_unique_lost", "synergy", "all_fail"]
    assert np.sum([s.y for s in stacked.series], axis=0) == pytest.approx(1.0)
    assert (out / "partition.png").is_file() and (out / "table.md").is_file()

    # two of the four models keep the table small
    monkeypatch.setattr(testbed, "ROBUSTNESS_MODELS", ("lightgcn", "brmrs"))
    summary = testbed.robustness_suite(ctx)
    rows = list(csv.DictReader((out / "table.csv").open()))
    assert len(rows) == 2 * 5 * 2 and rows[0]["model"] == "lightgcn"
    assert [r["value"] for r in rows[::2]][:5] == ["0.0", "0.5", "1.0", "2.0", "4.0"]
    assert float(rows[0]["recall@20_mean"]) == pytest.approx(0.215)
    types = summary["recall_by_type"]["brmrs gamma_s=1.0"]
    assert types["synergy"]["mean"] == pytest.approx(0.25)
    for png in ("robustness.png", "robustness_types_gamma_s.png",
                "robustness_types_gamma_t.png"):
        assert (out / png).is_file()
    # robustness needs a card with a generator
    lfm = Runner(RunnerSettings(pipeline.Paths(project), "lfm2k", out))
    with pytest.raises(SuiteError, match="has none"):
        testbed.robustness_suite(SuiteContext(lfm, (1,)))


def test_a_ground_truth_is_that_of_the_data_the_runs_read(project, tmp_path):
    mine = tmp_path / "mine"  # a user's data: no ground truth of information types
    mine.mkdir()
    runner = make_runner(project, tmp_path)
    runner.settings = dataclasses.replace(runner.settings, data_dir=str(mine))
    assert not has_ground_truth(runner, "brmrs", 1)
    (mine / "ground_truth.tsv").write_text("")
    assert has_ground_truth(runner, "brmrs", 1)
    generated = project / "datasets" / "tiny"
    generated.mkdir()
    (generated / "ground_truth.tsv").write_text("")
    assert has_ground_truth(make_runner(project, tmp_path), "lightgcn", 1)


def test_analyze_reads_a_saved_analysis_and_needs_the_diagnostics_module(tmp_path,
                                                                         monkeypatch):
    record = RunRecord(Variant.of("m"), 1, tmp_path, fake_results(0.1, 0.1))
    assert testbed.analyze(RunRecord(Variant.of("m"), 1, tmp_path, None, "nan"), None) is None
    monkeypatch.setitem(sys.modules, "brmrs_pyg.analysis", None)
    with pytest.raises(SuiteError, match="needs brmrs_pyg.analysis"):
        testbed.analyze(record, None)
    saved = {"partition@20": {"synergy": 0.25, "redundant": 0.75, "counts": "n/a"},
             "unique_split@20": {"text_unique_kept": 0.0, "text_unique_lost": 0.1},
             "ground_truth": {"recall@20": {"fused": {"synergy": 0.5},
                                            "text": {"synergy": 0.1}}}}
    (tmp_path / "analysis.json").write_text(json.dumps(saved))
    analysis = testbed.analyze(record, None)  # read back, the module is not needed
    assert testbed.partition(analysis) == {"synergy": 0.25, "redundant": 0.75}
    assert testbed.unique_split(analysis) == {"text_unique_kept": 0.0, "text_unique_lost": 0.1}
    assert testbed.unique_split({"partition@20": {}}) == {}  # written before the split
    assert diagnostics.type_recall(analysis) == {"synergy": 0.5}
